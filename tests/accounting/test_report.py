"""The per-round privacy report: deterministic JSON, strict parsing, the table."""

from __future__ import annotations

import json
import math

import pytest

from secagg.accounting import (
    PRIVACY_REPORT_SCHEMA_VERSION,
    DistributedDPStatement,
    PrivacyReport,
    SiteRecordLevelDP,
    render_table,
)
from secagg.errors import ConfigError


def _report(round_id: int = 3, **over) -> PrivacyReport:
    fields = {
        "schema_version": PRIVACY_REPORT_SCHEMA_VERSION,
        "round_id": round_id,
        "protection_mode": "mask",
        "participants": ("hospital-a", "hospital-b", "hospital-c"),
        "dropouts": ("hospital-d",),
        "site_level": DistributedDPStatement(
            mechanism="ddgauss",
            l2_clip=1.0,
            noise_stddev_total=1.2,
            min_clients=3,
            bits=32,
            wraparound_probability=1e-9,
            epsilon_round=2.5,
            epsilon_cumulative=7.25,
            delta=1e-5,
        ),
        "record_level": (
            SiteRecordLevelDP("hospital-a", "rdp", 1.0, 0.2, 5, 1e-5, 3.1, 8.25),
            SiteRecordLevelDP("hospital-b", "prv", 1.1, 0.1, 10, 1e-5, 1.5, math.inf),
        ),
        "created_at": "2026-11-03T10:15:00+00:00",
    }
    fields.update(over)
    return PrivacyReport(**fields)


def test_json_round_trip_is_exact_and_deterministic() -> None:
    r = _report()
    s = r.to_json()
    assert PrivacyReport.from_json(s) == r
    assert PrivacyReport.from_json(s).to_json() == s
    d = json.loads(s)
    assert list(d) == sorted(d)
    assert d["record_level"][1]["epsilon_cumulative"] == "inf"  # JSON has no infinity


def test_report_without_any_dp_round_trips() -> None:
    r = _report(site_level=None, record_level=(), protection_mode="ckks")
    assert PrivacyReport.from_json(r.to_json()) == r


def test_wrong_schema_version_is_rejected() -> None:
    d = json.loads(_report().to_json())
    d["schema_version"] = "2.0"
    with pytest.raises(ConfigError, match="schema"):
        PrivacyReport.from_json(json.dumps(d))
    with pytest.raises(ConfigError):
        _report(schema_version="0.9")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("round_id"),
        lambda d: d.update(extra=1),
        lambda d: d.update(round_id=-1),
        lambda d: d.update(round_id=True),
        lambda d: d.update(protection_mode="plaintext"),
        lambda d: d.update(participants="hospital-a"),
        lambda d: d.update(dropouts=["hospital-a"]),
        lambda d: d.update(created_at="yesterday"),
        lambda d: d["site_level"].update(delta=0),
        lambda d: d["site_level"].update(wraparound_probability=2.0),
        lambda d: d["site_level"].update(mechanism="laplace"),
        lambda d: d["site_level"].pop("bits"),
        lambda d: d["record_level"][0].update(epsilon_round=-1.0),
        lambda d: d["record_level"][0].update(accountant="moments"),
        lambda d: d["record_level"].append(dict(d["record_level"][0])),
    ],
)
def test_malformed_reports_raise_config_error(mutate) -> None:
    d = json.loads(_report().to_json())
    mutate(d)
    with pytest.raises(ConfigError):
        PrivacyReport.from_json(json.dumps(d))


@pytest.mark.parametrize("text", ["", "[1]", "{", '{"round_id": NaN}', "null"])
def test_non_reports_raise_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        PrivacyReport.from_json(text)


def test_render_table() -> None:
    table = render_table([_report(4), _report(3, site_level=None, record_level=())])
    lines = table.splitlines()
    assert lines[0].split() == [
        "round",
        "participants",
        "dropouts",
        "site-level",
        "eps",
        "max",
        "record-level",
        "eps",
    ]
    assert lines[2].split() == ["3", "3", "1", "-", "-"]
    assert lines[3].split() == ["4", "3", "1", "7.250", "inf"]
