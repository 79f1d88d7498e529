"""Flooded decryption: what the key holder releases carries exactly the stated Gaussian noise, the
noise comes from the seeded CSPRNG stream, and no unflooded decryption is reachable."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import numpy as np
import pytest
import tenseal as ts
import tenseal.sealapi as sealapi

import secagg.he
from secagg.crypto import IdentityKey
from secagg.errors import ConfigError, HEError
from secagg.he import (
    CkksParameters,
    DecryptedSum,
    EncryptedSum,
    FloodingPolicy,
    KeyHolderContext,
    Layout,
    PublicContext,
    encrypt_update,
)
from secagg.he.flooding import MAX_COEFFICIENT_STDDEV, sample_flooding_noise
from secagg.he.packing import KIND_SUM, load_ciphertext, parse_chunk, parse_sum

SLOTS = CkksParameters().slots


def _round(
    key_holder: KeyHolderContext,
    public: PublicContext,
    identities: dict[str, IdentityKey],
    roster,
    round_id: int,
    xs: list[np.ndarray],
) -> tuple[DecryptedSum, bytes, Layout]:
    layout = Layout.for_vector(len(xs[0]), public.params)
    total = EncryptedSum(public, layout, round_id=round_id, roster=roster)
    sent = {}
    for i, x in enumerate(xs):
        site = f"site-{i}"
        sent[site] = encrypt_update(
            public, x, identity=identities[site], round_id=round_id, site_id=site
        )
        total.add(site, sent[site])
    blob = total.result_bytes()
    result = key_holder.decrypt_sum(
        blob, sent, layout=layout, round_id=round_id, roster=roster, min_sites=len(xs)
    )
    return result, blob, layout


def _unflooded_for_test(key_holder: KeyHolderContext, blob: bytes, layout: Layout) -> np.ndarray:
    """The control: the raw CKKS decryption the library no longer offers, done by hand."""
    params = key_holder.params
    out = np.empty(layout.total_length)
    for chunk in parse_sum(blob, params=params, key_id=key_holder.key_id).chunks:
        index, payload = parse_chunk(
            chunk, kind=KIND_SUM, params=params, key_id=key_holder.key_id, layout=layout
        )
        start, stop = layout.chunk_bounds(index)
        vec = load_ciphertext(
            key_holder._ts, payload, params=params, expected_length=stop - start, index=index
        )
        out[start:stop] = vec.decrypt()
    return out


def _matches_standard_normal(z: np.ndarray) -> bool:
    """KS test against N(0, 1) plus the sample variance within 6 standard errors of 1."""
    stats = pytest.importorskip("scipy.stats")
    ks = stats.kstest(z, "norm").pvalue
    variance_z = (float(np.mean(z**2)) - 1.0) / math.sqrt(2.0 / len(z))
    return bool(ks > 1e-6 and abs(variance_z) < 6.0)


def test_released_error_has_exactly_the_stated_flooding_distribution(
    key_holder: KeyHolderContext,
    public: PublicContext,
    identities,
    roster,
    next_round: Callable[[], int],
) -> None:
    rng = np.random.default_rng(5)
    xs = [rng.uniform(-1, 1, 4 * SLOTS) for _ in range(3)]  # 4 chunks, 16,384 values
    result, blob, layout = _round(key_holder, public, identities, roster, next_round(), xs)
    policy = key_holder.flooding
    assert result.noise_stddev == policy.slot_stddev(key_holder.params, 3, layout.chunk_count)
    assert result.security_bits == policy.security_bits == 40
    error = result.values - sum(xs)
    assert _matches_standard_normal(error / result.noise_stddev)
    # Controls that must fail: the unflooded decryption of the same sum, and noise 10% off.
    raw = _unflooded_for_test(key_holder, blob, layout)
    assert not _matches_standard_normal((raw - sum(xs)) / result.noise_stddev)
    assert not _matches_standard_normal(error / (1.1 * result.noise_stddev))
    # The release is the raw decryption plus that noise, not a rounding of it.
    noise = (result.values - raw) / result.noise_stddev
    assert _matches_standard_normal(noise)
    # ... and the noise of different chunks is independent (no reused noise polynomial).
    per_chunk = noise.reshape(layout.chunk_count, SLOTS)
    correlation = np.corrcoef(per_chunk)[np.triu_indices(layout.chunk_count, 1)]
    assert float(np.max(np.abs(correlation))) < 6 / math.sqrt(SLOTS)


def test_every_decryption_draws_fresh_noise(
    key_holder: KeyHolderContext,
    public: PublicContext,
    identities,
    roster,
    next_round: Callable[[], int],
) -> None:
    xs = [np.zeros(SLOTS)]
    first, _, _ = _round(key_holder, public, identities, roster, next_round(), xs)
    second, _, _ = _round(key_holder, public, identities, roster, next_round(), xs)
    correlation = float(np.corrcoef(first.values, second.values)[0, 1])
    assert abs(correlation) < 6 / math.sqrt(SLOTS)


def test_the_raw_noise_release_path_no_longer_exists(key_holder: KeyHolderContext) -> None:
    public_names = {n for n in dir(KeyHolderContext) if not n.startswith("_")}
    assert public_names == {
        "decrypt_sum",
        "export_secret_bytes",
        "flooding",
        "from_secret_bytes",
        "generate",
        "key_id",
        "params",
        "public_context",
        "public_context_bytes",
        "remaining_decryptions",
    }
    # the only decryption needs the signed contributions and the round, and returns flooded values
    signature = inspect.signature(KeyHolderContext.decrypt_sum)
    required = [
        name
        for name, p in signature.parameters.items()
        if p.default is inspect.Parameter.empty and name != "self"
    ]
    assert required == [
        "encrypted_sum",
        "contributions",
        "layout",
        "round_id",
        "roster",
        "min_sites",
    ]
    assert inspect.signature(KeyHolderContext.decrypt_sum).return_annotation in (
        "DecryptedSum",
        DecryptedSum,
    )
    with pytest.raises(TypeError):
        key_holder.decrypt_sum(b"", Layout.for_vector(3, key_holder.params))  # type: ignore[call-arg]
    for name in secagg.he.__all__:
        assert "decrypt" not in name.lower() or name == "DecryptedSum"


def test_a_default_key_releases_one_decryption(params: CkksParameters, identities, roster) -> None:
    holder = KeyHolderContext.generate(params)
    assert holder.flooding == FloodingPolicy(security_bits=40, max_decryptions=1)
    assert holder.remaining_decryptions == 1
    public = holder.public_context()
    xs = [np.linspace(-1, 1, 100)]
    _round(holder, public, identities, roster, 1, xs)
    assert holder.remaining_decryptions == 0
    with pytest.raises(HEError, match="generate a fresh key"):
        _round(holder, public, identities, roster, 2, xs)


def test_the_decryption_error_bound_holds_on_measured_sums(params: CkksParameters) -> None:
    """Sanity check of E2(n) against the exact error of sums of n encryptions of zero."""
    holder = KeyHolderContext.generate(params)
    seal = holder._ts.seal_context().data
    decryptor = sealapi.Decryptor(seal, holder._ts.secret_key().data)
    encoder = sealapi.CKKSEncoder(seal)
    public = holder.public_context()
    n = params.poly_modulus_degree
    for sites in (1, 10):
        bound = params.decryption_error_l2_bound(sites)
        for _ in range(3):
            vecs = [ts.ckks_vector(public._ts, np.zeros(SLOTS)) for _ in range(sites)]
            total = vecs[0]
            for v in vecs[1:]:
                total = total + v
            plain = sealapi.Plaintext()
            decryptor.decrypt(total.ciphertext()[0], plain)
            slots = np.asarray(encoder.decode_complex(plain))
            # ||e||_2 from its embedding: sum over N/2 slots of |z|^2 = (N/2) ||e||^2 / scale^2
            measured = math.sqrt(2.0 / n) * params.scale * float(np.linalg.norm(slots))
            assert 0.6 * bound < measured <= bound


def test_flooding_noise_is_the_seeded_csprng_stream() -> None:
    seed, other = bytes(32), bytes(31) + b"\x01"
    a = sample_flooding_noise(seed, 1000.0, 1 << 16)
    assert a.dtype == np.int64 and a.shape == (1 << 16,)
    assert np.array_equal(a, sample_flooding_noise(seed, 1000.0, 1 << 16))
    assert not np.array_equal(a, sample_flooding_noise(other, 1000.0, 1 << 16))
    # offsets address the same stream: a later window equals the tail of a longer draw
    assert np.array_equal(sample_flooding_noise(seed, 1000.0, 256, offset=1024), a[1024:1280])
    assert abs(float(np.mean(a))) < 6 * 1000 / math.sqrt(len(a))
    assert abs(float(np.std(a)) / 1000 - 1) < 6 * math.sqrt(0.5 / len(a))
    assert float(np.max(np.abs(a))) <= 8.58 * 1000 + 1  # Box-Muller radius with 53-bit uniforms
    assert np.array_equal(sample_flooding_noise(seed, 0.0, 8), np.zeros(8, dtype=np.int64))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"count": 3},
        {"count": -2},
        {"offset": 1},
        {"stddev": -1.0},
        {"stddev": MAX_COEFFICIENT_STDDEV * 2},
        {"stddev": float("nan")},
    ],
)
def test_flooding_noise_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"seed": bytes(32), "stddev": 1.0, "count": 4, "offset": 0}
    args.update(kwargs)
    with pytest.raises(ConfigError):
        sample_flooding_noise(**args)  # type: ignore[arg-type]


def test_flooding_policy_sizes_the_noise_by_the_lmss_formula() -> None:
    p, policy = CkksParameters(), FloodingPolicy()
    e2 = p.decryption_error_l2_bound(10)
    sigma = policy.coefficient_stddev(p, 10, 245)  # n = 10 sites, m = 1M values
    assert sigma == pytest.approx(math.sqrt(24) * 2.0**20 * math.sqrt(245) * e2)
    assert math.log2(sigma) == pytest.approx(39.3, abs=0.05)
    # the KL divergence of every release the key allows is the stated bound
    assert 1 * 245 * e2**2 / (2 * sigma**2) == pytest.approx(2.0**-40 / 48)
    assert policy.divergence_bound == 2.0**-40 / 48
    # released precision at n = 10, m = 1M: ~3.5e-11 per value
    assert policy.slot_stddev(p, 10, 245) == pytest.approx(sigma * 64 / 2.0**80)
    assert policy.slot_stddev(p, 10, 245) < 4e-11
    # more decryptions per key or more security cost sqrt(tau) and 2^(s/2)
    assert FloodingPolicy(max_decryptions=4).coefficient_stddev(p, 10, 245) == pytest.approx(
        2 * sigma
    )
    assert FloodingPolicy(security_bits=42).coefficient_stddev(p, 10, 245) == pytest.approx(
        2 * sigma
    )
    with pytest.raises(ConfigError, match="2\\^44"):
        FloodingPolicy(security_bits=64).coefficient_stddev(p, 10, 245)
    bound = policy.released_error_bound(p, 10, 1.0, 1_000_000)
    assert policy.slot_stddev(p, 10, 245) * 7 < bound < 1e-9


@pytest.mark.parametrize(
    "kwargs",
    [
        {"security_bits": 8},
        {"security_bits": 40.0},
        {"max_decryptions": 0},
        {"max_decryptions": True},
    ],
)
def test_flooding_policy_rejects_bad_fields(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        FloodingPolicy(**kwargs)  # type: ignore[arg-type]
