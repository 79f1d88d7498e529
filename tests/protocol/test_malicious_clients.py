"""Corrupt sites against an honest server: never a silently wrong sum, and the cheater is named.

Each corrupt behaviour re-signs what it changes with the cheater's own identity (so signatures
alone cannot catch it) and is run over many rounds: the result is the exact sum of the parties
in the sum, or a clean abort, and the cheater (never an honest party) is recorded.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from secagg.crypto import FIELD_PRIME, KeyAgreementKey
from secagg.errors import CheatingDetected, MalformedMessage, RoundAborted
from secagg.protocol import InboxKey, ShareEntry, ShareKeys, Stage
from secagg.protocol.ledger import ShareComplaint
from secagg.protocol.messages import Complaint, signing_context
from secagg.wire import decode_client_message, decode_server_message, encode_client_message

from .harness import Round, make_round

TRIALS = 100
N, T = 7, 5  # the strict policy's minimum for 7 sites: ceil(7.7 / 2) + 1 = 5


def _flip(data: bytes, at: int = 0) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def _shifted_limb(share: bytes) -> bytes:
    """A targeted shift: the first 30-bit limb of the share plus 2^8 (still a field element)."""
    limb = (int.from_bytes(share[:4], "little") + (1 << 8)) % FIELD_PRIME
    return limb.to_bytes(4, "little") + share[4:]


def _resign(r: Round, message, **changes):
    """``message`` with ``changes``, re-signed by its (corrupt) sender."""
    fields = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
    fields.update(changes)
    del fields["signature"]
    return type(message).signed(r.identities[message.sender], r.config.digest, **fields)


def _resign_entry(r: Round, dealer: int, entry: ShareEntry, **changes) -> ShareEntry:
    unsigned = dataclasses.replace(entry, **changes)
    context = signing_context(
        Stage.SHARE_KEYS, r.config.round_id, r.config.digest, r.server.session_id, dealer
    )
    return dataclasses.replace(
        unsigned, signature=r.identities[dealer].sign(context, unsigned.payload())
    )


def _play(r: Round, tamper, drop_masked: frozenset[int] = frozenset()):
    """Run a round; ``tamper(stage, party, reply)`` may replace any reply. Return rejections."""
    rejected: dict[int, Exception] = {}

    def deliver(stage: Stage, replies: dict[int, object]) -> None:
        for p, reply in replies.items():
            reply = tamper(stage, p, reply)
            try:
                r.server.receive(reply)
            except CheatingDetected as exc:
                rejected[p] = exc

    deliver(Stage.ADVERTISE_KEYS, {p: c.advertise_keys() for p, c in r.clients.items()})
    outbox = r.server.close_stage()
    for stage in (Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK, Stage.UNMASK):
        replies = {}
        for p, message in outbox.items():
            if stage is Stage.MASKED_INPUT and p in drop_masked:
                continue
            replies[p] = r.clients[p].receive(message)
        deliver(stage, replies)
        outbox = r.server.close_stage()
    return rejected


def test_a_corrupted_seed_share_is_caught_and_its_signer_named_every_time():
    wrong = 0
    for trial in range(TRIALS):
        r = make_round(N, threshold=T, vector_length=16, seed=trial, strict=True)
        cheater = 1 + trial % N

        def tamper(stage, p, reply, cheater=cheater, trial=trial, r=r):
            if stage is Stage.UNMASK and p == cheater:
                shares = list(reply.self_mask_shares)
                i = next(i for i, (o, _) in enumerate(shares) if o != p)
                owner, share = shares[i]
                # a one-bit flip, or a targeted shift of one limb
                bad = (
                    _flip(share, trial % 36)
                    if trial % 2
                    else (
                        ((int.from_bytes(share[:4], "little") + (1 << 8)) % FIELD_PRIME).to_bytes(
                            4, "little"
                        )
                        + share[4:]
                    )
                )
                shares[i] = (owner, bad)
                return _resign(r, reply, self_mask_shares=tuple(shares))
            return reply

        rejected = _play(r, tamper)
        assert set(rejected) == {cheater}
        assert r.server.cheaters.keys() == {cheater}
        result = r.server.result
        wrong += not np.array_equal(result.total, r.expected_sum(result.survivors))
        assert result.cheaters.keys() == {cheater}
    assert wrong == 0


def test_a_corrupted_key_share_is_caught_and_its_signer_named_every_time():
    for trial in range(TRIALS):
        r = make_round(N, threshold=T, vector_length=16, seed=trial, strict=True)
        dropped = 1 + trial % N
        cheater = 1 + (trial + 3) % N

        def tamper(stage, p, reply, cheater=cheater, trial=trial, r=r):
            if stage is Stage.UNMASK and p == cheater:
                shares = [(o, _flip(s, trial % 36)) for o, s in reply.mask_key_shares]
                return _resign(r, reply, mask_key_shares=tuple(shares))
            return reply

        rejected = _play(r, tamper, drop_masked=frozenset({dropped}))
        assert set(rejected) == {cheater}
        result = r.server.result
        assert dropped not in result.survivors
        np.testing.assert_array_equal(result.total, r.expected_sum(result.survivors))


def test_a_garbage_share_ciphertext_convicts_its_dealer_and_the_round_goes_on():
    for trial in range(TRIALS):
        r = make_round(N, threshold=T, vector_length=16, seed=trial, strict=True)
        dealer = 1 + trial % N
        victim = 1 + (trial + 2) % N

        def tamper(stage, p, reply, dealer=dealer, victim=victim, trial=trial, r=r):
            if stage is Stage.SHARE_KEYS and p == dealer:
                entries = []
                for e in reply.entries:
                    if e.receiver == victim:
                        garbage = (
                            os.urandom(len(e.ciphertext)) if trial % 2 else _flip(e.ciphertext, 30)
                        )
                        e = _resign_entry(r, dealer, e, ciphertext=garbage)
                    entries.append(e)
                return _resign(r, reply, entries=tuple(entries))
            return reply

        rejected = _play(r, tamper)
        assert rejected == {}
        assert r.server.cheaters.keys() == {dealer}
        assert dealer not in r.clients[victim]._held_shares
        assert r.ledgers[victim].of_kind(ShareComplaint)
        result = r.server.result
        assert result.survivors == tuple(range(1, N + 1))
        np.testing.assert_array_equal(result.total, r.expected_sum(result.survivors))


def test_an_entry_whose_shares_break_their_commitments_convicts_its_dealer():
    r = make_round(N, threshold=T, vector_length=16, seed=1, strict=True)

    def tamper(stage, p, reply):
        if stage is Stage.SHARE_KEYS and p == 3:
            entries = tuple(
                _resign_entry(r, 3, e, seed_commitment=_flip(e.seed_commitment))
                if e.receiver == 5
                else e
                for e in reply.entries
            )
            return _resign(r, reply, entries=entries)
        return reply

    assert _play(r, tamper) == {}
    assert r.server.cheaters.keys() == {3}
    np.testing.assert_array_equal(r.server.result.total, r.expected_sum(r.server.result.survivors))


def test_a_false_complaint_convicts_the_complainer_and_not_the_dealer():
    for trial in range(20):
        r = make_round(N, threshold=T, vector_length=16, seed=trial, strict=True)
        liar = 1 + trial % N

        def tamper(stage, p, reply, liar=liar, r=r):
            if stage is Stage.MASKED_INPUT and p == liar:
                client = r.clients[liar]
                dealer = min(d for d in client._held_shares if d != liar)
                entry = r.server._entries[dealer][liar]
                complaint = Complaint(dealer, client._inbox_private(dealer), entry)
                return _resign(r, reply, complaints=(complaint,))
            return reply

        rejected = _play(r, tamper)
        assert set(rejected) == {liar}
        assert r.server.cheaters.keys() == {liar}
        result = r.server.result
        assert liar not in result.survivors
        np.testing.assert_array_equal(result.total, r.expected_sum(result.survivors))


def test_a_complaint_with_another_key_than_the_advertised_inbox_key_convicts_the_complainer():
    r = make_round(N, threshold=T, vector_length=16, seed=2, strict=True)

    def tamper(stage, p, reply):
        if stage is Stage.MASKED_INPUT and p == 2:
            dealer = 1
            entry = r.server._entries[dealer][2]
            fake = KeyAgreementKey.generate().private_bytes()
            return _resign(r, reply, complaints=(Complaint(dealer, fake, entry),))
        return reply

    assert set(_play(r, tamper)) == {2}
    assert "advertised inbox key" in r.server.cheaters[2]


def test_a_dealer_with_inconsistent_shares_aborts_the_round_cleanly_and_is_named():
    """Shares that match their commitments but lie on no single polynomial: the dealer's fault.

    It survives, so its self mask cannot be removed: no sum is released, and the round says why.
    """
    r = make_round(N, threshold=T, vector_length=16, seed=4, strict=True)
    cheater = 4
    client = r.clients[cheater]
    original_split = client._on_key_roster

    def inconsistent(msg):
        reply = original_split(msg)
        # Re-deal: every holder gets a share of an independent random secret (consistent
        # commitments, inconsistent polynomial).
        from secagg.crypto import split_many
        from secagg.protocol.client import share_associated_data, share_key
        from secagg.protocol.messages import share_commitment

        entries = []
        for e in reply.entries:
            fake = split_many([os.urandom(32)] * 2, threshold=1, xs=[e.receiver])
            seed_share, key_share = fake[0][e.receiver], fake[1][e.receiver]
            inbox = r.clients[e.receiver]._inbox_private(cheater)
            pub = KeyAgreementKey(inbox).public_bytes
            key = share_key(
                client._cipher_key.exchange(pub),
                round_id=r.config.round_id,
                session_id=client.session_id,
                sender=cheater,
                receiver=e.receiver,
            )
            from secagg.crypto import seal

            aad = share_associated_data(r.config.round_id, client.session_id, cheater, e.receiver)
            sid = client.session_id
            entries.append(
                dataclasses.replace(
                    e,
                    ciphertext=seal(key, seed_share + key_share, aad),
                    seed_commitment=share_commitment(
                        "seed", r.config.round_id, sid, cheater, e.receiver, seed_share
                    ),
                    key_commitment=share_commitment(
                        "key", r.config.round_id, sid, cheater, e.receiver, key_share
                    ),
                )
            )
        context = signing_context(Stage.SHARE_KEYS, r.config.round_id, r.config.digest, sid, 4)
        entries = [
            dataclasses.replace(e, signature=r.identities[4].sign(context, e.payload()))
            for e in entries
        ]
        return _resign(r, reply, entries=tuple(entries))

    client._on_key_roster = inconsistent  # type: ignore[method-assign]
    with pytest.raises(RoundAborted, match=f"party {cheater} cheated"):
        _play(r, lambda stage, p, reply: reply)
    assert r.server.cheaters.keys() == {cheater}
    assert r.server.stage is Stage.ABORTED


# --- low-order keys are refused where they enter ------------------------------------------------

_LOW_ORDER = [bytes(32), (1).to_bytes(32, "little")]


@pytest.mark.parametrize("point", _LOW_ORDER)
@pytest.mark.parametrize("field", ["cipher_public_key", "mask_public_key", "inbox"])
def test_a_low_order_key_cannot_enter_a_message(point: bytes, field: str):
    r = make_round(5, threshold=4, strict=True)
    ad = r.clients[1].advertise_keys()
    with pytest.raises(MalformedMessage, match="low-order"):
        if field == "inbox":
            InboxKey(2, point, bytes(64))
        else:
            dataclasses.replace(ad, **{field: point})


@pytest.mark.parametrize("point", _LOW_ORDER)
def test_a_low_order_key_on_the_wire_is_refused_by_the_server_and_the_round_completes(point):
    """The attack of the issue: a validly signed advertisement with the point 0 or 1 made every
    honest peer abort. Now the server refuses it at decode and the others finish."""
    r = make_round(6, threshold=5, vector_length=8, strict=True)
    ads = {p: c.advertise_keys() for p, c in r.clients.items()}
    wire = encode_client_message(ads[6])
    poisoned = wire.replace(ads[6].mask_public_key, point)
    assert poisoned != wire
    with pytest.raises(MalformedMessage, match="low-order"):
        decode_client_message(poisoned)
    for p in range(1, 6):
        r.server.receive(ads[p])
    r.outbox = r.server.close_stage()
    for _ in range(4):
        r.step()
    result = r.server.result
    assert result.survivors == (1, 2, 3, 4, 5)
    np.testing.assert_array_equal(result.total, r.expected_sum(result.survivors))


def test_a_client_refuses_a_key_roster_carrying_a_low_order_key():
    from secagg.wire import encode_server_message

    r = make_round(4, threshold=4, strict=True)
    r.advertise()
    roster = r.outbox[1]
    wire = encode_server_message(roster)
    victim = roster.advertisements[0]
    poisoned = wire.replace(victim.cipher_public_key, bytes(32))
    with pytest.raises(MalformedMessage, match="low-order"):
        decode_server_message(poisoned)


def test_a_share_keys_message_to_too_few_holders_is_refused():
    r = make_round(N, threshold=T, strict=True)
    r.advertise()
    reply = r.clients[1].receive(r.outbox[1])
    assert isinstance(reply, ShareKeys)
    few = _resign(r, reply, entries=reply.entries[: T - 2])
    with pytest.raises(MalformedMessage, match="fewer than the threshold"):
        r.server.receive(few)
