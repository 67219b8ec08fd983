"""The service's ``l2`` subcommands: ``migrate`` and ``keys create|revoke|list`` (plus the worker's ``serve``
and ``worker`` from `worker.cli` when that package is installed). Loaded by the ``l2`` dispatcher through the
``l2.commands`` entry point."""

from __future__ import annotations

import argparse
import importlib
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    m = subparsers.add_parser(
        "migrate",
        help="create or upgrade the service database schema (alembic upgrade head)",
        description="Run the database migrations up to the newest revision, for the "
        "database in L2_DATABASE_URL (default: SQLite under L2_DATA_DIR).",
    )
    m.add_argument("--revision", default="head", help="target revision (default head)")
    m.set_defaults(handler=run_migrate)

    keys = subparsers.add_parser(
        "keys", help="manage API keys", description="Create, revoke and list API keys."
    )
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="create a key for a tenant (the tenant is created if new)")
    create.add_argument("--tenant", required=True, help="tenant name")
    create.set_defaults(handler=run_keys_create)
    revoke = sub.add_parser("revoke", help="revoke a key by its prefix")
    revoke.add_argument("prefix", help="the key's prefix (l2_<prefix>_...), as 'l2 keys list' shows it")
    revoke.set_defaults(handler=run_keys_revoke)
    listing = sub.add_parser("list", help="list keys (prefixes only; secrets are never stored)")
    listing.set_defaults(handler=run_keys_list)

    try:
        worker_cli = importlib.import_module("worker.cli")
    except ModuleNotFoundError as exc:
        if exc.name not in ("worker", "worker.cli"):
            raise
    else:
        worker_cli.register(subparsers)


def upgrade_database(url: str | None = None) -> None:
    """``alembic upgrade head`` (what ``l2 serve`` runs at start-up)."""
    from api.migrate import upgrade_database as upgrade

    upgrade(url)


def run_migrate(args: argparse.Namespace) -> int:
    from api.migrate import upgrade_database as upgrade
    from api.settings import get_settings

    upgrade(get_settings().database_url, getattr(args, "revision", "head"))
    print("database schema is up to date")
    return 0


def _session():
    from api.db import get_session_factory

    return get_session_factory()()


def run_keys_create(args: argparse.Namespace) -> int:
    from api.auth import create_key

    with _session() as session:
        issued = create_key(session, args.tenant)
    print(f"tenant {issued.tenant_name} ({issued.tenant_id})\nprefix {issued.prefix}\n")
    print(issued.key)
    print("\nStore this key now: it is not shown again (only its hash is kept).", file=sys.stderr)
    return 0


def run_keys_revoke(args: argparse.Namespace) -> int:
    from api.auth import revoke_key

    with _session() as session:
        if not revoke_key(session, args.prefix):
            print(f"no active key with prefix {args.prefix!r}; see 'l2 keys list'", file=sys.stderr)
            return 1
    print(f"revoked key {args.prefix}")
    return 0


def run_keys_list(args: argparse.Namespace) -> int:
    from api.auth import list_keys

    with _session() as session:
        rows = list_keys(session)
    print(f"{'PREFIX':<14} {'TENANT':<24} {'CREATED':<26} STATUS")
    for key, tenant in rows:
        status = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        print(f"{key.prefix:<14} {tenant.name:<24} {key.created_at:%Y-%m-%d %H:%M:%S %Z}    {status}")
    return 0
