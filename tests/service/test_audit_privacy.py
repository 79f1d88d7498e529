"""Audit records and privacy reports kept by a real ``secagg serve`` across rounds and restarts."""

from __future__ import annotations

import pathlib
import subprocess
import threading
import time
from typing import Any

import grpc
import numpy as np
import pytest

from secagg.accounting import RdpAccountant, SiteRecordLevelDP
from secagg.accounting.dpsgd import dpsgd_epsilon
from secagg.audit import read_ledger, verify_records
from secagg.client import AggregatorClient, AggregatorError, RoundResult, load_identity
from secagg.dp.distributed import DistributedDPEncoder, derive_params, site_level_statement
from secagg.protocol import AdversaryClass, SitePolicy
from secagg.service.config import load_config
from secagg.store import RoundStore
from tests.service.conftest import (
    PY,
    ROOT,
    ClientProcess,
    ServerProcess,
    site_client,
    write_config,
    write_keys,
)

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

N = 4
NAMES = {p: f"site-{p}" for p in range(1, N + 1)}
DP = "[distributed_dp]\nl2_clip = 1.0\nnoise_multiplier = 1.0\ndimension = 50"
DEADLINES = {
    "advertise_keys": 30,  # long on purpose: a declining site must not make the round wait
    "share_keys": 3,
    "masked_input": 3,
    "consistency_check": 3,
    "unmask": 3,
}


def _statement(party: int, round_id: int, **forged: Any) -> SiteRecordLevelDP:
    """An honest statement of 10 DP-SGD steps per round (z 1.1, q 0.1), or a forged one."""
    fields: dict[str, Any] = {
        "site": NAMES[party],
        "accountant": "pld",
        "noise_multiplier": 1.1,
        "sample_rate": 0.1,
        "steps": 10,
        "delta": 1e-5,
        "epsilon_round": dpsgd_epsilon([(1.1, 0.1, 10)], 1e-5),
        "epsilon_cumulative": dpsgd_epsilon([(1.1, 0.1, 10 * round_id)], 1e-5),
    }
    return SiteRecordLevelDP(**(fields | forged))


def _dp_site(
    target: str,
    key: pathlib.Path,
    party: int,
    out: dict[int, Any],
    decline: bool,
    forged: dict[str, Any] | None = None,
) -> None:
    with site_client(target, key, timeout=60) as client:
        handle = client.join()
        dp = handle.info.distributed_dp
        assert dp is not None and dp.dimension == 50
        if decline:
            handle.decline()
            out[party] = "declined"
            return
        encoder = DistributedDPEncoder(dp, rotation_seed=handle.info.round_id)
        update = np.random.default_rng(party).normal(0, 0.1, 50)
        words = np.mod(encoder.encode(update), 1 << dp.bits)
        statement = _statement(party, handle.info.round_id, **(forged or {}))
        try:
            out[party] = handle.submit_encoded(words, statement=statement)
        except AggregatorError as exc:
            out[party] = exc


def _dp_round(
    target: str,
    keys: dict[int, pathlib.Path],
    decline: set[int],
    forged: dict[int, dict[str, Any]] | None = None,
) -> dict[int, Any]:
    out: dict[int, Any] = {}
    threads = [
        threading.Thread(
            target=_dp_site,
            args=(target, keys[p], p, out, p in decline, (forged or {}).get(p)),
        )
        for p in keys
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    return out


def _verify_cli(data_dir: pathlib.Path, pub: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # The sites here accept small thresholds by a relaxed policy; audit under the same.
        [
            *(PY, "-m", "secagg", "audit", "verify", str(data_dir), "--aggregator-key", pub),
            *("--adversary", "curious_server", "--corrupt-fraction", "0"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_rounds_leave_a_verifiable_chain_with_privacy_reports_across_a_restart(
    tmp_path, servers, clients
):
    keys = write_keys(tmp_path, N)
    config = write_config(
        tmp_path,
        keys,
        vector_length=64,
        rounds=2,
        deadlines=DEADLINES,
        sections=DP,
        names=NAMES,
    )
    pub = load_identity(tmp_path / "aggregator.key").public_key.to_bytes().hex()
    data = tmp_path / "data"
    server = ServerProcess(config, tmp_path / "server.log")
    servers.append(server)

    # Round 1: site 4 declines (its budget, say); the others attach signed statements.
    started = time.monotonic()
    out = _dp_round(server.target, keys, decline={4})
    assert time.monotonic() - started < 20, "a declining site must not hold the round up"
    assert out[4] == "declined"
    results: list[RoundResult] = [out[p] for p in (1, 2, 3)]
    report = results[0].privacy_report
    assert report is not None and all(r.privacy_report == report for r in results)
    assert report.participants == ("site-1", "site-2", "site-3") and report.dropouts == ()
    assert [s.site for s in report.record_level] == ["site-1", "site-2", "site-3"]
    assert report.site_level is not None and report.site_level.min_clients == 3
    eps1 = report.site_level.epsilon_cumulative
    assert report.site_level.epsilon_round == pytest.approx(eps1)

    # Round 2 aborts: two sites die before their masked input (threshold 3).
    for p in keys:
        die = ("--die-at", "masked_input") if p in (1, 2) else ()
        clients.append(ClientProcess(server.target, keys[p], p, *die))
    reports = {c.seed: c.result() for c in clients}
    assert reports[3]["status"] == "aborted" and reports[3]["stage"] == "masked_input"

    with AggregatorClient(server.target, load_identity(keys[1]), timeout=20) as client:
        aborted = client.get_round_record(2)
    assert aborted["status"] == "aborted" and aborted["privacy_report"] is None
    assert '"outcome":"aborted"' in aborted["audit_record"]

    verified = _verify_cli(data, pub)
    assert verified.returncode == 0, verified.stderr
    assert "OK: 2 records" in verified.stdout and "(pinned)" in verified.stdout
    assert f"{eps1:.3f}/{eps1:.3f}" in verified.stdout or "privacy spent" in verified.stdout
    assert server.terminate() == 0

    # A restarted aggregator continues both the audit chain and the privacy ledger.
    restarted = ServerProcess(config, tmp_path / "server2.log", "--rounds", "1")
    servers.append(restarted)
    out = _dp_round(restarted.target, keys, decline=set())
    third = out[1].privacy_report
    assert out[1].round_id == 3 and third is not None and third.site_level is not None
    assert len(third.participants) == 4
    assert third.site_level.epsilon_cumulative > eps1
    with AggregatorClient(restarted.target, load_identity(keys[2]), timeout=20) as client:
        record = client.get_round_record(3)
    assert record["privacy_report"] == third
    assert restarted.terminate() == 0

    texts, stored_key = read_ledger(data / "audit.db")
    assert stored_key is not None and stored_key.to_bytes().hex() == pub
    relaxed = SitePolicy.unpinned(adversary=AdversaryClass.CURIOUS_SERVER, corrupt_fraction=0)
    chain = verify_records(texts, aggregator_key=stored_key, assumptions=relaxed)
    assert chain.ok, chain.problems
    assert [(r.round_id, r.outcome) for r in chain.records] == [
        (1, "completed"),
        (2, "aborted"),
        (3, "completed"),
    ]
    assert chain.records[2].privacy_report == third
    assert chain.records[1].prev_hash == chain.records[0].record_hash()

    store = RoundStore(data)
    try:
        state = store.latest_record("privacy_accountant")
        assert state is not None and state.round_id == 3
        acc = RdpAccountant()
        acc.load_state_dict(state.record["state"])
        assert len(acc.history) == 2  # the aborted round released nothing, spent nothing
        assert acc.get_epsilon(1e-5) == pytest.approx(third.site_level.epsilon_cumulative)
        signed = store.records(1, "record_level_statement")
        assert [r.record["party"] for r in signed] == [1, 2, 3]
    finally:
        store.close()
    final = _verify_cli(data, pub)
    assert final.returncode == 0, final.stderr
    assert "OK: 3 records" in final.stdout


def test_serve_refuses_to_start_without_an_aggregator_key(tmp_path):
    keys = write_keys(tmp_path, 3)
    config = write_config(tmp_path, keys, threshold=2)
    text = config.read_text().replace(f'aggregator_key = "{tmp_path / "aggregator.key"}"\n', "")
    config.write_text(text)
    run = subprocess.run(
        [PY, "-m", "secagg", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert run.returncode == 2
    assert "secagg keys generate --out aggregator.key" in run.stderr


def test_a_statement_that_understates_its_epsilon_is_refused_over_grpc(tmp_path, servers):
    keys = write_keys(tmp_path, N)
    config = write_config(
        tmp_path, keys, vector_length=64, deadlines=DEADLINES, sections=DP, names=NAMES
    )
    server = ServerProcess(config, tmp_path / "server.log")
    servers.append(server)
    # (z 0.3, q 1, 1000 steps) is worth epsilon ~6,005 by PLD; site 4 claims 0.01.
    forged = {"noise_multiplier": 0.3, "sample_rate": 1.0, "steps": 1000}
    forged |= {"epsilon_round": 0.01, "epsilon_cumulative": 0.01}
    out = _dp_round(server.target, keys, decline=set(), forged={4: forged})
    refusal = out[4]
    assert isinstance(refusal, AggregatorError), refusal
    assert refusal.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "states epsilon 0.01" in refusal.details and "6005" in refusal.details
    report = out[1].privacy_report
    assert report.participants == ("site-1", "site-2", "site-3"), "the round went on without it"
    assert [e["party"] for e in server.events() if e["event"] == "statement_refused"] == [4]


def test_no_round_starts_past_the_site_level_budget_over_grpc(tmp_path, servers):
    keys = write_keys(tmp_path, N)
    config = write_config(
        tmp_path, keys, vector_length=64, rounds=3, deadlines=DEADLINES, sections=DP, names=NAMES
    )
    params = derive_params(load_config(config).distributed_dp)
    one, after_one = site_level_statement(params, RdpAccountant(), survivors=3)
    two, _ = site_level_statement(params, after_one, survivors=3)
    budget = (one.epsilon_cumulative + two.epsilon_cumulative) / 2  # room for one round only
    text = config.read_text().replace(DP, DP + f"\nepsilon_budget = {budget}")
    config.write_text(text)
    server = ServerProcess(config, tmp_path / "server.log")
    servers.append(server)
    out = _dp_round(server.target, keys, decline=set())
    assert all(isinstance(out[p], RoundResult) for p in keys), out
    with (
        site_client(server.target, keys[1], timeout=20) as client,
        pytest.raises(AggregatorError) as refused,
    ):
        client.join()
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "privacy budget is spent" in refused.value.details
    assert f"epsilon_budget {budget:g}" in refused.value.details
    assert [e["event"] for e in server.events() if e["event"] == "privacy_budget_exhausted"]
    with AggregatorClient(server.target, load_identity(keys[2]), timeout=20) as client:
        assert [r["status"] for r in client.list_rounds()] == ["completed"]
