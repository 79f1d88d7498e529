"""The per-round privacy report: a versioned, deterministic JSON document and a plain-text table.

No clock is read here: ``created_at`` is passed in (an ISO-8601 string), so the same round always
serialises to the same bytes and can be signed and hashed into the audit chain.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any

from secagg.errors import ConfigError

__all__ = [
    "PRIVACY_REPORT_SCHEMA_VERSION",
    "VACUOUS_EPSILON_PER_ROUND",
    "DistributedDPStatement",
    "PrivacyReport",
    "SiteRecordLevelDP",
    "is_vacuous",
    "render_table",
]

PRIVACY_REPORT_SCHEMA_VERSION = "1.0"

#: A DP guarantee whose epsilon *per round* exceeds this is flagged ``vacuous`` in every report
#: (table, JSON, HTML): e^10 > 22,000 bounds the likelihood ratio an observer gains, which rules
#: out almost nothing. The rule is per round because the cumulative epsilon grows with the plan.
VACUOUS_EPSILON_PER_ROUND = 10.0


def is_vacuous(epsilon_round: float | None) -> bool:
    """True when a per-round epsilon is above :data:`VACUOUS_EPSILON_PER_ROUND` (or infinite)."""
    return epsilon_round is not None and epsilon_round > VACUOUS_EPSILON_PER_ROUND


def _derived_vacuous(cls: type, d: Any) -> Any:
    """``d`` without its derived ``vacuous`` flag, which must agree with ``epsilon_round``."""
    if not isinstance(d, Mapping) or "vacuous" not in d:
        return d  # documents written before the flag existed carry none
    rest = {k: v for k, v in d.items() if k != "vacuous"}
    if d["vacuous"] is not is_vacuous(_eps_in("epsilon_round", rest.get("epsilon_round", 0.0))):
        raise ConfigError(f"{cls.__name__}: vacuous = {d['vacuous']!r} contradicts epsilon_round")
    return rest


_PROTECTION_MODES = ("mask", "ckks", "none")
_RECORD_ACCOUNTANTS = ("pld", "rdp", "prv")  # gdp (an approximation) is not accepted
_SITE_MECHANISMS = ("ddgauss", "skellam")


def _num(name: str, v: Any, *, lo: float = 0.0, allow_inf: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{name} must be a number, got {v!r}")
    f = float(v)
    if math.isnan(f) or (math.isinf(f) and not allow_inf) or f < lo:
        raise ConfigError(f"{name} must be a number >= {lo}, got {v!r}")
    return f


def _int(name: str, v: Any, *, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")
    return v


def _str(name: str, v: Any, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{name} must be a non-empty string, got {v!r}")
    if choices is not None and v not in choices:
        raise ConfigError(f"{name} must be one of {choices}, got {v!r}")
    return v


def _delta(v: Any) -> float:
    d = _num("delta", v, allow_inf=False)
    if not 0 < d < 1:
        raise ConfigError(f"delta must lie in (0, 1), got {v!r}")
    return d


def _eps_json(v: float) -> float | str:
    # JSON has no infinity: an unbounded epsilon is written as the string "inf".
    return "inf" if math.isinf(v) else v


def _eps_in(name: str, v: Any) -> float:
    if v == "inf":
        return math.inf
    return _num(name, v)


@dataclass(frozen=True)
class SiteRecordLevelDP:
    """Record-level DP of one site (DP-SGD with Opacus), as that site reported it."""

    site: str
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    epsilon_round: float
    epsilon_cumulative: float

    def __post_init__(self) -> None:
        _str("site", self.site)
        _str("accountant", self.accountant, _RECORD_ACCOUNTANTS)
        _num("noise_multiplier", self.noise_multiplier, allow_inf=False)
        rate = _num("sample_rate", self.sample_rate, allow_inf=False)
        if rate > 1:
            raise ConfigError(f"sample_rate must lie in [0, 1], got {rate}")
        _int("steps", self.steps)
        _delta(self.delta)
        _num("epsilon_round", self.epsilon_round)
        _num("epsilon_cumulative", self.epsilon_cumulative)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["epsilon_round"] = _eps_json(self.epsilon_round)
        d["epsilon_cumulative"] = _eps_json(self.epsilon_cumulative)
        d["vacuous"] = is_vacuous(self.epsilon_round)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SiteRecordLevelDP:
        d = _derived_vacuous(cls, d)
        _exact_keys(cls, d)
        return cls(
            site=d["site"],
            accountant=d["accountant"],
            noise_multiplier=d["noise_multiplier"],
            sample_rate=d["sample_rate"],
            steps=d["steps"],
            delta=d["delta"],
            epsilon_round=_eps_in("epsilon_round", d["epsilon_round"]),
            epsilon_cumulative=_eps_in("epsilon_cumulative", d["epsilon_cumulative"]),
        )


@dataclass(frozen=True)
class DistributedDPStatement:
    """Site-level distributed DP of the aggregate (sites add the noise under secure aggregation).

    ``noise_stddev_total`` is the stddev of the summed noise (unscaled domain) that is guaranteed as
    long as at least ``min_clients`` sites contribute.
    """

    mechanism: str
    l2_clip: float
    noise_stddev_total: float
    min_clients: int
    bits: int
    wraparound_probability: float
    epsilon_round: float
    epsilon_cumulative: float
    delta: float
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        _str("mechanism", self.mechanism, _SITE_MECHANISMS)
        _num("l2_clip", self.l2_clip, allow_inf=False)
        _num("noise_stddev_total", self.noise_stddev_total, allow_inf=False)
        _int("min_clients", self.min_clients, lo=1)
        _int("bits", self.bits, lo=1)
        p = _num("wraparound_probability", self.wraparound_probability, allow_inf=False)
        if p > 1:
            raise ConfigError(f"wraparound_probability must lie in [0, 1], got {p}")
        _num("epsilon_round", self.epsilon_round)
        _num("epsilon_cumulative", self.epsilon_cumulative)
        _delta(self.delta)
        _str("accountant", self.accountant, ("rdp",))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["epsilon_round"] = _eps_json(self.epsilon_round)
        d["epsilon_cumulative"] = _eps_json(self.epsilon_cumulative)
        d["vacuous"] = is_vacuous(self.epsilon_round)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DistributedDPStatement:
        d = _derived_vacuous(cls, d)
        _exact_keys(cls, d)
        return cls(
            mechanism=d["mechanism"],
            l2_clip=d["l2_clip"],
            noise_stddev_total=d["noise_stddev_total"],
            min_clients=d["min_clients"],
            bits=d["bits"],
            wraparound_probability=d["wraparound_probability"],
            epsilon_round=_eps_in("epsilon_round", d["epsilon_round"]),
            epsilon_cumulative=_eps_in("epsilon_cumulative", d["epsilon_cumulative"]),
            delta=d["delta"],
            accountant=d["accountant"],
        )


def _exact_keys(cls: type, d: Any) -> None:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{cls.__name__}: expected an object, got {type(d).__name__}")
    want = {f.name for f in fields(cls)}
    got = set(d)
    if got != want:
        raise ConfigError(
            f"{cls.__name__}: missing fields {sorted(want - got)}, "
            f"unknown fields {sorted(got - want)}"
        )


@dataclass(frozen=True)
class PrivacyReport:
    """Privacy spent in one round, at both levels of DP."""

    schema_version: str
    round_id: int
    protection_mode: str
    participants: tuple[str, ...]
    dropouts: tuple[str, ...]
    site_level: DistributedDPStatement | None
    record_level: tuple[SiteRecordLevelDP, ...]
    created_at: str

    def __post_init__(self) -> None:
        if self.schema_version != PRIVACY_REPORT_SCHEMA_VERSION:
            raise ConfigError(
                f"unsupported privacy report schema {self.schema_version!r}; "
                f"this build reads {PRIVACY_REPORT_SCHEMA_VERSION!r}"
            )
        _int("round_id", self.round_id)
        _str("protection_mode", self.protection_mode, _PROTECTION_MODES)
        for name in ("participants", "dropouts"):
            seq = getattr(self, name)
            if not isinstance(seq, tuple) or not all(isinstance(s, str) and s for s in seq):
                raise ConfigError(f"{name} must be a tuple of non-empty strings")
            if len(set(seq)) != len(seq):
                raise ConfigError(f"{name} contains duplicates")
        if set(self.participants) & set(self.dropouts):
            raise ConfigError("a site cannot be both a participant and a dropout")
        if self.site_level is not None and not isinstance(self.site_level, DistributedDPStatement):
            raise ConfigError("site_level must be a DistributedDPStatement or None")
        if not isinstance(self.record_level, tuple) or not all(
            isinstance(r, SiteRecordLevelDP) for r in self.record_level
        ):
            raise ConfigError("record_level must be a tuple of SiteRecordLevelDP")
        if len({r.site for r in self.record_level}) != len(self.record_level):
            raise ConfigError("record_level has two entries for one site")
        _str("created_at", self.created_at)
        try:
            datetime.fromisoformat(self.created_at.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ConfigError(f"created_at is not ISO 8601: {self.created_at!r}") from exc

    @property
    def max_record_level_epsilon(self) -> float | None:
        """Largest cumulative record-level epsilon over the sites (None without record-level DP)."""
        if not self.record_level:
            return None
        return max(r.epsilon_cumulative for r in self.record_level)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "round_id": self.round_id,
            "protection_mode": self.protection_mode,
            "participants": list(self.participants),
            "dropouts": list(self.dropouts),
            "site_level": None if self.site_level is None else self.site_level.to_dict(),
            "record_level": [r.to_dict() for r in self.record_level],
            "created_at": self.created_at,
        }

    def to_json(self) -> str:
        """Deterministic JSON: sorted keys, no whitespace variation, no NaN/Infinity tokens."""
        return json.dumps(
            self.to_dict(),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
            allow_nan=False,
        )

    @classmethod
    def from_dict(cls, d: Any) -> PrivacyReport:
        _exact_keys(cls, d)
        if d["schema_version"] != PRIVACY_REPORT_SCHEMA_VERSION:
            raise ConfigError(
                f"unsupported privacy report schema {d['schema_version']!r}; "
                f"this build reads {PRIVACY_REPORT_SCHEMA_VERSION!r}"
            )
        for name in ("participants", "dropouts", "record_level"):
            if not isinstance(d[name], list):
                raise ConfigError(f"{name} must be a list")
        site = d["site_level"]
        return cls(
            schema_version=d["schema_version"],
            round_id=d["round_id"],
            protection_mode=d["protection_mode"],
            participants=tuple(d["participants"]),
            dropouts=tuple(d["dropouts"]),
            site_level=None if site is None else DistributedDPStatement.from_dict(site),
            record_level=tuple(SiteRecordLevelDP.from_dict(r) for r in d["record_level"]),
            created_at=d["created_at"],
        )

    @classmethod
    def from_json(cls, s: str | bytes) -> PrivacyReport:
        """Parse and validate; any malformed input raises :class:`ConfigError`."""

        def _no_constants(name: str) -> Any:
            raise ConfigError(f"non-standard JSON constant {name}")

        try:
            d = json.loads(s, parse_constant=_no_constants)
        except (ValueError, TypeError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"privacy report is not valid JSON: {exc}") from exc
        return cls.from_dict(d)


def _fmt_eps(v: float | None) -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "inf"
    return f"{v:.3f}"


def render_table(reports: Iterable[PrivacyReport]) -> str:
    """Plain-text table: round, participants, dropouts, site-level eps, max record-level eps.

    Epsilons are cumulative (privacy spent so far); ``-`` where that level of DP is not used.
    """
    header = ("round", "participants", "dropouts", "site-level eps", "max record-level eps")
    rows = [header]
    flagged = False
    for r in sorted(reports, key=lambda rep: rep.round_id):
        site = r.site_level
        vacuous = site is not None and is_vacuous(site.epsilon_round)
        flagged |= vacuous
        rows.append(
            (
                str(r.round_id),
                str(len(r.participants)),
                str(len(r.dropouts)),
                _fmt_eps(None if site is None else site.epsilon_cumulative)
                + (" (vacuous)" if vacuous else ""),
                _fmt_eps(r.max_record_level_epsilon),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    if flagged:
        lines.append(
            f"(vacuous: more than epsilon {VACUOUS_EPSILON_PER_ROUND:g} per round, which rules "
            "out almost nothing)"
        )
    return "\n".join(lines) + "\n"
