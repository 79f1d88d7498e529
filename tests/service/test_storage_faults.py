"""Disk, resource and shutdown faults against a real ``secagg serve``: a round may fail, the
process does not.

Faults are injected with ``SECAGG_STORAGE_FAULTS`` (see ``secagg.store.faults``): the tests run as
root, which a read-only directory does not stop, and a full disk injected at the exact storage
call is reproducible where a small tmpfs fills at a different point on every run.
"""

from __future__ import annotations

import pathlib
import resource
import signal
import subprocess
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from secagg.client import AggregatorClient, load_identity
from tests.service.conftest import (
    PY,
    ROOT,
    ClientProcess,
    ServerProcess,
    expected_total,
    write_config,
    write_keys,
)

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

N = 4
LENGTH = 2000
CHUNK = ("--chunk-bytes", "4096")


def _serve(tmp_path: pathlib.Path, servers: list[ServerProcess], faults: str, rounds: int = 2):
    keys = write_keys(tmp_path, N)
    config = write_config(tmp_path, keys, vector_length=LENGTH, rounds=rounds)
    server = ServerProcess(config, tmp_path / "server.log", env={"SECAGG_STORAGE_FAULTS": faults})
    servers.append(server)
    return keys, server


def _round(server: ServerProcess, keys: dict[int, pathlib.Path], clients: list[ClientProcess]):
    batch = [ClientProcess(server.target, keys[p], p, *CHUNK) for p in keys]
    clients += batch
    return {c.seed: c.result() for c in batch}


def _records(server: ServerProcess, key: pathlib.Path) -> list[dict[str, object]]:
    with AggregatorClient(server.target, load_identity(key), timeout=20) as client:
        return [client.get_round_record(r["round_id"]) for r in client.list_rounds()]


def _assert_next_round_exact(server, keys, clients, round_id: int) -> None:
    reports = _round(server, keys, clients)
    assert all(r["status"] == "completed" for r in reports.values()), reports
    assert {r["round_id"] for r in reports.values()} == {round_id}
    with AggregatorClient(server.target, load_identity(keys[1]), timeout=20) as client:
        result = client.get_result(round_id)
    np.testing.assert_array_equal(result.total, expected_total(sorted(keys), N, LENGTH))


def _audit_ok(tmp_path: pathlib.Path) -> str:
    run = subprocess.run(
        [
            *(PY, "-m", "secagg", "audit", "verify", str(tmp_path / "data")),
            *("--aggregator-key", str(tmp_path / "data" / "aggregator.pub")),
            *(f"--site-ledger={p}" for p in sorted(tmp_path.glob("site*-ledger.jsonl"))),
            *("--adversary", "curious_server", "--corrupt-fraction", "0"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


@pytest.mark.parametrize(
    "faults",
    [
        "write_result:ENOSPC:1",  # disk full while the sum is written
        "finish_round:EIO:1:1",  # the commit of the completed round fails once
        "finish_round:EROFS:1:3",  # ... and the abort's commit twice more: retried until it lands
    ],
)
def test_a_disk_failure_at_the_result_aborts_that_round_and_the_next_is_exact(
    tmp_path, servers, clients, faults
):
    keys, server = _serve(tmp_path, servers, faults)
    reports = _round(server, keys, clients)
    for report in reports.values():
        assert report["status"] == "aborted", report
        assert report["stage"] == "unmask" and "storage failure" in report["reason"], report
    assert server.proc.poll() is None, "the aggregator outlives the failed round"
    _assert_next_round_exact(server, keys, clients, round_id=2)
    first, second = _records(server, keys[2])
    assert first["status"] == "aborted" and "storage failure" in first["abort_reason"]
    assert first["privacy_report"] is not None, "the aggregator saw the sum: accounted"
    assert second["status"] == "completed"
    assert not list((tmp_path / "data" / "results").glob("round-0000000001*"))
    events = [e for e in server.events() if e["event"] == "storage_failed"]
    assert events and all(e["round"] == 1 for e in events)
    server.stop()
    assert "OK" in _audit_ok(tmp_path)


@pytest.mark.parametrize("faults", ["transcript:ENOSPC:1", "ledger_append:EIO:1:1"])
def test_a_failing_transcript_or_audit_ledger_does_not_cost_the_round(
    tmp_path, servers, clients, faults
):
    keys, server = _serve(tmp_path, servers, faults)
    reports = _round(server, keys, clients)
    assert all(r["status"] == "completed" for r in reports.values()), reports
    _assert_next_round_exact(server, keys, clients, round_id=2)
    assert [r["status"] for r in _records(server, keys[3])] == ["completed", "completed"]
    server.stop()
    assert "OK" in _audit_ok(tmp_path)


def test_a_failing_start_refuses_the_join_with_unavailable_and_the_next_round_id_runs(
    tmp_path, servers, clients
):
    keys, server = _serve(tmp_path, servers, "start_round:EIO:1:1", rounds=1)
    first = ClientProcess(server.target, keys[1], 1, *CHUNK)
    clients.append(first)
    report = first.result()
    assert report["status"] == "rejected" and report["code"] == "UNAVAILABLE", report
    assert "storage failed" in report["reason"]
    # Site 1 accepted round 1 in its own ledger before the failure, so it never takes that id
    # again: the aggregator burns it and runs round 2, which site 1 joins.
    _assert_next_round_exact(server, keys, clients, round_id=2)


def test_an_fd_limit_below_the_rosters_need_is_refused_at_start_with_a_clear_message(tmp_path):
    keys = write_keys(tmp_path, N)
    config = write_config(tmp_path, keys, vector_length=LENGTH)

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))

    run = subprocess.run(
        [PY, "-m", "secagg", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        preexec_fn=low_limit,  # a resource limit only, before exec
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "file descriptors" in run.stderr and "ulimit -n" in run.stderr
    assert "Traceback" not in run.stderr


def test_sigterm_in_the_last_stage_lets_the_round_finish_and_every_site_fetch_its_result(
    tmp_path, servers, clients
):
    keys = write_keys(tmp_path, N)
    deadlines = {"advertise_keys": 8, "share_keys": 5, "masked_input": 5}
    deadlines |= {"consistency_check": 5, "unmask": 25}
    config = write_config(
        tmp_path, keys, vector_length=LENGTH, threshold=N, deadlines=deadlines, shutdown_grace=30.0
    )
    server = ServerProcess(config, tmp_path / "server.log")
    servers.append(server)
    # Site 4 answers the unmask request 6-12 s late and all four are needed (threshold 4 of 4):
    # the round is in its last stage at SIGTERM.
    batch = [ClientProcess(server.target, keys[p], p, *CHUNK) for p in (1, 2, 3)]
    batch.append(ClientProcess(server.target, keys[4], 4, *CHUNK, "--stall-at", "unmask"))
    clients += batch
    for _ in range(300):
        if any(e.get("stage") == "unmask" for e in server.events() if e["event"] == "stage_opened"):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the round never reached unmask")
    server.proc.send_signal(signal.SIGTERM)
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING, "at once, not after"
    reports = [c.result() for c in batch]
    assert all(r["status"] == "completed" for r in reports), reports
    assert {tuple(r["survivors"]) for r in reports} == {(1, 2, 3, 4)}
    assert server.proc.wait(30) == 0
    assert any(e["event"] == "shutdown_drained" for e in server.events())
