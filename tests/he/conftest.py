"""Shared CKKS fixtures: one key pair per test module (key generation is the slow part)."""

from __future__ import annotations

import pytest

from secagg.he import CkksParameters, KeyHolderContext, PublicContext


@pytest.fixture(scope="module")
def params() -> CkksParameters:
    return CkksParameters()


@pytest.fixture(scope="module")
def key_holder(params: CkksParameters) -> KeyHolderContext:
    return KeyHolderContext.generate(params)


@pytest.fixture(scope="module")
def public(key_holder: KeyHolderContext, params: CkksParameters) -> PublicContext:
    return PublicContext.from_bytes(key_holder.public_context_bytes(), params)
