"""The ``l2`` commands that use the service database without migrating it (``keys``, ``worker``) on a
database that is missing, empty, behind or unreachable: one line saying what to run and a non-zero exit,
never a traceback, and nothing created (a mistyped path must not become a new, empty database)."""

from __future__ import annotations

import sqlite3
import subprocess

import pytest

from bench.local_service import ROOT, clean_env, free_port, l2_command


def l2(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(l2_command(*args), env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def assert_one_line_refusal(out: subprocess.CompletedProcess, *expected: str) -> None:
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize(
    "args",
    [("keys", "create", "--tenant", "acme"), ("keys", "list"), ("keys", "revoke", "0123456789ab"), ("worker",)],
    ids=["keys create", "keys list", "keys revoke", "worker"],
)
def test_a_missing_database_is_named_with_the_command_that_creates_it(tmp_path, args):
    env = clean_env(L2_DATA_DIR=str(tmp_path / "data"))
    out = l2(env, *args)
    assert_one_line_refusal(out, f"l2 {args[0]}:", str(tmp_path / "data" / "l2.db"), "does not exist", "l2 migrate")
    assert not (tmp_path / "data" / "l2.db").exists()


def test_an_empty_database_asks_for_the_migrations_and_then_works(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    sqlite3.connect(data / "l2.db").close()  # a file without tables, as a fresh PostgreSQL database is
    env = clean_env(L2_DATA_DIR=str(data))
    assert_one_line_refusal(l2(env, "keys", "create", "--tenant", "acme"), "has no schema yet", "l2 migrate")
    assert l2(env, "migrate").returncode == 0
    created = l2(env, "keys", "create", "--tenant", "acme")
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().splitlines()[-1].startswith("l2_")


def test_a_database_behind_this_code_names_both_revisions(tmp_path):
    env = clean_env(L2_DATA_DIR=str(tmp_path / "data"))
    assert l2(env, "migrate", "--revision", "0004").returncode == 0
    head = max(p.name.split("_")[0] for p in (ROOT / "migrations" / "versions").glob("[0-9]*_*.py"))
    assert head > "0004"
    assert_one_line_refusal(l2(env, "keys", "list"), "schema revision 0004", f"needs {head}", "l2 migrate")


def test_an_unreachable_database_is_one_line_with_the_password_masked(tmp_path):
    url = f"postgresql+psycopg://postgres:secret@127.0.0.1:{free_port()}/l2"  # nothing listens there
    env = clean_env(L2_DATA_DIR=str(tmp_path / "data"), L2_DATABASE_URL=url)
    for args in (("keys", "list"), ("migrate",)):
        out = l2(env, *args)
        assert_one_line_refusal(out, f"l2 {args[0]}:", "cannot reach the database", "postgres:***@127.0.0.1")
        assert "secret" not in out.stderr
