"""The ``secagg`` command line: wiring only. Each subcommand lives in :mod:`secagg.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from secagg.errors import SecAggError

__all__ = ["main"]

# Each module defines ``register(subparsers)``, which adds its parser and sets ``handler``.
COMMAND_MODULES = (
    "secagg.commands.demo",
    "secagg.commands.report",
    "secagg.commands.audit",
    "secagg.commands.serve",
    "secagg.commands.keys",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="secagg", description="Privacy-hardened secure aggregation for federated learning."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except SecAggError as exc:
        print(f"secagg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
