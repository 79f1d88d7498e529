"""Command-line entry points (wiring only): ``secagg demo``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from secagg.errors import SecAggError

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="secagg", description="Privacy-hardened secure aggregation for federated learning."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the main demo: an aggregator and simulated hospitals")
    demo.add_argument("--clients", type=int, default=10, help="number of simulated hospitals")
    demo.add_argument("--length", type=int, default=100_000, help="update length (parameters)")
    demo.add_argument(
        "--degree", type=int, default=None, help="SecAgg+ graph degree (default: full)"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the simulated updates")
    demo.set_defaults(handler=_run_demo)
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    from secagg.demo import run_masking_demo

    run_masking_demo(n_clients=args.clients, length=args.length, degree=args.degree, seed=args.seed)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except SecAggError as exc:
        print(f"secagg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
