"""Test client process: deterministic input, optional self-kill at a stage or mid-stream.

    python tests/service/client_proc.py --target 127.0.0.1:PORT --key K --seed 3 \
        [--die-at share_keys | --die-mid-stream] [--chunk-bytes 4096] [--out result.npz]

The site's policy and ledger come from ``--site`` (default: the key file with ``.toml``).

Uses only the public client API. The update is ``uniform(-1, 1)`` from ``numpy`` seeded by
``--seed`` and the stochastic rounding seed is derived from it too, so a test can recompute the
exact encoded input and check the exact integer sum of the survivors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import signal
import sys
import time

import numpy as np

from secagg.client import AggregatorClient, AggregatorError, ChunkEvent, RoundAborted, load_identity
from secagg.errors import PolicyViolation
from secagg.site import load_site_config


def make_input(seed: int, length: int) -> tuple[np.ndarray, bytes]:
    values = np.random.default_rng(seed).uniform(-1.0, 1.0, size=length)
    rounding_seed = hashlib.blake2b(f"rounding-{seed}".encode(), digest_size=32).digest()
    return values, rounding_seed


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--die-at", default=None)
    p.add_argument("--die-mid-stream", action="store_true")
    p.add_argument("--stall-at", default=None, help="sleep 6 s before sending this stage")
    p.add_argument("--chunk-bytes", type=int, default=1 << 20)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--out", type=pathlib.Path)
    p.add_argument("--site", type=pathlib.Path, default=None)
    args = p.parse_args()

    def on_event(event: ChunkEvent) -> None:
        if args.die_at and event.stage == args.die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if args.stall_at and event.stage == args.stall_at:
            time.sleep(6)
        mid = event.chunks // 2 if event.chunks is not None else None
        if args.die_mid_stream and event.chunk is not None and event.chunk == mid:
            os.kill(os.getpid(), signal.SIGKILL)

    identity = load_identity(args.key)
    site = load_site_config(args.site or pathlib.Path(args.key).with_suffix(".toml"))
    report: dict[str, object] = {"seed": args.seed}
    with AggregatorClient(
        args.target,
        identity,
        policy=site.policy,
        ledger=site.open_ledger(identity),
        timeout=args.timeout,
        chunk_bytes=args.chunk_bytes,
    ) as client:
        try:
            handle = client.join(on_event=on_event)
        except PolicyViolation as exc:
            report.update(status="refused", parameter=exc.parameter, reason=str(exc))
            print(json.dumps(report), flush=True)
            return 0
        except AggregatorError as exc:
            report.update(status="rejected", code=exc.code.name, reason=exc.details)
            print(json.dumps(report), flush=True)
            return 0
        values, rounding_seed = make_input(args.seed, handle.info.vector_length)
        report["party"] = handle.info.party
        report["round_id"] = handle.info.round_id
        try:
            result = handle.submit(values, rounding_seed=rounding_seed)
            report["status"] = "completed"
            report["survivors"] = list(result.survivors)
            report["digest"] = result.result_digest.hex()
        except RoundAborted as exc:
            report.update(status="aborted", stage=exc.stage, reason=exc.reason)
        except AggregatorError as exc:
            report.update(status="rejected", code=exc.code.name, reason=exc.details)
    print(json.dumps(report), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
