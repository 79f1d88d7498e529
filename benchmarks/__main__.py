"""Run every benchmark and rebuild ``benchmarks/RESULTS.md``.

Usage, from the repository root::

    python -m benchmarks                 # the full masking grid (secagg, Flower, floor) + CKKS
    python -m benchmarks --quick         # a fast subset
    python -m benchmarks --only masking  # one section; the others keep their last results
    python -m benchmarks --assemble      # only re-concatenate the existing sections

Sections: ``masking`` (benchmarks/bench_masking.py), ``ckks`` (benchmarks/bench_ckks.py, run as a
subprocess and captured if it does not write its own section), ``grpc``
(benchmarks/bench_grpc.py: a real ``secagg serve`` and client processes on 127.0.0.1) and
``flower`` (benchmarks/bench_flower.py: the same Flower simulation with Flower's SecAgg+ and with
the secagg adapter). The last two write their own ``results/<name>.md``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from benchmarks import bench_masking
from benchmarks._report import BENCH_DIR, RESULTS_DIR, assemble, write_section

SECTIONS = ("masking", "ckks", "grpc", "flower")


def _run_ckks(quick: bool) -> None:
    """Run bench_ckks.py (owned by its author) and store its printed table as a section."""
    script = BENCH_DIR / "bench_ckks.py"
    if not script.exists():
        return
    command = [sys.executable, "-m", "benchmarks.bench_ckks"]
    if (RESULTS_DIR / "ckks.md").exists() and _writes_own_section(script):
        subprocess.run(command, check=True)
        return
    args = command
    if quick:
        args += ["--sizes", "100000"]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    if not out.lstrip().startswith("## "):
        out = "## CKKS mode (benchmarks/bench_ckks.py)\n\n" + out
    write_section("ckks", out)


def _writes_own_section(script: Path) -> bool:
    return "write_section" in script.read_text()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a fast subset of every benchmark")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only these")
    parser.add_argument("--no-flower", action="store_true", help="skip Flower in the masking grid")
    parser.add_argument("--assemble", action="store_true", help="only rebuild RESULTS.md")
    args = parser.parse_args(argv)
    if not args.assemble:
        chosen = args.only or list(SECTIONS)
        if "masking" in chosen:
            rows = bench_masking.QUICK if args.quick else bench_masking.GRID
            write_section("masking", bench_masking.run(rows, flower=not args.no_flower))
        if "ckks" in chosen:
            try:
                _run_ckks(args.quick)
            except (subprocess.CalledProcessError, OSError) as exc:
                print(f"ckks benchmark failed: {exc}", file=sys.stderr)
        for name, quick_args in (
            ("grpc", ["--clients", "5", "--length", "1000000"]),
            ("flower", ["--quick"]),
        ):
            if name in chosen:
                extra = quick_args if args.quick else []
                command = [sys.executable, "-m", f"benchmarks.bench_{name}", *extra]
                if subprocess.run(command, check=False).returncode != 0:
                    print(f"{name} benchmark failed", file=sys.stderr)
    path = assemble()
    print(path.read_text())
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
