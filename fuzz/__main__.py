"""``python -m fuzz --minutes N``: run every fuzz target for N minutes in total and report.

Targets share the time equally and run in slices of hypothesis examples (random, not derandomised,
no example database). A single input that runs longer than ``--hang-seconds`` counts as a hang.
Exit code 0 when nothing was found, 1 on the first finding (its traceback and the failing input are
printed by hypothesis).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings


class Hang(Exception):
    """One input ran longer than the hang limit."""


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang("an input ran longer than the hang limit")


def _counted(check: Any, count: list[int], hang_seconds: int) -> Any:
    def one(value: Any) -> None:
        count[0] += 1
        signal.alarm(hang_seconds)
        try:
            check(value)
        finally:
            signal.alarm(0)

    return one


def run(minutes: float, names: list[str], hang_seconds: int, slice_examples: int) -> int:
    from fuzz.targets import TARGETS

    chosen = names or list(TARGETS)
    budget = minutes * 60 / len(chosen)
    counts: dict[str, int] = {}
    for name in chosen:
        strategy, check = TARGETS[name]
        count = [0]
        one = _counted(check, count, hang_seconds)
        test = settings(
            max_examples=slice_examples,
            deadline=None,
            database=None,
            derandomize=False,
            phases=[Phase.generate, Phase.target, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )(given(strategy)(one))
        start = time.monotonic()
        while time.monotonic() - start < budget:
            try:
                test()
            except BaseException as exc:  # report every finding, hangs included
                print(f"fuzz: target {name!r}: FINDING after {count[0]} inputs: {exc!r}")
                return 1
        counts[name] = count[0]
        print(f"fuzz: target {name:<9} {count[0]:>9} inputs in {time.monotonic() - start:7.1f} s")
    print(f"fuzz: no crash or hang; {sum(counts.values())} inputs in total")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument("--minutes", type=float, default=1.0, help="total time (default 1)")
    parser.add_argument(
        "--target", action="append", default=[], help="run only this target (repeatable)"
    )
    parser.add_argument("--hang-seconds", type=int, default=30, help="per-input hang limit")
    parser.add_argument("--slice", type=int, default=500, help="examples per hypothesis run")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGALRM, _alarm)
    return run(args.minutes, args.target, args.hang_seconds, args.slice)


if __name__ == "__main__":
    sys.exit(main())
