"""The run directory and the HTML report, on hand-made records (no torch, no training)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest

from secagg.accounting import (
    PRIVACY_REPORT_SCHEMA_VERSION,
    DistributedDPStatement,
    PrivacyReport,
    SiteRecordLevelDP,
)
from secagg.errors import ConfigError
from secagg.reporting import RoundRecord, RunDirectory, render_html_report


def _round(rd: RunDirectory, rid: int) -> None:
    site = DistributedDPStatement(
        mechanism="ddgauss",
        l2_clip=5.0,
        noise_stddev_total=0.05,
        min_clients=3,
        bits=32,
        wraparound_probability=0.0,
        epsilon_round=100.0,
        epsilon_cumulative=100.0 * rid,
        delta=1e-5,
    )
    rec = tuple(
        SiteRecordLevelDP(
            site=f"h{k}",
            accountant="rdp",
            noise_multiplier=1.5,
            sample_rate=0.2,
            steps=5,
            delta=1e-5,
            epsilon_round=1.0,
            epsilon_cumulative=float(rid),
        )
        for k in (1, 2, 3)
    )
    report = PrivacyReport(
        schema_version=PRIVACY_REPORT_SCHEMA_VERSION,
        round_id=rid,
        protection_mode="mask",
        participants=("h1", "h2"),
        dropouts=("h3",),
        site_level=site,
        record_level=rec,
        created_at="2026-11-25T12:00:00+00:00",
    )
    record = RoundRecord(
        round_id=rid,
        roster=("h1", "h2", "h3", "h4"),
        survivors=("h1", "h2"),
        dropouts={"masked_input": ("h3",)},
        declined={"h4": "site h4 declines: <over budget>"},
        accuracy=0.5 + 0.1 * rid,
        f1=0.4 + 0.1 * rid,
        aggregate_sha256="00" * 32,
        session_id="ab" * 16,
        rotation_seed=rid,
        seconds=0.1,
    )
    rd.write_round(record, report, {"site_level": {"x": rid}}, np.arange(3.0) * rid)


def test_run_directory_round_trips_and_report_embeds_a_png(tmp_path: Path) -> None:
    rd = RunDirectory(tmp_path / "run")
    rd.write_config({"sites": 4})
    for rid in (1, 2, 10):
        _round(rd, rid)
    assert rd.round_ids() == [1, 2, 10]  # numeric, not lexicographic, order
    assert rd.read_report(2).round_id == 2
    assert rd.read_record(10).declined == {"h4": "site h4 declines: <over budget>"}
    assert rd.read_accountant_state(10)["site_level"] == {"x": 10}
    assert np.array_equal(rd.read_global_weights(2), [0.0, 2.0, 4.0])
    rd.write_summary({"comparison": [{"model": "fed", "records": 9, "accuracy": 0.9, "f1": 0.8}]})
    path = render_html_report(rd.path)
    html = path.read_text()
    png = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert png and base64.b64decode(png.group(1)).startswith(b"\x89PNG\r\n\x1a\n")
    assert "&lt;over budget&gt;" not in html or "<over budget>" not in html  # escaped
    assert html.count("<tr>") >= 3 + 1 + 1
    assert "h3 @ masked input" in html  # stage names written for people


def test_report_flags_vacuous_epsilon_formats_values_and_states_the_verdict(
    tmp_path: Path,
) -> None:
    rd = RunDirectory(tmp_path / "run")
    rd.write_config(
        {"sites": 4, "epsilon_budget": None, "site_budgets": {}, "dropouts": True, "delta": 1e-05}
    )
    _round(rd, 1)  # site-level epsilon 100 per round: vacuous; wrap-around bound 0.0
    verdict = "federated F1 0.900 is above the best single-site F1 0.800 (h1 alone): margin +0.100"
    rd.write_summary(
        {
            "comparison": [
                {"model": "fed", "records": 1234, "accuracy": 0.9, "f1": 0.9},
                {
                    "model": "h1 alone",
                    "records": 9,
                    "malignant_fraction": 0.5,
                    "accuracy": 0.8,
                    "f1": 0.8,
                    "federated_gain_f1": 0.1,
                },
            ],
            "verdict": verdict,
            "privacy": ["Site level (a whole hospital): VACUOUS, epsilon 100.00 per round"],
        }
    )
    page = render_html_report(rd.path).read_text()
    cells = re.findall(r"<td>(.*?)</td>", page)
    assert "100 <span class='vacuous'>vacuous</span>" in cells  # cumulative 100, flagged
    assert "more than epsilon 10 in that round" in page
    assert verdict in page and "VACUOUS" in page and "+0.100" in page and "1,234" in cells
    assert "wrap-around probability &lt; 1e-300" in page and "&le; 0 " not in page
    # No raw Python values in the configuration table.
    assert not {"None", "{}", "True", "False"} & set(cells)
    assert {"none", "yes", "1e-05"} <= set(cells)


def test_vacuous_flag_is_in_the_json_and_checked_on_reading() -> None:
    from secagg.accounting.report import VACUOUS_EPSILON_PER_ROUND, is_vacuous

    assert VACUOUS_EPSILON_PER_ROUND == 10.0
    assert is_vacuous(10.01) and not is_vacuous(10.0) and not is_vacuous(None)
    site = DistributedDPStatement(
        mechanism="ddgauss",
        l2_clip=5.0,
        noise_stddev_total=0.05,
        min_clients=3,
        bits=32,
        wraparound_probability=0.0,
        epsilon_round=1e4,
        epsilon_cumulative=1e5,
        delta=1e-5,
    )
    d = site.to_dict()
    assert d["vacuous"] is True
    assert DistributedDPStatement.from_dict(d) == site
    with pytest.raises(ConfigError, match="contradicts"):
        DistributedDPStatement.from_dict({**d, "vacuous": False})  # a flag that lies
    legacy = {k: v for k, v in d.items() if k != "vacuous"}
    assert DistributedDPStatement.from_dict(legacy) == site  # written before the flag


def test_incomplete_round_is_not_listed_and_mismatched_ids_are_refused(tmp_path: Path) -> None:
    rd = RunDirectory(tmp_path)
    _round(rd, 1)
    (rd.round_dir(2)).mkdir(parents=True)
    (rd.round_dir(2) / "round.json").write_text("{}")
    assert rd.round_ids() == [1]
    record = rd.read_record(1)
    with pytest.raises(ConfigError):
        rd.write_round(
            record,
            rd.read_report(1).__class__.from_json(
                rd.read_report(1).to_json().replace('"round_id":1', '"round_id":5')
            ),
            {},
            np.zeros(1),
        )


def test_reporting_package_imports_neither_torch_nor_matplotlib() -> None:
    import subprocess
    import sys

    code = (
        "import sys, secagg.reporting, secagg.demo, secagg.demo.federated; "
        "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
