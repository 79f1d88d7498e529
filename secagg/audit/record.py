"""Signed, hash-chained round records: the schema, its canonical encoding, and how to build one.

A :class:`RoundRecord` states what happened in one round of mode ``mask`` (finished or aborted):
the round configuration with the roster's public keys (so the config digest can be recomputed
offline), the advertised per-round keys with their signatures (so the session id can be
recomputed), who answered at each stage, the dropouts, the signed survivor set and the clients'
consistency signatures over it, a digest of the aggregate, the privacy report, the hash of the
previous record (a chain; the first record points at :data:`GENESIS_HASH`) and the aggregator's
Ed25519 signature.

Canonical encoding: JSON with sorted keys, compact separators, ASCII only, no NaN/Infinity, and
bytes as lowercase hex (:meth:`RoundRecord.to_json`). A record that does not re-encode to exactly
the bytes it was read from is refused, so no byte of a stored record can change unnoticed.

* the aggregator signs ``transcript_digest("secagg-audit-record-body", schema, body)`` where
  ``body`` is the canonical JSON of every field except ``signature``, under the signing context
  :data:`AUDIT_SIGNING_CONTEXT` (which no protocol message uses);
* the record's hash, which the next record carries as ``prev_hash``, is
  ``transcript_digest("secagg-audit-record-hash", schema, json)`` over the whole record, signature
  included.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from secagg.accounting.report import PrivacyReport
from secagg.crypto import PROTOCOL_VERSION, IdentityKey, lp_encode, transcript_digest
from secagg.errors import ConfigError, SecAggError
from secagg.protocol.messages import ACTIVE_STAGES, Stage, vector_digest
from secagg.protocol.server import ServerSession

__all__ = [
    "AUDIT_SIGNING_CONTEXT",
    "GENESIS_HASH",
    "MAX_RECORD_BYTES",
    "RECORD_SCHEMA",
    "AuditError",
    "RecordFormatError",
    "RecordedConfig",
    "RoundRecord",
    "aggregate_digest",
    "build_record",
]

RECORD_SCHEMA: Final = "secagg.audit.round-record/2"
"""Schema identifier carried by every record; readers refuse any other."""

GENESIS_HASH: Final = bytes(32)
"""``prev_hash`` of the first record of a chain."""

AUDIT_SIGNING_CONTEXT: Final = lp_encode(PROTOCOL_VERSION, "audit", "round-record", RECORD_SCHEMA)
"""Context of the aggregator's record signatures (domain-separated from every client message)."""

MAX_RECORD_BYTES: Final = 64 * 1024 * 1024
"""A record larger than this is refused before parsing (a roster of 10^5 parties fits easily)."""

_MAX_PARTIES: Final = 1_000_000
_MAX_TEXT: Final = 4096
_HEX = re.compile(r"[0-9a-f]*")
_OUTCOMES: Final = ("completed", "aborted")
_STAGE_NAMES: Final = tuple(s.value for s in ACTIVE_STAGES)


class AuditError(SecAggError):
    """An audit record or chain is invalid, or the audit API was used wrongly."""


class RecordFormatError(AuditError):
    """A record's bytes are not a well-formed, canonical record of a known schema."""


# --- canonical JSON ---------------------------------------------------------------------------


def canonical_json(obj: Any) -> str:
    """Sorted keys, compact separators, ASCII, and no NaN/Infinity: one text per value."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def aggregate_digest(total: npt.NDArray[np.uint32], bits: int) -> bytes:
    """Digest of an aggregate vector in Z_(2^bits): what a record commits to."""
    return transcript_digest("aggregate", bits, len(total), vector_digest(total))


# --- field readers (all raise RecordFormatError) ------------------------------------------


def _fail(what: str) -> RecordFormatError:
    return RecordFormatError(what)


def _int(d: Mapping[str, Any], name: str, low: int = 0, high: int = 2**63) -> int:
    v = d[name]
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v < high:
        raise _fail(f"field {name!r} must be an integer in [{low}, {high})")
    return v


def _text(d: Mapping[str, Any], name: str, *, optional: bool = False) -> str | None:
    v = d[name]
    if v is None and optional:
        return None
    if not isinstance(v, str) or len(v) > _MAX_TEXT:
        raise _fail(f"field {name!r} must be a string of at most {_MAX_TEXT} characters")
    return v


def _hex(v: Any, name: str, length: int | None = None) -> bytes:
    if not isinstance(v, str) or _HEX.fullmatch(v) is None or len(v) % 2:
        raise _fail(f"field {name!r} must be lowercase hex")
    raw = bytes.fromhex(v)
    if length is not None and len(raw) != length:
        raise _fail(f"field {name!r} must encode {length} bytes, got {len(raw)}")
    return raw


def _list(v: Any, name: str, limit: int = _MAX_PARTIES) -> list[Any]:
    if not isinstance(v, list) or len(v) > limit:
        raise _fail(f"field {name!r} must be a list of at most {limit} entries")
    return v


def _party_list(v: Any, name: str) -> tuple[int, ...]:
    items = _list(v, name)
    for p in items:
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p < 2**31:
            raise _fail(f"field {name!r} must hold party ids")
    if items != sorted(set(items)):
        raise _fail(f"field {name!r} must be sorted and free of duplicates")
    return tuple(items)


def _exact_keys(d: Any, keys: Sequence[str], what: str) -> Mapping[str, Any]:
    if not isinstance(d, dict):
        raise _fail(f"{what} must be a JSON object")
    if set(d) != set(keys):
        missing, extra = sorted(set(keys) - set(d)), sorted(set(d) - set(keys))
        raise _fail(f"{what}: missing fields {missing}, unknown fields {extra}")
    return d


def _signed_pairs(v: Any, name: str, value_length: int) -> tuple[tuple[int, bytes], ...]:
    pairs = []
    for item in _list(v, name):
        if not (isinstance(item, list) and len(item) == 2):
            raise _fail(f"field {name!r} must hold [party, hex] pairs")
        pairs.append((item[0], _hex(item[1], name, value_length)))
    _party_list([p for p, _ in pairs], f"{name} parties")
    return tuple(pairs)


def _stage_map(v: Any, name: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    if not isinstance(v, dict) or not set(v) <= set(_STAGE_NAMES):
        raise _fail(f"field {name!r} must map stage names to party lists")
    return tuple((s, _party_list(v[s], f"{name}.{s}")) for s in _STAGE_NAMES if s in v)


# --- the record -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedConfig:
    """The public round configuration, enough to recompute ``RoundConfig.digest`` offline."""

    threshold: int
    vector_length: int
    bits: int
    degree: int | None
    context_digest: bytes
    roster: tuple[tuple[int, bytes], ...]  # (party, Ed25519 public key), sorted by party

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "vector_length": self.vector_length,
            "bits": self.bits,
            "degree": self.degree,
            "context_digest": self.context_digest.hex(),
            "roster": [[p, k.hex()] for p, k in self.roster],
        }

    @classmethod
    def from_dict(cls, d: Any) -> RecordedConfig:
        d = _exact_keys(
            d,
            ("threshold", "vector_length", "bits", "degree", "context_digest", "roster"),
            "config",
        )
        degree = None if d["degree"] is None else _int(d, "degree", 1)
        context = d["context_digest"]
        if not isinstance(context, str) or len(context) > 2 * _MAX_TEXT:
            raise _fail("field 'context_digest' is too long")
        return cls(
            threshold=_int(d, "threshold", 1),
            vector_length=_int(d, "vector_length", 1),
            bits=_int(d, "bits", 1, 65),
            degree=degree,
            context_digest=_hex(context, "context_digest"),
            roster=_signed_pairs(d["roster"], "roster", 32),
        )


@dataclass(frozen=True)
class RoundRecord:
    """One round's audit record (see the module docstring). Build it with :func:`build_record`."""

    sequence: int
    prev_hash: bytes
    created_at: str
    round_id: int
    outcome: str
    abort_stage: str | None
    abort_reason: str | None
    config: RecordedConfig
    config_digest: bytes
    session_id: bytes
    # (party, cipher public key, mask public key, seed commitment, signature), sorted by party
    advertisements: tuple[tuple[int, bytes, bytes, bytes, bytes], ...]
    participants: tuple[tuple[str, tuple[int, ...]], ...]
    dropouts: tuple[tuple[str, tuple[int, ...]], ...]
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    consistency_signatures: tuple[tuple[int, bytes], ...]
    aggregate_digest: bytes | None
    privacy_report: PrivacyReport | None
    aggregator_key: bytes
    cheaters: tuple[tuple[int, str], ...] = ()
    """Parties the server proved to have cheated, with the evidence in words."""
    # (party, survivors digest, self-mask owners, mask-key owners, shares digest, signature): the
    # sites' signed statements of what they revealed at unmask (UnmaskReceipt), sorted by party.
    unmask_receipts: tuple[
        tuple[int, bytes, tuple[int, ...], tuple[int, ...], bytes, bytes], ...
    ] = ()
    signature: bytes = field(default=bytes(64))
    schema: str = RECORD_SCHEMA
    protocol_version: str = PROTOCOL_VERSION

    # --- encoding ---------------------------------------------------------------------------

    def body_dict(self) -> dict[str, Any]:
        """Every field except the signature, as JSON values."""
        return {
            "schema": self.schema,
            "protocol_version": self.protocol_version,
            "sequence": self.sequence,
            "prev_hash": self.prev_hash.hex(),
            "created_at": self.created_at,
            "round_id": self.round_id,
            "outcome": self.outcome,
            "abort_stage": self.abort_stage,
            "abort_reason": self.abort_reason,
            "config": self.config.to_dict(),
            "config_digest": self.config_digest.hex(),
            "session_id": self.session_id.hex(),
            "advertisements": [
                [p, c.hex(), m.hex(), k.hex(), s.hex()] for p, c, m, k, s in self.advertisements
            ],
            "participants": {s: list(ps) for s, ps in self.participants},
            "dropouts": {s: list(ps) for s, ps in self.dropouts},
            "survivors": list(self.survivors),
            "dropped": list(self.dropped),
            "consistency_signatures": [[p, s.hex()] for p, s in self.consistency_signatures],
            "aggregate_digest": None
            if self.aggregate_digest is None
            else self.aggregate_digest.hex(),
            "privacy_report": None
            if self.privacy_report is None
            else self.privacy_report.to_dict(),
            "aggregator_key": self.aggregator_key.hex(),
            "cheaters": [[p, why] for p, why in self.cheaters],
            "unmask_receipts": [
                [p, d.hex(), list(seeds), list(keys), sd.hex(), sig.hex()]
                for p, d, seeds, keys, sd, sig in self.unmask_receipts
            ],
        }

    def to_dict(self) -> dict[str, Any]:
        d = self.body_dict()
        d["signature"] = self.signature.hex()
        return d

    def to_json(self) -> str:
        """The canonical encoding (one line, no trailing newline)."""
        return canonical_json(self.to_dict())

    def signed_digest(self) -> bytes:
        """What the aggregator signs: a digest of the canonical body (signature excluded)."""
        return transcript_digest(
            "secagg-audit-record-body", self.schema, canonical_json(self.body_dict())
        )

    def record_hash(self) -> bytes:
        """The hash the next record carries as ``prev_hash`` (covers the signature too)."""
        return transcript_digest("secagg-audit-record-hash", self.schema, self.to_json())

    def signed_by(self, key: IdentityKey) -> RoundRecord:
        """A copy carrying ``key``'s public key and signature."""
        from dataclasses import replace

        unsigned = replace(self, aggregator_key=key.public_key.to_bytes(), signature=bytes(64))
        sig = key.sign(AUDIT_SIGNING_CONTEXT, unsigned.signed_digest())
        return replace(unsigned, signature=sig)

    # --- decoding ---------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: Any) -> RoundRecord:
        """Parse and validate every field (types, lengths, limits). Signatures are not checked."""
        if isinstance(d, dict) and d.get("schema") != RECORD_SCHEMA:
            raise _fail(
                f"unsupported record schema {d.get('schema')!r}; this build reads {RECORD_SCHEMA!r}"
            )
        d = _exact_keys(d, _RECORD_KEYS, "record")
        if d["protocol_version"] != PROTOCOL_VERSION:
            raise _fail(f"unsupported protocol version {d['protocol_version']!r}")
        outcome = _text(d, "outcome")
        if outcome not in _OUTCOMES:
            raise _fail(f"field 'outcome' must be one of {_OUTCOMES}")
        abort_stage = _text(d, "abort_stage", optional=True)
        if abort_stage is not None and abort_stage not in _STAGE_NAMES:
            raise _fail("field 'abort_stage' must name an active stage")
        created_at = _text(d, "created_at")
        assert created_at is not None
        try:
            datetime.fromisoformat(created_at)
        except ValueError:
            raise _fail("field 'created_at' is not an ISO-8601 timestamp") from None
        ads = []
        for item in _list(d["advertisements"], "advertisements"):
            if not (isinstance(item, list) and len(item) == 5):
                raise _fail(
                    "field 'advertisements' must hold [party, cipher, mask, commitment, sig]"
                )
            ads.append(
                (
                    item[0],
                    _hex(item[1], "advertisements cipher key", 32),
                    _hex(item[2], "advertisements mask key", 32),
                    _hex(item[3], "advertisements seed commitment", 32),
                    _hex(item[4], "advertisements signature", 64),
                )
            )
        _party_list([a[0] for a in ads], "advertisements parties")
        report = d["privacy_report"]
        if report is not None:
            try:
                report = PrivacyReport.from_dict(report)
            except (ConfigError, KeyError, TypeError, ValueError) as exc:
                raise _fail(f"invalid privacy report: {exc}") from None
        agg = d["aggregate_digest"]
        cheaters = []
        for item in _list(d["cheaters"], "cheaters"):
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], str)):
                raise _fail("field 'cheaters' must hold [party, reason] entries")
            cheaters.append((item[0], item[1][:_MAX_TEXT]))
        _party_list([c[0] for c in cheaters], "cheaters parties")
        receipts = []
        for item in _list(d["unmask_receipts"], "unmask_receipts"):
            if not (isinstance(item, list) and len(item) == 6):
                raise _fail("field 'unmask_receipts' must hold 6-field entries")
            receipts.append(
                (
                    item[0],
                    _hex(item[1], "receipt survivors digest", 32),
                    _party_list(item[2], "receipt self-mask owners"),
                    _party_list(item[3], "receipt mask-key owners"),
                    _hex(item[4], "receipt shares digest", 32),
                    _hex(item[5], "receipt signature", 64),
                )
            )
        _party_list([r[0] for r in receipts], "unmask_receipts parties")
        return cls(
            schema=RECORD_SCHEMA,
            protocol_version=PROTOCOL_VERSION,
            sequence=_int(d, "sequence"),
            prev_hash=_hex(d["prev_hash"], "prev_hash", 32),
            created_at=created_at,
            round_id=_int(d, "round_id"),
            outcome=outcome,
            abort_stage=abort_stage,
            abort_reason=_text(d, "abort_reason", optional=True),
            config=RecordedConfig.from_dict(d["config"]),
            config_digest=_hex(d["config_digest"], "config_digest", 32),
            session_id=_hex(d["session_id"], "session_id", None if not d["session_id"] else 32),
            advertisements=tuple(ads),
            participants=_stage_map(d["participants"], "participants"),
            dropouts=_stage_map(d["dropouts"], "dropouts"),
            survivors=_party_list(d["survivors"], "survivors"),
            dropped=_party_list(d["dropped"], "dropped"),
            consistency_signatures=_signed_pairs(
                d["consistency_signatures"], "consistency_signatures", 64
            ),
            aggregate_digest=None if agg is None else _hex(agg, "aggregate_digest", 32),
            privacy_report=report,
            aggregator_key=_hex(d["aggregator_key"], "aggregator_key", 32),
            cheaters=tuple(cheaters),
            unmask_receipts=tuple(receipts),
            signature=_hex(d["signature"], "signature", 64),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> RoundRecord:
        """Parse one canonical record; refuse anything that does not re-encode byte for byte."""
        if isinstance(text, bytes):
            if len(text) > MAX_RECORD_BYTES:
                raise _fail(f"record larger than {MAX_RECORD_BYTES} bytes")
            try:
                text = text.decode("ascii")
            except UnicodeDecodeError:
                raise _fail("record is not ASCII (canonical records are)") from None
        if not isinstance(text, str):
            raise _fail(f"a record must be str or bytes, not {type(text).__name__}")
        if len(text) > MAX_RECORD_BYTES:
            raise _fail(f"record larger than {MAX_RECORD_BYTES} bytes")

        def _no_constants(name: str) -> Any:
            raise _fail(f"non-standard JSON constant {name}")

        try:
            d = json.loads(text, parse_constant=_no_constants)
        except RecordFormatError:
            raise
        except (ValueError, RecursionError) as exc:
            raise _fail(f"record is not valid JSON: {exc}") from None
        record = cls.from_dict(d)
        if record.to_json() != text:
            raise _fail("record is not in canonical form (its bytes were altered)")
        return record


_RECORD_KEYS: Final = (
    "schema",
    "protocol_version",
    "sequence",
    "prev_hash",
    "created_at",
    "round_id",
    "outcome",
    "abort_stage",
    "abort_reason",
    "config",
    "config_digest",
    "session_id",
    "advertisements",
    "participants",
    "dropouts",
    "survivors",
    "dropped",
    "consistency_signatures",
    "aggregate_digest",
    "privacy_report",
    "aggregator_key",
    "cheaters",
    "unmask_receipts",
    "signature",
)


# --- building a record from a server session ------------------------------------------------


def build_record(
    server: ServerSession,
    *,
    aggregator_key: IdentityKey,
    sequence: int,
    prev_hash: bytes,
    privacy_report: PrivacyReport | None = None,
    created_at: str | None = None,
) -> RoundRecord:
    """The signed record of a finished (completed or aborted) round.

    ``sequence`` and ``prev_hash`` place it in a chain (use ``chain.next_link()`` or
    :func:`secagg.audit.record_round`, which do it for you). ``created_at`` defaults to now (UTC).

    Raises:
        AuditError: the round is still running, or the privacy report is for another round.
    """
    if not isinstance(server, ServerSession):
        raise AuditError("build_record needs a ServerSession")
    if not server.stage.is_terminal:
        raise AuditError(
            f"round {server.config.round_id} is still running (stage {server.stage.value}); "
            "records are written once it completed or aborted"
        )
    if not isinstance(prev_hash, bytes) or len(prev_hash) != 32:
        raise AuditError("prev_hash must be 32 bytes")
    if privacy_report is not None and privacy_report.round_id != server.config.round_id:
        raise AuditError(
            f"the privacy report is for round {privacy_report.round_id}, "
            f"the session is round {server.config.round_id}"
        )
    cfg = server.config
    t = server.transcript()
    completed = t.stage is Stage.COMPLETED
    last = (
        len(ACTIVE_STAGES) if completed else ACTIVE_STAGES.index(t.abort_stage or Stage.UNMASK) + 1
    )
    participants = [(s.value, t.participants[s]) for s in ACTIVE_STAGES]
    dropouts: list[tuple[str, tuple[int, ...]]] = []
    previous: set[int] = set(cfg.roster)
    for s in ACTIVE_STAGES[:last]:
        now = set(t.participants[s])
        dropouts.append((s.value, tuple(sorted(previous - now))))
        previous = now
    record = RoundRecord(
        sequence=sequence,
        prev_hash=prev_hash,
        created_at=created_at or datetime.now(UTC).isoformat(timespec="seconds"),
        round_id=cfg.round_id,
        outcome="completed" if completed else "aborted",
        abort_stage=None if completed or t.abort_stage is None else t.abort_stage.value,
        abort_reason=None if completed else (t.abort_reason or "")[:_MAX_TEXT],
        config=RecordedConfig(
            threshold=cfg.threshold,
            vector_length=cfg.vector_length,
            bits=cfg.bits,
            degree=cfg.degree,
            context_digest=cfg.context_digest,
            roster=tuple((p, k.to_bytes()) for p, k in cfg.roster.items()),
        ),
        config_digest=cfg.digest,
        session_id=t.session_id,
        advertisements=tuple(
            (a.sender, a.cipher_public_key, a.mask_public_key, a.seed_commitment, a.signature)
            for a in t.advertisements
        ),
        participants=tuple(participants),
        dropouts=tuple(dropouts),
        survivors=t.survivors,
        dropped=t.dropped,
        consistency_signatures=t.consistency_signatures,
        aggregate_digest=aggregate_digest(server.result.total, cfg.bits) if completed else None,
        privacy_report=privacy_report,
        aggregator_key=aggregator_key.public_key.to_bytes(),
        cheaters=tuple(sorted(t.cheaters.items())),
        unmask_receipts=tuple(
            (
                r.sender,
                r.survivors_digest,
                r.self_mask_owners,
                r.mask_key_owners,
                r.shares_digest,
                r.signature,
            )
            for r in t.unmask_receipts
        ),
    )
    return record.signed_by(aggregator_key)
