"""Client and server sessions wired in memory: happy path, dropouts, and every rejection."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from secagg.crypto import IdentityKey
from secagg.errors import (
    InvalidSignature,
    LocalProtocolError,
    MalformedMessage,
    MaliciousServerError,
    ReplayedMessage,
    RoundAborted,
    UnexpectedMessage,
    UnknownParty,
)
from secagg.protocol import (
    AdvertiseKeys,
    MaskedInput,
    RoundConfig,
    ShareBundle,
    Stage,
    UnmaskRequest,
)
from secagg.protocol.ledger import SharesRevealed

from .harness import make_round, new_session


def run_to_end(r, *, drop_at=None):
    drop_at = drop_at or {}
    r.advertise(skip=drop_at.get(Stage.ADVERTISE_KEYS, set()))
    gone = set(drop_at.get(Stage.ADVERTISE_KEYS, set()))
    for stage in (Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK, Stage.UNMASK):
        gone |= drop_at.get(stage, set())
        r.step(skip=gone)
    return r.server.result


def test_clean_round_yields_exact_sum_of_all_inputs():
    r = make_round(5, vector_length=33)
    result = run_to_end(r)
    assert result.survivors == (1, 2, 3, 4, 5)
    np.testing.assert_array_equal(result.total, r.expected_sum(result.survivors))
    assert r.server.stage is Stage.COMPLETED
    assert all(c.stage is Stage.COMPLETED for c in r.clients.values())


def test_client_dropping_after_sharing_keys_is_unmasked_out_of_the_sum():
    r = make_round(6, vector_length=20, threshold=3)
    result = run_to_end(r, drop_at={Stage.MASKED_INPUT: {2, 5}})
    assert result.survivors == (1, 3, 4, 6)
    np.testing.assert_array_equal(result.total, r.expected_sum(result.survivors))
    assert result.dropouts[Stage.MASKED_INPUT] == (2, 5)


def test_clients_dropping_in_consistency_and_unmask_still_count_in_the_sum():
    r = make_round(7, vector_length=9, threshold=3)
    result = run_to_end(r, drop_at={Stage.CONSISTENCY_CHECK: {1}, Stage.UNMASK: {7}})
    assert result.survivors == tuple(range(1, 8))
    np.testing.assert_array_equal(result.total, r.expected_sum(result.survivors))


def test_too_few_masked_inputs_abort_naming_the_stage():
    r = make_round(5, threshold=4)
    with pytest.raises(RoundAborted) as info:
        run_to_end(r, drop_at={Stage.MASKED_INPUT: {1, 2}})
    assert info.value.stage == "masked_input"
    assert r.server.stage is Stage.ABORTED
    assert r.server.abort_stage is Stage.MASKED_INPUT


def test_small_bit_width_sums_modulo_two_to_the_bits():
    r = make_round(4, bits=12, vector_length=100, threshold=2)
    result = run_to_end(r, drop_at={Stage.MASKED_INPUT: {3}})
    np.testing.assert_array_equal(result.total, r.expected_sum(result.survivors))
    assert int(result.total.max()) < 2**12


def test_secagg_plus_round_with_sparse_graph_yields_exact_sum():
    r = make_round(12, degree=4, threshold=3, vector_length=10)
    assert all(len(r.config.graph.neighbours(p)) == 4 for p in r.config.parties)
    result = run_to_end(r, drop_at={Stage.MASKED_INPUT: {5}})
    np.testing.assert_array_equal(result.total, r.expected_sum(result.survivors))


# --- server rejects bad client messages and stays intact ------------------------------------


def test_message_from_another_round_is_rejected_as_replay_and_changes_nothing():
    r = make_round(4)
    foreign = new_session(r, 1, dataclasses.replace(r.config, round_id=8)).advertise_keys()
    with pytest.raises(ReplayedMessage):
        r.server.receive(foreign)
    assert r.server.participants(Stage.ADVERTISE_KEYS) == frozenset()
    result = run_to_end(r)
    np.testing.assert_array_equal(result.total, r.expected_sum(result.survivors))


def test_forged_signature_is_rejected():
    r = make_round(4)
    ad = r.clients[1].advertise_keys()
    forged = dataclasses.replace(ad, signature=bytes(64))
    with pytest.raises(InvalidSignature):
        r.server.receive(forged)
    impostor = IdentityKey.generate()
    stolen = AdvertiseKeys.signed(
        impostor,
        r.config.digest,
        round_id=ad.round_id,
        sender=2,
        cipher_public_key=ad.cipher_public_key,
        mask_public_key=ad.mask_public_key,
        seed_commitment=ad.seed_commitment,
        # party 2's neighbours are 1, 3, 4: relabel party 1's inbox key for 2 as one for 1
        inbox_keys=tuple(
            sorted(
                (dataclasses.replace(k, dealer=1) if k.dealer == 2 else k for k in ad.inbox_keys),
                key=lambda k: k.dealer,
            )
        ),
    )
    with pytest.raises(InvalidSignature):
        r.server.receive(stolen)
    assert r.server.participants(Stage.ADVERTISE_KEYS) == frozenset()


def test_message_for_the_wrong_stage_is_unexpected_and_changes_nothing():
    r = make_round(4)
    ads = {p: c.advertise_keys() for p, c in r.clients.items()}
    for ad in ads.values():
        r.server.receive(ad)
    r.outbox = r.server.close_stage()
    with pytest.raises(UnexpectedMessage):
        r.server.receive(ads[1])
    assert r.server.stage is Stage.SHARE_KEYS
    assert r.server.participants(Stage.SHARE_KEYS) == frozenset()


def test_duplicate_message_is_a_replay():
    r = make_round(4)
    ad = r.clients[1].advertise_keys()
    r.server.receive(ad)
    with pytest.raises(ReplayedMessage):
        r.server.receive(ad)
    assert r.server.participants(Stage.ADVERTISE_KEYS) == {1}


def test_unknown_party_is_rejected():
    r = make_round(4)
    stranger = IdentityKey.generate()
    ad = r.clients[1].advertise_keys()
    msg = AdvertiseKeys.signed(
        stranger,
        r.config.digest,
        round_id=ad.round_id,
        sender=99,
        cipher_public_key=bytes(range(2, 34)),
        mask_public_key=bytes(range(3, 35)),
        seed_commitment=bytes(32),
        inbox_keys=(),
    )
    with pytest.raises(UnknownParty):
        r.server.receive(msg)


def test_masked_input_of_wrong_length_is_rejected_and_the_round_completes():
    r = make_round(4, vector_length=8)
    r.advertise()
    r.step()
    replies = {p: r.clients[p].receive(m) for p, m in r.outbox.items()}
    bad = replies[1]
    short = MaskedInput.signed(
        r.identities[1],
        r.config.digest,
        round_id=bad.round_id,
        sender=1,
        session_id=bad.session_id,
        masked_vector=np.zeros(7, dtype=np.uint32),
    )
    with pytest.raises(MalformedMessage):
        r.server.receive(short)
    for reply in replies.values():
        r.server.receive(reply)
    r.outbox = r.server.close_stage()
    r.step()
    r.step()
    np.testing.assert_array_equal(r.server.result.total, r.expected_sum((1, 2, 3, 4)))


# --- clients refuse what an honest server never sends ----------------------------------------


def test_a_share_entry_altered_by_the_server_is_not_held_and_not_complained_about():
    """The dealer's entry signature fails: the client cannot tell who spoiled it, so it neither
    holds those shares nor reveals its inbox key in a complaint (which would open the channel)."""
    r = make_round(4)
    r.advertise()
    r.step()
    bundle: ShareBundle = r.outbox[2]
    dealer, entry = bundle.entries[0]
    box = entry.ciphertext
    flipped = dataclasses.replace(entry, ciphertext=box[:-1] + bytes([box[-1] ^ 1]))
    tampered = dataclasses.replace(bundle, entries=((dealer, flipped), *bundle.entries[1:]))
    reply = r.clients[2].receive(tampered)
    assert isinstance(reply, MaskedInput)
    assert reply.complaints == ()
    assert dealer not in r.clients[2]._held_shares
    assert r.clients[2].stage is Stage.MASKED_INPUT


def test_share_entry_redirected_to_another_receiver_is_refused():
    r = make_round(4)
    r.advertise()
    r.step()
    to_3 = dict(r.outbox[3].entries)
    bundle_2 = r.outbox[2]
    # Give client 2 the entry party 1 addressed to party 3.
    swapped = tuple((s, to_3[1] if s == 1 else e) for s, e in bundle_2.entries)
    with pytest.raises(MaliciousServerError, match="addressed to another party"):
        r.clients[2].receive(dataclasses.replace(bundle_2, entries=swapped))
    assert r.clients[2].stage is Stage.ABORTED


def _advance_to_unmask_request(r):
    r.advertise()
    r.step()  # shares
    r.step(skip={4})  # masked inputs: party 4 drops
    r.step()  # consistency signatures
    return r.outbox


def test_unmask_answer_never_holds_both_secrets_of_a_peer():
    r = make_round(5, threshold=3)
    outbox = _advance_to_unmask_request(r)
    reply = r.clients[1].receive(outbox[1])
    seeds = {o for o, _ in reply.self_mask_shares}
    keys = {o for o, _ in reply.mask_key_shares}
    assert seeds == {1, 2, 3, 5} and keys == {4}
    assert r.ledgers[1].of_kind(SharesRevealed)[0].mask_key_owners == (4,)


def test_unmask_request_contradicting_the_signed_survivors_is_refused():
    r = make_round(5, threshold=3)
    outbox = _advance_to_unmask_request(r)
    req: UnmaskRequest = outbox[1]
    other = dataclasses.replace(req, survivors_digest=bytes(32))
    with pytest.raises(MaliciousServerError, match="contradicts"):
        r.clients[1].receive(other)
    assert not r.ledgers[1].of_kind(SharesRevealed)


def test_unmask_request_with_too_few_consistency_signatures_is_refused():
    r = make_round(5, threshold=3)
    outbox = _advance_to_unmask_request(r)
    req: UnmaskRequest = outbox[1]
    few = dataclasses.replace(req, consistency_signatures=req.consistency_signatures[:2])
    with pytest.raises(RoundAborted, match="valid consistency signatures"):
        r.clients[1].receive(few)


def test_unmask_request_with_a_forged_consistency_signature_is_refused():
    r = make_round(5, threshold=3)
    outbox = _advance_to_unmask_request(r)
    req: UnmaskRequest = outbox[1]
    signer, _ = req.consistency_signatures[0]
    forged = ((signer, bytes(64)), *req.consistency_signatures[1:])
    with pytest.raises(MaliciousServerError, match="does not verify"):
        r.clients[1].receive(dataclasses.replace(req, consistency_signatures=forged))


def test_client_session_rejects_a_message_from_another_round():
    r = make_round(4)
    r.advertise()
    msg = r.outbox[1]
    with pytest.raises(ReplayedMessage):
        r.clients[1].receive(dataclasses.replace(msg, round_id=msg.round_id + 1))
    assert r.clients[1].stage is Stage.ABORTED


def test_client_rejects_a_message_out_of_stage():
    r = make_round(4)
    r.advertise()
    r.step()
    bundle = r.outbox[1]
    r.clients[1].receive(bundle)
    with pytest.raises(UnexpectedMessage):
        r.clients[1].receive(bundle)


def test_client_refuses_an_input_that_does_not_fit_the_config():
    r = make_round(4, bits=8)
    with pytest.raises(LocalProtocolError):
        new_session(r, 1, inputs=np.full(16, 256, dtype=np.uint32))
    with pytest.raises(LocalProtocolError):
        new_session(r, 1, identity=r.identities[2])


def test_round_config_rejects_thresholds_outside_the_neighbourhood():
    keys = {p: IdentityKey.generate().public_key for p in range(1, 6)}
    from secagg.errors import ConfigError

    with pytest.raises(ConfigError):
        RoundConfig(round_id=0, roster=keys, threshold=6, vector_length=4)
    with pytest.raises(ConfigError):
        RoundConfig(round_id=0, roster=keys, threshold=1, vector_length=4)
