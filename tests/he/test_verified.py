"""Verified composition: the key holder decrypts only a sum of >= min_sites roster members' signed
ciphertexts, recomputed by itself. Issue 18's padded-sum attack is refused, naming the sites."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import tenseal as ts

from secagg.crypto import IdentityKey, IdentityPublicKey
from secagg.errors import ConfigError, HEError
from secagg.he import (
    CkksParameters,
    EncryptedSum,
    KeyHolderContext,
    Layout,
    MissingSignersError,
    PublicContext,
    encrypt_update,
)
from secagg.he.packing import (
    KIND_SUM,
    KIND_UPDATE,
    ChunkHeader,
    encode_chunk,
    encode_sum,
    load_ciphertext,
    parse_chunk,
)
from secagg.he.signed import chunk_signing_context, sign_chunk, split_signed_chunk

SLOTS = CkksParameters().slots
PADDED = ("site-0", "site-1", "site-2", "site-3", "site-4")


def _header(public: PublicContext, layout: Layout, kind: int, index: int) -> ChunkHeader:
    return ChunkHeader(
        kind=kind,
        params_digest=public.params.digest(),
        key_id=public.key_id,
        layout_digest=layout.digest(),
        index=index,
        count=layout.chunk_count,
        vector_length=layout.total_length,
        chunk_length=layout.chunk_length(index),
    )


def _ciphertexts(public: PublicContext, layout: Layout, signed: list[bytes]) -> list[ts.CKKSVector]:
    out = []
    for data in signed:
        chunk, _ = split_signed_chunk(data)
        index, payload = parse_chunk(
            chunk, kind=KIND_UPDATE, params=public.params, key_id=public.key_id, layout=layout
        )
        out.append(
            load_ciphertext(
                public._ts,
                payload,
                params=public.params,
                expected_length=layout.chunk_length(index),
                index=index,
            )
        )
    return out


def _zero_encryptions(public: PublicContext, layout: Layout) -> list[ts.CKKSVector]:
    """What the aggregator can make alone: fresh encryptions of zero under the public key."""
    return [
        ts.ckks_vector(public._ts, np.zeros(layout.chunk_length(i)))
        for i in range(layout.chunk_count)
    ]


def _frame_sum(
    public: PublicContext, layout: Layout, sites: tuple[str, ...], vectors: list[ts.CKKSVector]
) -> bytes:
    chunks = [
        encode_chunk(_header(public, layout, KIND_SUM, i), v.serialize())
        for i, v in enumerate(vectors)
    ]
    return encode_sum(
        params=public.params, key_id=public.key_id, layout=layout, sites=sites, chunks=chunks
    )


def _padded_sum(public: PublicContext, layout: Layout, site0: list[bytes]) -> bytes:
    """Issue 18's attack: site 0's ciphertext plus four encryptions of zero, claimed as 5 sites."""
    total = _ciphertexts(public, layout, site0)
    for _ in range(4):
        for acc, zero in zip(total, _zero_encryptions(public, layout), strict=True):
            acc.add_(zero)
    return _frame_sum(public, layout, PADDED, total)


@pytest.fixture
def setting(
    public: PublicContext,
    params: CkksParameters,
    identities: dict[str, IdentityKey],
    next_round: Callable[[], int],
) -> tuple[int, Layout, dict[str, np.ndarray], dict[str, list[bytes]]]:
    """A round id, a 1.5-chunk layout, and the signed updates of sites 0-4."""
    round_id = next_round()
    layout = Layout.for_vector(SLOTS + SLOTS // 2, params)
    rng = np.random.default_rng(18)
    xs = {s: rng.uniform(-1, 1, layout.total_length) for s in PADDED}
    signed = {
        s: encrypt_update(public, x, identity=identities[s], round_id=round_id, site_id=s)
        for s, x in xs.items()
    }
    return round_id, layout, xs, signed


def _decrypt(
    key_holder: KeyHolderContext,
    blob: bytes,
    contributions: dict[str, list[bytes]],
    round_id: int,
    layout: Layout,
    roster: dict[str, IdentityPublicKey],
    min_sites: int = 5,
) -> np.ndarray:
    return key_holder.decrypt_sum(
        blob, contributions, layout=layout, round_id=round_id, roster=roster, min_sites=min_sites
    ).values


def test_padded_sum_attack_is_refused_naming_the_missing_signers(
    key_holder: KeyHolderContext, public: PublicContext, roster, setting
) -> None:
    round_id, layout, _, signed = setting
    blob = _padded_sum(public, layout, signed["site-0"])
    budget = key_holder.remaining_decryptions
    with pytest.raises(MissingSignersError) as caught:
        _decrypt(key_holder, blob, {"site-0": signed["site-0"]}, round_id, layout, roster)
    assert caught.value.missing == ("site-1", "site-2", "site-3", "site-4")
    assert "missing signers: site-1, site-2, site-3, site-4" in str(caught.value)
    assert isinstance(caught.value, HEError)
    assert key_holder.remaining_decryptions == budget  # nothing was decrypted


def test_padding_signed_with_keys_outside_the_roster_is_refused(
    key_holder: KeyHolderContext, public: PublicContext, roster, setting
) -> None:
    round_id, layout, _, signed = setting
    blob = _padded_sum(public, layout, signed["site-0"])
    contributions = {"site-0": signed["site-0"]}
    for site in PADDED[1:]:  # the aggregator signs its zero encryptions with its own keys
        own = IdentityKey.generate()
        context = chunk_signing_context(
            round_id=round_id,
            site_id=site,
            params_digest=public.params.digest(),
            key_id=public.key_id,
            layout_digest=layout.digest(),
        )
        contributions[site] = [
            sign_chunk(
                own,
                context,
                i,
                layout.chunk_count,
                encode_chunk(_header(public, layout, KIND_UPDATE, i), z.serialize()),
            )
            for i, z in enumerate(_zero_encryptions(public, layout))
        ]
    with pytest.raises(MissingSignersError, match="do not verify") as caught:
        _decrypt(key_holder, blob, contributions, round_id, layout, roster)
    assert caught.value.missing == ("site-1", "site-2", "site-3", "site-4")


def test_a_sum_of_one_site_claimed_as_one_is_refused_below_min_sites(
    key_holder: KeyHolderContext, public: PublicContext, roster, setting
) -> None:
    round_id, layout, _, signed = setting
    blob = _frame_sum(public, layout, ("site-0",), _ciphertexts(public, layout, signed["site-0"]))
    with pytest.raises(MissingSignersError, match="fewer than min_sites=5") as caught:
        _decrypt(key_holder, blob, {"site-0": signed["site-0"]}, round_id, layout, roster)
    assert caught.value.missing == tuple(sorted(set(roster) - {"site-0"}))


def test_genuine_signatures_with_a_padded_sum_are_caught_by_the_recomputation(
    key_holder: KeyHolderContext, public: PublicContext, roster, setting
) -> None:
    round_id, layout, _, signed = setting
    blob = _padded_sum(public, layout, signed["site-0"])
    with pytest.raises(HEError, match="not the homomorphic sum"):
        _decrypt(key_holder, blob, signed, round_id, layout, roster)


def test_signed_updates_of_another_round_do_not_count(
    key_holder: KeyHolderContext,
    public: PublicContext,
    identities,
    roster,
    next_round: Callable[[], int],
    setting,
) -> None:
    round_id, layout, xs, signed = setting
    old_round = next_round()
    replayed = {
        s: encrypt_update(public, xs[s], identity=identities[s], round_id=old_round, site_id=s)
        for s in PADDED[1:]
    }
    vectors = _ciphertexts(public, layout, signed["site-0"])
    for s in PADDED[1:]:
        for acc, v in zip(vectors, _ciphertexts(public, layout, replayed[s]), strict=True):
            acc.add_(v)
    blob = _frame_sum(public, layout, PADDED, vectors)
    with pytest.raises(MissingSignersError) as caught:
        _decrypt(
            key_holder, blob, {"site-0": signed["site-0"], **replayed}, round_id, layout, roster
        )
    assert caught.value.missing == PADDED[1:]


def test_contributions_outside_the_sum_or_roster_or_twice_are_refused(
    key_holder: KeyHolderContext, public: PublicContext, roster, setting
) -> None:
    round_id, layout, _, signed = setting
    four = _ciphertexts(public, layout, signed["site-0"])
    for s in PADDED[1:4]:
        for acc, v in zip(four, _ciphertexts(public, layout, signed[s]), strict=True):
            acc.add_(v)
    blob = _frame_sum(public, layout, PADDED[:4], four)
    with pytest.raises(HEError, match="leaves out signed contributions from \\['site-4'\\]"):
        _decrypt(key_holder, blob, signed, round_id, layout, roster, min_sites=4)
    with pytest.raises(HEError, match="not in the roster"):
        _decrypt(
            key_holder, blob, {**signed, "stranger": signed["site-4"]}, round_id, layout, roster
        )
    twice = [(s, signed[s]) for s in PADDED[:4]] + [("site-0", signed["site-0"])]
    with pytest.raises(HEError, match="two contributions"):
        key_holder.decrypt_sum(
            blob, twice, layout=layout, round_id=round_id, roster=roster, min_sites=4
        )


def test_an_honest_round_through_the_aggregator_decrypts_the_sum_of_the_signers(
    key_holder: KeyHolderContext, public: PublicContext, roster, setting
) -> None:
    round_id, layout, xs, signed = setting
    total = EncryptedSum(public, layout, round_id=round_id, roster=roster)
    for s in reversed(PADDED):  # arrival order does not matter
        total.add(s, signed[s])
    # contributions may be streamed as (site, chunks) pairs, each chunk list any iterable
    stream = ((s, iter(signed[s])) for s in PADDED)
    result = key_holder.decrypt_sum(
        total.result_bytes(), stream, layout=layout, round_id=round_id, roster=roster, min_sites=5
    )
    assert result.sites == PADDED
    bound = key_holder.flooding.released_error_bound(key_holder.params, 5, 1.0, layout.total_length)
    assert float(np.max(np.abs(result.values - sum(xs.values())))) <= bound


@pytest.mark.parametrize("bad", [b"bytes", 3, [("site-0",)], ["site-0"]])
def test_malformed_contributions_are_config_errors(
    key_holder: KeyHolderContext, public: PublicContext, roster, setting, bad: object
) -> None:
    round_id, layout, _, signed = setting
    blob = _frame_sum(public, layout, ("site-0",), _ciphertexts(public, layout, signed["site-0"]))
    with pytest.raises(ConfigError):
        _decrypt(key_holder, blob, bad, round_id, layout, roster, min_sites=1)  # type: ignore[arg-type]
