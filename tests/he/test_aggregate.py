"""Encrypted sum: decrypts to the plain weighted sum within the bound; bad input changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg.errors import ConfigError, HEError
from secagg.he import (
    CkksParameters,
    EncryptedSum,
    KeyHolderContext,
    Layout,
    PublicContext,
    encrypt_update,
    iter_encrypt_update,
)
from secagg.he.packing import HEADER_SIZE, KIND_UPDATE, ChunkHeader, encode_chunk

SLOTS = CkksParameters().slots


def _encrypted_sum_matches(
    key_holder: KeyHolderContext,
    public: PublicContext,
    updates: list[np.ndarray],
    weights: list[float],
) -> None:
    params = public.params
    layout = Layout.for_vector(len(updates[0]), params)
    total = EncryptedSum(public, layout)
    for i, (x, w) in enumerate(zip(updates, weights, strict=True)):
        total.add(f"site-{i}", encrypt_update(public, x, w))
    got = key_holder.decrypt_sum(total.result_bytes(), layout)
    want = sum(w * x for x, w in zip(updates, weights, strict=True))
    peak = max(float(np.max(np.abs(w * x))) for x, w in zip(updates, weights, strict=True))
    bound = params.precision_bound(len(updates), peak)
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
    length: int,
    n_sites: int,
    magnitude: float,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    updates = [rng.uniform(-magnitude, magnitude, length) for _ in range(n_sites)]
    weights = list(rng.dirichlet(np.ones(n_sites)))  # FedAvg weights sum to 1
    _encrypted_sum_matches(key_holder, public, updates, weights)


def test_sum_near_the_headroom_stays_within_the_bound(
    key_holder: KeyHolderContext, public: PublicContext
) -> None:
    rng = np.random.default_rng(7)
    a = 2.0**16 * 0.99  # 3 sites: |sum| < 3 * 2^16 < 2^18
    updates = [rng.choice([-a, a], SLOTS + 3) for _ in range(3)]
    _encrypted_sum_matches(key_holder, public, updates, [1.0, 1.0, 1.0])


def test_dict_of_named_arrays_round_trips(
    key_holder: KeyHolderContext, public: PublicContext, params: CkksParameters
) -> None:
    rng = np.random.default_rng(1)
    shapes = {"conv.weight": (16, 3, 5, 5), "conv.bias": (16,), "fc.weight": (10, 400), "z": (0,)}
    sites = [{k: rng.normal(size=s) for k, s in shapes.items()} for _ in range(3)]
    layout = Layout.for_arrays(sites[0], params)
    assert layout.names == ("conv.bias", "conv.weight", "fc.weight", "z")
    assert layout.chunk_count == -(-layout.total_length // SLOTS)
    total = EncryptedSum(public, layout)
    for i, update in enumerate(sites):
        # insertion order does not matter: names are flattened in sorted order
        total.add(str(i), encrypt_update(public, dict(reversed(update.items())), 0.5))
    out = layout.unflatten(key_holder.decrypt_sum(total.result_bytes(), layout))
    assert isinstance(out, dict)
    bound = params.precision_bound(
        3, 0.5 * max(np.max(np.abs(v)) for s in sites for v in s.values() if v.size)
    )
    for name, shape in shapes.items():
        assert out[name].shape == shape
        want = sum(0.5 * s[name] for s in sites)
        assert np.all(np.abs(out[name] - want) <= bound)


def test_key_holder_site_can_encrypt_with_its_own_context(
    key_holder: KeyHolderContext, public: PublicContext, params: CkksParameters
) -> None:
    layout = Layout.for_vector(5, params)
    total = EncryptedSum(public, layout)
    total.add("holder", encrypt_update(key_holder, np.arange(5.0)))
    total.add("other", list(iter_encrypt_update(public, np.ones(5))))
    got = key_holder.decrypt_sum(total.result_bytes(), layout)
    assert np.max(np.abs(got - (np.arange(5.0) + 1))) <= params.precision_bound(2, 4.0)


# ---------------------------------------------------------------------------- rejection


@pytest.fixture
def round_(
    public: PublicContext, params: CkksParameters
) -> tuple[EncryptedSum, Layout, list[np.ndarray], list[list[bytes]]]:
    """A round of 2 honest sites (not yet added) with vectors of 1.5 chunks."""
    layout = Layout.for_vector(SLOTS + SLOTS // 2, params)
    rng = np.random.default_rng(3)
    xs = [rng.uniform(-1, 1, layout.total_length) for _ in range(2)]
    return EncryptedSum(public, layout), layout, xs, [encrypt_update(public, x) for x in xs]


def _finish_honest_round(
    key_holder: KeyHolderContext,
    total: EncryptedSum,
    layout: Layout,
    xs: list[np.ndarray],
    chunks: list[list[bytes]],
) -> None:
    """Add the honest sites still missing and check the decrypted sum is exactly theirs."""
    for i, c in enumerate(chunks):
        if f"honest-{i}" not in total.sites:
            total.add(f"honest-{i}", c)
    assert set(total.sites) == {f"honest-{i}" for i in range(len(xs))}
    got = key_holder.decrypt_sum(total.result_bytes(), layout, min_sites=len(xs))
    bound = CkksParameters().precision_bound(len(xs), 1.0)
    assert float(np.max(np.abs(got - sum(xs)))) <= bound


def _reject(total: EncryptedSum, site: str, chunks: list[bytes], match: str) -> None:
    before = total.sites
    with pytest.raises(HEError, match=match):
        total.add(site, chunks)
    assert total.sites == before


def test_ciphertexts_under_another_key_with_the_same_parameters_are_rejected(
    key_holder: KeyHolderContext, params: CkksParameters, round_
) -> None:
    total, layout, xs, chunks = round_
    total.add("honest-0", chunks[0])
    stranger = KeyHolderContext.generate(params)
    _reject(total, "evil", encrypt_update(stranger, xs[1]), "another key")
    _finish_honest_round(key_holder, total, layout, xs, chunks)


def test_ciphertexts_under_other_parameters_are_rejected(
    key_holder: KeyHolderContext, round_
) -> None:
    total, layout, xs, chunks = round_
    other = KeyHolderContext.generate(CkksParameters(global_scale_bits=30))
    forged = encrypt_update(other, xs[0], layout=Layout.for_vector(len(xs[0]), other.params))
    _reject(total, "evil", forged, "different CKKS parameters")
    # the same foreign payloads re-framed under this round's header: SEAL refuses them
    small = KeyHolderContext.generate(
        CkksParameters(poly_modulus_degree=4096, coeff_mod_bit_sizes=(60, 49))
    )
    foreign = encrypt_update(
        small, xs[0][: SLOTS // 2], layout=Layout.for_vector(SLOTS // 2, small.params)
    )
    reframed = [
        encode_chunk(_header(total, layout, i), foreign[0][HEADER_SIZE:])
        for i in range(layout.chunk_count)
    ]
    _reject(total, "evil", reframed, "not a ciphertext")
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
    key_holder: KeyHolderContext, public: PublicContext, params: CkksParameters, round_
) -> None:
    total, layout, xs, chunks = round_
    payloads = [c[HEADER_SIZE:] for c in chunks[0]]
    _reject(total, "evil", chunks[0][:1], "sent 1 of 2 chunks")
    _reject(total, "evil", [chunks[0][0], chunks[0][0]], "chunk 0 twice")
    _reject(total, "evil", [*chunks[0], chunks[0][1]], "chunk 1 twice")
    _reject(
        total, "evil", [encode_chunk(_header(total, layout, 0, count=3), payloads[0])], "3 chunks"
    )
    _reject(
        total, "evil", [encode_chunk(_header(total, layout, 0, index=2), payloads[0])], "index 2"
    )
    _reject(
        total,
        "evil",
        [encode_chunk(_header(total, layout, 1, chunk_length=SLOTS), payloads[1])],
        "declares 4096 values",
    )
    _reject(
        total,
        "evil",
        [encode_chunk(_header(total, layout, 0, vector_length=7), payloads[0])],
        "vector length 7",
    )
    # the header claims the right length but the ciphertext holds fewer values
    _reject(
        total,
        "evil",
        [encode_chunk(_header(total, layout, 0), payloads[1]), chunks[0][1]],
        "holds 2048 values",
    )
    # an update made for another layout
    other = encrypt_update(public, np.ones(layout.total_length + 1))
    _reject(total, "evil", other, "another layout")
    _finish_honest_round(key_holder, total, layout, xs, chunks)


def test_corrupted_bytes_are_rejected(key_holder: KeyHolderContext, round_) -> None:
    total, layout, xs, chunks = round_
    total.add("honest-0", chunks[0])
    good = chunks[1]
    for position in (0, 5, 40, 110, HEADER_SIZE - 1, HEADER_SIZE + 1000, len(good[0]) - 1):
        bad = bytearray(good[0])
        bad[position] ^= 0x01
        _reject(total, "evil", [bytes(bad), good[1]], "magic|version|corrupted|length|kind")
    _reject(total, "evil", [good[0][:-1], good[1]], "length")
    _reject(total, "evil", [good[0][:50], good[1]], "too short")
    _reject(total, "evil", ["text", good[1]], "must be bytes")  # type: ignore[list-item]
    # a payload that is corrupted yet re-checksummed (an attacker can do that): SEAL refuses it
    truncated = encode_chunk(_header(total, layout, 0), good[0][HEADER_SIZE:-100])
    _reject(total, "evil", [truncated, good[1]], "not a ciphertext")
    _finish_honest_round(key_holder, total, layout, xs, chunks)


def test_duplicate_site_is_rejected(key_holder: KeyHolderContext, round_) -> None:
    total, layout, xs, chunks = round_
    total.add("honest-0", chunks[0])
    _reject(total, "honest-0", chunks[0], "already added")
    _reject(total, "honest-0", chunks[1], "already added")
    _finish_honest_round(key_holder, total, layout, xs, chunks)


def test_dropouts_leave_the_sum_of_the_survivors(key_holder: KeyHolderContext, round_) -> None:
    total, layout, xs, chunks = round_
    total.add("honest-1", chunks[1])  # site 0 never sends
    got = key_holder.decrypt_sum(total.result_bytes(), layout)
    assert float(np.max(np.abs(got - xs[1]))) <= CkksParameters().precision_bound(1, 1.0)
    assert total.sites == ("honest-1",)


def test_bad_site_ids_are_config_errors(round_) -> None:
    total, _, _, chunks = round_
    for bad in ("", None, "x" * 300):
        with pytest.raises(ConfigError):
            total.add(bad, chunks[0])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- key holder side


def test_empty_sum_has_no_result(round_) -> None:
    total, *_ = round_
    with pytest.raises(HEError, match="no site"):
        total.result_bytes()


def test_key_holder_rejects_a_bad_encrypted_sum(
    key_holder: KeyHolderContext, params: CkksParameters, round_
) -> None:
    total, layout, xs, chunks = round_
    total.add("honest-0", chunks[0])
    blob = total.result_bytes()
    with pytest.raises(HEError, match="another layout"):
        key_holder.decrypt_sum(blob, Layout.for_vector(layout.total_length + 1, params))
    with pytest.raises(HEError, match="fewer than 2"):
        key_holder.decrypt_sum(blob, layout, min_sites=2)
    for position in (0, 10, 60, len(blob) // 2, len(blob) - 1):
        bad = bytearray(blob)
        bad[position] ^= 0x80
        with pytest.raises(HEError):
            key_holder.decrypt_sum(bytes(bad), layout)
    with pytest.raises(HEError):
        key_holder.decrypt_sum(blob[:-1], layout)
    with pytest.raises(HEError):
        key_holder.decrypt_sum(blob + b"\0", layout)
    with pytest.raises(HEError, match="another key"):
        KeyHolderContext.generate(params).decrypt_sum(blob, layout)
    # an update is not a sum
    with pytest.raises(HEError):
        key_holder.decrypt_sum(chunks[0][0], layout)
    # and the good blob still decrypts
    got = key_holder.decrypt_sum(blob, layout)
    assert float(np.max(np.abs(got - xs[0]))) <= params.precision_bound(1, 1.0)


# ---------------------------------------------------------------------------- client side


def test_encrypt_update_rejects_bad_values(public: PublicContext, params: CkksParameters) -> None:
    with pytest.raises(ConfigError, match="NaN"):
        encrypt_update(public, np.array([1.0, np.nan]))
    with pytest.raises(ConfigError, match="clip"):
        encrypt_update(public, np.array([2.0**18]))
    with pytest.raises(ConfigError, match="clip"):
        encrypt_update(public, np.array([1.0]), weight=2.0**19)
    with pytest.raises(ConfigError, match="finite"):
        encrypt_update(public, np.array([1.0]), weight=float("inf"))
    with pytest.raises(ConfigError, match="real"):
        encrypt_update(public, np.array([1 + 2j]))
    with pytest.raises(ConfigError, match="1-D"):
        encrypt_update(public, np.ones((2, 2)))
    with pytest.raises(ConfigError, match="positive"):
        encrypt_update(public, np.array([]))
    layout = Layout.for_arrays({"a": (2,)}, params)
    with pytest.raises(ConfigError, match="missing"):
        encrypt_update(public, {"b": np.ones(2)}, layout=layout)
    with pytest.raises(ConfigError, match="shape"):
        encrypt_update(public, {"a": np.ones(3)}, layout=layout)


def test_encrypted_sum_refuses_the_key_holders_context(
    key_holder: KeyHolderContext, params: CkksParameters
) -> None:
    with pytest.raises(ConfigError, match="PublicContext"):
        EncryptedSum(key_holder, Layout.for_vector(3, params))  # type: ignore[arg-type]


def test_layout_bytes_round_trip(params: CkksParameters) -> None:
    for layout in (
        Layout.for_vector(10, params),
        Layout.for_arrays({"b": (2, 3), "a": (4,)}, params),
    ):
        assert Layout.from_bytes(layout.to_bytes()) == layout
        with pytest.raises(HEError):
            Layout.from_bytes(layout.to_bytes()[:-1])
