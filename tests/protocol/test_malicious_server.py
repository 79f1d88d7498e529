"""A malicious aggregator against honest clients: every attempt ends in an abort revealing nothing.

Each test plays the server by hand (building the server messages itself) and checks that the honest
client raises, sends no reply (``receive`` returns nothing), moves to ``ABORTED`` and forgets the
shares it held, so no share byte can leave it afterwards.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from secagg.crypto import IdentityKey, reconstruct
from secagg.errors import (
    CryptoError,
    InvalidSignature,
    LocalProtocolError,
    MaliciousServerError,
    ProtocolError,
    ReplayedMessage,
    RoundAborted,
)
from secagg.protocol import (
    ClientSession,
    ConsistencySignature,
    KeyRoster,
    MemoryLedger,
    RoundConfig,
    ServerSession,
    Stage,
    SurvivorsRequest,
    UnmaskRequest,
    UnmaskShares,
)
from secagg.protocol.ledger import SharesRevealed
from secagg.protocol.messages import survivors_digest
from secagg.protocol.params import AdversaryClass, full_graph_threshold

from .harness import Round, curious_policy, make_round, new_session


def _refuses(client: ClientSession, message: object, error: type[Exception]) -> None:
    """The client raises ``error``, aborts for good, holds no share and recorded no revelation."""
    with pytest.raises(error):
        client.receive(message)  # type: ignore[arg-type]
    assert client.stage is Stage.ABORTED
    assert client._held_shares == {}  # nothing left that could be revealed later
    assert not client._ledger.of_kind(SharesRevealed)  # type: ignore[attr-defined]
    with pytest.raises(LocalProtocolError):
        client.receive(message)  # type: ignore[arg-type]


def _to_unmask(r: Round, drop: set[int]) -> dict[int, UnmaskRequest]:
    r.advertise()
    r.step()
    r.step(skip=drop)
    r.step(skip=drop)
    return r.outbox  # type: ignore[return-value]


def _consistency(r: Round, signer: int, survivors: bytes) -> bytes:
    """Party ``signer``'s signature over ``survivors`` (what a corrupt party signs for anything)."""
    sid = r.server.session_id
    return ConsistencySignature.signed(
        r.identities[signer],
        r.config.digest,
        round_id=r.config.round_id,
        sender=signer,
        session_id=sid,
        survivors_digest=survivors_digest(sid, survivors),
    ).signature


# --- both secrets of one peer -------------------------------------------------------------------


def test_a_client_answers_one_unmask_request_only() -> None:
    r = make_round(5, threshold=3)
    req = _to_unmask(r, {4})[1]
    reply = r.clients[1].receive(req)
    assert isinstance(reply, UnmaskShares)
    owners_self = {o for o, _ in reply.self_mask_shares}
    owners_key = {o for o, _ in reply.mask_key_shares}
    assert owners_self.isdisjoint(owners_key)
    with pytest.raises(LocalProtocolError):  # a second request (e.g. "now the others") fails
        r.clients[1].receive(req)


def test_survivor_set_that_omits_a_neighbour_which_never_shared_keys_is_refused() -> None:
    r = make_round(5, threshold=3)
    r.advertise()
    r.step(skip={4})  # party 4 never shares keys
    masked = {p: r.clients[p].receive(m) for p, m in r.outbox.items()}
    for m in masked.values():
        r.server.receive(m)
    lie = r.config.roster_index.encode({1, 2, 3, 4, 5})
    _refuses(
        r.clients[1],
        SurvivorsRequest(r.config.round_id, r.server.session_id, lie),
        MaliciousServerError,
    )


# --- different survivor sets for different clients ---------------------------------------------


def _split_view_attack(r: Round, target: int) -> dict[int, bytes | None]:
    """Show ``target`` alive to some clients and dropped to others; return what each revealed.

    Every party sent its masked input. Group A (target included) sees S1 = everyone; group B sees
    S2 = everyone but the target. The server then offers each client the signatures it collected
    on that client's set and keeps whatever shares come back.
    """
    r.advertise()
    r.step()
    masked = {p: r.clients[p].receive(m) for p, m in r.outbox.items()}
    for m in masked.values():
        r.server.receive(m)
    index = r.config.roster_index
    everyone = tuple(sorted(masked))
    s2 = tuple(p for p in everyone if p != target)
    group_b = set(s2[: len(s2) // 2])
    bitmaps = {everyone: index.encode(everyone), s2: index.encode(s2)}
    views = {p: (s2 if p in group_b else everyone) for p in everyone}
    sid = r.server.session_id
    sigs: dict[tuple[int, ...], list[tuple[int, bytes]]] = {everyone: [], s2: []}
    for p, view in views.items():
        reply = r.clients[p].receive(SurvivorsRequest(r.config.round_id, sid, bitmaps[view]))
        assert isinstance(reply, ConsistencySignature)
        sigs[view].append((p, reply.signature))
    revealed: dict[int, bytes | None] = {}
    for p, view in views.items():
        digest = survivors_digest(sid, bitmaps[view])
        req = UnmaskRequest(r.config.round_id, sid, digest, tuple(sorted(sigs[view])))
        try:
            reply = r.clients[p].receive(req)
        except (MaliciousServerError, RoundAborted):
            revealed[p] = None
            continue
        assert isinstance(reply, UnmaskShares)
        revealed[p] = b"".join(s for _, s in reply.self_mask_shares + reply.mask_key_shares)
    return revealed


def test_different_survivor_sets_cannot_both_gather_threshold_signatures() -> None:
    # Full graph, semi-malicious threshold: t > (n + n_C) / 2 with no corrupt clients.
    n = 7
    t = full_graph_threshold(n, dropout_rate=0.15, corrupt_fraction=0.0)
    assert t == 6
    r = make_round(n, threshold=t)
    revealed = _split_view_attack(r, target=7)
    # Neither view reaches t signatures: every honest client refuses to unmask.
    assert all(v is None for v in revealed.values())
    assert all(c.stage is Stage.ABORTED for c in r.clients.values())


def test_split_view_at_an_unsafe_threshold_would_reveal_both_secrets() -> None:
    """The control of the test above: at t = 3 of 7 (what a malicious aggregator would offer,
    and what only a relaxed policy accepts) both groups unmask, so the attack is real; the
    strict policy refuses this round before anything is sent (tests/protocol/test_site_policy)."""
    r = make_round(7, threshold=3)
    revealed = _split_view_attack(r, target=7)
    assert sum(v is not None for v in revealed.values()) == 7


@pytest.mark.parametrize("n", [4, 5, 6, 7, 8])
def test_semi_malicious_full_graph_threshold_never_lets_two_views_reach_t(n: int) -> None:
    """Combinatorial check of the rule 2t > n + n_C for every corrupt count it accepts."""
    for corrupt in range(n):
        try:
            t = full_graph_threshold(
                n,
                dropout_rate=0.0,
                corrupt_fraction=corrupt / n,
                adversary=AdversaryClass.SEMI_MALICIOUS_SERVER,
            )
        except Exception:
            continue
        honest = n - corrupt
        # Honest clients sign one view each; corrupt ones sign both.
        for in_a in range(honest + 1):
            assert not (in_a + corrupt >= t and honest - in_a + corrupt >= t)


def test_secagg_plus_split_view_with_a_corrupt_neighbour_learns_no_input() -> None:
    """k = 2, t = 2, one corrupt neighbour: the server must not get both secrets of the target.

    The target's own seed share is withheld in a sparse graph with t <= k, so the corrupt
    neighbour's two shares plus one honest neighbour's share give t of one secret only.
    """
    r = make_round(10, degree=2, threshold=2, vector_length=4, seed=3)
    target = 1
    corrupt, honest = sorted(r.config.graph.neighbours(target))
    r.advertise()
    r.step()
    masked = {p: r.clients[p].receive(m) for p, m in r.outbox.items()}
    sid = r.server.session_id
    index = r.config.roster_index
    everyone = index.encode(masked)
    without = index.encode(p for p in masked if p != target)
    # The corrupt neighbour hands the server both of its shares of the target.
    seed_shares = {corrupt: r.clients[corrupt]._held_shares[target][0]}
    key_shares = {corrupt: r.clients[corrupt]._held_shares[target][1]}

    def unmask(party: int, view: bytes) -> UnmaskShares:
        # Every party signs what it is shown; corrupt ones sign anything.
        signers = [s for s in r.config.holders(party) if index.contains(view, s)]
        sigs = tuple(sorted((s, _consistency(r, s, view)) for s in signers))
        client = r.clients[party]
        client.receive(SurvivorsRequest(r.config.round_id, sid, view))
        reply = client.receive(
            UnmaskRequest(r.config.round_id, sid, survivors_digest(sid, view), sigs)
        )
        assert isinstance(reply, UnmaskShares)
        return reply

    target_reply = unmask(target, everyone)  # the target believes it survived
    honest_reply = unmask(honest, without)  # its honest neighbour: "it dropped"
    seed_shares.update({o: s for o, s in target_reply.self_mask_shares if o == target})
    key_shares.update((honest, s) for o, s in honest_reply.mask_key_shares if o == target)
    assert len(key_shares) == 2  # the mask key is exposed (the target's pairwise masks) ...
    assert target not in seed_shares  # ... but the target withheld its own seed share,
    assert len(seed_shares) < r.config.threshold  # so its self mask still hides its input.
    with pytest.raises(Exception):  # noqa: B017 - fewer than t shares cannot reconstruct
        reconstruct(seed_shares, threshold=r.config.threshold)


# --- forged or dropped consistency signatures -------------------------------------------------


def test_forged_consistency_signature_makes_the_client_abort() -> None:
    r = make_round(5, threshold=3)
    req = _to_unmask(r, {4})[3]
    # The client verifies in order until it has t valid ones, so forge the first signature (an
    # auditor checks all of them: see tests/audit).
    signer, sig = req.consistency_signatures[0]
    forged = ((signer, sig[:-1] + bytes([sig[-1] ^ 1])), *req.consistency_signatures[1:])
    _refuses(
        r.clients[3], dataclasses.replace(req, consistency_signatures=forged), MaliciousServerError
    )


def test_signatures_by_the_wrong_party_do_not_count() -> None:
    r = make_round(5, threshold=3)
    req = _to_unmask(r, {4})[3]
    sigs = dict(req.consistency_signatures)
    # Party 1's signature presented as party 2's.
    swapped = tuple(sorted({**sigs, 2: sigs[1]}.items()))
    _refuses(
        r.clients[3], dataclasses.replace(req, consistency_signatures=swapped), MaliciousServerError
    )


def test_dropped_signatures_below_threshold_make_the_client_abort() -> None:
    r = make_round(5, threshold=3)
    req = _to_unmask(r, {4})[5]
    _refuses(
        r.clients[5],
        dataclasses.replace(req, consistency_signatures=req.consistency_signatures[:2]),
        RoundAborted,
    )


def test_signature_from_a_non_survivor_is_refused() -> None:
    r = make_round(5, threshold=3)
    req = _to_unmask(r, {1})[3]
    extra = tuple(sorted((*req.consistency_signatures, (1, bytes(64)))))
    _refuses(
        r.clients[3], dataclasses.replace(req, consistency_signatures=extra), MaliciousServerError
    )


# --- replays from an earlier round -------------------------------------------------------------


def test_unmask_request_replayed_from_an_earlier_round_is_refused() -> None:
    earlier = make_round(5, threshold=3, round_id=7, seed=1)
    old = _to_unmask(earlier, {4})[1]
    r = make_round(5, threshold=3, round_id=8, seed=1)
    r.identities = earlier.identities
    req = _to_unmask(r, {4})[1]
    _refuses(r.clients[1], old, ReplayedMessage)  # old round id
    r2 = make_round(5, threshold=3, round_id=8, seed=2)
    req2 = _to_unmask(r2, {4})[1]
    # Same round id but old session: the session id no longer matches.
    _refuses(r2.clients[1], dataclasses.replace(req, round_id=8), ReplayedMessage)
    del req2


def test_consistency_signatures_replayed_from_an_earlier_round_do_not_verify() -> None:
    ids = {p: IdentityKey.generate() for p in range(1, 6)}
    roster = {p: k.public_key for p, k in ids.items()}
    rounds = []
    for round_id in (1, 2):
        cfg = RoundConfig(round_id=round_id, roster=roster, threshold=3, vector_length=4)
        inputs = {p: np.full(4, p, dtype=np.uint32) for p in ids}
        ledgers = {p: MemoryLedger() for p in ids}
        clients = {
            p: ClientSession(
                cfg, p, ids[p], inputs[p], policy=curious_policy(roster), ledger=ledgers[p]
            )
            for p in ids
        }
        rounds.append(Round(cfg, ids, inputs, clients, ServerSession(cfg), ledgers))
    old_req = _to_unmask(rounds[0], {4})[1]
    req = _to_unmask(rounds[1], {4})[1]
    replayed = dataclasses.replace(req, consistency_signatures=old_req.consistency_signatures)
    _refuses(rounds[1].clients[1], replayed, MaliciousServerError)


def test_key_roster_replayed_from_an_earlier_round_is_refused() -> None:
    earlier = make_round(4, round_id=3, seed=5)
    earlier.advertise()
    r = make_round(4, round_id=4, seed=5)
    for c in r.clients.values():
        c.advertise_keys()
    old: KeyRoster = earlier.outbox[1]  # type: ignore[assignment]
    _refuses(r.clients[1], old, ReplayedMessage)
    relabelled = KeyRoster(4, 2, old.advertised, old.advertisements)
    with pytest.raises((ProtocolError, CryptoError)):
        r.clients[2].receive(relabelled)
    assert r.clients[2].stage is Stage.ABORTED


# --- model inconsistency (Pasquini et al., CCS 2022) ------------------------------------------


def _two_model_groups(
    n: int = 6, degree: int | None = None
) -> tuple[Round, dict[int, ClientSession]]:
    """One roster; parties 1..n/2 received model A, the rest model B (different context digests)."""
    threshold = n // 2 + 1 if degree is None else degree // 2 + 1
    r = make_round(n, threshold=threshold, degree=degree, seed=11)
    cfg_b = dataclasses.replace(r.config, context_digest=b"model-B")
    assert cfg_b.digest != r.config.digest
    clients = dict(r.clients)
    for p in range(n // 2 + 1, n + 1):
        clients[p] = new_session(r, p, cfg_b)
    return r, clients


def test_honest_server_refuses_clients_that_received_another_model() -> None:
    r, clients = _two_model_groups()
    for p, c in clients.items():
        ad = c.advertise_keys()
        if p <= 3:
            r.server.receive(ad)
        else:
            with pytest.raises(InvalidSignature):
                r.server.receive(ad)
    assert r.server.participants(Stage.ADVERTISE_KEYS) == {1, 2, 3}


@pytest.mark.parametrize("degree", [None, 2])
def test_clients_with_different_model_digests_cannot_complete_one_round(degree: int | None) -> None:
    """A relaying server mixes both groups into one roster: every client aborts before unmasking."""
    r, clients = _two_model_groups(degree=degree)
    ads = {p: c.advertise_keys() for p, c in sorted(clients.items())}
    everyone = r.config.roster_index.encode(ads)
    replies = {}
    for p, c in clients.items():
        mine = tuple(ads[v] for v in sorted(r.config.graph.neighbours(p)))
        try:
            replies[p] = c.receive(KeyRoster(r.config.round_id, p, everyone, mine))
        except (ProtocolError, CryptoError):
            assert c.stage is Stage.ABORTED
    # Each group derives a different session id, so nothing it sends can be combined with the other.
    sessions = {c.session_id for c in clients.values() if c.stage is not Stage.ABORTED}
    assert len(sessions) <= 2
    groups = {p: (p <= 3) for p in clients}
    for (p, a), (q, b) in itertools.combinations(replies.items(), 2):
        if groups[p] != groups[q]:
            assert a.session_id != b.session_id
    # Any client that still shared keys only did so with peers of its own model.
    assert all(
        {e.receiver for e in rep.entries} <= {v for v in clients if groups[v] == groups[p]}
        for p, rep in replies.items()
    )
    # In the full graph every client sees a cross-model neighbour and aborts at once.
    if degree is None:
        assert all(c.stage is Stage.ABORTED for c in clients.values())


def test_a_server_splitting_clients_by_model_cannot_reach_threshold_in_the_minority() -> None:
    """Separate rosters per model: the single targeted client is below t and aborts."""
    r, _ = _two_model_groups(n=5)
    cfg_b = dataclasses.replace(r.config, context_digest=b"model-B")
    target = new_session(r, 5, cfg_b)
    target.advertise_keys()
    with pytest.raises(Exception) as info:
        target.receive(KeyRoster(r.config.round_id, 5, cfg_b.roster_index.encode({5}), ()))
    assert target.stage is Stage.ABORTED
    assert "threshold" in str(info.value)
