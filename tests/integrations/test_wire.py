"""secagg.wire: every protocol message survives bytes, and malformed bytes are refused."""

from __future__ import annotations

import numpy as np
import pytest

from secagg import wire
from secagg.crypto import IdentityKey
from secagg.errors import MalformedMessage
from secagg.protocol import (
    ClientSession,
    MaskedInput,
    MemoryLedger,
    RoundConfig,
    ServerSession,
    SitePolicy,
)


def _round(bits: int, m: int = 37) -> tuple[RoundConfig, dict[int, ClientSession], ServerSession]:
    ids = {p: IdentityKey.generate() for p in (1, 2, 3, 4)}
    cfg = RoundConfig(
        round_id=9,
        roster={p: k.public_key for p, k in ids.items()},
        threshold=4,
        vector_length=m,
        bits=bits,
    )
    policy = SitePolicy(roster=cfg.roster)
    clients = {
        p: ClientSession(
            cfg, p, ids[p], np.full(m, p, dtype=np.uint32), policy=policy, ledger=MemoryLedger()
        )
        for p in ids
    }
    return cfg, clients, ServerSession(cfg)


@pytest.mark.parametrize("bits", [32, 20])
def test_round_over_wire_bytes_gives_the_exact_sum(bits: int) -> None:
    cfg, clients, server = _round(bits)
    for client in clients.values():
        data = wire.encode_client_message(client.advertise_keys(), bits=bits)
        server.receive(wire.decode_client_message(data, config=cfg))
    outbox = server.close_stage()
    while outbox:
        for p, message in outbox.items():
            received = wire.decode_server_message(wire.encode_server_message(message))
            reply = clients[p].receive(received)
            data = wire.encode_client_message(reply, bits=bits, chunk_words=8)
            server.receive(wire.decode_client_message(data, config=cfg))
        outbox = server.close_stage()
    assert np.array_equal(server.result.total, np.full(cfg.vector_length, 10, dtype=np.uint32))


def _masked_input(m: int = 20) -> tuple[RoundConfig, MaskedInput]:
    cfg, clients, server = _round(32, m)
    for c in clients.values():
        server.receive(c.advertise_keys())
    outbox = server.close_stage()
    replies = {p: clients[p].receive(msg) for p, msg in outbox.items()}
    for r in replies.values():
        server.receive(r)
    bundle = server.close_stage()[1]
    masked = clients[1].receive(bundle)
    assert isinstance(masked, MaskedInput)
    return cfg, masked


def test_masked_input_round_trips_in_chunks() -> None:
    cfg, masked = _masked_input()
    data = wire.encode_client_message(masked, chunk_words=8)
    back = wire.decode_client_message(data, config=cfg)
    assert isinstance(back, MaskedInput)
    assert np.array_equal(back.masked_vector, masked.masked_vector)
    assert back.signature == masked.signature


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:-1],  # truncated chunk
        lambda b: b + b[:5],  # trailing bytes
        lambda b: b"",  # empty
        lambda b: b"\xff" * 11,  # endless varint
        lambda b: b"\x05abc",  # frame longer than the data
    ],
)
def test_malformed_masked_input_is_refused(mutate: object) -> None:
    cfg, masked = _masked_input()
    data = wire.encode_client_message(masked, chunk_words=8)
    with pytest.raises(MalformedMessage):
        wire.decode_client_message(mutate(data), config=cfg)  # type: ignore[operator]


def test_masked_input_of_the_wrong_length_is_refused() -> None:
    cfg, masked = _masked_input(20)
    other, _ = _masked_input(24)
    with pytest.raises(MalformedMessage, match="length"):
        wire.decode_client_message(wire.encode_client_message(masked), config=other)
    assert cfg.vector_length == 20


def test_oversized_message_is_refused_before_parsing() -> None:
    cfg, masked = _masked_input()
    data = wire.encode_client_message(masked)
    with pytest.raises(MalformedMessage, match="limit"):
        wire.decode_client_message(data, config=cfg, max_bytes=len(data) - 1)


def test_server_bytes_with_a_client_frame_are_refused() -> None:
    _, clients, _ = _round(32)
    data = wire.encode_client_message(clients[1].advertise_keys())
    with pytest.raises(MalformedMessage):
        wire.decode_server_message(data)
