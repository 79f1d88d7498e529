"""The SQLite ledger, JSON Lines export/import, and ``secagg audit verify|export``."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from pathlib import Path

import pytest

from secagg.audit import AuditError, AuditLedger, RecordFormatError, read_jsonl, verify_records
from secagg.cli import main
from secagg.crypto import IdentityKey

from .conftest import Chain


def _ledger(tmp_path: Path, chain: Chain) -> Path:
    db = tmp_path / "audit.db"
    with AuditLedger(db, aggregator_key=chain.aggregator.public_key) as ledger:
        for record in chain.chain:
            ledger.append(record)
    return db


def test_ledger_stores_the_chain_durably_and_reads_it_back(tmp_path: Path, chain3: Chain) -> None:
    db = _ledger(tmp_path, chain3)
    with AuditLedger(db) as ledger:
        assert len(ledger) == 3
        assert list(ledger.raw_records()) == chain3.lines
        assert ledger.aggregator_key == chain3.aggregator.public_key
        assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        seq, prev = ledger.next_link()
        assert (seq, prev) == (3, chain3.chain.records[-1].record_hash())


def test_ledger_refuses_a_fork_a_gap_and_a_foreign_key(tmp_path: Path, chain3: Chain) -> None:
    db = _ledger(tmp_path, chain3)
    with AuditLedger(db) as ledger:
        with pytest.raises(AuditError, match="does not extend"):
            ledger.append(chain3.chain.records[1])  # a fork at position 1
        gap = dataclasses.replace(chain3.chain.records[0], sequence=7).signed_by(chain3.aggregator)
        with pytest.raises(AuditError, match="does not extend"):
            ledger.append(gap)
        mallory = IdentityKey.generate()
        seq, prev = ledger.next_link()
        foreign = dataclasses.replace(chain3.chain.records[0], sequence=seq, prev_hash=prev)
        with pytest.raises(AuditError, match="another aggregator key"):
            ledger.append(foreign.signed_by(mallory))
        unsigned = dataclasses.replace(foreign.signed_by(chain3.aggregator), signature=bytes(64))
        with pytest.raises(AuditError, match="does not verify"):
            ledger.append(unsigned)
        assert len(ledger) == 3
    with pytest.raises(AuditError, match="belongs to aggregator key"):
        AuditLedger(db, aggregator_key=IdentityKey.generate().public_key)


def test_concurrent_appends_never_fork_the_chain(tmp_path: Path, chain3: Chain) -> None:
    ledger = AuditLedger(tmp_path / "c.db", aggregator_key=chain3.aggregator.public_key)
    base = chain3.chain.records[0]
    results: list[str] = []

    def worker() -> None:
        for _ in range(5):
            seq, prev = ledger.next_link()
            rec = dataclasses.replace(base, sequence=seq, prev_hash=prev).signed_by(
                chain3.aggregator
            )
            try:
                ledger.append(rec)
                results.append("ok")
            except AuditError:
                results.append("refused")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = verify_records(list(ledger.raw_records()), aggregator_key=chain3.aggregator.public_key)
    assert len(ledger) == results.count("ok")
    # The copies of one round repeat its round id (and the verifier says so), but the chain
    # itself never forked: no link, sequence or signature problem.
    assert all("round id 0 after round 0" in p for p in report.problems), report.problems
    ledger.close()


def test_jsonl_export_and_import_round_trip(tmp_path: Path, chain3: Chain) -> None:
    db = _ledger(tmp_path, chain3)
    out = tmp_path / "records.jsonl"
    with AuditLedger(db) as ledger:
        assert ledger.export_jsonl(out) == 3
    assert list(read_jsonl(out)) == chain3.lines
    with AuditLedger(tmp_path / "copy.db", aggregator_key=chain3.aggregator.public_key) as copy:
        assert copy.import_jsonl(out) == 3
        assert list(copy.raw_records()) == chain3.lines


def test_jsonl_reader_refuses_a_line_without_newline(tmp_path: Path, chain3: Chain) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(chain3.lines[0])
    with pytest.raises(RecordFormatError, match="newline"):
        list(read_jsonl(path))


# --- the command line ----------------------------------------------------------------------


def test_cli_verify_accepts_an_untouched_ledger_and_prints_privacy(
    tmp_path: Path, chain3: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _ledger(tmp_path, chain3)
    key = chain3.aggregator.public_key.to_bytes().hex()
    assert main(["audit", "verify", str(db), "--aggregator-key", key]) == 0
    out = capsys.readouterr().out
    assert "OK: 3 records" in out
    assert "(pinned)" in out
    assert "0.500/1.500" in out  # round 2: epsilon this round / cumulative
    assert "site-level eps" in out
    assert main(["audit", "verify", str(tmp_path)]) == 0  # the run directory works too
    assert "NOT pinned" in capsys.readouterr().out


def test_cli_export_then_verify_jsonl(
    tmp_path: Path, chain3: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _ledger(tmp_path, chain3)
    out = tmp_path / "export" / "records.jsonl"
    out.parent.mkdir()
    assert main(["audit", "export", str(db), "--out", str(out)]) == 0
    keyfile = tmp_path / "agg.pub"
    keyfile.write_text(chain3.aggregator.public_key.to_bytes().hex() + "\n")
    assert main(["audit", "verify", str(out), "--aggregator-key", str(keyfile)]) == 0
    head = chain3.chain.records[-1].record_hash().hex()
    assert head in capsys.readouterr().out
    assert main(["audit", "verify", str(out), "--head", head]) == 0


@pytest.mark.parametrize("tamper", ["byte", "remove", "resign"])
def test_cli_verify_rejects_tampering_with_a_precise_message(
    tmp_path: Path, chain3: Chain, capsys: pytest.CaptureFixture[str], tamper: str
) -> None:
    lines = chain3.lines
    if tamper == "byte":
        lines[1] = lines[1].replace('"round_id":1', '"round_id":9', 1)
        expect = "record 1"
    elif tamper == "remove":
        del lines[1]
        expect = "record 1"
    else:
        lines[2] = chain3.chain.records[2].signed_by(IdentityKey.generate()).to_json()
        expect = "record 2 (round 2): signed by aggregator key"
    path = tmp_path / "records.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    key = chain3.aggregator.public_key.to_bytes().hex()
    assert main(["audit", "verify", str(path), "--aggregator-key", key]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err
    assert expect in err


def test_cli_verify_reports_a_missing_or_foreign_file(tmp_path: Path) -> None:
    assert main(["audit", "verify", str(tmp_path / "nope.db")]) == 3  # a missing file
    bogus = tmp_path / "x.db"
    sqlite3.connect(bogus).execute("CREATE TABLE t (x)").connection.commit()
    assert main(["audit", "verify", str(bogus)]) == 2
    assert main(["audit", "verify", str(tmp_path), "--aggregator-key", "zz"]) == 2
