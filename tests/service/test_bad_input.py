"""Misbehaving clients against a real ``secagg serve``: each gets a precise status, and the round
still completes with the exact sum of the honest clients."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from secagg.client import AggregatorClient, AggregatorError, load_identity
from secagg.crypto import IdentityKey
from secagg.protocol import AdvertiseKeys, ConsistencySignature
from secagg.transport._gen.secagg.v1 import aggregator_pb2 as pb
from secagg.transport.codec import encode_client_message
from tests.service.conftest import (
    ClientProcess,
    ServerProcess,
    expected_total,
    write_config,
    write_keys,
)
from tests.service.scripted import RawStream, relaxed_session, run_in_thread

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

LENGTH = 5000
N = 11
HONEST = (1, 2, 3)


def _stream(server: ServerProcess) -> RawStream:
    return RawStream(server.target)


def party4(server, identity):
    """Bad Join signature, Join for another round, then a message of another stage."""
    out = {}
    s = _stream(server)
    welcome = s.hello(identity)
    s.join(identity, welcome, signature=bytes(64))
    out["bad_signature"] = s.status()
    s.close()
    s = _stream(server)
    welcome = s.hello(identity)
    s.join(identity, welcome, round_id=welcome.config.round_id + 1)
    out["join_other_round"] = s.status()
    s.close()
    s = _stream(server)
    welcome = s.hello(identity)
    params = s.join(identity, welcome)
    wrong_stage = ConsistencySignature.signed(
        identity,
        params.config.digest,
        round_id=params.config.round_id,
        sender=welcome.party,
        session_id=bytes(32),
        survivors_digest=bytes(32),
    )
    s.send(encode_client_message(wrong_stage))
    out["other_stage"] = s.status()
    s.close()
    return out


def party5(server, identity):
    """A correctly signed AdvertiseKeys for another round."""
    s = _stream(server)
    welcome = s.hello(identity)
    params = s.join(identity, welcome)
    ad = AdvertiseKeys.signed(
        identity,
        params.config.digest,
        round_id=params.config.round_id + 1,
        sender=welcome.party,
        cipher_public_key=bytes(range(2, 34)),
        mask_public_key=bytes(range(3, 35)),
        seed_commitment=bytes(32),
        inbox_keys=(),
    )
    s.send(encode_client_message(ad))
    status = s.status()
    s.close()
    return {"other_round": status}


def party6(server, identity):
    """The same AdvertiseKeys twice."""
    s = _stream(server)
    welcome = s.hello(identity)
    params = s.join(identity, welcome)
    session = relaxed_session(params, welcome.party, identity)
    frame = encode_client_message(session.advertise_keys())
    s.send(frame)
    s.send(frame)
    status = s.status()
    s.close()
    return {"duplicate": status}


def masked_misbehaviour(server, identity, kind):
    s = _stream(server)
    out = {}

    def second_stream() -> None:
        other = _stream(server)
        w = other.hello(identity)
        other.join(identity, w)
        out["second_stream"] = other.status()
        other.close()

    _, _, masked = s.to_masked_input(identity, second_stream if kind == "second_stream" else None)
    if kind == "second_stream":
        kind = "wrong_length"
    if kind == "oversized_chunks":
        header, _, _ = s.masked_frames(masked, chunk_words=1 << 19)  # 2 MiB > 1 MiB limit
        s.send(header)
        out[kind] = s.status()
        s.close()
        return out
    header, _, chunks = s.masked_frames(masked)
    chunk_list = list(chunks)
    if kind == "wrong_length":
        header.masked_input_header.length = LENGTH + 1
        s.send(header)
    elif kind == "out_of_order":
        s.send(header)
        s.send(chunk_list[1])
    elif kind == "duplicate_chunk":
        s.send(header)
        s.send(chunk_list[0])
        s.send(chunk_list[0])
    elif kind == "tampered":
        s.send(header)
        first = chunk_list[0].masked_input_chunk
        first.data = bytes([first.data[0] ^ 1]) + first.data[1:]
        for c in chunk_list:
            s.send(c)
    out[kind] = s.status()
    s.close()
    return out


def test_misbehaving_clients_get_precise_statuses_and_the_honest_round_completes(
    tmp_path, servers, clients
):
    keys = write_keys(tmp_path, N)
    deadlines = {
        "advertise_keys": 20,
        "share_keys": 5,
        "masked_input": 5,
        "consistency_check": 5,
        "unmask": 5,
    }
    config = write_config(tmp_path, keys, vector_length=LENGTH, threshold=3, deadlines=deadlines)
    server = ServerProcess(config, tmp_path / "server.log")
    servers.append(server)
    ids = {p: load_identity(k) for p, k in keys.items()}

    # Rejected before any round state: unknown identity, oversized message.
    s = _stream(server)
    s.send(
        pb.ClientFrame(
            hello=pb.Hello(identity_public_key=IdentityKey.generate().public_key.to_bytes())
        )
    )
    unknown = s.status()
    s.close()
    s = _stream(server)
    s.send(pb.ClientFrame(hello=pb.Hello(identity_public_key=bytes(5 << 20))))
    oversized = s.status()
    s.close()

    jobs = [
        run_in_thread(party4, server, ids[4]),
        run_in_thread(party5, server, ids[5]),
        run_in_thread(party6, server, ids[6]),
        run_in_thread(masked_misbehaviour, server, ids[7], "second_stream"),
        run_in_thread(masked_misbehaviour, server, ids[8], "out_of_order"),
        run_in_thread(masked_misbehaviour, server, ids[9], "duplicate_chunk"),
        run_in_thread(masked_misbehaviour, server, ids[10], "oversized_chunks"),
        run_in_thread(masked_misbehaviour, server, ids[11], "tampered"),
    ]
    clients += [ClientProcess(server.target, keys[p], p, "--chunk-bytes", "4096") for p in HONEST]
    reports = [c.result() for c in clients]
    statuses = {}
    for thread, out in jobs:
        thread.join(60)
        assert "error" not in out, repr(out.get("error"))
        statuses.update(out["result"])

    assert (
        unknown[0] is grpc.StatusCode.PERMISSION_DENIED
        and "not in the aggregator's roster" in unknown[1]
    )
    assert oversized[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    expected = {
        "bad_signature": (grpc.StatusCode.UNAUTHENTICATED, "signature"),
        "join_other_round": (grpc.StatusCode.FAILED_PRECONDITION, "Join for round"),
        "other_stage": (grpc.StatusCode.FAILED_PRECONDITION, "does not fit stage advertise_keys"),
        "other_round": (grpc.StatusCode.FAILED_PRECONDITION, "message for round"),
        "duplicate": (grpc.StatusCode.ALREADY_EXISTS, "already sent its advertise_keys"),
        "second_stream": (grpc.StatusCode.ALREADY_EXISTS, "already"),
        "wrong_length": (grpc.StatusCode.INVALID_ARGUMENT, "has length 5001"),
        "out_of_order": (grpc.StatusCode.INVALID_ARGUMENT, "out of order"),
        "duplicate_chunk": (grpc.StatusCode.INVALID_ARGUMENT, "duplicated"),
        "oversized_chunks": (grpc.StatusCode.RESOURCE_EXHAUSTED, "limit"),
        "tampered": (grpc.StatusCode.UNAUTHENTICATED, "signature"),
    }
    for name, (code, text) in expected.items():
        got_code, got_text = statuses[name]
        assert got_code is code, (name, got_code, got_text)
        assert text in got_text, (name, got_text)

    for report in reports:
        assert report["status"] == "completed", report
        assert report["survivors"] == list(HONEST)
    with AggregatorClient(server.target, ids[1], timeout=10) as client:
        result = client.get_result(reports[0]["round_id"])
        np.testing.assert_array_equal(result.total, expected_total(HONEST, N, LENGTH))
        record = client.get_round_record(reports[0]["round_id"])
        assert record["stages"]["advertise_keys"]["dropouts"] == [4, 5]
        assert record["stages"]["share_keys"]["dropouts"] == [6]
        assert record["stages"]["masked_input"]["dropouts"] == [7, 8, 9, 10, 11]
        with pytest.raises(AggregatorError) as missing:
            client.get_result(99)
        assert missing.value.code is grpc.StatusCode.NOT_FOUND
        with pytest.raises(AggregatorError) as too_many:
            client.list_rounds(limit=5000)
        assert too_many.value.code is grpc.StatusCode.INVALID_ARGUMENT
    with AggregatorClient(server.target, IdentityKey.generate(), timeout=10) as stranger:
        with pytest.raises(AggregatorError) as denied:
            stranger.get_result(1)
        assert denied.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert not any("secret" in line for line in server.log_path.read_text().splitlines())
