"""Which URLs the service may call (webhooks): no server-side request forgery into the operator's network.

A tenant names a URL and the service's workers send it requests, so without a check a tenant could make them
reach the cloud metadata service, a database port on loopback or an internal admin page. `check_url` resolves
the host and refuses it when any address it resolves to is loopback, link-local (which holds the metadata
address 169.254.169.254), private, shared (100.64/10), multicast, reserved or unspecified, unless the
operator's allow-list (``L2_WEBHOOK_ALLOW``: host names, addresses or networks in CIDR form) names it.

The API checks at registration (a 422 that says why); the dispatcher checks again right before each delivery
and then connects to exactly the addresses it checked, so a DNS answer that changes in between (rebinding)
cannot smuggle a private address in.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud metadata services outside the link-local range (AWS IPv6, Alibaba); refused like the others.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200", "169.254.169.254", "169.254.170.2")
)
SCHEMES = ("http", "https")


class UnsafeURL(ValueError):
    """The URL may not be called; the message says why and how the operator could allow it."""


@dataclass(frozen=True)
class AllowList:
    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (``addresses``, all of them checked) and what to send as Host."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


def parse_allow_list(entries: Iterable[str]) -> AllowList:
    """Entries are addresses (``127.0.0.1``), networks (``10.0.0.0/8``) or host names (``hooks.internal``)."""
    hosts, networks = set(), []
    for entry in entries:
        text = str(entry).strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
            continue
        except ValueError:
            pass
        if "/" in text or ":" in text or " " in text:
            raise ValueError(f"webhook allow-list entry {text!r} is neither a host name, an address nor a CIDR network")
        hosts.add(text.lower().rstrip("."))
    return AllowList(frozenset(hosts), tuple(networks))


def address_kind(address: IPAddress) -> str | None:
    """Why ``address`` is refused (``'loopback'``, ``'private'``, ...), or None when it is a public address."""
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    if address in METADATA_ADDRESSES:
        return "cloud metadata"
    for kind in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    if not address.is_global:
        return "non-public"
    return None


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def check_url(
    url: str, allow: AllowList | Iterable[str] = (), *, resolve: Callable[[str, int], list[str]] = _resolve
) -> Target:
    """The URL's `Target` when every address it resolves to may be called; `UnsafeURL` otherwise."""
    if not isinstance(allow, AllowList):
        allow = parse_allow_list(allow)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"webhook URL {url!r} is not a valid URL ({exc})") from exc
    scheme = (parts.scheme or "").lower()
    if scheme not in SCHEMES:
        raise UnsafeURL(f"webhook URL {url!r} must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("webhook URL must not contain a user name or password; authenticate with the signature")
    host = parts.hostname
    if not host:
        raise UnsafeURL(f"webhook URL {url!r} has no host")
    port = port or (443 if scheme == "https" else 80)
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise UnsafeURL(f"webhook host {host!r} does not resolve ({exc}); check the URL") from exc
        if not addresses:
            raise UnsafeURL(f"webhook host {host!r} does not resolve; check the URL")
    if not allow.allows_host(host):
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            kind = address_kind(address)
            if kind is not None and not allow.allows_address(address):
                via = "" if literal is not None else f" resolves to {text}, which"
                article = "an" if kind[0] in "aeiou" else "a"
                raise UnsafeURL(
                    f"webhook URL {url!r}{via} is {article} {kind} address: the service does not call loopback, "
                    "link-local, private or metadata addresses unless the operator lists the host or "
                    "network in L2_WEBHOOK_ALLOW; use a publicly reachable URL"
                )
    return Target(url=url, scheme=scheme, host=host, port=port, addresses=tuple(addresses))
