"""A reduced ``secagg demo`` end to end: run directory, reports, report.html, budget, resume."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("opacus")

from secagg.accounting import PrivacyReport, RdpAccountant
from secagg.cli import main
from secagg.demo.data import WDBC_PUBLISHED_RANGES, load_demo_data
from secagg.demo.federated import DemoConfig, run_demo
from secagg.reporting import RunDirectory

# Seven hospitals: their strict policies need t = 5 of 7, so a round survives one declining
# hospital (hospital-2, over its budget) plus one dropout.
SMALL = {"rounds": 3, "local_epochs": 1, "sites": 7}


def test_reduced_demo_writes_a_complete_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    buf = io.StringIO()
    cfg = DemoConfig(site_budgets={"hospital-2": 1e-3}, **SMALL)
    result = run_demo(cfg, run_dir=run_dir, out=buf, progress=False)
    text = buf.getvalue()

    rd = RunDirectory(run_dir)
    assert rd.round_ids() == [1, 2, 3]
    for rid in (1, 2, 3):
        d = run_dir / "rounds" / str(rid)
        assert {p.name for p in d.iterdir()} == {
            "round.json",
            "privacy.json",
            "accountant.json",
            "global_weights.npy",
        }
        raw = (d / "privacy.json").read_text().strip()
        report = PrivacyReport.from_json(raw)
        assert report.to_json() == raw  # schema round trip, byte for byte
        assert report.round_id == rid and report.protection_mode == "mask"
        assert "hospital-2" not in report.participants
        assert report.site_level is not None and report.site_level.min_clients == 5
        assert {r.site for r in report.record_level} <= set(report.participants) | set(
            report.dropouts
        )
        record = rd.read_record(rid)
        assert "hospital-2" in record.declined
        assert record.survivors == report.participants

    # Round 2 drops hospital-3 at the masked input (not in the sum); round 3 drops hospital-6
    # before unmasking (its input is in the sum).
    r2, r3 = rd.read_record(2), rd.read_record(3)
    assert r2.dropouts == {"masked_input": ("hospital-3",)}
    assert "hospital-3" not in r2.survivors
    assert r3.dropouts == {"unmask": ("hospital-6",)}
    assert "hospital-6" in r3.survivors

    # The stored accountant replays to the reported cumulative site-level epsilon.
    state = rd.read_accountant_state(3)
    acc = RdpAccountant()
    acc.load_state_dict(state["site_level"])
    assert len(acc.history) == 3
    assert acc.get_epsilon(1e-5) == pytest.approx(result.reports[-1].site_level.epsilon_cumulative)
    assert set(state["record_level"]) == {f"hospital-{k}" for k in range(1, 8)}

    html = (run_dir / "report.html").read_text()
    assert html.startswith("<!doctype html>") and "data:image/png;base64," in html
    assert "hospital-2" in html and "<table>" in html
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["comparison"]) == 8
    assert "declines" in text and "federated F1" in text and "report:" in text
    assert np.isfinite(result.federated_f1) and len(result.baselines) == 7


def test_resumed_run_continues_the_ledger(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cfg = DemoConfig(baselines=False, rounds=2, local_epochs=1)
    run_demo(cfg, run_dir=run_dir, out=io.StringIO(), progress=False)
    rd = RunDirectory(run_dir)
    # Pretend the aggregator is restarted with a longer plan: edit the stored config's rounds.
    stored = rd.read_config()
    stored["rounds"] = 3
    rd.write_config(stored)
    result = run_demo(None, run_dir=run_dir, resume=True, out=io.StringIO(), progress=False)
    assert rd.round_ids() == [1, 2, 3]
    reps = result.reports
    assert [r.round_id for r in reps] == [1, 2, 3]
    acc = RdpAccountant()
    acc.load_state_dict(rd.read_accountant_state(3)["site_level"])
    assert len(acc.history) == 3
    assert reps[2].site_level.epsilon_cumulative == pytest.approx(acc.get_epsilon(1e-5))
    assert reps[2].site_level.epsilon_cumulative > reps[1].site_level.epsilon_cumulative
    rec = {r.site: r for r in reps[2].record_level}
    prev = {r.site: r for r in reps[1].record_level}
    for site in set(rec) & set(prev):
        assert rec[site].epsilon_cumulative > prev[site].epsilon_cumulative


def test_cli_demo_and_report_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "cli"
    argv = ["demo", "--rounds", "2", "--local-epochs", "1", "--no-baselines", "--no-progress"]
    argv += ["--run-dir", str(run_dir)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "max record eps" in out and "report.html" in out
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert "site-level eps" in capsys.readouterr().out
    assert (run_dir / "report.html").is_file()
    assert main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_split_is_non_iid_with_a_stratified_test_set() -> None:
    data = load_demo_data(5, seed=0)
    fractions = [s.malignant_fraction for s in data.sites]
    assert max(fractions) - min(fractions) > 0.3
    assert min(s.size for s in data.sites) >= 20
    assert sum(s.size for s in data.sites) + data.test_labels.size == 569
    assert abs(np.mean(data.test_labels == 0) - 212 / 569) < 0.01
    assert all(np.all(np.abs(s.features) <= 1.05) for s in data.sites)


def test_public_ranges_are_the_published_table() -> None:
    from sklearn.datasets import load_breast_cancer

    descr = load_breast_cancer().DESCR
    rows = [line for line in descr.splitlines() if "):" in line and line[0].isalpha()]
    published = [tuple(float(v) for v in line.split(":")[1].split()) for line in rows]
    assert published == list(WDBC_PUBLISHED_RANGES)


# --- over gRPC: a real aggregator process and one process per hospital ----------------------


def test_reduced_demo_over_grpc_with_real_dropouts_and_verifiable_audit_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from secagg.audit import read_jsonl, verify_records
    from secagg.demo.grpc_runner import GrpcRunner

    run_dir = tmp_path / "grpc-run"
    cfg = DemoConfig(site_budgets={"hospital-2": 1e-3}, baselines=False, **SMALL)
    buf = io.StringIO()
    result = run_demo(
        cfg,
        run_dir=run_dir,
        out=buf,
        progress=False,
        runner_factory=lambda hospitals: GrpcRunner(run_dir, [h.name for h in hospitals]),
    )
    rd = RunDirectory(run_dir)
    assert rd.round_ids() == [1, 2, 3]
    # The dropouts were real: the aggregator's deadline cut the silent hospitals off.
    log = (run_dir / "grpc" / "aggregator.log").read_text()
    assert '"event":"client_missed_deadline","round":2,"party":3,"stage":"masked_input"' in log
    assert '"event":"client_missed_deadline","round":3,"party":6,"stage":"unmask"' in log
    r2, r3 = rd.read_record(2), rd.read_record(3)
    assert r2.dropouts == {"masked_input": ("hospital-3",)} and "hospital-3" not in r2.survivors
    assert r3.dropouts == {"unmask": ("hospital-6",)} and "hospital-6" in r3.survivors
    for rid in (1, 2, 3):
        assert "hospital-2" in rd.read_record(rid).declined  # its budget: it declined each round

    # The privacy reports in the run directory are the aggregator's, signed into its records.
    texts = list(read_jsonl(run_dir / "audit.jsonl"))
    pub = (run_dir / "aggregator.pub").read_text().strip()
    chain = verify_records(texts, aggregator_key=load_identity_pub(pub))
    assert chain.ok, chain.problems
    assert [r.privacy_report for r in chain.records] == list(result.reports)
    assert [rd.read_report(r) for r in (1, 2, 3)] == list(result.reports)
    last = result.reports[-1]
    assert "hospital-2" not in last.participants and last.site_level is not None
    assert {s.site for s in last.record_level} == set(last.participants)
    acc = RdpAccountant()
    acc.load_state_dict(rd.read_accountant_state(3)["site_level"])
    assert acc.get_epsilon(1e-5) == pytest.approx(last.site_level.epsilon_cumulative)
    ledgers = rd.read_accountant_state(3)["record_level"]
    assert set(ledgers) == {f"hospital-{k}" for k in range(1, 8)}
    assert (run_dir / "report.html").is_file()
    assert "audit records:" in buf.getvalue()

    assert main(["audit", "verify", str(run_dir), "--aggregator-key", pub]) == 0
    assert "OK: 3 records" in capsys.readouterr().out
    leftovers = [p for p in (run_dir / "aggregator" / "spool").iterdir()]
    assert not leftovers


def load_identity_pub(hex_key: str):  # type: ignore[no-untyped-def]
    from secagg.crypto import IdentityPublicKey

    return IdentityPublicKey.from_bytes(bytes.fromhex(hex_key))
