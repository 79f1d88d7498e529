"""The ``secagg`` command line: wiring only. Each subcommand lives in :mod:`secagg.commands`.

Paths: a path given on the command line is relative to the working directory; a path inside a
configuration file is relative to that file (docs/service.md, "Paths"). Errors: one line on stderr
and a documented exit code (:mod:`secagg.commands.errors`); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from secagg.commands.errors import debug_requested, exit_codes_help, run_guarded

__all__ = ["build_parser", "main"]

# Each module defines ``register(subparsers)``, which adds its parser and sets ``handler``.
COMMAND_MODULES = (
    "secagg.commands.demo",
    "secagg.commands.report",
    "secagg.commands.audit",
    "secagg.commands.serve",
    "secagg.commands.keys",
)

_DEBUG_HELP = "on an error, print the Python traceback too (also: SECAGG_DEBUG=1)"


def _add_debug(parser: argparse.ArgumentParser) -> None:
    """``--debug`` on every (sub)command, so it may stand anywhere on the line."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_debug(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="secagg",
        description="Privacy-hardened secure aggregation for federated learning.",
        epilog=exit_codes_help()
        + "\n\npaths on the command line are relative to the working directory; paths in a "
        "configuration file are relative to that file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _add_debug(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(args_list)
    args = build_parser().parse_args(args_list)
    return run_guarded("secagg", lambda: args.handler(args), debug=debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
