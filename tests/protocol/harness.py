"""Wire client sessions to a server session in memory, one stage at a time."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from secagg.crypto import IdentityKey
from secagg.protocol import (
    AdversaryClass,
    ClientSession,
    MemoryLedger,
    RoundConfig,
    ServerMessage,
    ServerSession,
    SitePolicy,
)


def curious_policy(roster: object) -> SitePolicy:
    """A relaxed policy, asked for by name: an honest-but-curious aggregator, no corrupt sites.

    For tests of protocol mechanics at small thresholds (t = 2 or 3 of 5); the malicious-server
    tests that depend on a safe threshold use the strict default.
    """
    return SitePolicy(roster=roster, adversary=AdversaryClass.CURIOUS_SERVER, corrupt_fraction=0)  # type: ignore[arg-type]


@dataclass
class Round:
    config: RoundConfig
    identities: dict[int, IdentityKey]
    inputs: dict[int, npt.NDArray[np.uint32]]
    clients: dict[int, ClientSession]
    server: ServerSession
    ledgers: dict[int, MemoryLedger]
    outbox: dict[int, ServerMessage] = field(default_factory=dict)

    def advertise(self, skip: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        for p, c in self.clients.items():
            if p not in skip:
                self.server.receive(c.advertise_keys())
        self.outbox = self.server.close_stage()

    def step(self, skip: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        """Deliver the outbox to every client not in ``skip``, feed the replies, close the stage."""
        for p, msg in self.outbox.items():
            if p not in skip:
                self.server.receive(self.clients[p].receive(msg))
        self.outbox = self.server.close_stage()

    def expected_sum(self, parties: tuple[int, ...]) -> npt.NDArray[np.uint32]:
        total = np.zeros(self.config.vector_length, dtype=np.uint64)
        for p in parties:
            total += self.inputs[p]
        return (total & np.uint64(self.config.modulus_mask)).astype(np.uint32)


def make_round(
    n: int = 5,
    *,
    threshold: int | None = None,
    vector_length: int = 16,
    bits: int = 32,
    degree: int | None = None,
    round_id: int = 7,
    seed: int = 0,
    policy: SitePolicy | None = None,
    strict: bool = False,
) -> Round:
    """A round of n parties wired in memory.

    Sites hold ``policy`` if given, else the strict default policy when ``strict``, else the
    relaxed :func:`curious_policy` (so that thresholds like 3 of 5 are accepted).
    """
    rng = np.random.default_rng(seed)
    identities = {p: IdentityKey.generate() for p in range(1, n + 1)}
    config = RoundConfig(
        round_id=round_id,
        roster={p: k.public_key for p, k in identities.items()},
        threshold=threshold if threshold is not None else n // 2 + 1,
        vector_length=vector_length,
        bits=bits,
        degree=degree,
    )
    inputs = {
        p: rng.integers(0, 2**bits, size=vector_length, dtype=np.uint64).astype(np.uint32)
        for p in identities
    }
    if policy is None:
        policy = SitePolicy(roster=config.roster) if strict else curious_policy(config.roster)
    ledgers = {p: MemoryLedger() for p in identities}
    clients = {
        p: ClientSession(config, p, identities[p], inputs[p], policy=policy, ledger=ledgers[p])
        for p in identities
    }
    return Round(config, identities, inputs, clients, ServerSession(config), ledgers)


def new_session(
    r: Round,
    party: int,
    config: RoundConfig | None = None,
    inputs: npt.NDArray[np.uint32] | None = None,
    identity: IdentityKey | None = None,
    policy: SitePolicy | None = None,
) -> ClientSession:
    """Another session of ``party`` (for another config, say), with a relaxed policy pinned to
    that config's roster and a fresh ledger."""
    cfg = config or r.config
    return ClientSession(
        cfg,
        party,
        identity or r.identities[party],
        r.inputs[party] if inputs is None else inputs,
        policy=policy or curious_policy(cfg.roster),
        ledger=MemoryLedger(),
    )
