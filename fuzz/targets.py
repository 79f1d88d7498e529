"""Hypothesis-based fuzz targets: every decoder and both session state machines.

Each target is ``(strategy, check)``: ``check(value)`` runs one input and raises ``AssertionError``
(or any non-secagg exception) on a finding. The invariant everywhere: only typed secagg errors
(:class:`~secagg.errors.SecAggError`) may escape; and for the sessions, a server never ends with a
wrong sum (it completes with the exact sum of its survivors, or aborts), and a client never reveals
both secrets of one peer, never answers after aborting, and answers at most one unmask request.

Run them with ``python -m fuzz --minutes N``; ``tests/fuzz`` runs a bounded version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import strategies as st

from secagg.audit import RecordFormatError, RoundRecord, verify_records
from secagg.crypto import IdentityKey
from secagg.errors import SecAggError
from secagg.protocol import (
    ACTIVE_STAGES,
    AdversaryClass,
    AdvertiseKeys,
    ClientSession,
    ConsistencySignature,
    KeyRoster,
    MaskedInput,
    MemoryLedger,
    RoundConfig,
    ServerSession,
    ShareBundle,
    ShareKeys,
    SitePolicy,
    Stage,
    SurvivorsRequest,
    UnmaskRequest,
    UnmaskShares,
)

Target = tuple[st.SearchStrategy[Any], Callable[[Any], None]]

# --- generic value mutation ---------------------------------------------------------------------


def _mutate_value(value: Any, rng: random.Random) -> Any:
    """A nearby or wild value of (usually) the same type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return rng.choice([value + 1, value - 1, 0, -1, 2**31, 2**63, 2**64, rng.getrandbits(70)])
    if isinstance(value, bytes):
        choice = rng.randrange(5)
        if choice == 0 and value:
            i = rng.randrange(len(value))
            return value[:i] + bytes([value[i] ^ (1 << rng.randrange(8))]) + value[i + 1 :]
        if choice == 1:
            return value[: rng.randrange(len(value) + 1)]
        if choice == 2:
            return value + rng.randbytes(rng.randrange(1, 40))
        if choice == 3:
            return rng.randbytes(len(value))
        return "not bytes"
    if isinstance(value, np.ndarray):
        choice = rng.randrange(4)
        out = value.copy()
        if choice == 0 and out.size:
            out[rng.randrange(out.size)] ^= np.uint32(1 << rng.randrange(32))
            return out
        if choice == 1:
            return out[: rng.randrange(out.size + 1)]
        if choice == 2:
            return out.astype(np.int64)
        return np.concatenate([out, out])
    if isinstance(value, tuple):
        items = list(value)
        choice = rng.randrange(6)
        if choice == 0 and items:
            del items[rng.randrange(len(items))]
        elif choice == 1 and items:
            items.append(items[rng.randrange(len(items))])
        elif choice == 2:
            items.reverse()
        elif choice == 3 and items:
            i = rng.randrange(len(items))
            items[i] = _mutate_value(items[i], rng)
        elif choice == 4:
            items.append(rng.choice([1, b"x", (1, b"y"), None]))
        else:
            return list(items)
        return tuple(items)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _mutate_message(value, rng)
    return rng.choice([None, 0, b"", "x"])


def _mutate_message(message: Any, rng: random.Random) -> Any:
    """The message with one field mutated, re-validated (MalformedMessage is a valid outcome)."""
    names = [f.name for f in dataclasses.fields(message)]
    name = rng.choice(names)
    return dataclasses.replace(message, **{name: _mutate_value(getattr(message, name), rng)})


# --- target 1: message constructors -------------------------------------------------------------

_FIELD = st.one_of(
    st.integers(-(2**65), 2**65),
    st.binary(max_size=80),
    st.tuples(),
    st.lists(st.integers(-3, 2**31), max_size=6).map(tuple),
    st.lists(st.tuples(st.integers(-3, 40), st.binary(max_size=120)), max_size=4).map(tuple),
    st.none(),
    st.text(max_size=5),
    st.just(np.zeros(3, dtype=np.uint32)),
    st.just(np.zeros((2, 2), dtype=np.uint32)),
)
_MESSAGE_TYPES = (
    AdvertiseKeys,
    ShareKeys,
    MaskedInput,
    ConsistencySignature,
    UnmaskShares,
    KeyRoster,
    ShareBundle,
    SurvivorsRequest,
    UnmaskRequest,
)


def _check_constructor(case: tuple[int, list[Any]]) -> None:
    index, values = case
    cls: Any = _MESSAGE_TYPES[index % len(_MESSAGE_TYPES)]
    names = [f.name for f in dataclasses.fields(cls)]
    args = (values * (len(names) // max(len(values), 1) + 1))[: len(names)] if values else []
    with contextlib.suppress(SecAggError):
        cls(*args) if len(args) == len(names) else cls(*([None] * len(names)))


MESSAGES: Target = (
    st.tuples(st.integers(0, 100), st.lists(_FIELD, min_size=1, max_size=7)),
    _check_constructor,
)

# --- shared: a real round ----------------------------------------------------------------------


@dataclasses.dataclass
class _World:
    config: RoundConfig
    identities: dict[int, IdentityKey]
    inputs: dict[int, np.ndarray]


@functools.lru_cache(maxsize=16)
def _world(n: int, threshold: int, degree: int | None, length: int) -> _World:
    identities = {p: IdentityKey.generate() for p in range(1, n + 1)}
    config = RoundConfig(
        round_id=5,
        roster={p: k.public_key for p, k in identities.items()},
        threshold=threshold,
        vector_length=length,
        degree=degree,
        bits=32,
    )
    rng = np.random.default_rng(n * 100 + threshold)
    inputs = {
        p: rng.integers(0, 2**32, length, dtype=np.uint64).astype(np.uint32) for p in identities
    }
    return _World(config, identities, inputs)


def _policy(config: RoundConfig) -> SitePolicy:
    # The fuzzer explores every threshold, so its sites accept any (a relaxed policy, by name).
    return SitePolicy(
        roster=config.roster, adversary=AdversaryClass.CURIOUS_SERVER, corrupt_fraction=0
    )


def _clients(world: _World) -> dict[int, ClientSession]:
    cfg = world.config
    return {
        p: ClientSession(
            cfg,
            p,
            world.identities[p],
            world.inputs[p],
            policy=_policy(cfg),
            ledger=MemoryLedger(),
        )
        for p in cfg.roster
    }


@st.composite
def _round_params(draw: st.DrawFn) -> tuple[int, int, int | None, int]:
    n = draw(st.integers(3, 7))
    degree = draw(st.sampled_from([None, 2])) if n >= 5 else None
    neighbourhood = n if degree is None else degree + 1
    threshold = draw(st.integers(2, neighbourhood))
    return n, threshold, degree, draw(st.integers(1, 5))


# --- target 2: sessions under adversarial delivery --------------------------------------------

_ATTACKS = ("drop", "duplicate", "mutate", "mutate", "replay", "replay", "other-round")


def _check_sessions(case: tuple[tuple[int, int, int | None, int], int, float]) -> None:
    (n, threshold, degree, length), seed, chaos = case
    world = _world(n, threshold, degree, length)
    cfg = world.config
    rng = random.Random(seed)
    clients = _clients(world)
    server = ServerSession(cfg)
    tainted: set[int] = (
        set()
    )  # clients that got a tampered server message: their replies stay local
    history: list[Any] = []
    unmask_replies: dict[int, int] = {}

    def to_server(message: Any) -> None:
        action = rng.choice(_ATTACKS) if rng.random() < chaos else "deliver"
        batch = []
        if action == "deliver":
            batch = [message]
        elif action == "duplicate":
            batch = [message, message]
        elif action == "mutate":
            try:
                batch = [_mutate_message(message, rng), message]
            except SecAggError:
                batch = [message]
        elif action == "replay" and history:
            batch = [rng.choice(history), message]
        elif action == "other-round":
            try:
                batch = [dataclasses.replace(message, round_id=cfg.round_id + 1)]
            except SecAggError:
                batch = []
        for m in batch:
            with contextlib.suppress(SecAggError):
                server.receive(m)
        history.append(message)

    def to_client(p: int, message: Any) -> None:
        client = clients[p]
        roll = rng.random() / chaos if chaos else 1.0
        if roll < 0.1:
            return  # the client never hears from the server again: a dropout
        if roll < 0.2:
            try:
                message = _mutate_message(message, rng)
            except SecAggError:
                return
            tainted.add(p)
        was_aborted = client.stage is Stage.ABORTED
        try:
            reply = client.receive(message)
        except SecAggError:
            assert client.stage.is_terminal
            return
        assert not was_aborted, "an aborted client answered"
        if isinstance(reply, UnmaskShares):
            unmask_replies[p] = unmask_replies.get(p, 0) + 1
            assert unmask_replies[p] == 1, "a client answered two unmask requests"
            owners_a = {o for o, _ in reply.self_mask_shares}
            owners_b = {o for o, _ in reply.mask_key_shares}
            assert not owners_a & owners_b, "a client revealed both secrets of a peer"
        if p not in tainted:
            to_server(reply)

    order = list(cfg.roster)
    for p in order:
        if rng.random() >= 0.1 * chaos:
            to_server(clients[p].advertise_keys())
    for stage in ACTIVE_STAGES:
        try:
            outbox = server.close_stage()
        except SecAggError:
            assert server.stage is Stage.ABORTED
            return
        if server.stage is Stage.COMPLETED:
            break
        items = list(outbox.items())
        rng.shuffle(items)
        for p, message in items:
            to_client(p, message)
            if rng.random() < 0.1 * chaos:
                to_client(p, message)  # a duplicated server message
        del stage
    assert server.stage is Stage.COMPLETED
    result = server.result
    expected = np.zeros(cfg.vector_length, dtype=np.uint64)
    for p in result.survivors:
        expected += world.inputs[p]
    expected &= np.uint64(cfg.modulus_mask)
    assert np.array_equal(result.total, expected.astype(np.uint32)), "the server summed wrongly"


SESSIONS: Target = (
    st.tuples(_round_params(), st.integers(0, 2**64 - 1), st.floats(0.0, 0.6)),
    _check_sessions,
)

# --- target 3: audit record decoder and chain verifier ----------------------------------------


@functools.lru_cache(maxsize=1)
def _sample_chain() -> tuple[list[str], Any]:
    from secagg.audit import RecordChain, run_recorded_round

    world = _world(4, 3, None, 3)
    key = IdentityKey.generate()
    chain = RecordChain()
    for _ in range(2):
        run_recorded_round(
            world.config,
            world.identities,
            world.inputs,
            chain,
            aggregator_key=key,
            dropouts={Stage.MASKED_INPUT: {4}},
            created_at="2026-11-03T10:15:00+00:00",
            policy=_policy(world.config),
        )
        world = dataclasses.replace(world, config=dataclasses.replace(world.config, round_id=6))
    return [r.to_json() for r in chain], key.public_key


def _check_records(case: tuple[int, int, bytes]) -> None:
    which, seed, junk = case
    lines, key = _sample_chain()
    rng = random.Random(seed)
    if which == 0:  # raw junk
        with contextlib.suppress(RecordFormatError):
            RoundRecord.from_json(junk)
        return
    raw = bytearray(lines[seed % len(lines)].encode())
    for _ in range(1 + rng.randrange(3)):
        op = rng.randrange(3)
        pos = rng.randrange(len(raw))
        if op == 0:
            raw[pos] = rng.randrange(256)
        elif op == 1:
            del raw[pos : pos + rng.randrange(1, 8)]
        else:
            raw[pos:pos] = junk[:16]
    mutated: list[str | bytes] = [*lines]
    mutated[seed % len(lines)] = bytes(raw)
    report = verify_records(mutated, aggregator_key=key)
    if bytes(raw) != lines[seed % len(lines)].encode():
        assert not report.ok, "a modified record was accepted"


RECORDS: Target = (
    st.tuples(st.integers(0, 3), st.integers(0, 2**32), st.binary(max_size=200)),
    _check_records,
)

# --- target 4: CKKS wire decoders ------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _he_fixture() -> tuple[Any, ...]:
    from secagg.he import CkksParameters, Layout
    from secagg.he.packing import KIND_UPDATE, ChunkHeader, encode_chunk, encode_sum

    params = CkksParameters()
    layout = Layout.for_arrays({"w": (3, 4), "b": (5,)}, params)
    key_id = bytes(range(32))
    header = ChunkHeader(
        KIND_UPDATE, params.digest(), key_id, layout.digest(), 0, layout.chunk_count, 17, 17
    )
    chunk = encode_chunk(header, b"payload-bytes")
    total = encode_sum(
        params=params, key_id=key_id, layout=layout, sites=("a", "b"), chunks=[chunk]
    )
    return params, layout, key_id, chunk, total


def _check_he(case: tuple[int, int, bytes]) -> None:
    from secagg.he import Layout
    from secagg.he.packing import KIND_UPDATE, parse_chunk, parse_sum

    which, seed, junk = case
    params, layout, key_id, chunk, total = _he_fixture()
    rng = random.Random(seed)
    base = [layout.to_bytes(), chunk, total][which % 3]
    data = bytearray(base if rng.random() < 0.8 else junk)
    for _ in range(rng.randrange(4)):
        if data:
            pos = rng.randrange(len(data))
            data[pos] = rng.randrange(256) if rng.random() < 0.7 else 0xFF
    if rng.random() < 0.2:
        data = data[: rng.randrange(len(data) + 1)]
    try:
        if which % 3 == 0:
            Layout.from_bytes(bytes(data))
        elif which % 3 == 1:
            parse_chunk(bytes(data), kind=KIND_UPDATE, params=params, key_id=key_id, layout=layout)
        else:
            parse_sum(bytes(data), params=params, key_id=key_id)
    except SecAggError:
        pass


HE: Target = (
    st.tuples(st.integers(0, 2), st.integers(0, 2**32), st.binary(max_size=300)),
    _check_he,
)

# --- target 5: gRPC codec (protobuf frames -> protocol messages) ----------------------------


@functools.lru_cache(maxsize=1)
def _codec_frames() -> list[tuple[str, bytes]]:
    """Valid encoded client and server frames of a real round, to mutate."""
    from secagg.transport.codec import encode_client_message, encode_server_message

    world = _world(4, 3, None, 3)
    clients = _clients(world)
    server = ServerSession(world.config)
    frames: list[tuple[str, bytes]] = []
    for c in clients.values():
        ad = c.advertise_keys()
        frames.append(("client", encode_client_message(ad).SerializeToString()))
        server.receive(ad)
    for _ in range(3):
        outbox = server.close_stage()
        for p, message in outbox.items():
            frames.append(("server", encode_server_message(message).SerializeToString()))
            reply = clients[p].receive(message)
            if not isinstance(reply, MaskedInput):
                frames.append(("client", encode_client_message(reply).SerializeToString()))
            server.receive(reply)
    return frames


def _check_codec(case: tuple[int, int, bytes]) -> None:
    from google.protobuf.message import DecodeError

    from secagg.transport._gen.secagg.v1 import aggregator_pb2 as pb
    from secagg.transport.codec import decode_client_message, decode_server_frame

    which, seed, junk = case
    frames = _codec_frames()
    side, base = frames[which % len(frames)]
    rng = random.Random(seed)
    data = bytearray(base if rng.random() < 0.85 else junk)
    for _ in range(rng.randrange(4)):
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)
    if rng.random() < 0.2:
        data[rng.randrange(len(data) + 1) :] = junk[:20]
    try:
        if side == "client":
            decode_client_message(pb.ClientFrame.FromString(bytes(data)))
        else:
            decode_server_frame(pb.ServerFrame.FromString(bytes(data)))
    except (SecAggError, DecodeError):  # DecodeError: protobuf's own parser, before the codec
        pass


CODEC: Target = (
    st.tuples(st.integers(0, 10_000), st.integers(0, 2**32), st.binary(max_size=100)),
    _check_codec,
)

TARGETS: dict[str, Target] = {
    "messages": MESSAGES,
    "sessions": SESSIONS,
    "records": RECORDS,
    "he": HE,
    "codec": CODEC,
}

__all__ = ["TARGETS", "Target"]
