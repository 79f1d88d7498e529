"""The benchmark code runs end to end on a tiny grid (figures are not checked: timing is noisy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import _report, bench_masking

ROOT = Path(__file__).resolve().parents[2]


def test_python_dash_m_benchmarks_resolves_to_this_repository() -> None:
    code = "import benchmarks, sys; print(benchmarks.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert Path(out.stdout.strip()) == ROOT / "benchmarks" / "__init__.py"


def test_tiny_grid_runs_for_secagg_and_flower() -> None:
    pytest.importorskip("flwr")
    rows = (
        bench_masking.Row(6, 3_000, 0.0, None, 4),
        bench_masking.Row(8, 2_000, 0.125, 5, 3),
    )
    results = []
    for row in rows:
        ours = bench_masking.run_secagg(row, throughput=5e9)
        theirs = bench_masking.run_flower(row, ours.pop("neighbours"))
        assert ours["upload_bytes"] == 4 * row.m
        assert theirs["upload_bytes"] > 8 * row.m
        assert ours["masks_regenerated"] > 0
        results.append((row, ours, theirs))
    markdown = bench_masking.render(results, 5e9)
    assert markdown.startswith("## ")
    assert "n=8, m=2,000, 12%, k=5/t=3" in markdown


def test_sections_are_assembled_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_report, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(_report, "RESULTS_FILE", tmp_path / "RESULTS.md")
    _report.write_section("zeta", "## Zeta\n")
    _report.write_section("ckks", "## CKKS\n")
    _report.write_section("masking", "## Masking\n")
    text = _report.assemble().read_text()
    assert text.index("## Masking") < text.index("## CKKS") < text.index("## Zeta")
