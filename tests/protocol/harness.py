"""Wire client sessions to a server session in memory, one stage at a time."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from secagg.crypto import IdentityKey
from secagg.protocol import ClientSession, RoundConfig, ServerMessage, ServerSession


@dataclass
class Round:
    config: RoundConfig
    identities: dict[int, IdentityKey]
    inputs: dict[int, npt.NDArray[np.uint32]]
    clients: dict[int, ClientSession]
    server: ServerSession
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
) -> Round:
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
    clients = {p: ClientSession(config, p, identities[p], inputs[p]) for p in identities}
    return Round(config, identities, inputs, clients, ServerSession(config))
