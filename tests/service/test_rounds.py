"""Whole rounds over gRPC with a real ``secagg serve`` process and real client processes."""

from __future__ import annotations

import pathlib
import time

import numpy as np
import pytest

from secagg.client import AggregatorClient, load_identity
from tests.service.conftest import (
    ClientProcess,
    ServerProcess,
    expected_total,
    write_config,
    write_keys,
)

pytestmark = [pytest.mark.service, pytest.mark.timeout(90)]

N = 4
LENGTH = 5000
CHUNK = ("--chunk-bytes", "4096")  # 5 chunks per masked input


def _start(tmp_path: pathlib.Path, servers: list[ServerProcess], n: int = N, **kw: object):
    keys = write_keys(tmp_path, n)
    config = write_config(tmp_path, keys, vector_length=LENGTH, **kw)  # type: ignore[arg-type]
    server = ServerProcess(config, tmp_path / "server.log")
    servers.append(server)
    return keys, server


def _fetch(server: ServerProcess, key: pathlib.Path, round_id: int):
    with AggregatorClient(server.target, load_identity(key), timeout=20) as client:
        return client.get_result(round_id), client.get_round_record(round_id)


def test_clients_killed_at_every_stage_and_mid_stream_leave_the_exact_sum_of_the_survivors(
    tmp_path, servers, clients
):
    """One round of 10 sites: six are SIGKILLed (one per stage, one mid-upload), one stalls past
    the share_keys deadline; the round completes with the exact sum of the survivors."""
    behaviour = {
        2: ("--die-at", "advertise_keys"),
        3: ("--die-at", "share_keys"),
        4: ("--die-at", "masked_input"),
        5: ("--die-mid-stream",),
        6: ("--die-at", "consistency_check"),  # its input is already in the sum
        7: ("--die-at", "unmask"),  # likewise
        10: ("--stall-at", "share_keys"),
    }
    deadlines = {
        "advertise_keys": 10,
        "share_keys": 1.5,
        "masked_input": 4,
        "consistency_check": 4,
        "unmask": 4,
    }
    keys, server = _start(tmp_path, servers, n=10, deadlines=deadlines)
    for p in keys:
        clients.append(ClientProcess(server.target, keys[p], p, *CHUNK, *behaviour.get(p, ())))
    reports = {c.seed: c.result() for c in clients}
    assert all(reports[p] is None for p in range(2, 8)), "parties 2-7 were SIGKILLed"
    assert reports[10]["status"] == "rejected" and reports[10]["code"] == "DEADLINE_EXCEEDED"
    assert "share_keys" in reports[10]["reason"] and "deadline" in reports[10]["reason"]
    survivors = [1, 6, 7, 8, 9]
    for p in (1, 8, 9):
        assert reports[p]["status"] == "completed", reports[p]
        assert reports[p]["survivors"] == survivors
    result, record = _fetch(server, keys[1], reports[1]["round_id"])
    np.testing.assert_array_equal(result.total, expected_total(survivors, 10, LENGTH))
    dropouts = {stage: s["dropouts"] for stage, s in record["stages"].items()}
    assert dropouts == {
        "advertise_keys": [2],
        "share_keys": [3, 10],
        "masked_input": [4, 5],
        "consistency_check": [6],
        "unmask": [7],
    }
    started = {e["party"] for e in server.events() if e["event"] == "masked_input_started"}
    assert 5 in started, "party 5 must have died mid-upload"
    assert not list((tmp_path / "data" / "spool").iterdir()), "spool files must be deleted"
    from tests.service.client_proc import make_input

    floats = sum(make_input(s, LENGTH)[0] for s in survivors)
    assert np.max(np.abs(result.aggregate - floats)) <= len(survivors) * result.encoding.resolution


def test_too_few_survivors_abort_the_round_with_a_clear_reason(tmp_path, servers, clients):
    keys, server = _start(tmp_path, servers)
    for p in keys:
        extra = ("--die-at", "masked_input") if p in (1, 2) else ()
        clients.append(ClientProcess(server.target, keys[p], p, *CHUNK, *extra))
    reports = {c.seed: c.result() for c in clients}
    for p in (3, 4):
        assert reports[p] is not None
        assert reports[p]["status"] == "aborted"
        assert reports[p]["stage"] == "masked_input"
        assert "only 2 parties completed masked_input, threshold is 3" in reports[p]["reason"]
    with AggregatorClient(server.target, load_identity(keys[3]), timeout=10) as client:
        record = client.get_round_record(1)
        assert record["status"] == "aborted"
        assert record["abort_stage"] == "masked_input"
        assert "threshold is 3" in record["abort_reason"]
        with pytest.raises(Exception, match="threshold is 3"):
            client.get_result(1)


def test_clean_round_is_exact_and_survives_a_restart_which_marks_the_interrupted_round(
    tmp_path, servers, clients
):
    keys, server = _start(tmp_path, servers, rounds=2)
    clients += [ClientProcess(server.target, keys[p], p, *CHUNK) for p in keys]
    reports = [c.result() for c in clients]
    assert all(r is not None and r["status"] == "completed" for r in reports), reports
    assert {tuple(r["survivors"]) for r in reports} == {(1, 2, 3, 4)}
    assert len({r["digest"] for r in reports}) == 1, "every client got the same aggregate"
    before, record = _fetch(server, keys[2], 1)
    np.testing.assert_array_equal(before.total, expected_total([1, 2, 3, 4], N, LENGTH))
    assert all(not s["dropouts"] for s in record["stages"].values())
    kinds = [r["kind"] for r in record["records"]]
    assert kinds == ["round_summary", "privacy_report", "audit_record"]
    assert record["audit_record"] and record["privacy_report"].participants == ("1", "2", "3", "4")
    # Round 2 starts (one client joins, the others never come), then the aggregator is killed.
    late = ClientProcess(server.target, keys[1], 1, *CHUNK)
    clients.append(late)
    for _ in range(100):
        if any(e["event"] == "round_started" and e["round"] == 2 for e in server.events()):
            break
        time.sleep(0.1)
    server.kill()
    late.kill()

    config = tmp_path / "aggregator.toml"
    restarted = ServerProcess(config, tmp_path / "server2.log", "--rounds", "0")
    servers.append(restarted)
    after, record = _fetch(restarted, keys[3], 1)
    np.testing.assert_array_equal(after.total, before.total)
    assert after.survivors == (1, 2, 3, 4) and record["status"] == "completed"
    with AggregatorClient(restarted.target, load_identity(keys[3]), timeout=10) as client:
        interrupted = client.get_round_record(2)
        assert interrupted["status"] == "aborted"
        assert "stopped while the round was running" in interrupted["abort_reason"]
        assert [r["status"] for r in client.list_rounds()] == ["completed", "aborted"]


def test_sigterm_aborts_the_running_round_cleanly_and_persists_why(tmp_path, servers, clients):
    keys, server = _start(tmp_path, servers)
    waiting = ClientProcess(server.target, keys[1], 1, *CHUNK)  # the others never come
    clients.append(waiting)
    for _ in range(100):
        if any(e["event"] == "round_started" for e in server.events()):
            break
        time.sleep(0.1)
    assert server.terminate() == 0
    report = waiting.result()
    assert report["status"] == "aborted" and report["reason"] == "aggregator shutting down"
    restarted = ServerProcess(tmp_path / "aggregator.toml", tmp_path / "s2.log", "--rounds", "0")
    servers.append(restarted)
    with AggregatorClient(restarted.target, load_identity(keys[1]), timeout=10) as client:
        record = client.get_round_record(1)
    assert record["status"] == "aborted"
    assert record["abort_reason"] == "aggregator shutting down"
    assert record["abort_stage"] == "advertise_keys"
