"""Run whole rounds in one process: the embedding API for FL stacks, tests and benchmarks.

The sessions are the same sans-IO state machines the gRPC service drives; only the transport is
replaced by direct calls. A dropout schedule says which parties stop answering at which stage.

Every simulated site holds a :class:`~secagg.protocol.SitePolicy` (by default the strict one,
pinned to the simulated roster) and refuses, as a real site would, a threshold below what it
implies: :func:`default_threshold` is that minimum.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from secagg.crypto import IdentityKey, RandomSource, random_seed, uniform_floats
from secagg.encoding import FixedPointEncoding
from secagg.errors import ConfigError, CryptoError, ProtocolError
from secagg.protocol import (
    ACTIVE_STAGES,
    AggregateResult,
    ClientSession,
    MemoryLedger,
    RoundConfig,
    ServerMessage,
    ServerSession,
    SiteLedger,
    SitePolicy,
    Stage,
)
from secagg.protocol.graph import NeighbourGraph

__all__ = [
    "DropoutSchedule",
    "SimulationResult",
    "default_threshold",
    "run_round",
    "simulate",
]

DropoutSchedule = Mapping[Stage, Iterable[int]] | Mapping[str, Iterable[int]]
"""Stage (or its name) -> parties that stop answering at that stage (they send nothing more)."""


def _normalise_schedule(dropouts: DropoutSchedule | None) -> dict[Stage, frozenset[int]]:
    schedule: dict[Stage, frozenset[int]] = {}
    for stage, parties in (dropouts or {}).items():
        key = Stage(stage) if isinstance(stage, str) else stage
        if key not in ACTIVE_STAGES:
            raise ConfigError(f"parties can only drop at an active stage, not {key.value}")
        schedule[key] = schedule.get(key, frozenset()) | frozenset(parties)
    return schedule


def run_round(
    config: RoundConfig,
    identities: Mapping[int, IdentityKey],
    encoded_inputs: Mapping[int, npt.NDArray[np.uint32]],
    *,
    dropouts: DropoutSchedule | None = None,
    server: ServerSession | None = None,
    policy: SitePolicy | Mapping[int, SitePolicy] | None = None,
    ledgers: Mapping[int, SiteLedger] | None = None,
    rng: RandomSource | None = None,
) -> AggregateResult:
    """Run one round over already-encoded inputs; raise RoundAborted if it cannot complete.

    Pass a fresh ``server`` to keep a handle on the server session (for records of an aborted
    round, say); by default one is created. ``policy`` is every site's policy (or one per party);
    by default the strict one pinned to ``config.roster``: a site refuses (PolicyViolation) a
    round its policy does not accept. ``ledgers`` collect each site's events (default: in memory).
    ``rng`` feeds every client's keys, seeds, shares and nonces (default: the OS CSPRNG); a
    :class:`~secagg.crypto.DeterministicRandom` replays a round bit for bit (tests only).
    """
    schedule = _normalise_schedule(dropouts)
    if set(encoded_inputs) - set(config.roster):
        raise ConfigError("inputs given for parties that are not in the roster")
    policies = _policies(policy, config, encoded_inputs)
    books = dict(ledgers) if ledgers is not None else {}
    clients = {
        p: ClientSession(
            config,
            p,
            identities[p],
            encoded_inputs[p],
            policy=policies[p],
            ledger=books.setdefault(p, MemoryLedger()),
            rng=rng,
        )
        for p in sorted(encoded_inputs)
    }
    if server is None:
        server = ServerSession(config)
    elif server.config is not config or server.stage is not Stage.ADVERTISE_KEYS:
        raise ConfigError("the server session must be fresh and built from the same config")
    gone: set[int] = set()
    outbox: Mapping[int, ServerMessage] = {}
    for stage in ACTIVE_STAGES:
        gone |= schedule.get(stage, frozenset())
        if stage is Stage.ADVERTISE_KEYS:
            for p, client in clients.items():
                if p not in gone:
                    server.receive(client.advertise_keys())
        else:
            for p, message in outbox.items():
                if p in gone:
                    continue
                try:
                    reply = clients[p].receive(message)
                except (ProtocolError, CryptoError):
                    gone.add(p)  # an aborting client simply stops answering
                    continue
                server.receive(reply)
        outbox = server.close_stage()
    return server.result


def _policies(
    policy: SitePolicy | Mapping[int, SitePolicy] | None,
    config: RoundConfig,
    parties: Iterable[int],
) -> dict[int, SitePolicy]:
    if isinstance(policy, Mapping):
        return {p: policy[p] for p in parties}
    one = policy if policy is not None else SitePolicy(roster=config.roster)
    return {p: one for p in parties}


def default_threshold(n: int, degree: int | None = None, policy: SitePolicy | None = None) -> int:
    """The smallest threshold a site with ``policy`` accepts for n parties and this degree.

    The default policy is the strict one (malicious aggregator, 10 % corrupt): for the full graph
    ``ceil((n + 0.1 n) / 2) + 1``. Raises ConfigError when the degree itself is unsafe.
    """
    parties = range(1, n + 1)
    if degree is None or degree >= n - 1:
        graph = NeighbourGraph.full(parties)
    else:
        graph = NeighbourGraph.harary(parties, degree, bytes(32))
    return (policy or SitePolicy(roster=None, min_parties=2)).minimum_threshold_for(n, graph)


@dataclass(frozen=True, eq=False)
class SimulationResult:
    """A completed simulated round: the decoded float sum over the survivors, and the details.

    With weights, ``aggregate`` is sum(w_i * clip(x_i)) and ``total_weight`` is sum(w_i), both
    summed securely: the server learns only the total weight, never a party's weight.
    """

    aggregate: npt.NDArray[np.float64]
    survivors: tuple[int, ...]
    encoding: FixedPointEncoding
    round: AggregateResult
    total_weight: float

    @property
    def mean(self) -> npt.NDArray[np.float64]:
        """The (weighted) average over the survivors: FedAvg's aggregate."""
        return self.aggregate / self.total_weight


def simulate(
    inputs: Sequence[npt.ArrayLike] | Mapping[int, npt.ArrayLike],
    *,
    weights: Sequence[float] | Mapping[int, float] | None = None,
    clip: float = 1.0,
    bits: int = 32,
    threshold: int | None = None,
    degree: int | None = None,
    dropouts: DropoutSchedule | None = None,
    round_id: int = 0,
    context_digest: bytes = b"",
    policy: SitePolicy | None = None,
) -> SimulationResult:
    """Securely sum float vectors of n simulated clients in one process.

    ``inputs`` is a sequence (parties 1..n) or a mapping party -> vector. Each vector is clipped to
    ``[-clip, clip]`` and encoded at the finest scale that cannot overflow for n clients.
    ``weights`` (each in [0, 1], e.g. a site's example count over the largest site's) turn the sum
    into sum(w_i x_i) with sum(w_i) summed beside it, for a weighted average (FedAvg).
    ``degree=None`` runs full-graph SecAgg; an even ``degree`` runs SecAgg+ on a random
    ``degree``-regular neighbour graph. Every site holds ``policy`` (default: the strict policy
    pinned to the simulated roster); ``threshold`` defaults to the smallest one it accepts.
    """
    by_party = dict(inputs) if isinstance(inputs, Mapping) else dict(enumerate(inputs, start=1))
    vectors = {p: np.asarray(v, dtype=np.float64).ravel() for p, v in by_party.items()}
    lengths = {len(v) for v in vectors.values()}
    if len(lengths) != 1:
        raise ConfigError(f"all inputs must have the same length, got {sorted(lengths)}")
    n, m = len(vectors), lengths.pop()
    if weights is not None:
        by_weight = dict(weights) if isinstance(weights, Mapping) else dict(enumerate(weights, 1))
        if by_weight.keys() != vectors.keys():
            raise ConfigError("weights must be given for exactly the parties with inputs")
        if not all(0.0 <= w <= 1.0 for w in by_weight.values()):
            raise ConfigError("weights must lie in [0, 1]; divide by the largest weight")
        # The weight rides as one extra coordinate; w * clip(x) stays within [-clip, clip].
        vectors = {
            p: np.append(by_weight[p] * np.clip(v, -clip, clip), by_weight[p] * clip)
            for p, v in vectors.items()
        }
        m += 1
    encoding = FixedPointEncoding.for_clients(clip=clip, max_clients=n, bits=bits)
    identities = {p: IdentityKey.generate() for p in vectors}
    config = RoundConfig(
        round_id=round_id,
        roster={p: k.public_key for p, k in identities.items()},
        threshold=threshold if threshold is not None else default_threshold(n, degree, policy),
        vector_length=m,
        bits=bits,
        degree=degree,
        context_digest=context_digest,
    )
    encoded = {p: encoding.encode(v, uniform_floats(random_seed(), m)) for p, v in vectors.items()}
    if policy is not None and policy.roster is not None:
        raise ConfigError("simulate() pins each site's policy to the roster it generates itself")
    pinned = None if policy is None else dataclasses.replace(policy, roster=config.roster)
    result = run_round(config, identities, encoded, dropouts=dropouts, policy=pinned)
    total = encoding.decode_sum(result.total, len(result.survivors))
    if weights is not None:
        total, total_weight = total[:-1], float(total[-1]) / clip
    else:
        total_weight = float(len(result.survivors))
    return SimulationResult(
        aggregate=total,
        survivors=result.survivors,
        encoding=encoding,
        round=result,
        total_weight=total_weight,
    )
