"""The API's ``l2`` subcommands: ``migrate`` and ``keys create|revoke|list``. Loaded by the ``l2`` dispatcher
through the ``l2.commands`` entry point (the workers' ``serve`` and ``worker`` come from `worker.cli`, a second
entry point of the same group).

The handlers import what they use when they run: the ``l2`` dispatcher registers this module for every
subcommand, and the database stack (SQLAlchemy, Alembic, FastAPI through `api.auth`: about 2 s of imports on
2 cores) must not slow down ``l2 inspect`` or ``l2 --help``.
"""

from __future__ import annotations

import argparse
import logging
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


def run_migrate(args: argparse.Namespace) -> int:
    # Alembic announces each of its built-in plugins at INFO as it loads; the migrations it runs stay visible.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    from store.migrate import DatabaseNotReady, upgrade_database  # see the module docstring

    try:
        upgrade_database(revision=getattr(args, "revision", "head"))
    except DatabaseNotReady as exc:
        raise SystemExit(f"l2 migrate: {exc}") from None
    print("database schema is up to date")
    return 0


def _session():
    """A session on a database whose schema is current; otherwise one line saying what to run, exit 1."""
    # Alembic logs its plugins and migration context at INFO as it loads: noise before the one line we print.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from store.db import get_session_factory  # see the module docstring
    from store.migrate import DatabaseNotReady, require_current_schema

    try:
        require_current_schema()
    except DatabaseNotReady as exc:
        raise SystemExit(f"l2 keys: {exc}") from None
    return get_session_factory()()


def run_keys_create(args: argparse.Namespace) -> int:
    from api.auth import create_key  # see the module docstring

    with _session() as session:
        issued = create_key(session, args.tenant)
    print(f"tenant {issued.tenant_name} ({issued.tenant_id})\nprefix {issued.prefix}\n")
    print(issued.key)
    print("\nStore this key now: it is not shown again (only its hash is kept).", file=sys.stderr)
    return 0


def run_keys_revoke(args: argparse.Namespace) -> int:
    from api.auth import revoke_key  # see the module docstring

    with _session() as session:
        if not revoke_key(session, args.prefix):
            print(f"no active key with prefix {args.prefix!r}; see 'l2 keys list'", file=sys.stderr)
            return 1
    print(f"revoked key {args.prefix}")
    return 0


def run_keys_list(args: argparse.Namespace) -> int:
    from api.auth import list_keys  # see the module docstring

    with _session() as session:
        rows = list_keys(session)
    print(f"{'PREFIX':<14} {'TENANT':<24} {'CREATED':<26} STATUS")
    for key, tenant in rows:
        status = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        print(f"{key.prefix:<14} {tenant.name:<24} {key.created_at:%Y-%m-%d %H:%M:%S %Z}    {status}")
    return 0
