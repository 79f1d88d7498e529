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
from secagg.demo.federated import DemoConfig, fault_schedule, run_demo
from secagg.errors import ConfigError
from secagg.protocol import Stage
from secagg.reporting import RunDirectory

SMALL = {"rounds": 3, "local_epochs": 1}


def test_reduced_demo_writes_a_complete_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    buf = io.StringIO()
    cfg = DemoConfig(**SMALL)
    assert cfg.threshold == 4  # the sites' default policy: t > ceil((5 + 0.5) / 2)
    result = run_demo(cfg, run_dir=run_dir, out=buf, progress=False)
    text = buf.getvalue()
    names = tuple(f"hospital-{k}" for k in range(1, 6))

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
        assert report.site_level is not None and report.site_level.min_clients == 4
        assert json.loads(raw)["site_level"]["vacuous"] is True  # epsilon ~1e4 per round
        assert {r.site for r in report.record_level} <= set(report.participants) | set(
            report.dropouts
        )
        record = rd.read_record(rid)
        assert record.survivors == report.participants
        assert sum(len(v) for v in record.dropouts.values()) <= 1  # at most one per round

    # The seeded schedule: round 2 drops one hospital at the masked input (not in the sum),
    # round 3 one before unmasking (its input is in the sum).
    (dropped2,) = fault_schedule(2, names, cfg.seed)[Stage.MASKED_INPUT]
    (dropped3,) = fault_schedule(3, names, cfg.seed)[Stage.UNMASK]
    r2, r3 = rd.read_record(2), rd.read_record(3)
    assert r2.dropouts == {"masked_input": (dropped2,)} and dropped2 not in r2.survivors
    assert r3.dropouts == {"unmask": (dropped3,)} and dropped3 in r3.survivors
    assert f"{dropped2} @ masked input (" in text and "% malignant)" in text

    # The stored accountant replays to the reported cumulative site-level epsilon.
    state = rd.read_accountant_state(3)
    acc = RdpAccountant()
    acc.load_state_dict(state["site_level"])
    assert len(acc.history) == 3
    assert acc.get_epsilon(1e-5) == pytest.approx(result.reports[-1].site_level.epsilon_cumulative)
    assert set(state["record_level"]) == set(names)

    html = (run_dir / "report.html").read_text()
    assert html.startswith("<!doctype html>") and "data:image/png;base64," in html
    assert "hospital-2" in html and "<table>" in html and "VACUOUS" in html
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["comparison"]) == 6
    for b in summary["comparison"][1:]:  # each hospital's gain on the same test set
        assert b["federated_gain_f1"] == pytest.approx(result.federated_f1 - b["f1"])
    assert summary["verdict"] in text and "F1 gain" in text
    assert "VACUOUS" in text and "dataset size" in text and "report:" in text
    assert np.isfinite(result.federated_f1) and len(result.baselines) == 5


def test_a_declining_hospital_plus_a_dropout_aborts_the_round_and_the_demo_goes_on(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    buf = io.StringIO()
    cfg = DemoConfig(site_budgets={"hospital-2": 1e-3}, baselines=False, **SMALL)
    run_demo(cfg, run_dir=run_dir, out=buf, progress=False)
    rd = RunDirectory(run_dir)
    # Round 1: hospital-2 declines (budget), 4 of 5 remain = t. Rounds 2 and 3 also lose a
    # scheduled dropout: 3 < t, so they abort, release nothing and leave the model unchanged.
    assert rd.round_ids() == [1]
    assert "hospital-2" in rd.read_record(1).declined
    assert "hospital-2" not in rd.read_report(1).participants
    assert json.loads((run_dir / "summary.json").read_text())["aborted_rounds"] == [2, 3]
    text = buf.getvalue()
    assert "declines" in text and text.count("aborted:") == 2 and "model unchanged" in text


def test_seed_fixes_split_init_and_schedule_and_noise_only_when_asked(tmp_path: Path) -> None:
    def final(name: str, **kw: object) -> np.ndarray:
        cfg = DemoConfig(baselines=False, rounds=2, local_epochs=1, **kw)  # type: ignore[arg-type]
        run_demo(cfg, run_dir=tmp_path / name, out=io.StringIO(), progress=False)
        return RunDirectory(tmp_path / name).read_global_weights(2)

    assert np.array_equal(
        final("a", reproducible_noise=True), final("b", reproducible_noise=True)
    )  # bit for bit
    assert not np.array_equal(final("c"), final("d"))  # private: the noise comes from the OS
    assert not np.array_equal(
        final("e", reproducible_noise=True), final("f", reproducible_noise=True, seed=1)
    )
    assert "NOT PRIVATE" in (tmp_path / "a" / "report.html").read_text()
    assert "NOT PRIVATE" not in (tmp_path / "c" / "report.html").read_text()
    names = tuple(f"hospital-{k}" for k in range(1, 6))
    schedules = {str(fault_schedule(r, names, s)) for r in (2, 5, 8, 11) for s in (0,)}
    assert len(schedules) > 1  # the seed draws which hospital drops


def test_too_few_hospitals_for_the_policy_are_refused_with_advice() -> None:
    with pytest.raises(ConfigError, match="at least 5 hospitals"):
        DemoConfig(sites=4)
    assert DemoConfig(sites=4, dropouts=False).threshold == 4
    assert DemoConfig(sites=10).threshold == 9


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
    assert main(["report", str(tmp_path / "nothing")]) == 3  # a missing folder (exit codes)


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
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from secagg.audit import read_jsonl, verify_records
    from secagg.demo.grpc_runner import GrpcRunner

    # A relative run directory, as `secagg demo --run-dir runs/mine` gives (issue 11: the
    # aggregator resolved the paths of its config file twice).
    monkeypatch.chdir(tmp_path)
    run_dir = Path("runs") / "grpc-run"
    cfg = DemoConfig(site_budgets={"hospital-2": 1e-3}, baselines=False, **SMALL)
    names = tuple(f"hospital-{k}" for k in range(1, 6))
    buf = io.StringIO()
    result = run_demo(
        cfg,
        run_dir=run_dir,
        out=buf,
        progress=False,
        runner_factory=lambda hospitals: GrpcRunner(run_dir, [h.name for h in hospitals]),
    )
    rd = RunDirectory(run_dir)
    # hospital-2 declines every round (its budget); round 1 completes with 4 of 5 = t, rounds 2
    # and 3 lose a real dropout too and abort (3 < t).
    assert rd.round_ids() == [1]
    assert "hospital-2" in rd.read_record(1).declined
    log = (run_dir / "grpc" / "aggregator.log").read_text()
    (d2,) = fault_schedule(2, names, cfg.seed)[Stage.MASKED_INPUT]
    (d3,) = fault_schedule(3, names, cfg.seed)[Stage.UNMASK]
    p2, p3 = names.index(d2) + 1, names.index(d3) + 1
    # The dropouts were real: the silent hospital never sent its masked input (round 2) or its
    # shares (round 3), and the aggregator aborted at that stage's deadline.
    assert f'"event":"masked_input_started","round":2,"party":{p2},' not in log
    assert '"round_aborted","round":2,"stage":"masked_input"' in log
    assert '"round_aborted","round":3,"stage":"unmask"' in log
    assert log.count("threshold is 4") == 2
    assert f'"event":"masked_input_started","round":3,"party":{p3},' in log
    assert buf.getvalue().count("aborted:") == 2

    # The privacy reports in the run directory are the aggregator's, signed into its records;
    # the aborted rounds have records too (without a report).
    texts = list(read_jsonl(run_dir / "audit.jsonl"))
    pub = (run_dir / "aggregator.pub").read_text().strip()
    chain = verify_records(texts, aggregator_key=load_identity_pub(pub))
    assert chain.ok, chain.problems
    assert [r.outcome for r in chain.records] == ["completed", "aborted", "aborted"]
    assert [r.privacy_report for r in chain.records if r.privacy_report] == list(result.reports)
    assert [rd.read_report(1)] == list(result.reports)
    last = result.reports[-1]
    assert "hospital-2" not in last.participants and last.site_level is not None
    assert {s.site for s in last.record_level} == set(last.participants)
    acc = RdpAccountant()
    acc.load_state_dict(rd.read_accountant_state(1)["site_level"])
    assert acc.get_epsilon(1e-5) == pytest.approx(last.site_level.epsilon_cumulative)
    ledgers = rd.read_accountant_state(1)["record_level"]
    assert set(ledgers) == set(names)
    assert (run_dir / "report.html").is_file()
    assert "audit records:" in buf.getvalue()

    assert main(["audit", "verify", str(run_dir), "--aggregator-key", pub]) == 0
    out = capsys.readouterr().out
    assert "OK: 3 records" in out and "aggregator/audit.db" in out and "audit.jsonl" in out
    leftovers = [p for p in (run_dir / "aggregator" / "spool").iterdir()]
    assert not leftovers

    # An edit inside the aggregator's own ledger (not only the export) is caught.
    db = sqlite3.connect(run_dir / "aggregator" / "audit.db")
    db.execute(
        "UPDATE audit_round_records SET record_json = replace(record_json, "
        '\'"outcome":"completed"\', \'"outcome":"aborted"\') WHERE seq = 0'
    )
    db.commit()
    db.close()
    assert main(["audit", "verify", str(run_dir), "--aggregator-key", pub]) == 1
    assert "aggregator/audit.db" in capsys.readouterr().err


def load_identity_pub(hex_key: str):  # type: ignore[no-untyped-def]
    from secagg.crypto import IdentityPublicKey

    return IdentityPublicKey.from_bytes(bytes.fromhex(hex_key))
