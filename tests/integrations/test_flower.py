"""The Flower adapter in Flower's simulation engine: several clients, one dropping mid-round.

The simulation is Flower 1.42's own engine (LinkState, InMemoryGrid, Simulation Runtime worker
loop, ServerApp runner) with the Ray backend replaced by threads; see
``secagg.integrations.flower.simulation`` for why (Ray listens on every interface and takes ~18 s
to start).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Context, Message
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow
from flwr.serverapp import Grid, ServerApp

from secagg.accounting import PrivacyReport
from secagg.crypto import IdentityKey
from secagg.errors import ConfigError
from secagg.integrations.flower import (
    PRIVACY_RECORD,
    RECORD_KEY,
    DistributedDP,
    SecAggWorkflow,
    make_secagg_mod,
)
from secagg.integrations.flower.simulation import run_simulation_in_process
from secagg.protocol import DPFloor, SitePolicy

N = 5
SHAPES = [(3, 4), (5,)]
# Identities registered out of band, one per partition; the sites pin them in their policy.
KEYS = [IdentityKey.generate() for _ in range(N)]
SEEDS = [k.private_bytes() for k in KEYS]


def registered_identity(context: Context) -> IdentityKey:
    return IdentityKey.from_private_bytes(SEEDS[int(context.node_config["partition-id"])])


def site_mod(keys: list[IdentityKey] | None = None, **policy: Any) -> Any:
    """The mod of a site that pins the consortium's keys (a sample of them per round is fine)."""
    pinned = SitePolicy.trusting_keys([k.public_key for k in keys or KEYS], **policy)
    return make_secagg_mod(policy=pinned, identity=registered_identity)


def site_update(pid: int) -> list[np.ndarray]:
    rng = np.random.default_rng(pid)
    return [rng.normal(0, 2, s) for s in SHAPES]


def site_examples(pid: int) -> int:
    return 10 * (pid + 1) + 3


class SiteClient(NumPyClient):
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def fit(self, parameters: Any, config: Any) -> Any:
        return site_update(self.pid), site_examples(self.pid), {"pid": self.pid}


def client_fn(context: Context) -> Any:
    return SiteClient(int(context.node_config["partition-id"])).to_client()


def dropper(pid: int, stage: str) -> Any:
    """A mod that makes partition ``pid`` raise when the server asks for ``stage``."""

    def mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        record = msg.content.config_records.get(RECORD_KEY)
        here = int(ctxt.node_config["partition-id"]) == pid
        if here and record is not None and record["stage"] == stage:
            raise RuntimeError(f"partition {pid} drops at {stage}")
        return call_next(msg, ctxt)

    return mod


def run(workflow: SecAggWorkflow, mods: list[Any], rounds: int = 1) -> Context:
    client_app = ClientApp(client_fn=client_fn, mods=mods)
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=N,
            min_available_clients=N,
            initial_parameters=ndarrays_to_parameters([np.zeros(s) for s in SHAPES]),
        )
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy
        )
        DefaultWorkflow(fit_workflow=workflow)(grid, legacy)

    return run_simulation_in_process(server_app, client_app, N)


def expected_mean(survivors: list[int], wf: SecAggWorkflow) -> tuple[list[np.ndarray], float]:
    clip = wf.clipping_range
    weights = {p: site_examples(p) / wf.max_weight for p in survivors}
    total = sum(weights.values())
    mean = [
        sum(weights[p] * np.clip(site_update(p)[i], -clip, clip) for p in survivors) / total
        for i in range(len(SHAPES))
    ]
    return mean, total


@pytest.mark.parametrize(
    ("stage", "in_sum"),
    [("register", False), ("masked_input", False), ("consistency_check", True)],
)
def test_aggregate_equals_weighted_average_of_survivors(stage: str, in_sum: bool) -> None:
    drop = 2
    wf = SecAggWorkflow(num_shares=N, reconstruction_threshold=4, clipping_range=3.0, timeout=30)
    context = run(wf, [dropper(drop, stage), site_mod()])
    (summary,) = wf.reports
    assert summary.abort_reason is None
    survivors = [p for p in range(N) if p != drop or in_sum]
    assert len(summary.survivors) == len(survivors)
    want, total_weight = expected_mean(survivors, wf)
    # Each of the k weighted inputs, and the weight slot, is off by < 1/scale after decoding, so
    # the mean is off by < (k / scale) * (1 + |mean| / clip) / W <= 2 k / (scale W).
    k = len(survivors)
    bound = 2.02 * k * wf.encoding(N).resolution / total_weight
    got = context.state.array_records["parameters"].to_numpy_ndarrays()
    assert [g.shape for g in got] == SHAPES
    for g, w in zip(got, want, strict=True):
        assert np.max(np.abs(g - w)) <= bound
    # Strategy aggregation is untouched: the mean really moved away from the initial zeros.
    assert max(float(np.max(np.abs(g))) for g in got) > 0.1
    report = PrivacyReport.from_json(str(context.state.config_records[PRIVACY_RECORD]["round-1"]))
    assert len(report.participants) == k and len(report.dropouts) == N - k
    assert report.site_level is None and report.protection_mode == "mask"


def test_distributed_dp_round_reports_epsilon_and_stays_near_the_mean() -> None:
    dp = DistributedDP(l2_clip=10.0, noise_multiplier=0.05, delta=1e-5)
    wf = SecAggWorkflow(num_shares=N, reconstruction_threshold=4, distributed_dp=dp, timeout=30)
    floor = DPFloor(min_noise_multiplier=0.01)
    context = run(wf, [dropper(4, "masked_input"), site_mod(dp=floor)])
    (summary,) = wf.reports
    assert summary.abort_reason is None and len(summary.survivors) == N - 1
    report = summary.report
    assert report.site_level is not None and 0 < report.site_level.epsilon_round < float("inf")
    stored = json.loads(str(context.state.config_records[PRIVACY_RECORD]["round-1"]))
    assert stored["site_level"]["mechanism"] == "ddgauss"
    # DP aggregates unweighted updates (global model was zeros, so update = parameters).
    updates = [site_update(p) for p in range(N - 1)]
    got = context.state.array_records["parameters"].to_numpy_ndarrays()
    flat_want = np.concatenate([np.mean([u[i] for u in updates], axis=0).ravel() for i in range(2)])
    flat_got = np.concatenate([g.ravel() for g in got])
    # noise stddev of the mean: z * C / k = 0.125; rounding adds a little more.
    assert np.linalg.norm(flat_got - flat_want) / np.sqrt(flat_got.size) < 0.5


def test_clients_with_a_trusted_roster_refuse_a_sybil_round() -> None:
    # Partition 0 is a Sybil the server slipped in: its key is not in the clients' roster.
    trusted = KEYS[1:]
    wf = SecAggWorkflow(num_shares=N, reconstruction_threshold=5, timeout=30)
    run(wf, [site_mod(trusted)])
    (summary,) = wf.reports
    assert summary.abort_reason is not None and summary.aggregate is None

    # With the same pre-registered roster on the server, the Sybil is left out and the round runs.
    roster = [k.public_key for k in trusted]
    wf = SecAggWorkflow(num_shares=N, reconstruction_threshold=4, roster=roster, timeout=30)
    run(wf, [site_mod(trusted)])
    (summary,) = wf.reports
    assert summary.abort_reason is None and len(summary.parties) == N - 1


@pytest.mark.parametrize("threshold", [2, 3])
def test_sites_refuse_a_server_chosen_unsafe_threshold_before_revealing_anything(
    threshold: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The attack of issue 12: a trusted roster, and the server's reconstruction_threshold=2 of
    5 was accepted. Now every site's policy (t >= 4 of 5) refuses at advertise_keys."""
    wf = SecAggWorkflow(num_shares=N, reconstruction_threshold=threshold, timeout=30)
    run(wf, [site_mod()])
    (summary,) = wf.reports
    assert summary.aggregate is None
    assert "advertise_keys" in (summary.abort_reason or "")
    assert "threshold" in caplog.text and "refused" in caplog.text


def test_a_mod_without_a_site_policy_takes_no_part() -> None:
    wf = SecAggWorkflow(num_shares=N, reconstruction_threshold=4, timeout=30)
    run(wf, [make_secagg_mod(identity=registered_identity)])
    (summary,) = wf.reports
    assert summary.aggregate is None and summary.abort_reason is not None


def test_sites_raise_an_alarm_when_the_outcome_names_other_survivors(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from secagg.integrations.flower import workflow as wf_module

    real = wf_module._record

    def lying_record(**values: Any) -> Any:
        if "survivors" in values:
            values = {**values, "survivors": values["survivors"][:-1]}
        return real(**values)

    monkeypatch.setattr(wf_module, "_record", lying_record)
    wf = SecAggWorkflow(num_shares=N, reconstruction_threshold=4, timeout=30)
    run(wf, [site_mod()])
    assert "did not confirm the outcome" in caplog.text
    assert "survivors differ from the set this site signed" in caplog.text


def test_importing_secagg_does_not_import_flower() -> None:
    code = "import sys, secagg, secagg.wire, secagg.integrations; print('flwr' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_workflow_starts_no_round_past_its_site_level_budget() -> None:
    dp = DistributedDP(l2_clip=10.0, noise_multiplier=0.05, delta=1e-5)
    wf = SecAggWorkflow(num_shares=N, reconstruction_threshold=4, distributed_dp=dp, timeout=30)
    run(wf, [site_mod(dp=DPFloor(min_noise_multiplier=0.01))])
    (first,) = wf.reports
    assert first.abort_reason is None and first.report.site_level is not None
    spent = first.report.site_level.epsilon_cumulative
    # Room for less than one more round: the next is refused before any site is asked for keys.
    capped = SecAggWorkflow(
        num_shares=N,
        reconstruction_threshold=4,
        distributed_dp=dp,
        timeout=30,
        epsilon_budget=spent * 1.5,
    )
    run(capped, [site_mod(dp=DPFloor(min_noise_multiplier=0.01))], rounds=2)
    assert len(capped.reports) == 2 and capped.reports[0].abort_reason is None
    refused = capped.reports[1]
    assert refused.aggregate is None
    assert "budget: the site-level privacy budget is spent" in (refused.abort_reason or "")
    with pytest.raises(ConfigError, match="needs distributed_dp"):
        SecAggWorkflow(epsilon_budget=1.0)
