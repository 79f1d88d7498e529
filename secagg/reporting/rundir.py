"""A run directory: one folder per round with its record, privacy report and accountant state.

Layout::

    RUN_DIR/
      config.json                  the run's configuration (public parameters)
      rounds/<id>/round.json       RoundRecord: roster, survivors, dropouts per stage, metrics
      rounds/<id>/privacy.json     PrivacyReport (versioned schema, deterministic JSON)
      rounds/<id>/accountant.json  accountant state *after* this round (site level + site ledgers)
      rounds/<id>/global_weights.npy  the global model after this round
      summary.json                 final comparison (written at the end)
      report.html                  `secagg report RUN_DIR`

Every file is written to a temporary name and renamed, so a crash never leaves half a file. A
restarted aggregator continues from the latest round's ``accountant.json``
(``RdpAccountant.load_state_dict``). The gRPC service will keep the same documents in SQLite.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.accounting.report import PrivacyReport
from secagg.errors import ConfigError

__all__ = ["ACCOUNTANT_STATE_VERSION", "ROUND_RECORD_VERSION", "RoundRecord", "RunDirectory"]

ROUND_RECORD_VERSION = "1.0"
ACCOUNTANT_STATE_VERSION = 1


@dataclass(frozen=True)
class RoundRecord:
    """What happened in one round, besides the privacy report (which is kept beside it)."""

    round_id: int
    roster: tuple[str, ...]
    survivors: tuple[str, ...]
    dropouts: Mapping[str, tuple[str, ...]]
    declined: Mapping[str, str]
    accuracy: float
    f1: float
    aggregate_sha256: str
    session_id: str
    rotation_seed: int
    seconds: float
    version: str = ROUND_RECORD_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["roster"] = list(self.roster)
        d["survivors"] = list(self.survivors)
        d["dropouts"] = {k: list(v) for k, v in self.dropouts.items()}
        d["declined"] = dict(self.declined)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RoundRecord:
        want = {f.name for f in fields(cls)}
        if not isinstance(d, Mapping) or set(d) != want:
            raise ConfigError(f"round record: expected fields {sorted(want)}")
        if d["version"] != ROUND_RECORD_VERSION:
            raise ConfigError(f"unsupported round record version {d['version']!r}")
        return cls(
            round_id=int(d["round_id"]),
            roster=tuple(d["roster"]),
            survivors=tuple(d["survivors"]),
            dropouts={str(k): tuple(v) for k, v in d["dropouts"].items()},
            declined={str(k): str(v) for k, v in d["declined"].items()},
            accuracy=float(d["accuracy"]),
            f1=float(d["f1"]),
            aggregate_sha256=str(d["aggregate_sha256"]),
            session_id=str(d["session_id"]),
            rotation_seed=int(d["rotation_seed"]),
            seconds=float(d["seconds"]),
            version=str(d["version"]),
        )

    @property
    def dropped(self) -> tuple[str, ...]:
        return tuple(s for names in self.dropouts.values() for s in names)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


class RunDirectory:
    """Reads and writes one run's directory (see the module docstring for the layout)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    # -- paths ---------------------------------------------------------------------------------

    @property
    def rounds_dir(self) -> Path:
        return self.path / "rounds"

    def round_dir(self, round_id: int) -> Path:
        return self.rounds_dir / str(round_id)

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    def exists(self) -> bool:
        return (self.path / "config.json").is_file()

    # -- writing -------------------------------------------------------------------------------

    def write_config(self, config: Mapping[str, Any]) -> None:
        _write_atomic(self.path / "config.json", _dump(dict(config)))

    def write_round(
        self,
        record: RoundRecord,
        report: PrivacyReport,
        accountant_state: Mapping[str, Any],
        global_weights: npt.NDArray[np.float64],
    ) -> None:
        """Store a finished round; ``accountant.json`` is written last (it marks completion)."""
        if record.round_id != report.round_id:
            raise ConfigError("the record and the privacy report are of different rounds")
        d = self.round_dir(record.round_id)
        _write_atomic(d / "round.json", _dump(record.to_dict()))
        _write_atomic(d / "privacy.json", report.to_json().encode() + b"\n")
        tmp = d / "global_weights.npy.tmp"
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(global_weights, dtype=np.float64))
        os.replace(tmp, d / "global_weights.npy")
        state = {"version": ACCOUNTANT_STATE_VERSION, **accountant_state}
        _write_atomic(d / "accountant.json", _dump(state))

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        _write_atomic(self.path / "summary.json", _dump(dict(summary)))

    # -- reading -------------------------------------------------------------------------------

    def read_config(self) -> dict[str, Any]:
        return dict(json.loads((self.path / "config.json").read_text()))

    def round_ids(self) -> list[int]:
        """Ids of the *completed* rounds (those with an ``accountant.json``), ascending."""
        if not self.rounds_dir.is_dir():
            return []
        ids = [
            int(p.name)
            for p in self.rounds_dir.iterdir()
            if p.name.isdigit() and (p / "accountant.json").is_file()
        ]
        return sorted(ids)

    def read_report(self, round_id: int) -> PrivacyReport:
        return PrivacyReport.from_json((self.round_dir(round_id) / "privacy.json").read_bytes())

    def read_record(self, round_id: int) -> RoundRecord:
        return RoundRecord.from_dict(
            json.loads((self.round_dir(round_id) / "round.json").read_text())
        )

    def read_reports(self) -> list[PrivacyReport]:
        return [self.read_report(r) for r in self.round_ids()]

    def read_records(self) -> list[RoundRecord]:
        return [self.read_record(r) for r in self.round_ids()]

    def read_accountant_state(self, round_id: int) -> dict[str, Any]:
        state = json.loads((self.round_dir(round_id) / "accountant.json").read_text())
        if not isinstance(state, dict) or state.get("version") != ACCOUNTANT_STATE_VERSION:
            raise ConfigError("accountant.json: missing or unsupported version")
        return state

    def read_global_weights(self, round_id: int) -> npt.NDArray[np.float64]:
        out: npt.NDArray[np.float64] = np.load(self.round_dir(round_id) / "global_weights.npy")
        return out

    def read_summary(self) -> dict[str, Any] | None:
        p = self.path / "summary.json"
        return dict(json.loads(p.read_text())) if p.is_file() else None
