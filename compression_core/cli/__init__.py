"""The `l2` command line. Each subcommand lives in its own module exposing ``register(subparsers)``, which
adds a parser whose ``handler(args) -> int`` does the work. The service contributes its commands (``serve``,
``worker``, ``migrate``, ``keys``) through the ``l2.commands`` entry-point group, so the library never imports
the service."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from importlib.metadata import entry_points

_BUILTIN = ("compression_core.cli.compress_cmd", "compression_core.cli.codec_cmds")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="l2",
        description=(
            "L² model-size compression. Compress a PyTorch checkpoint into a small .l2 file "
            "(learned pruning + quantization + range coding), inspect it, or decode it back to weights."
        ),
        epilog="Run 'l2 COMMAND --help' for the options of one command.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in _BUILTIN:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(sub)
    for ep in entry_points(group="l2.commands"):
        ep.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. A mistake in what the user passed (a file, a value) surfaces as a ValueError or
    OSError: it is printed as one line naming the command, exit status 1; ``-v`` shows the traceback instead.
    Output cut short by the reader (``l2 inspect f.l2 | head``) ends quietly with 141, as if by SIGPIPE."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.handler(args) or 0)
    except BrokenPipeError:
        _discard_stdout()
        return 141
    except KeyboardInterrupt:
        print(f"l2 {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        if args.verbose:
            raise
        print(f"l2 {args.command}: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush does not raise BrokenPipeError again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
