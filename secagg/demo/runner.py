"""The seam between the demo's federated loop and how a secure-aggregation round is carried out.

The federated loop (the aggregator's side) only ever talks to a :class:`RoundRunner`: it hands
over a :class:`RoundTask` (the global model, the round's public distributed-DP configuration and
rotation seed, the roster) and gets back a :class:`RoundOutcome`: the **noisy** integer sum in
Z_(2^b) of the survivors' encodings, who survived, who dropped at which stage, who declined, and
the record-level statements the sites sent. It never sees one site's update.

Each site's side is a :class:`Hospital`: given the task, it checks its budget, trains, clips,
rotates, rounds and noises its update (:class:`~secagg.dp.DistributedDPEncoder`) and returns the
encoded vector for the masking layer.

:class:`InProcessRunner` drives both sides in one process through the sans-IO sessions
(:func:`secagg.simulate.run_round`). :class:`secagg.demo.grpc_runner.GrpcRunner` (the default of
``secagg demo``) runs a real ``secagg serve`` process and one process per hospital on 127.0.0.1:
the hospitals run :meth:`Hospital.local_round` in their own processes, only masked vectors cross
the wire, and the aggregator's privacy report and signed audit record come back with the outcome.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from secagg.accounting.report import PrivacyReport, SiteRecordLevelDP
from secagg.crypto import IdentityKey
from secagg.dp.distributed import DistributedDPConfig
from secagg.errors import BudgetExceeded, ConfigError, RoundAborted
from secagg.protocol import ACTIVE_STAGES, RoundConfig, SitePolicy, Stage
from secagg.simulate import run_round

__all__ = [
    "Hospital",
    "InProcessRunner",
    "RoundOutcome",
    "RoundRunner",
    "RoundTask",
    "SiteContribution",
]


@dataclass(frozen=True, eq=False)
class RoundTask:
    """Everything public about one federated round, sent by the aggregator to every site.

    ``faults`` is the *simulated* dropout schedule (stage -> site names that stop answering);
    a real deployment has none: sites drop when they miss a stage's deadline.
    """

    round_id: int
    global_weights: npt.NDArray[np.float64]
    dp_config: DistributedDPConfig
    rotation_seed: int
    roster: tuple[str, ...]
    faults: Mapping[Stage, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class SiteContribution:
    """A site's input to the secure sum (its noisy encoding in Z_(2^b)) and its DP statement."""

    site: str
    encoded: npt.NDArray[np.uint32]
    statement: SiteRecordLevelDP


class Hospital(Protocol):
    """The site side of a round (runs in the site's own process under a networked runner)."""

    @property
    def name(self) -> str: ...

    def local_round(self, task: RoundTask) -> SiteContribution:
        """Train and encode; raise :class:`BudgetExceeded` (before training) to decline."""
        ...


@dataclass(frozen=True, eq=False)
class RoundOutcome:
    """What the aggregator learns from one completed round."""

    round_id: int
    total: npt.NDArray[np.uint32]
    survivors: tuple[str, ...]
    dropouts: Mapping[Stage, tuple[str, ...]]
    declined: Mapping[str, str]
    statements: tuple[SiteRecordLevelDP, ...]
    session_id: bytes
    privacy_report: PrivacyReport | None = None
    """The report the aggregator persisted and signed into its audit record (gRPC runner)."""
    site_states: Mapping[str, Any] | None = None
    """Each hospital's record-level ledger after the round, when the hospitals run elsewhere."""

    @property
    def dropped(self) -> tuple[str, ...]:
        """Every site that dropped at some stage (whether or not its input is in the sum)."""
        return tuple(s for stage in ACTIVE_STAGES for s in self.dropouts.get(stage, ()))


class RoundRunner(Protocol):
    """Carries out one secure-aggregation round of a :class:`RoundTask`."""

    def run(self, task: RoundTask) -> RoundOutcome:
        """Raise :class:`~secagg.errors.RoundAborted` when fewer than t sites remain."""
        ...


class InProcessRunner:
    """All hospitals and the aggregator in this process, over the sans-IO sessions.

    Identities (Ed25519) are generated once per hospital and kept for the whole run, as a roster
    would be. Party ids are the hospitals' 1-based positions in ``hospitals``.
    """

    def __init__(self, hospitals: Sequence[Hospital], policy: SitePolicy | None = None) -> None:
        """``policy``: every hospital's site policy (default: the strict one, trusting the
        hospitals' own keys; a round's roster is the hospitals that take part)."""
        names = [h.name for h in hospitals]
        if len(set(names)) != len(names):
            raise ConfigError("hospital names must be unique")
        self._hospitals = {h.name: h for h in hospitals}
        self._party = {name: k + 1 for k, name in enumerate(names)}
        self._identities = {self._party[n]: IdentityKey.generate() for n in names}
        self._policy = policy or SitePolicy.trusting_keys(
            [k.public_key for k in self._identities.values()]
        )

    def run(self, task: RoundTask) -> RoundOutcome:
        unknown = set(task.roster) - set(self._hospitals)
        if unknown:
            raise ConfigError(f"unknown hospitals in the roster: {sorted(unknown)}")
        contributions: dict[str, SiteContribution] = {}
        declined: dict[str, str] = {}
        for name in task.roster:
            try:
                contributions[name] = self._hospitals[name].local_round(task)
            except BudgetExceeded as exc:
                declined[name] = str(exc)
        cfg = task.dp_config
        if len(contributions) < cfg.min_clients:
            raise RoundAborted(
                Stage.ADVERTISE_KEYS.value,
                f"only {len(contributions)} sites can take part (declined: {sorted(declined)}), "
                f"the threshold is {cfg.min_clients}",
            )
        parties = {self._party[n]: n for n in contributions}
        config = RoundConfig(
            round_id=task.round_id,
            roster={p: self._identities[p].public_key for p in parties},
            threshold=cfg.min_clients,
            vector_length=_padded(cfg),
            bits=cfg.bits,
        )
        schedule = {
            stage: {self._party[n] for n in names if n in contributions}
            for stage, names in task.faults.items()
        }
        result = run_round(
            config,
            {p: self._identities[p] for p in parties},
            {self._party[n]: c.encoded for n, c in contributions.items()},
            dropouts=schedule,
            policy=self._policy,
        )
        return RoundOutcome(
            round_id=task.round_id,
            total=result.total,
            survivors=tuple(parties[p] for p in result.survivors),
            dropouts={
                s: tuple(parties[p] for p in result.dropouts.get(s, ())) for s in ACTIVE_STAGES
            },
            declined=declined,
            statements=tuple(c.statement for c in contributions.values()),
            session_id=result.session_id,
        )


def _padded(cfg: DistributedDPConfig) -> int:
    return cfg.padded_dimension
