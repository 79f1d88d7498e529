"""One line per user error, and the exit codes every secagg entry point shares.

Every command-line entry point (``secagg ...``, ``clients/*.py``, the demo's helper processes) runs
its work through :func:`run_guarded`: an expected failure (a secagg error, a missing or unreadable
file, an address that cannot be bound, an aggregator that cannot be reached) becomes **one line on
stderr** that says what to do, and a documented exit code; ``--debug`` (or ``SECAGG_DEBUG=1``)
shows the traceback instead. Anything else is a bug: one line too, asking for ``--debug`` and a
report.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from secagg.errors import (
    ConfigError,
    OutcomeMismatch,
    PolicyViolation,
    RoundAborted,
    SecAggError,
)

__all__ = [
    "EXIT_CODES",
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_FILE",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_NETWORK",
    "EXIT_OK",
    "CommandError",
    "exit_codes_help",
    "run_guarded",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_FILE = 3
EXIT_NETWORK = 4
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

#: code -> meaning; printed by ``secagg --help`` and documented in docs/service.md.
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_FAILED: "the work ran and failed: a round aborted, an audit found a problem",
    EXIT_CONFIG: "bad arguments or configuration, or input secagg refuses (the line says which)",
    EXIT_FILE: "a file or folder is missing, unreadable, or would be overwritten",
    EXIT_NETWORK: "network: cannot listen on the address, cannot reach the aggregator, or the "
    "aggregator refused the request",
    EXIT_INTERNAL: "internal error (a bug): rerun with --debug and report the traceback",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


class CommandError(SecAggError):
    """An error a command has already turned into advice for the user, with its exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def exit_codes_help() -> str:
    """The exit-code table as text (for ``--help`` epilogues)."""
    return "exit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())


def _os_error(exc: OSError) -> str:
    name = exc.filename
    what = exc.strerror or str(exc)
    if isinstance(exc, FileNotFoundError) and name is not None:
        parent = os.path.dirname(os.fspath(name))
        if parent and not os.path.isdir(parent):
            return f"{name}: the folder {parent} does not exist (create it: mkdir -p {parent})"
        return f"{name}: no such file (check the path; relative paths start from {os.getcwd()})"
    if isinstance(exc, FileExistsError) and name is not None:
        return f"{name} already exists; refusing to overwrite it (choose another path)"
    if isinstance(exc, PermissionError) and name is not None:
        return f"{name}: permission denied (check the file's owner and mode)"
    if isinstance(exc, IsADirectoryError) and name is not None:
        return f"{name} is a folder; expected a file"
    return f"{name}: {what}" if name is not None else what


def describe(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one-line message for an exception raised by a command."""
    from secagg.transport.errors import AggregatorError

    if isinstance(exc, CommandError):
        return exc.exit_code, str(exc)
    if isinstance(exc, RoundAborted):
        return EXIT_FAILED, f"{exc} (the round released nothing; try the next one)"
    if isinstance(exc, PolicyViolation):
        return EXIT_FAILED, f"this site's policy refused the round and sent nothing: {exc}"
    if isinstance(exc, OutcomeMismatch):
        return EXIT_FAILED, f"ALARM, recorded in this site's ledger: {exc}"
    if isinstance(exc, AggregatorError):
        if exc.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and "reach" in exc.details:
            return EXIT_NETWORK, (
                f"{exc.details}: check the address, that `secagg serve` is running there, and "
                "the TLS options (--ca)"
            )
        return EXIT_NETWORK, f"the aggregator refused: {exc}"
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG, str(exc)
    if isinstance(exc, SecAggError):
        return EXIT_CONFIG, f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError):
        return EXIT_FILE, _os_error(exc)
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    first = str(exc).strip().splitlines()
    return EXIT_INTERNAL, (
        f"internal error: {type(exc).__name__}: {first[0] if first else ''} "
        "(rerun with --debug for the traceback, and please report it)"
    )


def debug_requested(argv: list[str] | None = None) -> bool:
    """``--debug`` anywhere on the command line, or ``SECAGG_DEBUG=1`` in the environment."""
    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args or os.environ.get("SECAGG_DEBUG", "") not in ("", "0")


def run_guarded(prog: str, work: Callable[[], int], *, debug: bool = False) -> int:
    """Run ``work``; turn an exception into one line on stderr and its exit code.

    With ``debug`` the traceback is printed too. ``SystemExit`` (argparse) passes through.
    """
    try:
        return int(work())
    except (Exception, KeyboardInterrupt) as exc:
        code, message = describe(exc)
        if debug:
            traceback.print_exc(file=sys.stderr)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return code
