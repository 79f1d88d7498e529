"""Protobuf <-> protocol messages, with every size and shape check the wire needs.

Decoding never trusts a length field: byte strings are checked against their exact sizes (the
dataclasses of :mod:`secagg.protocol.messages` check the rest on construction and raise
:class:`~secagg.errors.MalformedMessage`). Masked inputs travel as a signed header followed by
chunks; :class:`MaskedInputSpool` receives them on the server into a file, in order, and only a
complete, well-formed stream becomes a :class:`~secagg.protocol.MaskedInput` (a read-only memmap
of the spool), so the server's memory stays O(m) whatever the number of clients.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import pathlib
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.accounting.report import SiteRecordLevelDP
from secagg.crypto import (
    PROTOCOL_VERSION,
    SHARE_BYTES,
    IdentityKey,
    IdentityPublicKey,
    lp_encode,
    transcript_digest,
)
from secagg.dp.distributed import DistributedDPConfig
from secagg.encoding import FixedPointEncoding
from secagg.errors import (
    ConfigError,
    InvalidSignature,
    MalformedMessage,
    ReplayedMessage,
    UnexpectedMessage,
)
from secagg.protocol import (
    ACTIVE_STAGES,
    AdvertiseKeys,
    Complaint,
    ConsistencySignature,
    InboxKey,
    KeyRoster,
    MaskedInput,
    RoundConfig,
    ServerMessage,
    ShareBundle,
    ShareEntry,
    ShareKeys,
    Stage,
    SurvivorsRequest,
    UnmaskRequest,
    UnmaskShares,
)
from secagg.transport import words
from secagg.transport._gen.secagg.v1 import aggregator_pb2 as pb
from secagg.transport.errors import LimitExceeded

__all__ = [
    "DEFAULT_CHUNK_WORDS",
    "MaskedInputSpool",
    "RoundParameters",
    "decode_client_message",
    "decode_record_statement",
    "decode_server_frame",
    "distributed_dp_from_json",
    "distributed_dp_to_json",
    "encode_client_message",
    "encode_server_message",
    "hello_payload",
    "join_payload",
    "masked_input_frames",
    "request_payload",
    "result_digest",
    "sign_hello",
    "sign_join",
    "sign_record_statement",
    "sign_request",
    "verify_hello",
    "verify_join",
    "verify_request",
]

DEFAULT_CHUNK_WORDS = 1 << 18  # 1 MiB of uint32 per chunk: far below gRPC's 4 MiB default limit
IN_MEMORY_SPOOL_BYTES = 1 << 20
"""Masked inputs up to this size are received in memory, larger ones into a spool file."""
_JOIN_CONTEXT = lp_encode(PROTOCOL_VERSION, "transport", "join")
_HELLO_CONTEXT = lp_encode(PROTOCOL_VERSION, "transport", "hello")
_REQUEST_CONTEXT = lp_encode(PROTOCOL_VERSION, "transport", "request")
_RECORD_DP_CONTEXT = lp_encode(PROTOCOL_VERSION, "transport", "record-dp")
MAX_STATEMENT_BYTES = 4096
_MAX_PARTY = 2**31 - 2


# --- round parameters ---------------------------------------------------------------------------


def distributed_dp_to_json(config: DistributedDPConfig) -> str:
    """Canonical JSON of a distributed-DP configuration (what the round binds and clients parse)."""
    return json.dumps(
        dataclasses.asdict(config), sort_keys=True, separators=(",", ":"), allow_nan=False
    )


def distributed_dp_from_json(text: str) -> DistributedDPConfig:
    """Parse :func:`distributed_dp_to_json` output (MalformedMessage if it is not one)."""
    try:
        d = json.loads(text)
        names = {f.name for f in dataclasses.fields(DistributedDPConfig)}
        if not isinstance(d, dict) or set(d) != names:
            raise ValueError("unexpected fields")
        config = DistributedDPConfig(**d)
    except (ValueError, TypeError, ConfigError) as exc:
        raise MalformedMessage(
            f"the round's distributed-DP configuration is invalid: {exc}"
        ) from None
    if distributed_dp_to_json(config) != text:
        raise MalformedMessage("the round's distributed-DP configuration is not canonical")
    return config


def context_digest(encoding: FixedPointEncoding, context: bytes, distributed_dp: str = "") -> bytes:
    """Binds the encoding, the operator's context and the site-level DP parameters into the round
    (RoundConfig.context_digest).

    Clients recompute it, so a server cannot give two clients different encodings (or noise
    levels) in one round. Without distributed DP the digest is the one of earlier versions.
    """
    parts: list[bytes | str | int] = [
        struct.pack("<d", encoding.clip),
        struct.pack("<d", encoding.scale),
        encoding.max_clients,
        encoding.bits,
        context,
    ]
    if distributed_dp:
        return transcript_digest("secagg.v1/round-context+distributed-dp", *parts, distributed_dp)
    return transcript_digest("secagg.v1/round-context", *parts)


@dataclass(frozen=True)
class RoundParameters:
    """Everything a client is told about a round: the protocol config, encoding and deadlines."""

    config: RoundConfig
    encoding: FixedPointEncoding
    deadlines: Mapping[Stage, float] = field(repr=False)
    context: bytes = b""
    distributed_dp: DistributedDPConfig | None = None

    @property
    def distributed_dp_json(self) -> str:
        return "" if self.distributed_dp is None else distributed_dp_to_json(self.distributed_dp)

    def __post_init__(self) -> None:
        expected = context_digest(self.encoding, self.context, self.distributed_dp_json)
        if self.config.context_digest != expected:
            raise ConfigError("the round's context digest does not bind its encoding and context")
        dp = self.distributed_dp
        if dp is not None:
            if dp.bits != self.config.bits:
                raise ConfigError(
                    f"[distributed_dp] bits = {dp.bits}, the round sums in Z_(2^{self.config.bits})"
                )
            if dp.padded_dimension != self.config.vector_length:
                raise ConfigError(
                    f"distributed DP encodes {dp.dimension} values into {dp.padded_dimension} "
                    f"coordinates, the round's vector_length is {self.config.vector_length}"
                )
            if dp.min_clients > self.config.threshold:
                raise ConfigError(
                    f"[distributed_dp] min_clients = {dp.min_clients} exceeds the threshold "
                    f"{self.config.threshold}: a round could complete with less noise than promised"
                )
            if dp.expected_clients < len(self.config.roster):
                raise ConfigError(
                    f"[distributed_dp] expected_clients = {dp.expected_clients} is below the "
                    f"roster size {len(self.config.roster)}"
                )
        if self.encoding.bits != self.config.bits:
            raise ConfigError("the encoding and the round disagree on bits")
        if self.encoding.max_clients < len(self.config.roster):
            raise ConfigError("the encoding cannot hold the sum of every roster party")
        if set(self.deadlines) != set(ACTIVE_STAGES) or not all(
            0 < d <= 86_400 for d in self.deadlines.values()
        ):
            raise ConfigError("every stage needs a deadline in (0, 86400] seconds")

    @classmethod
    def create(
        cls,
        *,
        round_id: int,
        roster: Mapping[int, IdentityPublicKey],
        threshold: int,
        vector_length: int,
        encoding: FixedPointEncoding,
        deadlines: Mapping[Stage, float],
        degree: int | None = None,
        context: bytes = b"",
        distributed_dp: DistributedDPConfig | None = None,
    ) -> RoundParameters:
        dp_json = "" if distributed_dp is None else distributed_dp_to_json(distributed_dp)
        config = RoundConfig(
            round_id=round_id,
            roster=roster,
            threshold=threshold,
            vector_length=vector_length,
            bits=encoding.bits,
            degree=degree,
            context_digest=context_digest(encoding, context, dp_json),
        )
        return cls(config, encoding, dict(deadlines), context, distributed_dp)

    def to_proto(self) -> pb.RoundConfig:
        cfg, enc = self.config, self.encoding
        ms = {s: round(self.deadlines[s] * 1000) for s in ACTIVE_STAGES}
        return pb.RoundConfig(
            round_id=cfg.round_id,
            roster=[
                pb.RosterEntry(party=p, identity_public_key=k.to_bytes())
                for p, k in cfg.roster.items()
            ],
            threshold=cfg.threshold,
            vector_length=cfg.vector_length,
            bits=cfg.bits,
            degree=cfg.degree or 0,
            context_digest=cfg.context_digest,
            encoding=pb.Encoding(clip=enc.clip, scale=enc.scale, max_clients=enc.max_clients),
            deadlines=pb.StageDeadlines(
                advertise_keys_ms=ms[Stage.ADVERTISE_KEYS],
                share_keys_ms=ms[Stage.SHARE_KEYS],
                masked_input_ms=ms[Stage.MASKED_INPUT],
                consistency_check_ms=ms[Stage.CONSISTENCY_CHECK],
                unmask_ms=ms[Stage.UNMASK],
            ),
            config_digest=cfg.digest,
            context=self.context,
            distributed_dp=self.distributed_dp_json,
        )

    @classmethod
    def from_proto(cls, msg: pb.RoundConfig) -> RoundParameters:
        """Rebuild and re-check the parameters a server sent (MalformedMessage if inconsistent)."""
        try:
            roster: dict[int, IdentityPublicKey] = {}
            for entry in msg.roster:
                if entry.party in roster:
                    raise MalformedMessage(f"the roster lists party {entry.party} twice")
                roster[entry.party] = IdentityPublicKey.from_bytes(entry.identity_public_key)
            encoding = FixedPointEncoding(
                clip=msg.encoding.clip,
                scale=msg.encoding.scale,
                max_clients=msg.encoding.max_clients,
                bits=msg.bits,
            )
            d = msg.deadlines
            deadlines = {
                Stage.ADVERTISE_KEYS: d.advertise_keys_ms / 1000,
                Stage.SHARE_KEYS: d.share_keys_ms / 1000,
                Stage.MASKED_INPUT: d.masked_input_ms / 1000,
                Stage.CONSISTENCY_CHECK: d.consistency_check_ms / 1000,
                Stage.UNMASK: d.unmask_ms / 1000,
            }
            params = cls.create(
                round_id=msg.round_id,
                roster=roster,
                threshold=msg.threshold,
                vector_length=msg.vector_length,
                encoding=encoding,
                deadlines=deadlines,
                degree=msg.degree or None,
                context=msg.context,
                distributed_dp=(
                    distributed_dp_from_json(msg.distributed_dp) if msg.distributed_dp else None
                ),
            )
        except ConfigError as exc:
            raise MalformedMessage(f"the round configuration is invalid: {exc}") from exc
        if params.config.context_digest != msg.context_digest:
            raise MalformedMessage("the round's context digest does not match its encoding")
        if params.config.digest != msg.config_digest:
            raise MalformedMessage("the round's config digest does not match its parameters")
        return params


# --- authentication of the stream and of unary requests ---------------------------------------


def join_payload(nonce: bytes, config_digest: bytes, round_id: int, party: int) -> bytes:
    return lp_encode("join", nonce, config_digest, round_id, party)


def sign_join(
    identity: IdentityKey, nonce: bytes, config_digest: bytes, round_id: int, party: int
) -> bytes:
    return identity.sign(_JOIN_CONTEXT, join_payload(nonce, config_digest, round_id, party))


def verify_join(
    key: IdentityPublicKey,
    signature: bytes,
    nonce: bytes,
    config_digest: bytes,
    round_id: int,
    party: int,
) -> None:
    """Raise InvalidSignature unless ``key`` signed this stream's nonce and the round config."""
    key.verify(signature, _JOIN_CONTEXT, join_payload(nonce, config_digest, round_id, party))


def hello_payload(nonce: bytes, identity_public_key: bytes) -> bytes:
    return lp_encode("hello", nonce, identity_public_key)


def sign_hello(identity: IdentityKey, nonce: bytes) -> bytes:
    """Proof of possession of the identity key, over the stream's challenge nonce."""
    return identity.sign(_HELLO_CONTEXT, hello_payload(nonce, identity.public_key.to_bytes()))


def verify_hello(key: IdentityPublicKey, signature: bytes, nonce: bytes) -> None:
    """Raise InvalidSignature unless the holder of ``key`` signed this stream's challenge."""
    key.verify(signature, _HELLO_CONTEXT, hello_payload(nonce, key.to_bytes()))


def request_payload(method: str, request: bytes, issued_at_ms: int) -> bytes:
    return lp_encode("request", method, request, issued_at_ms)


def sign_request(
    identity: IdentityKey, method: str, request: bytes, issued_at_ms: int
) -> pb.RequestAuth:
    """The authentication of a unary request: ``request`` is its canonical fields (lp_encode)."""
    return pb.RequestAuth(
        identity_public_key=identity.public_key.to_bytes(),
        issued_at_ms=issued_at_ms,
        signature=identity.sign(_REQUEST_CONTEXT, request_payload(method, request, issued_at_ms)),
    )


def verify_request(
    auth: pb.RequestAuth, method: str, request: bytes, *, now_ms: int, window_ms: int
) -> IdentityPublicKey:
    """The identity that signed ``auth`` for this method and request (InvalidSignature if none,
    or if it was issued outside ``window_ms`` of ``now_ms``)."""
    try:
        key = IdentityPublicKey.from_bytes(bytes(auth.identity_public_key))
    except ConfigError:
        raise InvalidSignature("the request is not signed by an Ed25519 identity") from None
    skew = abs(now_ms - int(auth.issued_at_ms))
    if skew > window_ms:
        raise InvalidSignature(
            f"the request was issued {skew / 1000:.0f} s away from the aggregator's clock "
            f"(at most {window_ms // 1000} s)"
        )
    key.verify(
        bytes(auth.signature),
        _REQUEST_CONTEXT,
        request_payload(method, request, int(auth.issued_at_ms)),
    )
    return key


def record_statement_payload(
    config_digest: bytes, round_id: int, party: int, statement_json: str
) -> bytes:
    return lp_encode("record-dp", config_digest, round_id, party, statement_json)


def sign_record_statement(
    identity: IdentityKey,
    statement: SiteRecordLevelDP,
    *,
    config_digest: bytes,
    round_id: int,
    party: int,
) -> pb.ClientFrame:
    """The signed frame carrying a site's record-level DP statement for this round."""
    text = json.dumps(statement.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)
    signature = identity.sign(
        _RECORD_DP_CONTEXT, record_statement_payload(config_digest, round_id, party, text)
    )
    return pb.ClientFrame(
        record_level_statement=pb.RecordLevelStatement(
            round_id=round_id, party=party, statement_json=text, signature=signature
        )
    )


def decode_record_statement(
    msg: pb.RecordLevelStatement, *, key: IdentityPublicKey, config_digest: bytes, round_id: int
) -> tuple[SiteRecordLevelDP, dict[str, Any]]:
    """Check a statement frame (size, round, signature, schema): the statement and what to store.

    Raises MalformedMessage, UnexpectedMessage or InvalidSignature.
    """
    if len(msg.statement_json) > MAX_STATEMENT_BYTES:
        raise LimitExceeded(f"a record-level statement is at most {MAX_STATEMENT_BYTES} bytes")
    if msg.round_id != round_id:
        raise UnexpectedMessage(
            f"record-level statement for round {msg.round_id}, this stream is in round {round_id}"
        )
    key.verify(
        msg.signature,
        _RECORD_DP_CONTEXT,
        record_statement_payload(config_digest, round_id, msg.party, msg.statement_json),
    )
    try:
        statement = SiteRecordLevelDP.from_dict(json.loads(msg.statement_json))
    except (ValueError, TypeError, KeyError, ConfigError) as exc:
        raise MalformedMessage(f"the record-level statement is invalid: {exc}") from None
    stored = {
        "party": int(msg.party),
        "statement_json": msg.statement_json,
        "signature": bytes(msg.signature).hex(),
    }
    return statement, stored


def result_digest(total: npt.NDArray[np.uint32]) -> bytes:
    """BLAKE2b-256 of the little-endian bytes of an aggregate (sent in outcomes and headers)."""
    import hashlib

    h = hashlib.blake2b(digest_size=32)
    step = DEFAULT_CHUNK_WORDS
    for lo in range(0, len(total), step):
        h.update(np.ascontiguousarray(total[lo : lo + step], dtype="<u4").data)
    return h.digest()


# --- client messages ---------------------------------------------------------------------------


def _pairs(items: object, value_bytes: int | None, what: str) -> tuple[tuple[int, bytes], ...]:
    out = []
    for item in items:  # type: ignore[attr-defined]
        if value_bytes is not None and len(item.value) != value_bytes:
            raise MalformedMessage(
                f"each {what} must be {value_bytes} bytes, got {len(item.value)}"
            )
        out.append((int(item.party), bytes(item.value)))
    return tuple(out)


def _to_pairs(pairs: tuple[tuple[int, bytes], ...]) -> list[pb.PartyBytes]:
    return [pb.PartyBytes(party=p, value=v) for p, v in pairs]


def _entry_to_proto(e: ShareEntry) -> pb.ShareEntry:
    return pb.ShareEntry(
        receiver=e.receiver,
        ciphertext=e.ciphertext,
        seed_commitment=e.seed_commitment,
        key_commitment=e.key_commitment,
        signature=e.signature,
    )


def _entry_from_proto(m: pb.ShareEntry) -> ShareEntry:
    return ShareEntry(
        int(m.receiver), m.ciphertext, m.seed_commitment, m.key_commitment, m.signature
    )


def _advertise_to_proto(a: AdvertiseKeys) -> pb.AdvertiseKeys:
    return pb.AdvertiseKeys(
        round_id=a.round_id,
        sender=a.sender,
        cipher_public_key=a.cipher_public_key,
        mask_public_key=a.mask_public_key,
        seed_commitment=a.seed_commitment,
        inbox_keys=[
            pb.InboxKey(dealer=k.dealer, public_key=k.public_key, signature=k.signature)
            for k in a.inbox_keys
        ],
        signature=a.signature,
    )


def _advertise_from_proto(m: pb.AdvertiseKeys) -> AdvertiseKeys:
    return AdvertiseKeys(
        int(m.round_id),
        int(m.sender),
        m.cipher_public_key,
        m.mask_public_key,
        m.seed_commitment,
        tuple(InboxKey(int(k.dealer), k.public_key, k.signature) for k in m.inbox_keys),
        m.signature,
    )


def complaints_to_proto(complaints: tuple[Complaint, ...]) -> list[pb.Complaint]:
    return [
        pb.Complaint(
            dealer=c.dealer,
            inbox_private_key=c.inbox_private_key,
            entry=_entry_to_proto(c.entry),
        )
        for c in complaints
    ]


def complaints_from_proto(items: object) -> tuple[Complaint, ...]:
    return tuple(
        Complaint(int(c.dealer), c.inbox_private_key, _entry_from_proto(c.entry))
        for c in items  # type: ignore[attr-defined]
    )


def encode_client_message(
    message: AdvertiseKeys | ShareKeys | ConsistencySignature | UnmaskShares,
) -> pb.ClientFrame:
    """Frame a client message (masked inputs go through :func:`masked_input_frames`)."""
    if isinstance(message, AdvertiseKeys):
        return pb.ClientFrame(advertise_keys=_advertise_to_proto(message))
    if isinstance(message, ShareKeys):
        return pb.ClientFrame(
            share_keys=pb.ShareKeys(
                round_id=message.round_id,
                sender=message.sender,
                session_id=message.session_id,
                entries=[_entry_to_proto(e) for e in message.entries],
                signature=message.signature,
            )
        )
    if isinstance(message, ConsistencySignature):
        return pb.ClientFrame(
            consistency_signature=pb.ConsistencySignature(
                round_id=message.round_id,
                sender=message.sender,
                session_id=message.session_id,
                survivors_digest=message.survivors_digest,
                signature=message.signature,
            )
        )
    if isinstance(message, UnmaskShares):
        return pb.ClientFrame(
            unmask_shares=pb.UnmaskShares(
                round_id=message.round_id,
                sender=message.sender,
                session_id=message.session_id,
                survivors_digest=message.survivors_digest,
                self_mask_shares=_to_pairs(message.self_mask_shares),
                mask_key_shares=_to_pairs(message.mask_key_shares),
                signature=message.signature,
            )
        )
    raise TypeError(f"cannot frame {type(message).__name__}")


def decode_client_message(
    frame: pb.ClientFrame,
) -> AdvertiseKeys | ShareKeys | ConsistencySignature | UnmaskShares:
    """The protocol message in a frame (not Hello/Join/masked-input frames)."""
    kind = frame.WhichOneof("frame")
    if kind == "advertise_keys":
        return _advertise_from_proto(frame.advertise_keys)
    if kind == "share_keys":
        m = frame.share_keys
        return ShareKeys(
            int(m.round_id),
            int(m.sender),
            m.session_id,
            tuple(_entry_from_proto(e) for e in m.entries),
            m.signature,
        )
    if kind == "consistency_signature":
        c = frame.consistency_signature
        return ConsistencySignature(
            int(c.round_id), int(c.sender), c.session_id, c.survivors_digest, c.signature
        )
    if kind == "unmask_shares":
        u = frame.unmask_shares
        return UnmaskShares(
            int(u.round_id),
            int(u.sender),
            u.session_id,
            u.survivors_digest,
            _pairs(u.self_mask_shares, SHARE_BYTES, "self-mask share"),
            _pairs(u.mask_key_shares, SHARE_BYTES, "mask-key share"),
            u.signature,
        )
    raise MalformedMessage(f"frame {kind or 'with no content'} is not a protocol message")


# --- masked input: header + chunks ----------------------------------------------------------------


def masked_input_frames(
    message: MaskedInput, *, chunk_words: int, fmt: int, bits: int
) -> tuple[pb.ClientFrame, int, Iterator[pb.ClientFrame]]:
    """The header frame, the number of chunks and a lazy iterator over the chunk frames."""
    if chunk_words < 8 or chunk_words % 8:
        raise ConfigError("chunk_words must be a positive multiple of 8")
    v = message.masked_vector
    length = len(v)
    count = max(1, math.ceil(length / chunk_words))
    header = pb.ClientFrame(
        masked_input_header=pb.MaskedInputHeader(
            round_id=message.round_id,
            sender=message.sender,
            session_id=message.session_id,
            length=length,
            chunk_words=chunk_words,
            chunk_count=count,
            format=fmt,  # type: ignore[arg-type]
            signature=message.signature,
            complaints=complaints_to_proto(message.complaints),
        )
    )

    def chunks() -> Iterator[pb.ClientFrame]:
        for index in range(count):
            lo = index * chunk_words
            data = words.encode_words(v[lo : lo + chunk_words], fmt, bits)
            yield pb.ClientFrame(
                masked_input_chunk=pb.MaskedInputChunk(index=index, offset=lo, data=data)
            )

    return header, count, chunks()


class MaskedInputSpool:
    """Server side of one masked-input upload: header, then chunks in order, into a spool file.

    Every check happens before a byte is written: round, sender, length, format, chunk size,
    order, duplicates, and the total. The file is deleted by :meth:`discard` (also on success,
    once the core has added the input into its accumulator).
    """

    def __init__(
        self,
        header: pb.MaskedInputHeader,
        *,
        config: RoundConfig,
        party: int,
        session_id: bytes,
        spool_dir: pathlib.Path,
        max_chunk_bytes: int,
        formats: tuple[int, ...],
    ) -> None:
        if header.round_id != config.round_id:
            raise UnexpectedMessage(
                f"masked input for round {header.round_id}, this stream is in round "
                f"{config.round_id}"
            )
        if header.sender != party:
            raise MalformedMessage(
                f"masked input claims sender {header.sender}, the stream is party {party}"
            )
        if header.session_id != session_id:
            raise ReplayedMessage("masked input belongs to another session of this round")
        if header.length != config.vector_length:
            raise MalformedMessage(
                f"masked input has length {header.length}, the round's vectors have "
                f"{config.vector_length}"
            )
        if header.format not in formats:
            raise MalformedMessage(f"masked input format {header.format} is not accepted here")
        if header.chunk_words < 8 or header.chunk_words % 8:
            raise MalformedMessage("chunk_words must be a positive multiple of 8")
        self.fmt = int(header.format)
        self.bits = config.bits
        per_chunk = words.chunk_bytes(header.chunk_words, self.fmt, self.bits)
        if per_chunk > max_chunk_bytes:
            raise LimitExceeded(
                f"chunks of {header.chunk_words} words are {per_chunk} bytes, the limit is "
                f"{max_chunk_bytes} bytes"
            )
        expected_count = max(1, math.ceil(header.length / header.chunk_words))
        if header.chunk_count != expected_count:
            raise MalformedMessage(
                f"{header.length} words in chunks of {header.chunk_words} make "
                f"{expected_count} chunks, not {header.chunk_count}"
            )
        if len(header.signature) != 64:
            raise MalformedMessage("the masked input signature must be 64 bytes")
        self.round_id = int(header.round_id)
        self.party = party
        self.session_id = bytes(header.session_id)
        self.signature = bytes(header.signature)
        self.complaints = complaints_from_proto(header.complaints)
        self.length = int(header.length)
        self.chunk_words = int(header.chunk_words)
        self.chunk_count = expected_count
        self.next_index = 0
        self.bytes_received = 0
        # Small uploads stay in memory: a file (and a descriptor) per upload only where a vector
        # is large, so a round of many sites needs one descriptor per site, not two.
        self.path: pathlib.Path | None = None
        self._file: Any
        if 4 * self.length <= IN_MEMORY_SPOOL_BYTES:
            self._file = io.BytesIO()
        else:
            spool_dir.mkdir(parents=True, exist_ok=True)
            fd, name = _mkstemp(spool_dir, f"round-{self.round_id}-party-{party}-")
            self.path = pathlib.Path(name)
            self._file = os.fdopen(fd, "wb", buffering=0)

    @property
    def complete(self) -> bool:
        return self.next_index == self.chunk_count

    def add(self, chunk: pb.MaskedInputChunk) -> None:
        if self.complete:
            raise MalformedMessage(f"all {self.chunk_count} chunks were already received")
        if chunk.index != self.next_index:
            what = "duplicated" if chunk.index < self.next_index else "out of order"
            raise MalformedMessage(
                f"chunk {chunk.index} is {what}: expected chunk {self.next_index} of "
                f"{self.chunk_count}"
            )
        offset = self.next_index * self.chunk_words
        if chunk.offset != offset:
            raise MalformedMessage(f"chunk {chunk.index} has offset {chunk.offset}, not {offset}")
        n = min(self.chunk_words, self.length - offset)
        want = words.chunk_bytes(n, self.fmt, self.bits)
        data = chunk.data  # each access to a protobuf bytes field is a fresh copy: read it once
        if len(data) != want:
            raise MalformedMessage(
                f"chunk {chunk.index} carries {len(data)} bytes, {n} words need {want}"
            )
        if self.fmt == words.UINT32_LE:
            self._file.write(data)
        else:
            self._file.write(words.decode_words(data, self.fmt, self.bits, n).tobytes())
        self.bytes_received += len(data)
        self.next_index += 1

    def finish(self) -> MaskedInput:
        """The complete input as a MaskedInput over a read-only memmap of the spool."""
        if not self.complete:
            raise MalformedMessage(
                f"the masked input ended after {self.next_index} of {self.chunk_count} chunks"
            )
        if self.path is None:
            vector = np.frombuffer(self._file.getbuffer(), dtype="<u4").view(np.uint32)
            vector.flags.writeable = False
        else:
            self._file.close()
            vector = np.memmap(self.path, dtype=np.uint32, mode="r", shape=(self.length,))
        return MaskedInput(
            self.round_id, self.party, self.session_id, vector, self.signature, self.complaints
        )

    def discard(self) -> None:
        with contextlib.suppress(OSError, BufferError):
            self._file.close()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _mkstemp(directory: pathlib.Path, prefix: str) -> tuple[int, str]:
    import tempfile

    return tempfile.mkstemp(prefix=prefix, suffix=".u32", dir=directory)


# --- server messages ---------------------------------------------------------------------------


def encode_server_message(message: ServerMessage) -> pb.ServerFrame:
    if isinstance(message, KeyRoster):
        return pb.ServerFrame(
            key_roster=pb.KeyRoster(
                round_id=message.round_id,
                recipient=message.recipient,
                advertised=message.advertised,
                # Each neighbour gets only the inbox key meant for it (O(k) bytes per recipient).
                advertisements=[
                    _advertise_to_proto(a.for_dealer(message.recipient))
                    for a in message.advertisements
                ],
            )
        )
    if isinstance(message, ShareBundle):
        return pb.ServerFrame(
            share_bundle=pb.ShareBundle(
                round_id=message.round_id,
                session_id=message.session_id,
                senders=list(message.senders),
                entries=[
                    pb.DealtEntry(dealer=d, entry=_entry_to_proto(e)) for d, e in message.entries
                ],
            )
        )
    if isinstance(message, SurvivorsRequest):
        return pb.ServerFrame(
            survivors_request=pb.SurvivorsRequest(
                round_id=message.round_id,
                session_id=message.session_id,
                survivors=message.survivors,
            )
        )
    if isinstance(message, UnmaskRequest):
        return pb.ServerFrame(
            unmask_request=pb.UnmaskRequest(
                round_id=message.round_id,
                session_id=message.session_id,
                survivors_digest=message.survivors_digest,
                consistency_signatures=_to_pairs(message.consistency_signatures),
            )
        )
    raise TypeError(f"cannot frame {type(message).__name__}")


def decode_server_frame(frame: pb.ServerFrame) -> ServerMessage:
    """The protocol message in a server frame (not Welcome/outcome frames)."""
    kind = frame.WhichOneof("frame")
    if kind == "key_roster":
        k = frame.key_roster
        return KeyRoster(
            int(k.round_id),
            int(k.recipient),
            k.advertised,
            tuple(_advertise_from_proto(a) for a in k.advertisements),
        )
    if kind == "share_bundle":
        s = frame.share_bundle
        return ShareBundle(
            int(s.round_id),
            s.session_id,
            tuple(int(p) for p in s.senders),
            tuple((int(d.dealer), _entry_from_proto(d.entry)) for d in s.entries),
        )
    if kind == "survivors_request":
        r = frame.survivors_request
        return SurvivorsRequest(int(r.round_id), r.session_id, r.survivors)
    if kind == "unmask_request":
        u = frame.unmask_request
        return UnmaskRequest(
            int(u.round_id),
            u.session_id,
            u.survivors_digest,
            _pairs(u.consistency_signatures, 64, "consistency signature"),
        )
    raise MalformedMessage(f"server frame {kind or 'with no content'} is not a protocol message")
