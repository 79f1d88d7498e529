"""``secagg demo``: the main job, an aggregator plus simulated hospitals training with DP."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from secagg.errors import ConfigError


def _site_budget(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError("expected NAME=EPSILON, e.g. hospital-3=8")
    return name, float(value)


def register(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the main demo: hospitals training a model together with secure aggregation + DP",
        description=(
            "Simulated hospitals, each with a non-IID slice of the Wisconsin breast-cancer data, "
            "train a small MLP with FedAvg: DP-SGD (Opacus) at each site, distributed discrete "
            "Gaussian noise under secure aggregation, per-round privacy reports, dropouts, an HTML "
            "report, and a comparison with single-site models."
        ),
    )
    demo.add_argument("--sites", type=int, default=5, help="number of hospitals (default 5)")
    demo.add_argument("--rounds", type=int, default=15, help="FedAvg rounds (default 15)")
    demo.add_argument("--local-epochs", type=int, default=2, help="local epochs per round")
    demo.add_argument(
        "--run-dir", default=None, help="run directory (default ./runs/demo-<UTC time>)"
    )
    demo.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    demo.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the data split, the model init and the dropout schedule (the DP noise "
        "comes from the OS unless --reproducible-noise)",
    )
    demo.add_argument(
        "--accountant",
        choices=("pld", "rdp", "prv"),
        default="pld",
        help="record-level accountant (pld: dp-accounting, tight; gdp is refused: not a bound)",
    )
    demo.add_argument("--record-noise", type=float, default=1.5, help="DP-SGD noise multiplier")
    demo.add_argument(
        "--site-noise", type=float, default=0.01, help="site-level noise multiplier (of the clip)"
    )
    demo.add_argument("--site-clip", type=float, default=5.0, help="L2 clip of a site's update")
    demo.add_argument(
        "--server-momentum",
        type=float,
        default=0.0,
        help="server momentum (FedAvgM, e.g. 0.5; default 0: plain FedAvg, see docs/demo.md)",
    )
    demo.add_argument(
        "--reproducible-noise",
        action="store_true",
        help="seed the DP noise and sampling from --seed too: bit-for-bit reproducible but NOT "
        "private (anyone who knows the seed can remove the noise); for reproducing figures only",
    )
    demo.add_argument("--delta", type=float, default=1e-5, help="delta of every epsilon")
    demo.add_argument(
        "--budget", type=float, default=None, help="record-level epsilon budget of every hospital"
    )
    demo.add_argument(
        "--site-budget",
        type=_site_budget,
        action="append",
        default=[],
        metavar="NAME=EPS",
        help="budget of one hospital (repeatable), e.g. hospital-3=8",
    )
    demo.add_argument("--no-dropouts", action="store_true", help="no simulated dropouts")
    demo.add_argument("--no-baselines", action="store_true", help="skip the single-site models")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.add_argument(
        "--in-process",
        action="store_true",
        help="run the aggregator and the hospitals in this process over the sans-IO sessions "
        "(default: a `secagg serve` process and one process per hospital on 127.0.0.1, gRPC)",
    )
    demo.add_argument(
        "--masking-only",
        action="store_true",
        help="instead: one bare masking round over random vectors (--clients, --length, --degree)",
    )
    demo.add_argument("--clients", type=int, default=10, help="(--masking-only) parties")
    demo.add_argument("--length", type=int, default=100_000, help="(--masking-only) vector length")
    demo.add_argument("--degree", type=int, default=None, help="(--masking-only) SecAgg+ degree")
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.masking_only:
        from secagg.demo import run_masking_demo

        run_masking_demo(
            n_clients=args.clients, length=args.length, degree=args.degree, seed=args.seed
        )
        return 0
    from secagg.demo.federated import DemoConfig, run_demo

    if args.resume and args.run_dir is None:
        raise ConfigError("--resume needs --run-dir")
    config = DemoConfig(
        sites=args.sites,
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        accountant=args.accountant,
        record_noise=args.record_noise,
        site_noise=args.site_noise,
        site_clip=args.site_clip,
        delta=args.delta,
        epsilon_budget=args.budget,
        site_budgets=dict(args.site_budget),
        dropouts=not args.no_dropouts,
        baselines=not args.no_baselines,
        seed=args.seed,
        server_momentum=args.server_momentum,
        reproducible_noise=args.reproducible_noise,
    )
    runner_factory: Callable[[list[Any]], Any] | None = None
    if not args.in_process:
        from secagg.demo.federated import default_run_dir
        from secagg.demo.grpc_runner import GrpcRunner

        if args.run_dir is None:
            args.run_dir = str(default_run_dir())
        run_dir = args.run_dir

        def grpc_runner(hospitals: list[Any]) -> GrpcRunner:
            return GrpcRunner(run_dir, [h.name for h in hospitals])

        runner_factory = grpc_runner

    run_demo(
        None if args.resume else config,
        run_dir=args.run_dir,
        resume=args.resume,
        progress=not args.no_progress,
        runner_factory=runner_factory,
    )
    return 0
