"""Key material: the aggregator's context is public-only; secrets do not leak by accident."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys

import numpy as np
import pytest

from secagg.crypto import IdentityKey
from secagg.errors import ConfigError, HEError
from secagg.he import (
    CkksParameters,
    FloodingPolicy,
    KeyHolderContext,
    Layout,
    PublicContext,
    encrypt_update,
)
from secagg.he.packing import KIND_UPDATE, load_ciphertext, parse_chunk
from secagg.he.signed import split_signed_chunk


def test_import_secagg_does_not_import_tenseal() -> None:
    code = "import sys, secagg, secagg.errors; assert 'tenseal' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_context_bytes_carry_no_secret_key(
    key_holder: KeyHolderContext, public: PublicContext
) -> None:
    assert public.has_secret_key is False
    assert public.key_id == key_holder.key_id
    assert public.to_bytes() == key_holder.public_context_bytes()


def test_decryption_with_the_public_context_fails(
    params: CkksParameters, public: PublicContext
) -> None:
    layout = Layout.for_vector(3, params)
    identity = IdentityKey.generate()
    signed = encrypt_update(
        public, np.array([1.0, 2.0, 3.0]), identity=identity, round_id=1, site_id="s"
    )[0]
    chunk, _ = split_signed_chunk(signed)
    _, payload = parse_chunk(
        chunk, kind=KIND_UPDATE, params=params, key_id=public.key_id, layout=layout
    )
    vec = load_ciphertext(public._ts, payload, params=params, expected_length=3, index=0)
    with pytest.raises(ValueError, match="secret"):
        vec.decrypt()


def test_aggregator_refuses_a_context_with_a_secret_key(
    key_holder: KeyHolderContext, params: CkksParameters
) -> None:
    with pytest.raises(HEError, match="secret key"):
        PublicContext.from_bytes(key_holder.export_secret_bytes(), params)


def test_public_context_with_other_parameters_is_rejected(key_holder: KeyHolderContext) -> None:
    with pytest.raises(HEError, match="coefficient moduli"):
        PublicContext.from_bytes(
            key_holder.public_context_bytes(), CkksParameters(coeff_mod_bit_sizes=(60, 40, 60))
        )
    with pytest.raises(HEError, match="scale"):
        PublicContext.from_bytes(
            key_holder.public_context_bytes(), CkksParameters(global_scale_bits=70)
        )
    small = KeyHolderContext.generate(
        CkksParameters(poly_modulus_degree=4096, coeff_mod_bit_sizes=(60, 49), global_scale_bits=40)
    )
    with pytest.raises(HEError, match="N=4096"):
        PublicContext.from_bytes(small.public_context_bytes(), CkksParameters())


@pytest.mark.parametrize("data", [b"", b"garbage" * 50, "text", None])
def test_malformed_public_context_is_rejected(data: object, params: CkksParameters) -> None:
    with pytest.raises(HEError):
        PublicContext.from_bytes(data, params)  # type: ignore[arg-type]


def test_expected_params_must_be_parameters(key_holder: KeyHolderContext) -> None:
    with pytest.raises(ConfigError):
        PublicContext.from_bytes(key_holder.public_context_bytes(), None)  # type: ignore[arg-type]


@pytest.mark.parametrize("make", ["key_holder", "public"])
def test_contexts_cannot_be_pickled_or_copied(make: str, request: pytest.FixtureRequest) -> None:
    obj = request.getfixturevalue(make)
    with pytest.raises(TypeError):
        pickle.dumps(obj)
    with pytest.raises(TypeError):
        copy.copy(obj)
    with pytest.raises(TypeError):
        copy.deepcopy(obj)


def test_repr_shows_no_key_material(key_holder: KeyHolderContext) -> None:
    text = repr(key_holder)
    assert "secret=<hidden>" in text
    assert len(text) < 300


def test_contexts_cannot_be_constructed_directly(params: CkksParameters) -> None:
    with pytest.raises(TypeError):
        KeyHolderContext(object(), params, None, FloodingPolicy())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        PublicContext(object(), params, None, b"")  # type: ignore[arg-type]


def test_shared_secret_context_round_trips_with_the_same_key_id(
    key_holder: KeyHolderContext, params: CkksParameters
) -> None:
    other = KeyHolderContext.from_secret_bytes(key_holder.export_secret_bytes(), params)
    assert other.key_id == key_holder.key_id
    with pytest.raises(HEError, match="no secret key"):
        KeyHolderContext.from_secret_bytes(key_holder.public_context_bytes(), params)


def test_two_generated_keys_have_different_ids(params: CkksParameters) -> None:
    assert KeyHolderContext.generate(params).key_id != KeyHolderContext.generate(params).key_id
