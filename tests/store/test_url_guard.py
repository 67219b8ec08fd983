"""SSRF rules for webhook URLs (`store.url_guard`), with a fake resolver so no test depends on DNS."""

from __future__ import annotations

import pytest

from store.url_guard import UnsafeURL, address_kind, check_url, parse_allow_list


def resolver(table):
    def resolve(host, port):
        if host not in table:
            raise OSError("Name or service not known")
        return table[host]

    return resolve


PUBLIC = "93.184.215.14"


@pytest.mark.parametrize(
    "address, kind",
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.7", "private"),
        ("172.16.3.4", "private"),
        ("192.168.1.1", "private"),
        ("fd12::1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.10.10", "link-local"),
        ("fe80::1", "link-local"),
        ("100.100.100.200", "cloud metadata"),
        ("100.64.0.1", "non-public"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        (PUBLIC, None),
    ],
)
def test_address_kinds(address, kind):
    import ipaddress

    assert address_kind(ipaddress.ip_address(address)) == kind


def test_a_public_host_is_allowed_and_its_checked_addresses_are_returned():
    target = check_url("https://hooks.example.com/l2?x=1", resolve=resolver({"hooks.example.com": [PUBLIC]}))
    assert (target.scheme, target.host, target.port, target.addresses) == ("https", "hooks.example.com", 443, (PUBLIC,))


def test_a_host_with_any_private_address_is_refused():
    resolve = resolver({"mixed.example.com": [PUBLIC, "10.1.1.1"]})
    with pytest.raises(UnsafeURL, match=r"resolves to 10\.1\.1\.1, which is a private address.*L2_WEBHOOK_ALLOW"):
        check_url("http://mixed.example.com/", resolve=resolve)


def test_the_allow_list_admits_named_hosts_addresses_and_networks():
    resolve = resolver({"hooks.internal": ["10.2.3.4"], "other.internal": ["10.9.9.9"]})
    check_url("http://hooks.internal/", ["hooks.internal"], resolve=resolve)
    check_url("http://other.internal/", ["10.0.0.0/8"], resolve=resolve)
    check_url("http://127.0.0.1:8080/", ["127.0.0.1"])
    with pytest.raises(UnsafeURL):
        check_url("http://127.0.0.2:8080/", ["127.0.0.1"])


@pytest.mark.parametrize(
    "url, message",
    [
        ("ftp://example.com/", "http:// or https://"),
        ("http://user:pw@example.com/", "user name or password"),
        ("http:///path", "no host"),
        ("http://nowhere.invalid/", "does not resolve"),
        ("http://example.com:99999/", "not a valid URL"),
    ],
)
def test_malformed_urls_say_what_is_wrong(url, message):
    with pytest.raises(UnsafeURL, match=message):
        check_url(url, resolve=resolver({"example.com": [PUBLIC]}))


def test_a_bad_allow_list_entry_is_named():
    with pytest.raises(ValueError, match="not/a host"):
        parse_allow_list(["not/a host"])


def test_the_setting_reads_a_comma_separated_list_and_refuses_a_bad_entry(monkeypatch):
    from pydantic import ValidationError

    from store.settings import Settings

    monkeypatch.setenv("L2_WEBHOOK_ALLOW", "127.0.0.1, 10.0.0.0/8,hooks.internal")
    assert Settings().webhook_allow == ["127.0.0.1", "10.0.0.0/8", "hooks.internal"]
    monkeypatch.setenv("L2_WEBHOOK_ALLOW", "10.0.0.0/33")
    with pytest.raises(ValidationError, match="webhook_allow"):
        Settings()
