"""``secagg serve``: run the standalone gRPC aggregator."""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from typing import Any


def register(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the gRPC aggregator (configured by a TOML file)",
        description="Run the secagg aggregator: drives rounds stage by stage with deadlines, "
        "persists them in DATA_DIR/aggregator.db, appends a signed audit record per round to "
        "DATA_DIR/audit.db (verify with `secagg audit verify DATA_DIR`) and serves results until "
        "stopped (SIGTERM).",
    )
    serve.add_argument("--config", required=True, type=pathlib.Path, help="TOML configuration")
    serve.add_argument("--listen", help="host:port (overrides the file; port 0 = any free port)")
    serve.add_argument("--data-dir", type=pathlib.Path, help="data directory (overrides the file)")
    serve.add_argument(
        "--aggregator-key",
        type=pathlib.Path,
        help="the aggregator's Ed25519 key file, which signs the audit records (overrides the "
        "file's aggregator_key; create it with `secagg keys generate --out aggregator.key`)",
    )
    serve.add_argument(
        "--rounds", type=int, help="number of rounds to run (0 = serve results only)"
    )
    serve.add_argument(
        "--exit-after-rounds",
        action="store_true",
        default=None,
        help="exit once the rounds are done instead of serving results until stopped",
    )
    serve.add_argument(
        "--insecure-allow-plaintext",
        action="store_true",
        default=None,
        help="allow plaintext on a non-loopback address (never do this in production)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if not getattr(args, "debug", False):
        # gRPC's C core would print its own multi-line error (e.g. for a port in use) before ours;
        # the service logs everything that matters as JSON lines. --debug keeps gRPC's output.
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from secagg.commands.errors import EXIT_FILE, EXIT_NETWORK, CommandError
    from secagg.service import Aggregator, load_config
    from secagg.service.logs import configure_logging

    if not args.config.is_file():
        raise CommandError(
            f"{args.config}: no such configuration file (see docs/service.md for its keys)",
            EXIT_FILE,
        )
    configure_logging(args.log_level)
    config = load_config(
        args.config,
        listen=args.listen,
        data_dir=args.data_dir,
        aggregator_key=args.aggregator_key,
        rounds=args.rounds,
        exit_after_rounds=args.exit_after_rounds,
        insecure_allow_plaintext=args.insecure_allow_plaintext,
    )
    if config.degree is None:
        from secagg.service.config import threshold_advice

        advice = threshold_advice(len(config.roster), config.threshold)
        if advice:
            print(f"secagg serve: note: {advice}", file=sys.stderr, flush=True)
    aggregator = Aggregator(config)
    aggregator.install_signal_handlers()
    try:
        aggregator.serve()
    except (RuntimeError, OSError) as exc:
        # gRPC reports a port it cannot bind as RuntimeError("Failed to bind ..."); the service
        # as OSError("cannot listen on ..."). Other OSErrors name a file and pass through.
        text = str(exc)
        if "bind" not in text.lower() and "cannot listen" not in text:
            raise
        raise CommandError(
            f"cannot listen on {config.listen}: the address is in use or not available on this "
            "machine; stop the process that holds it or choose another --listen HOST:PORT "
            "(port 0 picks a free one)",
            EXIT_NETWORK,
        ) from exc
    return 0
