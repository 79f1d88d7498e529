"""Offline verification of a chain of round records: what ``secagg audit verify`` runs.

For every record, in order, the verifier checks:

1. the bytes are a canonical record of a known schema (no byte altered);
2. ``sequence`` is its position and ``prev_hash`` the hash of the record before it (the first
   points at :data:`~secagg.audit.record.GENESIS_HASH`): no record removed, inserted or reordered;
3. the aggregator key named in the record is the pinned one, and its signature verifies;
4. the configuration recomputes to ``config_digest`` (roster keys included);
5. every advertisement is signed by its sender's roster key, and the advertising parties recompute
   ``session_id``;
6. every consistency signature is by a survivor in the roster, over the digest of the recorded
   survivor set, this round, config and session, and a completed round shows at least
   ``threshold`` of them;
7. the outcome is coherent (a completed round has an aggregate digest, its survivors are the
   masked-input senders, a dropped party never counts as a survivor), and the privacy report, if
   any, is for this round.

Every failure is reported with the record's position, its round and what failed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from secagg.audit.record import (
    AUDIT_SIGNING_CONTEXT,
    GENESIS_HASH,
    RecordFormatError,
    RoundRecord,
)
from secagg.crypto import IdentityPublicKey
from secagg.errors import ConfigError, InvalidSignature, MalformedMessage
from secagg.protocol.config import RoundConfig
from secagg.protocol.messages import (
    AdvertiseKeys,
    Stage,
    compute_session_id,
    signing_context,
    survivors_digest,
    survivors_payload,
)

__all__ = ["ChainReport", "verify_records"]


@dataclass
class ChainReport:
    """The outcome of verifying a chain: parsed records and every problem found."""

    records: list[RoundRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    aggregator_key: IdentityPublicKey | None = None
    head: bytes = GENESIS_HASH
    """Hash of the last record (GENESIS_HASH for an empty chain); pin it for the next audit."""

    @property
    def ok(self) -> bool:
        return not self.problems


def _where(index: int, record: RoundRecord | None) -> str:
    return f"record {index}" + ("" if record is None else f" (round {record.round_id})")


def _check_config(record: RoundRecord) -> RoundConfig | None:
    c = record.config
    try:
        roster = {p: IdentityPublicKey.from_bytes(k) for p, k in c.roster}
        config = RoundConfig(
            round_id=record.round_id,
            roster=roster,
            threshold=c.threshold,
            vector_length=c.vector_length,
            bits=c.bits,
            degree=c.degree,
            context_digest=c.context_digest,
        )
    except ConfigError as exc:
        raise _Problem(f"the recorded configuration is invalid: {exc}") from None
    if config.digest != record.config_digest:
        raise _Problem("config_digest does not match the recorded configuration and roster")
    return config


class _Problem(Exception):
    pass


def _check_advertisements(record: RoundRecord, config: RoundConfig) -> None:
    if not record.advertisements:
        if record.session_id:
            raise _Problem("a session id is recorded without the advertisements it hashes")
        return
    for party, cipher, mask, commitment, sig in record.advertisements:
        if party not in config.roster:
            raise _Problem(f"advertisement of party {party}, which is not in the roster")
        try:
            ad = AdvertiseKeys(record.round_id, party, cipher, mask, commitment, (), sig)
            ad.verify(config.roster[party], config.digest)
        except (InvalidSignature, MalformedMessage):
            raise _Problem(f"the advertisement of party {party} is not signed by it") from None
    advertised = config.roster_index.encode(a[0] for a in record.advertisements)
    if record.session_id and compute_session_id(config.digest, advertised) != record.session_id:
        raise _Problem("session_id does not match the advertised parties and config digest")


def _check_consistency(record: RoundRecord, config: RoundConfig) -> None:
    survivors = set(record.survivors)
    try:
        bitmap = config.roster_index.encode(survivors)
    except MalformedMessage:
        raise _Problem("a survivor is not in the roster") from None
    payload = survivors_payload(survivors_digest(record.session_id, bitmap))
    for signer, signature in record.consistency_signatures:
        if signer not in survivors or signer not in config.roster:
            raise _Problem(f"consistency signature of party {signer}, which is not a survivor")
        context = signing_context(
            Stage.CONSISTENCY_CHECK, record.round_id, config.digest, record.session_id, signer
        )
        try:
            config.roster[signer].verify(signature, context, payload)
        except InvalidSignature:
            raise _Problem(
                f"the consistency signature of party {signer} over the survivor set does not verify"
            ) from None
    if record.outcome == "completed" and len(record.consistency_signatures) < config.threshold:
        raise _Problem(
            f"completed with only {len(record.consistency_signatures)} consistency signatures, "
            f"threshold is {config.threshold}"
        )


def _check_outcome(record: RoundRecord) -> None:
    participants = dict(record.participants)
    if set(record.survivors) & set(record.dropped):
        raise _Problem("a party is recorded both as survivor and as dropped")
    if record.privacy_report is not None and record.privacy_report.round_id != record.round_id:
        raise _Problem(
            f"the privacy report is for round {record.privacy_report.round_id}, not this round"
        )
    if record.outcome == "completed":
        if record.aggregate_digest is None:
            raise _Problem("a completed round without an aggregate digest")
        if record.abort_stage is not None or record.abort_reason is not None:
            raise _Problem("a completed round with an abort reason")
        if record.survivors != participants.get(Stage.MASKED_INPUT.value):
            raise _Problem("the survivors are not the parties whose masked inputs were summed")
    else:
        if record.aggregate_digest is not None:
            raise _Problem("an aborted round with an aggregate digest")
        if record.abort_stage is None:
            raise _Problem("an aborted round without the stage it aborted at")


def verify_records(
    raw_records: Iterable[str | bytes],
    *,
    aggregator_key: IdentityPublicKey | None = None,
    expected_head: bytes | None = None,
) -> ChainReport:
    """Verify a whole chain given as canonical record texts, oldest first.

    ``expected_head``: the hash of the last record as the auditor learnt it out of band (for
    example from the previous audit). A chain only proves its own prefix: without an anchored
    head, records cut off at the end cannot be told from records never written.

    ``aggregator_key`` is the pinned aggregator public key. Without it the key of the first
    record is used (trust on first use) and every record must carry the same one; pin the key to
    detect a chain that was re-signed wholesale.
    """
    report = ChainReport(aggregator_key=aggregator_key)
    expected_prev = GENESIS_HASH
    for index, raw in enumerate(raw_records):
        try:
            record = RoundRecord.from_json(raw)
        except RecordFormatError as exc:
            report.problems.append(f"{_where(index, None)}: malformed: {exc}")
            expected_prev = b""  # the next link cannot be checked against an unreadable record
            continue
        report.records.append(record)
        where = _where(index, record)
        if record.sequence != index:
            report.problems.append(
                f"{where}: sequence number {record.sequence}, expected {index} "
                "(a record was removed, inserted or reordered)"
            )
        if expected_prev and record.prev_hash != expected_prev:
            report.problems.append(
                f"{where}: prev_hash does not match the hash of the previous record "
                "(the chain is broken: a record was removed, replaced or altered)"
            )
        expected_prev = record.record_hash()
        if report.aggregator_key is None:
            try:
                report.aggregator_key = IdentityPublicKey.from_bytes(record.aggregator_key)
            except ConfigError:
                report.problems.append(f"{where}: aggregator key is not an Ed25519 key")
                continue
        key = report.aggregator_key
        if record.aggregator_key != key.to_bytes():
            report.problems.append(
                f"{where}: signed by aggregator key {record.aggregator_key.hex()[:16]}..., "
                f"not the pinned key {key.to_bytes().hex()[:16]}..."
            )
        try:
            key.verify(record.signature, AUDIT_SIGNING_CONTEXT, record.signed_digest())
        except InvalidSignature:
            report.problems.append(f"{where}: the aggregator signature does not verify")
        try:
            config = _check_config(record)
            assert config is not None
            _check_advertisements(record, config)
            _check_consistency(record, config)
            _check_outcome(record)
        except _Problem as exc:
            report.problems.append(f"{where}: {exc}")
    report.head = expected_prev if report.records else GENESIS_HASH
    if expected_head is not None and report.head != expected_head:
        report.problems.append(
            f"the last record's hash {report.head.hex()[:16]}... is not the expected head "
            f"{expected_head.hex()[:16]}... (records were cut off, added or replaced at the end)"
        )
    return report


def verify_chain(
    records: Sequence[RoundRecord], *, aggregator_key: IdentityPublicKey | None = None
) -> ChainReport:
    """:func:`verify_records` for records already in memory."""
    return verify_records((r.to_json() for r in records), aggregator_key=aggregator_key)
