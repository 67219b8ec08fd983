"""``l2 worker`` (a Celery worker for chosen queues) and ``l2 serve`` (the whole service in one command).

``l2 serve`` with nothing configured is the embedded default: SQLite database and SQLite message broker under
the data folder, the API on 127.0.0.1 with authentication off, and one worker process consuming both queues —
the same task code as production, only the servers differ. Set ``L2_DATABASE_URL`` / ``L2_BROKER_URL`` to use
PostgreSQL / Redis instead. ``--demo`` also trains a tiny model and compresses it through the API.

``serve`` is the one place outside `api` that imports the API (it runs it in this process). The ``l2``
dispatcher registers this module for every subcommand, so what only ``serve`` needs (settings, Alembic,
uvicorn and the API, the demo's torch) is imported inside it: ``l2 inspect`` and ``l2 --help`` stay quick.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
import threading

from store.queues import QUEUES
from worker.supervisor import WorkerSupervisor

LOOPBACK_NAMES = ("localhost",)


def register(subparsers: argparse._SubParsersAction) -> None:
    w = subparsers.add_parser(
        "worker",
        help="run a Celery worker that executes compression jobs",
        description="Run a Celery worker for the given queues. Each job runs in a pool child process (torch "
        "and CUDA are only touched there); one job per child at a time.",
    )
    w.add_argument(
        "--queues", "-Q", default="cpu", help="comma-separated queues to consume: cpu, gpu (default cpu)"
    )
    w.add_argument("--concurrency", "-c", type=int, default=1, help="jobs run at once (default 1)")
    w.add_argument("--hostname", "-n", default=None, help="Celery node name (default l2-<queues>@<host>)")
    w.add_argument(
        "--loglevel", "-l", default="info", help="Celery log level: debug, info, warning or error (default info)"
    )
    w.add_argument(
        "--max-tasks-per-child",
        type=int,
        default=0,
        help="replace a pool child after this many jobs (0: never); 1 gives each job a fresh process",
    )
    w.set_defaults(handler=run_worker)

    s = subparsers.add_parser(
        "serve",
        help="run the API and a worker (embedded default: SQLite + local folder, no servers needed)",
        description="Run the service. With nothing configured this is the embedded default: SQLite database and "
        "SQLite message broker under L2_DATA_DIR, the API on 127.0.0.1 with authentication off, and one worker "
        "process consuming both queues (the same task code as production, only the servers differ). Set "
        "L2_DATABASE_URL / L2_BROKER_URL to use PostgreSQL / Redis instead. --demo also trains a tiny model and "
        "compresses it through the API. Ctrl+C or SIGTERM stops the API and its worker.",
    )
    s.add_argument("--host", default=None, help="address to listen on (default L2_API_HOST, 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="port (default L2_API_PORT, 8000)")
    s.add_argument(
        "--queues",
        "-Q",
        default=",".join(QUEUES),
        help=f"queues the embedded worker consumes (default {','.join(QUEUES)})",
    )
    s.add_argument("--no-worker", action="store_true", help="run only the API (workers run elsewhere)")
    s.add_argument(
        "--api-workers",
        type=int,
        default=1,
        help="API processes sharing the port (default 1); on a machine of its own, one per core",
    )
    s.add_argument("--no-migrate", action="store_true", help="do not upgrade the database schema at start-up")
    s.add_argument(
        "--demo",
        action="store_true",
        help="also train a tiny digits CNN, compress it through the API and print the result",
    )
    s.add_argument("--demo-ratio", type=float, default=10.0, help="target ratio of the demo job (default 10)")
    s.add_argument(
        "--demo-iters",
        type=int,
        default=None,
        help="optimizer iterations per phase of the demo job (default: the demo's own, ~1 minute)",
    )
    s.add_argument(
        "--exit-after-demo", action="store_true", help="stop the service once the demo has finished"
    )
    s.set_defaults(handler=run_serve)


def parse_queues(text: str) -> list[str]:
    queues = [q.strip() for q in text.split(",") if q.strip()]
    unknown = [q for q in queues if q not in QUEUES]
    if not queues or unknown:
        raise SystemExit(f"l2: unknown queue(s) {unknown or text!r}; choose from {', '.join(QUEUES)}")
    return queues


def worker_command(
    queues: list[str],
    *,
    concurrency: int = 1,
    hostname: str | None = None,
    loglevel: str = "info",
    max_tasks_per_child: int = 0,
) -> list[str]:
    """The Celery worker command line (prefork pool: each job runs in a child process)."""
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "-Q",
        ",".join(queues),
        "--concurrency",
        str(concurrency),
        "-P",
        "prefork",
        "-l",
        loglevel,
        "-n",
        hostname or f"l2-{'-'.join(queues)}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    if max_tasks_per_child:
        cmd += ["--max-tasks-per-child", str(max_tasks_per_child)]
    return cmd


def run_worker(args: argparse.Namespace) -> int:
    prepare_database(migrate=False, command="worker")
    cmd = worker_command(
        parse_queues(args.queues),
        concurrency=args.concurrency,
        hostname=args.hostname,
        loglevel=args.loglevel,
        max_tasks_per_child=args.max_tasks_per_child,
    )
    # Supervised (worker.supervisor): a Celery main process that dies is started again. SIGTERM (docker stop,
    # systemd) or Ctrl+C stops it warmly: the running job finishes first; a second Ctrl+C kills it.
    supervisor = WorkerSupervisor(cmd, stop_timeout_s=None, say=_say)
    stop_on_signals()
    try:
        supervisor.start()
        supervisor.wait()
    except StopRequested:
        pass
    finally:
        stop_worker(supervisor)
    return 0


class StopRequested(Exception):
    """SIGTERM or SIGINT reached ``l2 serve`` / ``l2 worker``: the normal way to stop them, not an error."""


def _raise_stop_requested(signum, frame) -> None:
    raise StopRequested(signal.Signals(signum).name)


def stop_on_signals() -> None:
    """Turn SIGTERM and SIGINT into `StopRequested`, so the command stops its worker and exits 0.

    uvicorn handles both signals itself while it serves, then restores these handlers and raises the signal
    again; with the default handlers SIGTERM would kill this process before it stopped its worker (which runs in
    its own session, so a terminal's Ctrl+C reaches only us) and exit 143, and SIGINT would end in 130."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _raise_stop_requested)


def stop_worker(supervisor: WorkerSupervisor | None) -> None:
    """Stop the supervised worker; a second SIGTERM / Ctrl+C while it stops kills it at once."""
    if supervisor is None:
        return
    try:
        supervisor.stop()
    except StopRequested:
        if supervisor.proc is not None and supervisor.proc.poll() is None:
            os.killpg(supervisor.proc.pid, signal.SIGKILL)


def prepare_database(*, migrate: bool, command: str) -> None:
    """Migrate the database (``l2 serve``) or check that someone did (``l2 worker``, ``serve --no-migrate``);
    a database that is missing, unreachable or behind ends the command with one line saying what to do."""
    # Alembic logs its plugins and migration context at INFO as it loads: noise before the banner or the one
    # line we print. Alembic only for these commands: see the module docstring.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from store.migrate import DatabaseNotReady, require_current_schema, upgrade_database

    try:
        upgrade_database() if migrate else require_current_schema()
    except DatabaseNotReady as exc:
        raise SystemExit(f"l2 {command}: {exc}") from None


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _embedded_worker_env(settings) -> dict[str, str]:
    """The worker of ``l2 serve`` shares the machine with the API: unless configured otherwise, it computes at
    niceness 10 with one torch thread less than there are cores, so status requests stay fast."""
    env = dict(os.environ)
    if "worker_nice" not in settings.model_fields_set:
        env["L2_WORKER_NICE"] = "10"
    if "worker_torch_threads" not in settings.model_fields_set and (os.cpu_count() or 1) > 1:
        env["L2_WORKER_TORCH_THREADS"] = str((os.cpu_count() or 2) - 1)
    return env


# -- serve ----
def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_embedded(settings) -> bool:
    return str(settings.database_url).startswith("sqlite") and str(settings.broker_url).startswith(
        "sqla+sqlite"
    )


def banner(lines: list[str]) -> str:
    width = max(len(line) for line in lines) + 4
    bar = "!" * width
    return "\n".join([bar, *(f"! {line.ljust(width - 4)} !" for line in lines), bar])


def run_serve(args: argparse.Namespace) -> int:
    from store.settings import get_settings  # see the module docstring

    queues = parse_queues(args.queues)
    settings = get_settings()
    args.host = args.host or settings.api_host
    args.port = args.port or settings.api_port
    embedded = is_embedded(settings)
    if embedded and _is_loopback(args.host) and "auth_enabled" not in settings.model_fields_set:
        # The embedded default is a single-user service on this machine: no keys to create first.
        settings = settings.model_copy(update={"auth_enabled": False})
    auth = settings.auth_enabled
    if not auth and not _is_loopback(args.host):
        print(
            f"l2 serve: refusing to listen on {args.host} with authentication off; use --host 127.0.0.1 or "
            "set L2_AUTH_ENABLED=true and create a key with 'l2 keys create'",
            file=sys.stderr,
        )
        return 2
    os.makedirs(settings.data_dir, exist_ok=True)
    lines = [
        f"L² service on http://{args.host}:{args.port}  (API docs: /docs)",
        *([f"web page: http://{args.host}:{args.port}/ui"] if settings.ui_enabled else []),
        f"database: {_redact(settings.database_url)}",
        f"broker:   {_redact(settings.broker_url)}",
        f"data:     {settings.data_dir}",
        "worker:   " + ("none (--no-worker)" if args.no_worker else f"1 process, queues {','.join(queues)}"),
    ]
    if embedded:
        lines.append("embedded default: set L2_DATABASE_URL / L2_BROKER_URL for PostgreSQL / Redis")
    if not auth:
        lines += [
            "",
            "AUTHENTICATION IS OFF: anyone who can reach this port can use the service.",
            "This is only allowed on localhost. Set L2_AUTH_ENABLED=true for anything else.",
        ]
    print(banner(lines), flush=True)

    prepare_database(migrate=not args.no_migrate, command="serve")

    stop_on_signals()
    supervisor = None
    demo_result: dict = {}
    try:
        if not args.no_worker:  # restarted whenever it dies (worker.supervisor)
            command = worker_command(queues, hostname="l2-embedded@%h")
            supervisor = WorkerSupervisor(command, env=_embedded_worker_env(settings), say=_say).start()
        _run_api(args, settings, demo_result)
    except StopRequested:
        pass
    finally:
        stop_worker(supervisor)
    return int(demo_result.get("rc", 0))


def _run_api(args: argparse.Namespace, settings, demo_result: dict) -> None:
    """Serve the API until it is stopped; with ``--demo``, run the demo against it in a thread."""
    # The web stack (uvicorn, FastAPI, the API's modules) loads only when `serve` runs; see the module docstring.
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from api.app import create_app

    if args.api_workers > 1:
        # Several API processes behind one socket (uvicorn's supervisor): each builds the app from the
        # environment, so this process's decisions travel there.
        os.environ["L2_AUTH_ENABLED"] = "true" if settings.auth_enabled else "false"
        config = uvicorn.Config(
            "api.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            log_level="info",
            workers=args.api_workers,
        )
        server = None
    else:
        config = uvicorn.Config(create_app(settings), host=args.host, port=args.port, log_level="info")
        server = uvicorn.Server(config)
    if args.demo:

        def demo() -> None:
            from worker.demo import run_demo  # trains a model with torch: only with --demo

            try:
                options = None
                if args.demo_iters is not None:
                    options = {
                        "rounds": 1,
                        "transform_iters": args.demo_iters,
                        "weight_iters": args.demo_iters,
                    }
                demo_result["rc"] = run_demo(
                    f"http://{_client_host(args.host)}:{args.port}",
                    settings,
                    target_ratio=args.demo_ratio,
                    options=options,
                )
            except Exception as exc:  # the service keeps running; say what went wrong
                print(f"demo failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                demo_result["rc"] = 1
            if not args.exit_after_demo:
                print(
                    f"[demo] the demo is over; the service keeps running on http://{_client_host(args.host)}:"
                    f"{args.port} (Ctrl+C or 'kill -TERM {os.getpid()}' stops it; 'l2 serve --demo "
                    "--exit-after-demo' stops by itself after the demo)",
                    flush=True,
                )
            if args.exit_after_demo:
                if server is not None:
                    server.should_exit = True
                else:  # uvicorn's supervisor stops its processes on SIGTERM
                    os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=demo, name="l2-demo", daemon=True).start()
    if server is not None:
        server.run()
    else:
        Multiprocess(config, sockets=[config.bind_socket()]).run()


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _redact(url: str) -> str:
    url = str(url)
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, tail = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{tail}" if ":" in creds else url
    return url

