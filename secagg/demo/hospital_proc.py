"""One simulated hospital as its own process, driven by :class:`secagg.demo.grpc_runner.GrpcRunner`.

    python -m secagg.demo.hospital_proc --run-dir RUN_DIR --site-index K --key site.key

The process rebuilds its own slice of the data from the run's public configuration
(``RUN_DIR/config.json``), holds its Opacus state and its identity key, and takes part in the
aggregator's rounds through the public client (:class:`secagg.client.AggregatorClient`). It lives
for the whole run (torch is imported once). Commands arrive on stdin, one JSON object per line;
each gets one JSON line on stdout::

    {"cmd": "round", "target": "127.0.0.1:PORT", "round_id": 3, "rotation_seed": 123,
     "weights": "RUN_DIR/grpc/global.npy", "drop_at": null | "masked_input" | "unmask"}
    {"cmd": "exit"}

``drop_at`` makes the hospital stop answering at that stage: it sends nothing more, the
aggregator's deadline turns it into a dropout, then it abandons the round (and is back for the
next one). A hospital whose record-level budget would be exceeded declines the round.
"""

from __future__ import annotations

import argparse
import base64
import json
import pathlib
import sys
import time
from typing import Any

import numpy as np

__all__ = ["main"]


class _Stalled(Exception):
    """Raised by the progress hook once the aggregator's deadline has passed."""


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _site(run_dir: pathlib.Path, index: int) -> Any:
    from secagg.demo.data import load_demo_data
    from secagg.demo.federated import DemoConfig
    from secagg.demo.hospital import DemoHospital
    from secagg.dp import models
    from secagg.dp.opacus_site import RecordLevelDPConfig
    from secagg.reporting.rundir import RunDirectory

    models.configure_torch(1)
    rd = RunDirectory(run_dir)
    stored = rd.read_config()
    cfg = DemoConfig.from_stored(stored)
    data = load_demo_data(
        cfg.sites,
        test_fraction=cfg.test_fraction,
        label_alpha=cfg.label_alpha,
        size_alpha=cfg.size_alpha,
        seed=cfg.seed,
    )
    site = data.sites[index]
    record_dp = RecordLevelDPConfig(
        noise_multiplier=cfg.record_noise,
        max_grad_norm=cfg.max_grad_norm,
        sample_rate=cfg.sample_rate,
        local_epochs=cfg.local_epochs,
        learning_rate=cfg.learning_rate,
        delta=cfg.delta,
        epsilon_budget=cfg.site_budgets.get(site.name, cfg.epsilon_budget),
        accountant=cfg.accountant,  # type: ignore[arg-type]
    )
    hospital = DemoHospital(
        site,
        record_dp,
        model_seed=cfg.seed,
        noise_seed=cfg.noise_seed(index),
        weight_cap=cfg.weight_cap,
    )
    completed = rd.round_ids()
    if completed:  # a resumed run: continue this hospital's own ledger
        state = rd.read_accountant_state(completed[-1])
        hospital.site.load_state_dict(state["record_level"][hospital.name])
    return hospital


def _warm_up() -> None:
    """Load the masking kernels once, so the first round's deadlines see warm code."""
    from secagg.simulate import simulate

    simulate([np.zeros(64), np.zeros(64), np.zeros(64)], clip=1.0)


def _round(hospital: Any, client: Any, cmd: dict[str, Any]) -> dict[str, Any]:
    from secagg.client import AggregatorError, ChunkEvent, RoundAborted
    from secagg.demo.runner import RoundTask
    from secagg.errors import BudgetExceeded

    drop_at = cmd.get("drop_at")
    deadlines: dict[str, float] = {}

    def on_event(event: ChunkEvent) -> None:
        # Going silent means not acting on the aggregator's request at all (so the hospital's
        # own ledger holds nothing it did not send).
        if drop_at and event.stage == drop_at and event.phase == "request":
            # Stop answering: nothing more is sent until the aggregator's deadline has passed.
            time.sleep(deadlines.get(drop_at, 5.0) + 0.3)
            raise _Stalled

    handle = client.join(on_event=on_event)
    deadlines.update(handle.info.deadlines)
    dp = handle.info.distributed_dp
    reply: dict[str, Any] = {"site": hospital.name, "server_round": handle.info.round_id}
    if dp is None:
        handle.cancel()
        raise SystemExit("the aggregator's round has no distributed-DP configuration")
    task = RoundTask(
        round_id=int(cmd["round_id"]),
        global_weights=np.load(cmd["weights"]),
        dp_config=dp,
        rotation_seed=int(cmd["rotation_seed"]),
        roster=(),
    )
    try:
        contribution = hospital.local_round(task)
    except BudgetExceeded as exc:
        handle.decline()
        return {**reply, "status": "declined", "reason": str(exc)}
    try:
        result = handle.submit_encoded(contribution.encoded, statement=contribution.statement)
    except _Stalled:
        return {**reply, "status": "dropped", "stage": drop_at}
    except RoundAborted as exc:
        return {**reply, "status": "aborted", "stage": exc.stage, "reason": exc.reason}
    except AggregatorError as exc:
        return {**reply, "status": "rejected", "code": exc.code.name, "reason": exc.details}
    assert result.total is not None
    return {
        **reply,
        "status": "completed",
        "survivors": list(result.survivors),
        "digest": result.result_digest.hex(),
        "total": base64.b64encode(result.total.astype("<u4").tobytes()).decode(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True, type=pathlib.Path)
    p.add_argument("--site-index", required=True, type=int)
    p.add_argument("--key", required=True, type=pathlib.Path)
    args = p.parse_args(argv)

    from secagg.client import AggregatorClient, load_identity
    from secagg.site import load_site_config

    identity = load_identity(args.key)
    site = load_site_config(args.key.with_suffix(".toml"))  # this hospital's own policy
    hospital = _site(args.run_dir, args.site_index)
    _warm_up()
    print(json.dumps({"ready": hospital.name}), flush=True)
    client: AggregatorClient | None = None
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd.get("cmd") == "exit":
                break
            if client is None:
                client = AggregatorClient(
                    cmd["target"],
                    identity,
                    policy=site.policy,
                    ledger=site.open_ledger(identity),
                    timeout=300,
                )
            reply = _round(hospital, client, cmd)
            reply["ledger"] = hospital.site.state_dict()
            _log(f"{hospital.name}: round {cmd['round_id']}: {reply['status']}")
            print(json.dumps(reply), flush=True)
    finally:
        if client is not None:
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
