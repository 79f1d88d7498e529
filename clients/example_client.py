#!/usr/bin/env python3
"""A site of a secagg federation: join the aggregator's rounds and submit an update each time.

Uses only the public client API (:mod:`secagg.client`)::

    python clients/example_client.py --target 127.0.0.1:50051 --key site1.key
    python clients/example_client.py --target agg.example.org:50051 --key site1.key \\
        --ca ca.crt [--cert site1.crt --cert-key site1-tls.key]   # TLS / mutual TLS

The update here is random (or loaded from ``--update file.npy``); a real site would send its model
update. It prints the round, the survivors and a summary of the aggregate.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

from secagg.client import AggregatorClient, RoundAborted, TlsOptions, load_identity
from secagg.errors import PolicyViolation
from secagg.site import load_site_config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="aggregator host:port")
    parser.add_argument("--key", required=True, type=pathlib.Path, help="identity key file")
    parser.add_argument(
        "--site", required=True, type=pathlib.Path, help="site TOML ([policy] and ledger)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds to take part in")
    parser.add_argument("--update", type=pathlib.Path, help=".npy file with the update")
    parser.add_argument("--ca", type=pathlib.Path, help="CA / server certificate (PEM) for TLS")
    parser.add_argument("--cert", type=pathlib.Path, help="client certificate (PEM), for mTLS")
    parser.add_argument("--cert-key", type=pathlib.Path, help="client TLS private key (PEM)")
    parser.add_argument("--server-name", help="TLS server name override")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per call")
    args = parser.parse_args()

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
    with AggregatorClient.connect(
        args.target,
        identity,
        tls=tls,
        timeout=args.timeout,
        policy=site.policy,
        ledger=site.open_ledger(identity),
    ) as client:
        for _ in range(args.rounds):
            try:
                handle = client.join()
            except PolicyViolation as exc:
                print(f"this site refused the round: {exc}", file=sys.stderr)
                return 3
            info = handle.info
            print(
                f"joined round {info.round_id} as party {info.party}: {info.vector_length} "
                f"parameters, threshold {info.threshold} of {len(info.roster)}"
            )
            if args.update:
                update = np.load(args.update)
            else:
                update = rng.normal(0.0, 0.1, size=info.vector_length)
            try:
                result = handle.submit(update)
            except RoundAborted as exc:
                print(f"round {info.round_id} aborted at {exc.stage}: {exc.reason}")
                continue
            agg = result.aggregate
            print(
                f"round {result.round_id} completed: survivors {list(result.survivors)}, "
                f"aggregate[:3] = {np.round(agg[:3], 4).tolist()}, "
                f"mean |x| = {float(np.mean(np.abs(result.mean))):.4f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
