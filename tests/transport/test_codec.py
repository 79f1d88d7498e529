"""Codec: every message survives the wire; malformed frames and uploads are refused."""

from __future__ import annotations

import pathlib

import grpc
import numpy as np
import pytest

from secagg.crypto import IdentityKey
from secagg.encoding import FixedPointEncoding
from secagg.errors import (
    InvalidSignature,
    MalformedMessage,
    ReplayedMessage,
    RoundAborted,
    UnexpectedMessage,
    UnknownParty,
)
from secagg.protocol import (
    ACTIVE_STAGES,
    ClientSession,
    MaskedInput,
    MemoryLedger,
    ServerSession,
    SitePolicy,
    Stage,
)
from secagg.transport._gen.secagg.v1 import aggregator_pb2 as pb
from secagg.transport.codec import (
    MaskedInputSpool,
    RoundParameters,
    decode_client_message,
    decode_server_frame,
    encode_client_message,
    encode_server_message,
    masked_input_frames,
    sign_join,
    verify_join,
)
from secagg.transport.errors import LimitExceeded, error_from_status, status_for

M = 100


def _params(n: int = 3, round_id: int = 7) -> tuple[RoundParameters, dict[int, IdentityKey]]:
    ids = {p: IdentityKey.generate() for p in range(1, n + 1)}
    params = RoundParameters.create(
        round_id=round_id,
        roster={p: k.public_key for p, k in ids.items()},
        threshold=n,
        vector_length=M,
        encoding=FixedPointEncoding.for_clients(clip=1.0, max_clients=n),
        deadlines={s: 1.0 for s in ACTIVE_STAGES},
        context=b"model-v1",
    )
    return params, ids


def _upload(spool: MaskedInputSpool, masked: MaskedInput) -> MaskedInput:
    _, _, chunks = masked_input_frames(masked, chunk_words=16, fmt=1, bits=32)
    for frame in chunks:
        spool.add(frame.masked_input_chunk)
    return spool.finish()


def test_a_full_round_through_the_codec_sums_exactly(tmp_path: pathlib.Path) -> None:
    params, ids = _params()
    again = RoundParameters.from_proto(
        pb.RoundConfig.FromString(params.to_proto().SerializeToString())
    )
    assert again.config.digest == params.config.digest
    cfg = params.config
    inputs = {p: np.arange(M, dtype=np.uint32) * p for p in ids}
    policy = SitePolicy(roster=cfg.roster, context_digest=cfg.context_digest)
    clients = {
        p: ClientSession(again.config, p, ids[p], inputs[p], policy=policy, ledger=MemoryLedger())
        for p in ids
    }
    server = ServerSession(cfg)
    wire = lambda m: decode_client_message(  # noqa: E731
        pb.ClientFrame.FromString(encode_client_message(m).SerializeToString())
    )
    for c in clients.values():
        server.receive(wire(c.advertise_keys()))
    outbox = server.close_stage()
    for _ in range(4):
        for p, msg in outbox.items():
            frame = pb.ServerFrame.FromString(encode_server_message(msg).SerializeToString())
            reply = clients[p].receive(decode_server_frame(frame))
            if isinstance(reply, MaskedInput):
                header, count, _ = masked_input_frames(reply, chunk_words=16, fmt=1, bits=32)
                assert count == 7
                spool = MaskedInputSpool(
                    header.masked_input_header,
                    config=cfg,
                    party=p,
                    session_id=server.session_id,
                    spool_dir=tmp_path,
                    max_chunk_bytes=1 << 20,
                    formats=(1,),
                )
                server.receive(_upload(spool, reply))
                spool.discard()
            else:
                server.receive(wire(reply))
        outbox = server.close_stage()
    total = sum(inputs.values()) & np.uint32(cfg.modulus_mask)
    np.testing.assert_array_equal(server.result.total, total)
    assert not list(tmp_path.iterdir())


def _masked(tmp_path: pathlib.Path) -> tuple[RoundParameters, MaskedInput, pb.MaskedInputHeader]:
    params, ids = _params()
    masked = MaskedInput.signed(
        ids[1],
        params.config.digest,
        round_id=7,
        sender=1,
        session_id=bytes(32),
        masked_vector=np.arange(M, dtype=np.uint32),
    )
    header, _, _ = masked_input_frames(masked, chunk_words=16, fmt=1, bits=32)
    return params, masked, header.masked_input_header


def _spool(params, header, tmp_path, **kw):
    args = dict(
        config=params.config,
        party=1,
        session_id=bytes(32),
        spool_dir=tmp_path,
        max_chunk_bytes=1 << 20,
        formats=(1,),
    )
    args.update(kw)
    return MaskedInputSpool(header, **args)


@pytest.mark.parametrize(
    ("field", "value", "error", "text"),
    [
        ("length", M + 1, MalformedMessage, "has length 101"),
        ("round_id", 8, UnexpectedMessage, "round 8"),
        ("sender", 2, MalformedMessage, "claims sender 2"),
        ("session_id", b"\x01" * 32, ReplayedMessage, "another session"),
        ("chunk_count", 3, MalformedMessage, "make 7 chunks"),
        ("format", 2, MalformedMessage, "not accepted"),
        ("chunk_words", 10, MalformedMessage, "multiple of 8"),
    ],
)
def test_a_bad_masked_input_header_is_refused(tmp_path, field, value, error, text):
    params, _, header = _masked(tmp_path)
    setattr(header, field, value)
    with pytest.raises(error, match=text):
        _spool(params, header, tmp_path)
    assert not list(tmp_path.iterdir())


def test_chunks_too_large_for_the_limit_are_refused(tmp_path):
    params, _, header = _masked(tmp_path)
    with pytest.raises(LimitExceeded):
        _spool(params, header, tmp_path, max_chunk_bytes=32)


def test_chunks_out_of_order_duplicated_short_or_extra_are_refused(tmp_path):
    params, masked, header = _masked(tmp_path)
    _, _, chunks = masked_input_frames(masked, chunk_words=16, fmt=1, bits=32)
    frames = [f.masked_input_chunk for f in chunks]
    spool = _spool(params, header, tmp_path)
    with pytest.raises(MalformedMessage, match="out of order"):
        spool.add(frames[1])
    spool.add(frames[0])
    with pytest.raises(MalformedMessage, match="duplicated"):
        spool.add(frames[0])
    short = pb.MaskedInputChunk(index=1, offset=16, data=frames[1].data[:-4])
    with pytest.raises(MalformedMessage, match="carries 60 bytes"):
        spool.add(short)
    with pytest.raises(MalformedMessage, match="ended after 1 of 7"):
        spool.finish()
    for f in frames[1:]:
        spool.add(f)
    with pytest.raises(MalformedMessage, match="already received"):
        spool.add(frames[-1])
    np.testing.assert_array_equal(spool.finish().masked_vector, masked.masked_vector)
    spool.discard()
    assert not list(tmp_path.iterdir())


def test_config_from_the_server_must_match_its_digests():
    params, _ = _params()
    msg = params.to_proto()
    msg.encoding.clip = 0.5  # a different encoding than the one bound in context_digest
    with pytest.raises(MalformedMessage, match="context digest"):
        RoundParameters.from_proto(msg)
    msg = params.to_proto()
    msg.threshold = 2
    with pytest.raises(MalformedMessage, match="config digest"):
        RoundParameters.from_proto(msg)


def test_join_signature_binds_nonce_config_round_and_party():
    params, ids = _params()
    cfg = params.config
    sig = sign_join(ids[1], b"n" * 32, cfg.digest, 7, 1)
    verify_join(ids[1].public_key, sig, b"n" * 32, cfg.digest, 7, 1)
    for args in [
        (b"m" * 32, cfg.digest, 7, 1),
        (b"n" * 32, bytes(32), 7, 1),
        (b"n" * 32, cfg.digest, 8, 1),
        (b"n" * 32, cfg.digest, 7, 2),
    ]:
        with pytest.raises(InvalidSignature):
            verify_join(ids[1].public_key, sig, *args)


def test_share_entries_of_the_wrong_size_are_malformed():
    frame = pb.ClientFrame(
        share_keys=pb.ShareKeys(
            round_id=1,
            sender=1,
            session_id=bytes(32),
            entries=[pb.ShareEntry(receiver=2, ciphertext=b"x")],
            signature=bytes(64),
        )
    )
    with pytest.raises(MalformedMessage, match="share ciphertext"):
        decode_client_message(frame)
    with pytest.raises(MalformedMessage):
        decode_client_message(pb.ClientFrame())


def test_status_table_maps_core_errors_and_back():
    assert status_for(MalformedMessage("x"))[0] is grpc.StatusCode.INVALID_ARGUMENT
    assert status_for(UnexpectedMessage("x"))[0] is grpc.StatusCode.FAILED_PRECONDITION
    assert status_for(ReplayedMessage("x"))[0] is grpc.StatusCode.ALREADY_EXISTS
    assert status_for(UnknownParty("x"))[0] is grpc.StatusCode.PERMISSION_DENIED
    assert status_for(InvalidSignature("x"))[0] is grpc.StatusCode.UNAUTHENTICATED
    assert status_for(LimitExceeded("x"))[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_for(ValueError("secret detail")) == (
        grpc.StatusCode.INTERNAL,
        "internal error in the aggregator (see its log)",
    )
    code, text = status_for(RoundAborted("unmask", "too few"))
    assert code is grpc.StatusCode.ABORTED
    back = error_from_status(code, text)
    assert isinstance(back, RoundAborted) and back.stage == "unmask" and back.reason == "too few"
    assert Stage.UNMASK.value == "unmask"


def test_packed_chunks_round_trip_through_the_spool_when_the_kernels_offer_them(tmp_path):
    from secagg.transport import words

    if words.PACKED_BITS not in words.available_formats(20):
        pytest.skip("secagg.kernels has no pack_bits/unpack_bits")
    ids = {p: IdentityKey.generate() for p in (1, 2)}
    params = RoundParameters.create(
        round_id=1,
        roster={p: k.public_key for p, k in ids.items()},
        threshold=2,
        vector_length=1003,
        encoding=FixedPointEncoding.for_clients(clip=1.0, max_clients=2, bits=20),
        deadlines={s: 1.0 for s in ACTIVE_STAGES},
    )
    vector = np.random.default_rng(0).integers(0, 2**20, size=1003, dtype=np.uint32)
    masked = MaskedInput.signed(
        ids[1],
        params.config.digest,
        round_id=1,
        sender=1,
        session_id=bytes(32),
        masked_vector=vector,
    )
    header, _, chunks = masked_input_frames(masked, chunk_words=256, fmt=2, bits=20)
    spool = MaskedInputSpool(
        header.masked_input_header,
        config=params.config,
        party=1,
        session_id=bytes(32),
        spool_dir=tmp_path,
        max_chunk_bytes=640,
        formats=(2, 1),
    )
    for frame in chunks:
        assert len(frame.masked_input_chunk.data) <= 640  # 20 bits per word, not 32
        spool.add(frame.masked_input_chunk)
    got = spool.finish()
    np.testing.assert_array_equal(got.masked_vector, vector)
    got.verify(ids[1].public_key, params.config.digest)
    spool.discard()
