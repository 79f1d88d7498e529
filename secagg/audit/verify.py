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
   any, is for this round;
8. round ids strictly increase along the chain (a repeated round lets the aggregator isolate a
   site by difference);
9. the threshold is one the stated assumptions accept (by default the strict site policy: a
   malicious aggregator, 10 % corrupt), so a split view could not have unmasked a site;
10. every unmask receipt (a site's signed statement of the shares it revealed) verifies, and a
    round whose receipts would have let the aggregator rebuild the sum is recorded as completed,
    with a privacy report: a released round cannot hide as aborted.

An empty chain is a problem too (nothing was proven). Site ledgers are checked against the chain
by :func:`secagg.audit.crosscheck.crosscheck_sites`.

Every failure is reported with the record's position, its round and what failed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from secagg.audit.record import (
    AUDIT_SIGNING_CONTEXT,
    GENESIS_HASH,
    RecordFormatError,
    RoundRecord,
)
from secagg.crypto import IdentityPublicKey
from secagg.errors import ConfigError, InvalidSignature, MalformedMessage, PolicyViolation
from secagg.protocol.config import RoundConfig
from secagg.protocol.messages import (
    AdvertiseKeys,
    Stage,
    UnmaskReceipt,
    compute_session_id,
    signing_context,
    survivors_digest,
    survivors_payload,
)
from secagg.protocol.policy import SitePolicy

__all__ = ["ChainReport", "recorded_receipts", "releasable", "verify_records"]


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


def _check_threshold(record: RoundRecord, config: RoundConfig, assumptions: SitePolicy) -> None:
    policy = dataclasses.replace(assumptions, roster=config.roster, roster_subsets=False)
    try:
        policy.check_round(config)
    except PolicyViolation as exc:
        raise _Problem(
            f"the round ran with {exc.parameter} {exc.offered}, which the assumptions "
            f"({policy.adversary.value}, corrupt fraction {policy.corrupt_fraction:g}) do not "
            f"accept (required {exc.required}): a split view could have unmasked a site"
        ) from None


def recorded_receipts(record: RoundRecord, config: RoundConfig) -> list[UnmaskReceipt]:
    """The record's unmask receipts, each verified under its site's roster key."""
    digest = (
        survivors_digest(record.session_id, config.roster_index.encode(record.survivors))
        if record.session_id
        else b""
    )
    out = []
    for party, sdigest, seeds, keys, shares, sig in record.unmask_receipts:
        receipt = UnmaskReceipt(
            record.round_id, party, record.session_id, sdigest, seeds, keys, shares, sig
        )
        if party not in config.roster:
            raise _Problem(f"an unmask receipt of party {party}, which is not in the roster")
        try:
            receipt.verify(config.roster[party], config.digest)
        except InvalidSignature:
            raise _Problem(f"the unmask receipt of party {party} is not signed by it") from None
        if sdigest != digest and record.survivors:
            raise _Problem(
                f"party {party}'s unmask receipt answers another survivor set than the recorded one"
            )
        out.append(receipt)
    return out


def releasable(record: RoundRecord, config: RoundConfig, receipts: Iterable[UnmaskReceipt]) -> bool:
    """Whether these revealed shares let the aggregator rebuild the sum: t seed shares of every
    survivor and t key shares of every dropped party with a surviving neighbour."""
    seeds: dict[int, int] = {}
    keys: dict[int, int] = {}
    for r in receipts:
        for owner in r.self_mask_owners:
            seeds[owner] = seeds.get(owner, 0) + 1
        for owner in r.mask_key_owners:
            keys[owner] = keys.get(owner, 0) + 1
    t = config.threshold
    survivors = set(record.survivors)
    if not survivors or any(seeds.get(p, 0) < t for p in survivors):
        return False
    dropped = [v for v in record.dropped if config.graph.neighbours(v) & survivors]
    return all(keys.get(v, 0) >= t for v in dropped)


def _check_release(record: RoundRecord, config: RoundConfig) -> None:
    receipts = recorded_receipts(record, config)
    if record.outcome == "completed":
        if record.privacy_report is None:
            raise _Problem("a completed (released) round without a privacy report")
        return
    if receipts and releasable(record, config, receipts):
        named = [p for p, _ in record.cheaters if str(p) in (record.abort_reason or "")]
        if not named:
            raise _Problem(
                "recorded as aborted although its sites revealed enough shares to rebuild the "
                "sum: a released round hidden from the privacy accounting"
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
    assumptions: SitePolicy | None = None,
) -> ChainReport:
    """Verify a whole chain given as canonical record texts, oldest first.

    ``expected_head``: the hash of the last record as the auditor learnt it out of band (for
    example from the previous audit). A chain only proves its own prefix: without an anchored
    head, records cut off at the end cannot be told from records never written.

    ``aggregator_key`` is the pinned aggregator public key. Without it the key of the first
    record is used (trust on first use) and every record must carry the same one; pin the key to
    detect a chain that was re-signed wholesale.

    ``assumptions``: the trust assumptions each round's threshold is checked against (a
    :class:`SitePolicy`; its roster is replaced by each record's). Default: the strict policy.
    """
    report = ChainReport(aggregator_key=aggregator_key)
    policy = assumptions or SitePolicy(roster=None, min_parties=2)
    expected_prev = GENESIS_HASH
    last_round: int | None = None
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
        if last_round is not None and record.round_id <= last_round:
            report.problems.append(
                f"{where}: round id {record.round_id} after round {last_round} (a repeated or "
                "decreasing round id lets the aggregator isolate a site by difference)"
            )
        last_round = record.round_id
        for check in (
            _check_advertisements,
            _check_consistency,
            lambda r, c: _check_threshold(r, c, policy),
            _check_release,
        ):
            try:
                config = _check_config(record)
                assert config is not None
                check(record, config)
            except _Problem as exc:
                report.problems.append(f"{where}: {exc}")
                if "configuration" in str(exc) or "config_digest" in str(exc):
                    break
        try:
            _check_outcome(record)
        except _Problem as exc:
            report.problems.append(f"{where}: {exc}")
    if not report.records and not report.problems:
        report.problems.append("the chain holds no record: nothing was proven")
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
