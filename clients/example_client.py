#!/usr/bin/env python3
"""A site of a secagg federation: join the aggregator's rounds and submit an update each time.

Uses only the public client API (:mod:`secagg.client`)::

    python clients/example_client.py --target 127.0.0.1:50051 --key site1.key
    python clients/example_client.py --target agg.example.org:50051 --key site1.key \\
        --ca ca.crt [--cert site1.crt --cert-key site1-tls.key]   # TLS / mutual TLS

The update here is random (or loaded from ``--update file.npy``); a real site would send its model
update. It prints the round, the survivors and a summary of the aggregate. Paths are relative to
the working directory. Exit codes are those of ``secagg`` (``secagg --help``): 0 when every round
completed, 1 when a round aborted, 2 bad input, 3 a missing file, 4 the aggregator cannot be
reached or refused; one line on stderr says which, ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

from secagg.client import AggregatorClient, RoundAborted, TlsOptions, load_identity
from secagg.commands.errors import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    CommandError,
    debug_requested,
    exit_codes_help,
    run_guarded,
)
from secagg.site import load_site_config

PROG = "example_client"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.splitlines()[0],
        epilog=exit_codes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--target", required=True, help="aggregator host:port")
    parser.add_argument("--key", required=True, type=pathlib.Path, help="identity key file")
    parser.add_argument(
        "--site",
        required=True,
        type=pathlib.Path,
        help="this site's TOML: its [policy] (pinned roster, assumptions) and ledger",
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds to take part in")
    parser.add_argument("--update", type=pathlib.Path, help=".npy file with the update")
    parser.add_argument("--ca", type=pathlib.Path, help="CA / server certificate (PEM) for TLS")
    parser.add_argument("--cert", type=pathlib.Path, help="client certificate (PEM), for mTLS")
    parser.add_argument("--cert-key", type=pathlib.Path, help="client TLS private key (PEM)")
    parser.add_argument("--server-name", help="TLS server name override")
    parser.add_argument(
        "--connect-timeout", type=float, default=30.0, help="seconds to wait for the aggregator"
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per call")
    parser.add_argument("--debug", action="store_true", help="print tracebacks of errors")
    return parser


def _update(path: pathlib.Path | None, length: int, rng: np.random.Generator) -> np.ndarray:
    if path is None:
        return rng.normal(0.0, 0.1, size=length)
    try:
        update = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise CommandError(f"{path}: not a .npy array ({exc})", EXIT_CONFIG) from None
    if update.ndim != 1 or update.size != length:
        raise CommandError(
            f"{path}: the round wants a vector of {length} values, the file holds shape "
            f"{update.shape}",
            EXIT_CONFIG,
        )
    return update


def run(args: argparse.Namespace) -> int:
    tls = None
    if args.ca:
        tls = TlsOptions(
            root_certificates=args.ca.read_bytes(),
            certificate_chain=args.cert.read_bytes() if args.cert else None,
            private_key=args.cert_key.read_bytes() if args.cert_key else None,
            server_name_override=args.server_name,
        )
    identity = load_identity(args.key)
    site = load_site_config(args.site)
    rng = np.random.default_rng()
    aborted = 0
    with AggregatorClient.connect(
        args.target,
        identity,
        tls=tls,
        timeout=args.connect_timeout,
        policy=site.policy,
        ledger=site.open_ledger(identity),
    ) as client:
        client.timeout = args.timeout
        for _ in range(args.rounds):
            handle = client.join()
            info = handle.info
            print(
                f"joined round {info.round_id} as party {info.party}: {info.vector_length} "
                f"parameters, threshold {info.threshold} of {len(info.roster)}",
                flush=True,
            )
            try:
                update = _update(args.update, info.vector_length, rng)
            except BaseException:
                handle.cancel()
                raise
            try:
                result = handle.submit(update)
            except RoundAborted as exc:
                print(
                    f"{PROG}: round {info.round_id} aborted at {exc.stage}: {exc.reason}",
                    file=sys.stderr,
                )
                aborted += 1
                continue
            agg = result.aggregate
            print(
                f"round {result.round_id} completed: survivors {list(result.survivors)}, "
                f"aggregate[:3] = {np.round(agg[:3], 4).tolist()}, "
                f"mean |x| = {float(np.mean(np.abs(result.mean))):.4f}",
                flush=True,
            )
    return EXIT_FAILED if aborted else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_guarded(PROG, lambda: run(args), debug=args.debug or debug_requested(argv))


if __name__ == "__main__":
    sys.exit(main())
