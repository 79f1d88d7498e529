"""Shared CKKS fixtures: one key pair per test module (key generation is the slow part).

The module-wide key holder may release many decryptions (its flooding is sized for that budget),
so that every test need not make its own key; the one-decryption default is tested on fresh keys.
Every decryption needs a round id the key has not decrypted yet: take one from ``next_round``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from secagg.crypto import IdentityKey, IdentityPublicKey
from secagg.he import CkksParameters, FloodingPolicy, KeyHolderContext, PublicContext

SITES = tuple(f"site-{i}" for i in range(10))
TEST_BUDGET = 10_000


@pytest.fixture(scope="module")
def params() -> CkksParameters:
    return CkksParameters()


@pytest.fixture(scope="module")
def key_holder(params: CkksParameters) -> KeyHolderContext:
    return KeyHolderContext.generate(params, flooding=FloodingPolicy(max_decryptions=TEST_BUDGET))


@pytest.fixture(scope="module")
def public(key_holder: KeyHolderContext, params: CkksParameters) -> PublicContext:
    return PublicContext.from_bytes(key_holder.public_context_bytes(), params)


@pytest.fixture(scope="module")
def identities() -> dict[str, IdentityKey]:
    return {site: IdentityKey.generate() for site in SITES}


@pytest.fixture(scope="module")
def roster(identities: dict[str, IdentityKey]) -> dict[str, IdentityPublicKey]:
    return {site: key.public_key for site, key in identities.items()}


@pytest.fixture(scope="module")
def next_round() -> Callable[[], int]:
    counter: Iterator[int] = itertools.count(1)
    return lambda: next(counter)
