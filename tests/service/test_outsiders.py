"""Outsiders against a real ``secagg serve``: they cannot read, cannot impersonate, cannot jam."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from secagg.client import AggregatorClient, AggregatorError, load_identity
from secagg.crypto import IdentityKey
from secagg.transport._gen.secagg.v1 import aggregator_pb2 as pb
from secagg.transport._gen.secagg.v1 import aggregator_pb2_grpc as pb_grpc
from secagg.transport.codec import sign_hello
from tests.service.conftest import ClientProcess, ServerProcess, write_config, write_keys
from tests.service.scripted import RawStream

pytestmark = [pytest.mark.service, pytest.mark.timeout(180)]

N = 10
LENGTH = 1000


def _serve(tmp_path, servers, **kw):
    keys = write_keys(tmp_path, N)
    config = write_config(tmp_path, keys, vector_length=LENGTH, threshold=6, **kw)
    server = ServerProcess(config, tmp_path / "server.log")
    servers.append(server)
    return keys, server


def test_outsiders_cannot_read_and_a_stolen_public_key_gets_nothing(tmp_path, servers):
    keys, server = _serve(tmp_path, servers)
    outsider = IdentityKey.generate()
    with AggregatorClient(server.target, outsider, timeout=10) as c:
        for call in (c.list_rounds, lambda: c.get_round_record(1), lambda: c.get_result(1)):
            with pytest.raises(AggregatorError) as info:
                call()
            assert info.value.code is grpc.StatusCode.PERMISSION_DENIED
    # An unsigned (or wrongly signed) read by a roster member's key is refused too.
    channel = grpc.insecure_channel(server.target)
    stub = pb_grpc.AggregatorStub(channel)
    site2 = load_identity(keys[2])
    forged = pb.RequestAuth(identity_public_key=site2.public_key.to_bytes(), issued_at_ms=1)
    with pytest.raises(grpc.RpcError) as rpc:
        stub.ListRounds(pb.ListRoundsRequest(auth=forged), timeout=10)
    assert rpc.value.code() is grpc.StatusCode.UNAUTHENTICATED
    channel.close()
    # A Hello carrying site 2's public key, signed by someone else: no Welcome, no roster.
    s = RawStream(server.target)
    nonce = s.recv().challenge.nonce
    hello = pb.Hello(
        identity_public_key=site2.public_key.to_bytes(), signature=sign_hello(outsider, nonce)
    )
    s.send(pb.ClientFrame(hello=hello))
    code, details = s.status()
    s.close()
    assert code is grpc.StatusCode.UNAUTHENTICATED, details
    events = [e.get("event") for e in server.events()]
    assert "read_refused" in events and "message_rejected" in events


def test_an_honest_round_completes_while_outsiders_flood_the_service(tmp_path, servers, clients):
    """50 outsider streams sit silent, 50 more open and close in a bounded loop; the 10 sites'
    round completes within its deadlines."""
    keys, server = _serve(tmp_path, servers)
    stop = threading.Event()
    silent: list[RawStream] = []

    def hold() -> None:
        for _ in range(50):
            silent.append(RawStream(server.target, timeout=60))

    def churn() -> None:
        deadline = time.monotonic() + 40
        opened = 0
        while not stop.is_set() and time.monotonic() < deadline and opened < 2000:
            streams = [RawStream(server.target, timeout=5) for _ in range(50)]
            opened += len(streams)
            for s in streams:
                s.close()

    attackers = [threading.Thread(target=hold), threading.Thread(target=churn)]
    for t in attackers:
        t.start()
    time.sleep(1.0)  # the flood is on before the sites arrive
    started = time.monotonic()
    clients += [ClientProcess(server.target, keys[p], p) for p in keys]
    reports = [c.result(90) for c in clients]
    took = time.monotonic() - started
    stop.set()
    for t in attackers:
        t.join(60)
    for s in silent:
        s.close()
    assert all(r is not None and r["status"] == "completed" for r in reports), reports
    assert took < 60, took
    # The silent streams were cut at the hello timeout, and no outsider got a Welcome.
    events = server.events()
    assert sum(e.get("reason", "").startswith("no signed Hello") for e in events) >= 1


def test_undecodable_bytes_get_invalid_argument_and_a_log_line_on_every_method(tmp_path, servers):
    _, server = _serve(tmp_path, servers)
    garbage = b"\xff\xff\xff\xff\x0f"  # a field header with no valid wire type or length
    channel = grpc.insecure_channel(server.target)
    service = "/secagg.v1.Aggregator/"
    for method in ("GetResult", "GetRoundRecord", "ListRounds"):
        call = (
            channel.unary_stream(service + method)
            if method == "GetResult"
            else channel.unary_unary(service + method)
        )
        with pytest.raises(grpc.RpcError) as rpc:
            reply = call(garbage, timeout=10)
            if method == "GetResult":
                list(reply)
        assert rpc.value.code() is grpc.StatusCode.INVALID_ARGUMENT, method
        assert "undecodable" in rpc.value.details()
    stream = channel.stream_stream(service + "Participate")(iter([garbage]), timeout=10)
    with pytest.raises(grpc.RpcError) as rpc:
        list(stream)
    assert rpc.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "undecodable ClientFrame" in rpc.value.details()
    channel.close()
    logged = [e for e in server.events() if "undecodable" in str(e.get("reason", ""))]
    assert {e["event"] for e in logged} == {"read_refused", "message_rejected"}
