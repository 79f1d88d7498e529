"""A client session saved and restored between every message completes the round exactly."""

from __future__ import annotations

import numpy as np
import pytest

from secagg.crypto import IdentityKey
from secagg.encoding import FixedPointEncoding
from secagg.errors import LocalProtocolError
from secagg.integrations._session_state import export_client_session, restore_client_session
from secagg.protocol import (
    ACTIVE_STAGES,
    AdversaryClass,
    ClientSession,
    MemoryLedger,
    ServerSession,
    SitePolicy,
    Stage,
)
from secagg.transport.codec import RoundParameters


def test_session_restored_before_every_message_completes_the_round() -> None:
    ids = {p: IdentityKey.generate() for p in range(1, 8)}
    params = RoundParameters.create(
        round_id=3,
        roster={p: k.public_key for p, k in ids.items()},
        threshold=3,
        vector_length=50,
        encoding=FixedPointEncoding.for_clients(clip=1.0, max_clients=7),
        deadlines={s: 10.0 for s in ACTIVE_STAGES},
        degree=4,
    )
    saved = {}
    server = ServerSession(params.config)
    # Degree 4 among 7 sites is a mechanics test: the sites accept it by a relaxed policy.
    policy = SitePolicy(
        roster=params.config.roster, adversary=AdversaryClass.CURIOUS_SERVER, corrupt_fraction=0
    )
    ledgers = {p: MemoryLedger() for p in ids}
    for p, key in ids.items():
        session = ClientSession(
            params.config,
            p,
            key,
            np.full(50, p, dtype=np.uint32),
            policy=policy,
            ledger=ledgers[p],
        )
        server.receive(session.advertise_keys())
        saved[p] = export_client_session(session, params)
    outbox = server.close_stage()
    dropped = 4
    while outbox:
        for p, message in outbox.items():
            if p == dropped and server.stage is Stage.MASKED_INPUT:
                continue
            session, _ = restore_client_session(saved[p], ids[p], policy=policy, ledger=ledgers[p])
            server.receive(session.receive(message))
            saved[p] = export_client_session(session, params)
        outbox = server.close_stage()
    assert np.array_equal(server.result.total, np.full(50, 1 + 2 + 3 + 5 + 6 + 7, dtype=np.uint32))


def test_restore_refuses_a_state_saved_for_another_round() -> None:
    key = IdentityKey.generate()
    roster = {1: key.public_key, 2: IdentityKey.generate().public_key}
    common = dict(
        roster=roster,
        threshold=2,
        vector_length=4,
        encoding=FixedPointEncoding.for_clients(clip=1.0, max_clients=2),
        deadlines={s: 10.0 for s in ACTIVE_STAGES},
    )
    params = RoundParameters.create(round_id=1, **common)
    other = RoundParameters.create(round_id=2, **common)
    policy = SitePolicy(roster=roster, adversary=AdversaryClass.CURIOUS_SERVER, corrupt_fraction=0)
    session = ClientSession(
        params.config, 1, key, np.zeros(4, dtype=np.uint32), policy=policy, ledger=MemoryLedger()
    )
    state = export_client_session(session, params)
    state["params"] = other.to_proto().SerializeToString()
    with pytest.raises(LocalProtocolError, match="another round config"):
        restore_client_session(state, key, policy=policy, ledger=MemoryLedger())
