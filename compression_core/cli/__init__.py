"""The `l2` command line. Each subcommand lives in its own module exposing ``register(subparsers)``, which
adds a parser whose ``handler(args) -> int`` does the work. The service contributes its commands (``serve``,
``worker``, ``migrate``, ``keys``) through the ``l2.commands`` entry-point group, so the library never imports
the service."""

from __future__ import annotations

import argparse
import importlib
import logging
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
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
