"""Encrypted sum: decrypts to the plain weighted sum within the released bound (decryption error
plus flooding noise); bad input changes nothing."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

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
    iter_encrypt_update,
)
from secagg.he.packing import HEADER_SIZE, KIND_UPDATE, ChunkHeader, encode_chunk
from secagg.he.signed import SIGNATURE_BYTES, chunk_signing_context, sign_chunk

SLOTS = CkksParameters().slots


def _decrypt(
    key_holder: KeyHolderContext,
    total: EncryptedSum,
    contributions: Mapping[str, list[bytes]],
    round_id: int,
    roster: Mapping[str, IdentityPublicKey],
    min_sites: int = 1,
) -> np.ndarray:
    result = key_holder.decrypt_sum(
        total.result_bytes(),
        {site: contributions[site] for site in total.sites},
        layout=total.layout,
        round_id=round_id,
        roster=roster,
        min_sites=min_sites,
    )
    assert result.sites == tuple(sorted(total.sites))
    return result.values


def _released_bound(key_holder: KeyHolderContext, n_sites: int, peak: float, m: int) -> float:
    return key_holder.flooding.released_error_bound(key_holder.params, n_sites, peak, m)


def _encrypted_sum_matches(
    key_holder: KeyHolderContext,
    public: PublicContext,
    identities: Mapping[str, IdentityKey],
    roster: Mapping[str, IdentityPublicKey],
    round_id: int,
    updates: list[np.ndarray],
    weights: list[float],
) -> None:
    params = public.params
    layout = Layout.for_vector(len(updates[0]), params)
    total = EncryptedSum(public, layout, round_id=round_id, roster=roster)
    sent = {}
    for i, (x, w) in enumerate(zip(updates, weights, strict=True)):
        site = f"site-{i}"
        sent[site] = encrypt_update(
            public, x, w, identity=identities[site], round_id=round_id, site_id=site
        )
        total.add(site, sent[site])
    got = _decrypt(key_holder, total, sent, round_id, roster, min_sites=len(updates))
    want = sum(w * x for x, w in zip(updates, weights, strict=True))
    peak = max(float(np.max(np.abs(w * x))) for x, w in zip(updates, weights, strict=True))
    bound = _released_bound(key_holder, len(updates), peak, len(want))
    assert got.shape == want.shape
    assert float(np.max(np.abs(got - want))) <= bound


@given(
    length=st.integers(1, 2 * SLOTS + 100).filter(lambda m: m % SLOTS != 0),
    n_sites=st.integers(1, 4),
    magnitude=st.sampled_from([1e-3, 1.0, 1e3, 2.0**14]),
    seed=st.integers(0, 2**32 - 1),
)
def test_sum_decrypts_to_the_weighted_plain_sum_within_the_bound(
    key_holder: KeyHolderContext,
    public: PublicContext,
    identities: dict[str, IdentityKey],
    roster: dict[str, IdentityPublicKey],
    next_round: Callable[[], int],
    length: int,
    n_sites: int,
    magnitude: float,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    updates = [rng.uniform(-magnitude, magnitude, length) for _ in range(n_sites)]
    weights = list(rng.dirichlet(np.ones(n_sites)))  # FedAvg weights sum to 1
    _encrypted_sum_matches(key_holder, public, identities, roster, next_round(), updates, weights)


def test_sum_near_the_headroom_stays_within_the_bound(
    key_holder: KeyHolderContext,
    public: PublicContext,
    identities: dict[str, IdentityKey],
    roster: dict[str, IdentityPublicKey],
    next_round: Callable[[], int],
) -> None:
    rng = np.random.default_rng(7)
    a = 2.0**35 * 0.99  # 3 sites: |sum| < 3 * 2^35 < 2^37
    updates = [rng.choice([-a, a], SLOTS + 3) for _ in range(3)]
    _encrypted_sum_matches(
        key_holder, public, identities, roster, next_round(), updates, [1.0, 1.0, 1.0]
    )


def test_dict_of_named_arrays_round_trips(
    key_holder: KeyHolderContext,
    public: PublicContext,
    params: CkksParameters,
    identities: dict[str, IdentityKey],
    roster: dict[str, IdentityPublicKey],
    next_round: Callable[[], int],
) -> None:
    rng = np.random.default_rng(1)
    shapes = {"conv.weight": (16, 3, 5, 5), "conv.bias": (16,), "fc.weight": (10, 400), "z": (0,)}
    sites = [{k: rng.normal(size=s) for k, s in shapes.items()} for _ in range(3)]
    layout = Layout.for_arrays(sites[0], params)
    assert layout.names == ("conv.bias", "conv.weight", "fc.weight", "z")
    assert layout.chunk_count == -(-layout.total_length // SLOTS)
    round_id = next_round()
    total = EncryptedSum(public, layout, round_id=round_id, roster=roster)
    sent = {}
    for i, update in enumerate(sites):
        # insertion order does not matter: names are flattened in sorted order
        site = f"site-{i}"
        sent[site] = encrypt_update(
            public,
            dict(reversed(update.items())),
            0.5,
            identity=identities[site],
            round_id=round_id,
            site_id=site,
        )
        total.add(site, sent[site])
    out = layout.unflatten(_decrypt(key_holder, total, sent, round_id, roster, min_sites=3))
    assert isinstance(out, dict)
    peak = 0.5 * max(np.max(np.abs(v)) for s in sites for v in s.values() if v.size)
    bound = _released_bound(key_holder, 3, peak, layout.total_length)
    for name, shape in shapes.items():
        assert out[name].shape == shape
        want = sum(0.5 * s[name] for s in sites)
        assert np.all(np.abs(out[name] - want) <= bound)


def test_key_holder_site_can_encrypt_with_its_own_context(
    key_holder: KeyHolderContext,
    public: PublicContext,
    params: CkksParameters,
    identities: dict[str, IdentityKey],
    roster: dict[str, IdentityPublicKey],
    next_round: Callable[[], int],
) -> None:
    layout = Layout.for_vector(5, params)
    round_id = next_round()
    total = EncryptedSum(public, layout, round_id=round_id, roster=roster)
    sent = {
        "site-0": encrypt_update(
            key_holder,
            np.arange(5.0),
            identity=identities["site-0"],
            round_id=round_id,
            site_id="site-0",
        ),
        "site-1": list(
            iter_encrypt_update(
                public,
                np.ones(5),
                identity=identities["site-1"],
                round_id=round_id,
                site_id="site-1",
            )
        ),
    }
    for site, chunks in sent.items():
        total.add(site, chunks)
    got = _decrypt(key_holder, total, sent, round_id, roster, min_sites=2)
    assert np.max(np.abs(got - (np.arange(5.0) + 1))) <= _released_bound(key_holder, 2, 4.0, 5)


# ---------------------------------------------------------------------------- rejection


@pytest.fixture
def round_(
    public: PublicContext,
    params: CkksParameters,
    identities: dict[str, IdentityKey],
    roster: dict[str, IdentityPublicKey],
    next_round: Callable[[], int],
) -> tuple[EncryptedSum, Layout, list[np.ndarray], list[list[bytes]]]:
    """A round of 2 honest sites (not yet added) with vectors of 1.5 chunks."""
    layout = Layout.for_vector(SLOTS + SLOTS // 2, params)
    rng = np.random.default_rng(3)
    xs = [rng.uniform(-1, 1, layout.total_length) for _ in range(2)]
    round_id = next_round()
    chunks = [
        encrypt_update(
            public, x, identity=identities[f"site-{i}"], round_id=round_id, site_id=f"site-{i}"
        )
        for i, x in enumerate(xs)
    ]
    return EncryptedSum(public, layout, round_id=round_id, roster=roster), layout, xs, chunks


def _finish_honest_round(
    key_holder: KeyHolderContext,
    total: EncryptedSum,
    layout: Layout,
    xs: list[np.ndarray],
    chunks: list[list[bytes]],
) -> None:
    """Add the honest sites still missing and check the decrypted sum is exactly theirs."""
    sent = {f"site-{i}": c for i, c in enumerate(chunks)}
    for site, c in sent.items():
        if site not in total.sites:
            total.add(site, c)
    assert set(total.sites) == set(sent)
    got = key_holder.decrypt_sum(
        total.result_bytes(),
        sent,
        layout=layout,
        round_id=total._round_id,
        roster=total._roster,
        min_sites=len(xs),
    ).values
    bound = _released_bound(key_holder, len(xs), 1.0, layout.total_length)
    assert float(np.max(np.abs(got - sum(xs)))) <= bound


EVIL = "site-9"  # a corrupt roster member: it signs whatever it sends, framing must still hold


def _reject(total: EncryptedSum, site: str, chunks: list[bytes], match: str) -> None:
    before = total.sites
    with pytest.raises(HEError, match=match):
        total.add(site, chunks)
    assert total.sites == before


def _signed(
    total: EncryptedSum, identity: IdentityKey, chunks: list[bytes], site: str = EVIL
) -> list[bytes]:
    """Sign raw chunks (framing as given) as ``site`` for the round of ``total``."""
    params = total._ctx.params
    context = chunk_signing_context(
        round_id=total._round_id,
        site_id=site,
        params_digest=params.digest(),
        key_id=total._ctx.key_id,
        layout_digest=total.layout.digest(),
    )
    return [
        sign_chunk(identity, context, i, total.layout.chunk_count, c) for i, c in enumerate(chunks)
    ]


def _unsigned(chunks: list[bytes]) -> list[bytes]:
    return [c[:-SIGNATURE_BYTES] for c in chunks]


def _evil_update(
    total: EncryptedSum, context: object, x: np.ndarray, identities, **kw
) -> list[bytes]:
    return encrypt_update(
        context,  # type: ignore[arg-type]
        x,
        identity=identities[EVIL],
        round_id=total._round_id,
        site_id=EVIL,
        **kw,
    )


def test_ciphertexts_under_another_key_with_the_same_parameters_are_rejected(
    key_holder: KeyHolderContext, params: CkksParameters, identities, round_
) -> None:
    total, layout, xs, chunks = round_
    total.add("site-0", chunks[0])
    stranger = KeyHolderContext.generate(params)
    _reject(total, EVIL, _evil_update(total, stranger, xs[1], identities), "another key")
    _finish_honest_round(key_holder, total, layout, xs, chunks)


def test_ciphertexts_under_other_parameters_are_rejected(
    key_holder: KeyHolderContext, identities, round_
) -> None:
    total, layout, xs, chunks = round_
    other = KeyHolderContext.generate(CkksParameters(global_scale_bits=70))
    forged = _evil_update(
        total, other, xs[0], identities, layout=Layout.for_vector(len(xs[0]), other.params)
    )
    _reject(total, EVIL, forged, "different CKKS parameters")
    # the same foreign payloads re-framed under this round's header: SEAL refuses them
    small = KeyHolderContext.generate(
        CkksParameters(poly_modulus_degree=4096, coeff_mod_bit_sizes=(60, 49), global_scale_bits=40)
    )
    foreign = _unsigned(
        _evil_update(
            total,
            small,
            xs[0][: SLOTS // 2],
            identities,
            layout=Layout.for_vector(SLOTS // 2, small.params),
        )
    )
    reframed = [
        encode_chunk(_header(total, layout, i), foreign[0][HEADER_SIZE:])
        for i in range(layout.chunk_count)
    ]
    _reject(total, EVIL, _signed(total, identities[EVIL], reframed), "not a ciphertext")
    _finish_honest_round(key_holder, total, layout, xs, chunks)


def _header(total: EncryptedSum, layout: Layout, at: int, **changes: int) -> ChunkHeader:
    fields = {
        "kind": KIND_UPDATE,
        "params_digest": CkksParameters().digest(),
        "key_id": total._ctx.key_id,
        "layout_digest": layout.digest(),
        "index": at,
        "count": layout.chunk_count,
        "vector_length": layout.total_length,
        "chunk_length": layout.chunk_length(at),
    }
    fields.update(changes)
    return ChunkHeader(**fields)  # type: ignore[arg-type]


def test_wrong_chunk_count_index_or_length_is_rejected(
    key_holder: KeyHolderContext, public: PublicContext, identities, round_
) -> None:
    total, layout, xs, chunks = round_
    evil = identities[EVIL]
    own = _unsigned(_evil_update(total, public, xs[0], identities))
    payloads = [c[HEADER_SIZE:] for c in own]

    def frame(at: int, payload: bytes, **changes: int) -> bytes:
        return encode_chunk(_header(total, layout, at, **changes), payload)

    signed = _signed(total, evil, own)
    _reject(total, EVIL, signed[:1], "sent 1 of 2 chunks")
    _reject(total, EVIL, [signed[0], signed[0]], "chunk 0 twice")
    _reject(total, EVIL, [*signed, signed[1]], "chunk 1 twice")
    _reject(total, EVIL, _signed(total, evil, [frame(0, payloads[0], count=3)]), "3 chunks")
    _reject(total, EVIL, _signed(total, evil, [frame(0, payloads[0], index=2)]), "index 2")
    _reject(
        total,
        EVIL,
        _signed(total, evil, [own[0], frame(1, payloads[1], chunk_length=SLOTS)]),
        "declares 4096 values",
    )
    _reject(
        total,
        EVIL,
        _signed(total, evil, [frame(0, payloads[0], vector_length=7)]),
        "vector length 7",
    )
    # the header claims the right length but the ciphertext holds fewer values
    _reject(total, EVIL, _signed(total, evil, [frame(0, payloads[1]), own[1]]), "holds 2048 values")
    # an update made for another layout
    other = _evil_update(total, public, np.ones(layout.total_length + 1), identities)
    _reject(total, EVIL, other, "another layout")
    _finish_honest_round(key_holder, total, layout, xs, chunks)


def test_corrupted_bytes_are_rejected(key_holder: KeyHolderContext, identities, round_) -> None:
    total, layout, xs, chunks = round_
    total.add("site-0", chunks[0])
    good = _unsigned(_evil_update(total, total._ctx, xs[1], identities))
    for position in (0, 5, 40, 110, HEADER_SIZE - 1, HEADER_SIZE + 1000, len(good[0]) - 1):
        bad = bytearray(good[0])
        bad[position] ^= 0x01
        signed = _signed(total, identities[EVIL], [bytes(bad), good[1]])
        _reject(total, EVIL, signed, "magic|version|corrupted|length|kind")
    _reject(total, EVIL, _signed(total, identities[EVIL], [good[0][:-1], good[1]]), "length")
    _reject(total, EVIL, [good[0][:50]], "too short")
    _reject(total, EVIL, ["text", good[1]], "must be bytes")  # type: ignore[list-item]
    # a payload that is corrupted yet re-checksummed (an attacker can do that): SEAL refuses it
    truncated = encode_chunk(_header(total, layout, 0), good[0][HEADER_SIZE:-100])
    _reject(total, EVIL, _signed(total, identities[EVIL], [truncated, good[1]]), "not a ciphertext")
    _finish_honest_round(key_holder, total, layout, xs, chunks)


def test_unsigned_forged_or_replayed_chunks_are_rejected_by_the_aggregator(
    key_holder: KeyHolderContext, public: PublicContext, identities, round_
) -> None:
    total, layout, xs, chunks = round_
    # the bare chunk without its signature
    with pytest.raises(HEError):
        total.add("site-1", _unsigned(chunks[1]))
    # signed by a key that is not site-1's roster key
    forged = _signed(total, IdentityKey.generate(), _unsigned(chunks[1]), site="site-1")
    with pytest.raises(MissingSignersError, match="site-1") as caught:
        total.add("site-1", forged)
    assert caught.value.missing == ("site-1",)
    # site-1's genuine chunks claimed by another site, or replayed from another round
    _reject(total, "site-2", chunks[1], "signature does not verify")
    old = encrypt_update(
        public,
        xs[1],
        identity=identities["site-1"],
        round_id=total._round_id + 10**6,
        site_id="site-1",
    )
    _reject(total, "site-1", old, "signature does not verify")
    # a flipped signature bit
    flipped = bytearray(chunks[1][0])
    flipped[-1] ^= 0x01
    _reject(total, "site-1", [bytes(flipped), chunks[1][1]], "signature does not verify")
    # a site outside the roster
    _reject(total, "stranger", chunks[1], "not in the round's roster")
    assert total.sites == ()
    _finish_honest_round(key_holder, total, layout, xs, chunks)


def test_duplicate_site_is_rejected(key_holder: KeyHolderContext, round_) -> None:
    total, layout, xs, chunks = round_
    total.add("site-0", chunks[0])
    _reject(total, "site-0", chunks[0], "already added")
    _reject(total, "site-0", chunks[1], "already added")
    _finish_honest_round(key_holder, total, layout, xs, chunks)


def test_dropouts_leave_the_sum_of_the_survivors(
    key_holder: KeyHolderContext, roster, round_
) -> None:
    total, _, xs, chunks = round_
    total.add("site-1", chunks[1])  # site 0 never sends
    got = _decrypt(key_holder, total, {"site-1": chunks[1]}, total._round_id, roster)
    assert float(np.max(np.abs(got - xs[1]))) <= _released_bound(key_holder, 1, 1.0, len(xs[1]))
    assert total.sites == ("site-1",)


def test_bad_site_ids_are_config_errors(round_) -> None:
    total, _, _, chunks = round_
    for bad in ("", None, "x" * 300):
        with pytest.raises(ConfigError):
            total.add(bad, chunks[0])  # type: ignore[arg-type]


def test_encrypted_sum_needs_a_round_id_and_a_roster(
    public: PublicContext, params: CkksParameters, roster
) -> None:
    layout = Layout.for_vector(3, params)
    for kwargs in (
        {"round_id": -1, "roster": roster},
        {"round_id": True, "roster": roster},
        {"round_id": 1, "roster": {}},
        {"round_id": 1, "roster": {"a": b"\0" * 32}},
    ):
        with pytest.raises(ConfigError):
            EncryptedSum(public, layout, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- key holder side


def test_empty_sum_has_no_result(round_) -> None:
    total, *_ = round_
    with pytest.raises(HEError, match="no site"):
        total.result_bytes()


def test_key_holder_rejects_a_bad_encrypted_sum(
    key_holder: KeyHolderContext, params: CkksParameters, roster, round_
) -> None:
    total, layout, xs, chunks = round_
    total.add("site-0", chunks[0])
    blob = total.result_bytes()
    sent = {"site-0": chunks[0]}

    def decrypt(data: bytes, lay: Layout = layout, holder: KeyHolderContext = key_holder, **kw):
        return holder.decrypt_sum(
            data,
            sent,
            layout=lay,
            round_id=total._round_id,
            roster=roster,
            **{"min_sites": 1, **kw},
        )

    with pytest.raises(HEError, match="another layout"):
        decrypt(blob, Layout.for_vector(layout.total_length + 1, params))
    with pytest.raises(MissingSignersError, match="fewer than min_sites=2"):
        decrypt(blob, min_sites=2)
    for position in (0, 10, 60, len(blob) // 2, len(blob) - 1):
        bad = bytearray(blob)
        bad[position] ^= 0x80
        with pytest.raises(HEError):
            decrypt(bytes(bad))
    with pytest.raises(HEError):
        decrypt(blob[:-1])
    with pytest.raises(HEError):
        decrypt(blob + b"\0")
    with pytest.raises(HEError, match="another key"):
        decrypt(blob, holder=KeyHolderContext.generate(params))
    # an update is not a sum
    with pytest.raises(HEError):
        decrypt(chunks[0][0])
    for bad_min in (0, -1, True, len(roster) + 1):
        with pytest.raises(ConfigError):
            decrypt(blob, min_sites=bad_min)
    # none of the refusals spent the budget or the round: the good blob still decrypts, once
    before = key_holder.remaining_decryptions
    got = decrypt(blob).values
    assert key_holder.remaining_decryptions == before - 1
    assert float(np.max(np.abs(got - xs[0]))) <= _released_bound(key_holder, 1, 1.0, len(xs[0]))
    with pytest.raises(HEError, match="already decrypted"):
        decrypt(blob)


# ---------------------------------------------------------------------------- client side


def test_encrypt_update_rejects_bad_values(
    public: PublicContext, params: CkksParameters, identities
) -> None:
    sign = {"identity": identities["site-0"], "round_id": 1, "site_id": "site-0"}
    with pytest.raises(ConfigError, match="NaN"):
        encrypt_update(public, np.array([1.0, np.nan]), **sign)
    with pytest.raises(ConfigError, match="clip"):
        encrypt_update(public, np.array([2.0**37]), **sign)
    with pytest.raises(ConfigError, match="clip"):
        encrypt_update(public, np.array([1.0]), weight=2.0**38, **sign)
    with pytest.raises(ConfigError, match="finite"):
        encrypt_update(public, np.array([1.0]), weight=float("inf"), **sign)
    with pytest.raises(ConfigError, match="real"):
        encrypt_update(public, np.array([1 + 2j]), **sign)
    with pytest.raises(ConfigError, match="1-D"):
        encrypt_update(public, np.ones((2, 2)), **sign)
    with pytest.raises(ConfigError, match="positive"):
        encrypt_update(public, np.array([]), **sign)
    layout = Layout.for_arrays({"a": (2,)}, params)
    with pytest.raises(ConfigError, match="missing"):
        encrypt_update(public, {"b": np.ones(2)}, layout=layout, **sign)
    with pytest.raises(ConfigError, match="shape"):
        encrypt_update(public, {"a": np.ones(3)}, layout=layout, **sign)
    with pytest.raises(ConfigError, match="IdentityKey"):
        encrypt_update(public, np.ones(2), identity=None, round_id=1, site_id="s")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="round_id"):
        encrypt_update(public, np.ones(2), identity=sign["identity"], round_id=-1, site_id="s")
    with pytest.raises(ConfigError, match="site_id"):
        encrypt_update(public, np.ones(2), identity=sign["identity"], round_id=1, site_id="")


def test_encrypted_sum_refuses_the_key_holders_context(
    key_holder: KeyHolderContext, params: CkksParameters, roster
) -> None:
    with pytest.raises(ConfigError, match="PublicContext"):
        EncryptedSum(key_holder, Layout.for_vector(3, params), round_id=1, roster=roster)  # type: ignore[arg-type]


def test_layout_bytes_round_trip(params: CkksParameters) -> None:
    for layout in (
        Layout.for_vector(10, params),
        Layout.for_arrays({"b": (2, 3), "a": (4,)}, params),
    ):
        assert Layout.from_bytes(layout.to_bytes()) == layout
        with pytest.raises(HEError):
            Layout.from_bytes(layout.to_bytes()[:-1])
