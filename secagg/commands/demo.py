"""``secagg demo``: the main job, an aggregator plus simulated hospitals."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run the main demo: an aggregator and simulated hospitals")
    demo.add_argument("--clients", type=int, default=10, help="number of simulated hospitals")
    demo.add_argument("--length", type=int, default=100_000, help="update length (parameters)")
    demo.add_argument(
        "--degree", type=int, default=None, help="SecAgg+ graph degree (default: full graph)"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the simulated updates")
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from secagg.demo import run_masking_demo

    run_masking_demo(n_clients=args.clients, length=args.length, degree=args.degree, seed=args.seed)
    return 0
