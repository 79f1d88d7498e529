"""Round records: building, canonical encoding, chain verification and every tampering."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg.audit import (
    GENESIS_HASH,
    AuditError,
    RecordChain,
    RecordFormatError,
    RoundRecord,
    aggregate_digest,
    build_record,
    record_round,
    verify_chain,
    verify_records,
)
from secagg.crypto import IdentityKey
from secagg.protocol import Stage
from secagg.protocol.messages import signing_context, survivors_digest, survivors_payload
from secagg.protocol.partyset import RosterIndex

from ..protocol.harness import make_round
from .conftest import Chain, make_chain


def _problems(lines: list[str], chain: Chain, **kw) -> list[str]:
    report = verify_records(lines, aggregator_key=chain.aggregator.public_key, **kw)
    return report.problems


def test_untouched_chain_verifies_with_pinned_key(chain3: Chain) -> None:
    report = verify_records(chain3.lines, aggregator_key=chain3.aggregator.public_key)
    assert report.ok, report.problems
    assert [r.outcome for r in report.records] == ["completed", "aborted", "completed"]
    assert report.records[0].prev_hash == GENESIS_HASH
    assert report.head == chain3.chain.records[-1].record_hash()


def test_completed_record_states_what_happened(chain3: Chain) -> None:
    record = chain3.chain.records[0]
    assert record.survivors == (1, 3, 4, 5)
    assert dict(record.dropouts)[Stage.MASKED_INPUT.value] == (2,)
    assert record.dropped == (2,)
    assert [p for p, _ in record.consistency_signatures] == [1, 3, 4, 5]
    assert record.aggregate_digest is not None and len(record.aggregate_digest) == 32
    assert record.privacy_report is not None and record.privacy_report.round_id == 0


def test_consistency_signatures_in_a_record_verify_with_the_roster_keys(chain3: Chain) -> None:
    record = chain3.chain.records[0]
    for signer, sig in record.consistency_signatures:
        context = signing_context(
            Stage.CONSISTENCY_CHECK,
            record.round_id,
            record.config_digest,
            record.session_id,
            signer,
        )
        bitmap = RosterIndex([p for p, _ in record.config.roster]).encode(record.survivors)
        chain3.identities[signer].public_key.verify(
            sig, context, survivors_payload(survivors_digest(record.session_id, bitmap))
        )


def test_aborted_record_names_the_stage_and_has_no_aggregate(chain3: Chain) -> None:
    record = chain3.chain.records[1]
    assert record.outcome == "aborted"
    assert record.abort_stage == Stage.MASKED_INPUT.value
    assert "threshold" in (record.abort_reason or "")
    assert record.aggregate_digest is None
    # Dropouts are listed up to the stage that failed, not beyond.
    assert [s for s, _ in record.dropouts][-1] == Stage.MASKED_INPUT.value


def test_aggregate_digest_commits_to_the_sum() -> None:
    r = make_round(4, threshold=4, vector_length=5)
    from secagg.simulate import run_round

    result = run_round(r.config, r.identities, r.inputs)
    d = aggregate_digest(result.total, 32)
    changed = result.total.copy()
    changed[0] ^= 1
    assert aggregate_digest(changed, 32) != d
    assert aggregate_digest(result.total, 31) != d


def test_canonical_json_round_trips_byte_for_byte(chain3: Chain) -> None:
    for line in chain3.lines:
        assert RoundRecord.from_json(line).to_json() == line
        assert RoundRecord.from_json(line.encode()).to_json() == line


# --- tampering --------------------------------------------------------------------------------


@given(st.data())
def test_any_changed_byte_is_rejected(chain3: Chain, data: st.DataObject) -> None:
    lines = chain3.lines
    i = data.draw(st.integers(0, len(lines) - 1), label="record")
    raw = bytearray(lines[i].encode())
    pos = data.draw(st.integers(0, len(raw) - 1), label="position")
    new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[pos]), label="byte")
    raw[pos] = new
    tampered = [*lines[:i], bytes(raw), *lines[i + 1 :]]
    problems = _problems(tampered, chain3)
    assert problems, f"byte {pos} of record {i} changed to {new} was not detected"
    assert any(f"record {i}" in p for p in problems)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"epsilon_cumulative":0.5', '"epsilon_cumulative":0.4'),  # privacy spent understated
        ('"survivors":[1,3,4,5]', '"survivors":[1,3,4]'),
        ('"threshold":4', '"threshold":2'),
    ],
)
def test_semantic_edits_are_rejected(chain3: Chain, old: str, new: str) -> None:
    lines = chain3.lines
    assert old in lines[0]
    tampered = [lines[0].replace(old, new, 1), *lines[1:]]
    problems = _problems(tampered, chain3)
    assert any("record 0" in p and "signature does not verify" in p for p in problems)


def test_uppercase_hex_is_not_canonical_and_rejected(chain3: Chain) -> None:
    line = chain3.lines[0]
    sig = json.loads(line)["signature"]
    tampered = line.replace(sig, sig.upper())
    assert any("malformed" in p for p in _problems([tampered, *chain3.lines[1:]], chain3))


@pytest.mark.parametrize("index", [0, 1])
def test_removed_record_is_rejected(chain3: Chain, index: int) -> None:
    lines = chain3.lines
    problems = _problems(lines[:index] + lines[index + 1 :], chain3)
    assert any(f"record {index}" in p and "sequence" in p for p in problems)
    assert any("prev_hash" in p for p in problems)


def test_reordered_records_are_rejected(chain3: Chain) -> None:
    lines = chain3.lines
    assert _problems([lines[1], lines[0], lines[2]], chain3)


def test_truncated_tail_is_caught_only_with_an_anchored_head(chain3: Chain) -> None:
    lines = chain3.lines
    head = chain3.chain.records[-1].record_hash()
    assert not _problems(lines[:-1], chain3)  # a prefix is a valid chain by itself ...
    problems = _problems(lines[:-1], chain3, expected_head=head)  # ... but not the expected one
    assert any("expected head" in p for p in problems)
    assert not _problems(lines, chain3, expected_head=head)


def test_record_resigned_with_another_key_is_rejected(chain3: Chain) -> None:
    mallory = IdentityKey.generate()
    records = list(chain3.chain.records)
    records[1] = records[1].signed_by(mallory)
    lines = [r.to_json() for r in records]
    problems = _problems(lines, chain3)
    assert any("record 1" in p and "not the pinned key" in p for p in problems)
    # Without a pinned key the first record's key is trusted and record 1 still stands out.
    assert any("record 1" in p for p in verify_records(lines).problems)


def test_chain_resigned_wholesale_is_caught_by_the_pinned_key(chain3: Chain) -> None:
    mallory = IdentityKey.generate()
    chain = RecordChain()
    for r in chain3.chain:
        seq, prev = chain.next_link()
        chain.append(dataclasses.replace(r, sequence=seq, prev_hash=prev).signed_by(mallory))
    assert verify_chain(chain.records).ok  # trust on first use cannot tell ...
    problems = verify_chain(chain.records, aggregator_key=chain3.aggregator.public_key).problems
    assert len([p for p in problems if "not the pinned key" in p]) == 3  # ... pinning can


def test_forged_consistency_signature_is_rejected_even_if_the_aggregator_signs(
    chain3: Chain,
) -> None:
    record = chain3.chain.records[0]
    signer, _ = record.consistency_signatures[0]
    forged = dataclasses.replace(
        record, consistency_signatures=((signer, bytes(64)), *record.consistency_signatures[1:])
    ).signed_by(chain3.aggregator)
    problems = verify_chain([forged], aggregator_key=chain3.aggregator.public_key).problems
    assert any(f"consistency signature of party {signer}" in p for p in problems)


def test_record_with_another_roster_key_fails_the_config_digest(chain3: Chain) -> None:
    record = chain3.chain.records[0]
    roster = ((1, IdentityKey.generate().public_key.to_bytes()), *record.config.roster[1:])
    config = dataclasses.replace(record.config, roster=roster)
    bad = dataclasses.replace(record, config=config).signed_by(chain3.aggregator)
    problems = verify_chain([bad], aggregator_key=chain3.aggregator.public_key).problems
    assert any("config_digest" in p for p in problems)


def test_record_with_a_swapped_advertised_key_fails(chain3: Chain) -> None:
    record = chain3.chain.records[0]
    p, c, m, k, s = record.advertisements[0]
    ads = ((p, m, c, k, s), *record.advertisements[1:])
    bad = dataclasses.replace(record, advertisements=ads).signed_by(chain3.aggregator)
    problems = verify_chain([bad], aggregator_key=chain3.aggregator.public_key).problems
    assert any("advertisement of party 1" in p for p in problems)


def test_completed_record_with_too_few_consistency_signatures_fails(chain3: Chain) -> None:
    record = chain3.chain.records[0]
    bad = dataclasses.replace(
        record, consistency_signatures=record.consistency_signatures[:2]
    ).signed_by(chain3.aggregator)
    problems = verify_chain([bad], aggregator_key=chain3.aggregator.public_key).problems
    assert any("only 2 consistency signatures" in p for p in problems)


# --- building -------------------------------------------------------------------------------


def test_build_record_refuses_a_running_round() -> None:
    r = make_round(4)
    r.advertise()
    with pytest.raises(AuditError, match="still running"):
        build_record(
            r.server, aggregator_key=IdentityKey.generate(), sequence=0, prev_hash=GENESIS_HASH
        )


def test_record_round_from_a_completed_server_session_appends_to_the_chain() -> None:
    from .conftest import privacy_report

    r = make_round(4, threshold=4, vector_length=3)
    r.advertise()
    for _ in range(4):
        r.step()
    assert r.server.stage is Stage.COMPLETED
    key, chain = IdentityKey.generate(), RecordChain()
    report = privacy_report(r.config.round_id, 0.5)
    record = record_round(r.server, chain, aggregator_key=key, privacy_report=report)
    assert record.aggregate_digest == aggregate_digest(r.server.result.total, 32)
    assert verify_chain(chain.records, aggregator_key=key.public_key).ok
    with pytest.raises(AuditError, match="does not extend"):
        chain.append(record)


def test_privacy_report_of_another_round_is_refused(chain3: Chain) -> None:
    from .conftest import privacy_report

    r = make_round(4, round_id=9)
    r.advertise()
    r.server.abort("operator stop")
    with pytest.raises(AuditError, match="round 1"):
        build_record(
            r.server,
            aggregator_key=chain3.aggregator,
            sequence=0,
            prev_hash=GENESIS_HASH,
            privacy_report=privacy_report(1, 1.0),
        )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{}",
        '{"schema":"secagg.audit.round-record/2"}',
        "NaN",
        '{"schema":"secagg.audit.round-record/2","x":Infinity}',
        "\u00e9",
        "[" * 100_000,
    ],
)
def test_malformed_record_text_raises_record_format_error(text: str) -> None:
    with pytest.raises(RecordFormatError):
        RoundRecord.from_json(text)


def test_oversized_record_is_refused_before_parsing() -> None:
    from secagg.audit import MAX_RECORD_BYTES

    with pytest.raises(RecordFormatError, match="larger"):
        RoundRecord.from_json(b" " * (MAX_RECORD_BYTES + 1))


def test_long_chain_of_simulated_rounds_verifies() -> None:
    chain = make_chain(rounds=4, n=4)
    assert verify_chain(chain.chain.records, aggregator_key=chain.aggregator.public_key).ok
    assert np.all([r.sequence == i for i, r in enumerate(chain.chain)])
