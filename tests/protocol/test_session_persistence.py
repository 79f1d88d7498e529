"""ClientSession.export_state / restore: a session saved and rebuilt before every message."""

from __future__ import annotations

import numpy as np
import pytest

from secagg.errors import LocalProtocolError, PolicyViolation
from secagg.protocol import ClientSession, SitePolicy, Stage

from .harness import curious_policy, make_round


@pytest.mark.parametrize("degree", [None, 4])
def test_session_restored_before_every_message_sums_exactly(degree):
    r = make_round(7, threshold=3, vector_length=20, degree=degree)
    saved = {}
    for p, c in r.clients.items():
        r.server.receive(c.advertise_keys())
        saved[p] = c.export_state()
    outbox = r.server.close_stage()
    while outbox:
        for p, message in outbox.items():
            if p == 4 and r.server.stage is Stage.MASKED_INPUT:
                continue  # party 4 drops before uploading
            session = ClientSession.restore(
                r.config,
                r.identities[p],
                saved[p],
                policy=curious_policy(r.config.roster),
                ledger=r.ledgers[p],
            )
            r.server.receive(session.receive(message))
            saved[p] = session.export_state()
        outbox = r.server.close_stage()
    survivors = (1, 2, 3, 5, 6, 7)
    assert r.server.result.survivors == survivors
    np.testing.assert_array_equal(r.server.result.total, r.expected_sum(survivors))


def test_a_completed_session_exports_no_secrets():
    r = make_round(4)
    r.advertise()
    for _ in range(4):
        r.step()
    state = r.clients[1].export_state()
    assert state["stage"] == "completed"
    assert state["held_seed_shares"] == [] and state["self_mask_seed"] == b""


def test_restore_refuses_another_config_and_unreadable_state():
    r = make_round(4)
    other = make_round(4, round_id=8)
    state = r.clients[1].export_state()
    policy = curious_policy(r.config.roster)
    with pytest.raises(LocalProtocolError, match="another round config"):
        ClientSession.restore(
            other.config, r.identities[1], state, policy=policy, ledger=r.ledgers[1]
        )
    broken = dict(state)
    del broken["mask_key"]
    with pytest.raises(LocalProtocolError, match="unreadable"):
        ClientSession.restore(r.config, r.identities[1], broken, policy=policy, ledger=r.ledgers[1])


def test_a_restored_session_still_obeys_the_site_policy():
    r = make_round(5, threshold=3)
    state = r.clients[1].export_state()
    with pytest.raises(PolicyViolation, match="threshold"):
        ClientSession.restore(
            r.config,
            r.identities[1],
            state,
            policy=SitePolicy(roster=r.config.roster),
            ledger=r.ledgers[1],
        )
