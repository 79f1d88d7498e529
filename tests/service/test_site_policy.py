"""Sites decide over gRPC: a real ``secagg serve`` offering an unsafe threshold, real site
processes with their own strict policies and ledgers."""

from __future__ import annotations

import json

import pytest

from secagg.audit import read_site_ledger
from tests.service.conftest import (
    STRICT_POLICY,
    ClientProcess,
    ServerProcess,
    write_config,
    write_keys,
)

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

N = 6
LENGTH = 1000


@pytest.mark.parametrize("threshold", [3, 4])
def test_sites_refuse_an_aggregator_chosen_unsafe_threshold_before_revealing_anything(
    tmp_path, servers, clients, threshold
):
    """The attack of issue 12 over gRPC: t = 3 of 6 let a split view recover 6/6 inputs while
    every site printed "completed". Strict sites (t >= 5 of 6) now refuse at the Welcome."""
    keys = write_keys(tmp_path, N)
    config = write_config(
        tmp_path, keys, vector_length=LENGTH, threshold=threshold, site_policy=STRICT_POLICY
    )
    server = ServerProcess(config, tmp_path / "server.log")
    servers.append(server)
    clients += [ClientProcess(server.target, keys[p], p) for p in keys]
    reports = [c.result(60) for c in clients]
    assert all(r is not None and r["status"] == "refused" for r in reports), reports
    assert {r["parameter"] for r in reports if r} == {"threshold"}
    assert all(f"threshold {threshold} of 6" in r["reason"] for r in reports if r)
    # The aggregator's log says who refused and why; nobody ever advertised keys.
    events = server.events()
    refused = [e for e in events if e.get("event") == "site_refused"]
    assert sorted(e["party"] for e in refused) == list(range(1, N + 1))
    assert all(e["required"] == ">= 5" for e in refused)
    assert not any(e.get("event") == "message_accepted" for e in events)
    # Each site's own signed ledger holds the refusal, and nothing revealed.
    for key in keys.values():
        ledger = read_site_ledger(tmp_path / f"{key.stem}-ledger.jsonl")
        assert ledger.ok, ledger.problems
        kinds = [e.kind for e in ledger.events]
        assert kinds == ["refused"]


def test_a_safe_threshold_completes_and_every_site_ledger_agrees(tmp_path, servers, clients):
    keys = write_keys(tmp_path, N)
    config = write_config(
        tmp_path, keys, vector_length=LENGTH, threshold=5, site_policy=STRICT_POLICY
    )
    server = ServerProcess(config, tmp_path / "server.log")
    servers.append(server)
    clients += [ClientProcess(server.target, keys[p], p) for p in keys]
    reports = [c.result(60) for c in clients]
    assert all(r is not None and r["status"] == "completed" for r in reports), reports
    for key in keys.values():
        ledger = read_site_ledger(tmp_path / f"{key.stem}-ledger.jsonl")
        assert ledger.ok, ledger.problems
        kinds = [e.kind for e in ledger.events]
        assert kinds == ["accepted", "signed_survivors", "revealed", "outcome"]
        outcome = ledger.events[-1].to_dict()
        assert outcome["mismatch"] == "" and list(outcome["survivors"]) == list(range(1, N + 1))
        assert json.dumps(outcome)  # plain JSON all the way
