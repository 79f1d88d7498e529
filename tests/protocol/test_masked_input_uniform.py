"""One masked upload tells the server nothing: it is indistinguishable from uniform bytes."""

from __future__ import annotations

import numpy as np
import pytest

from .harness import make_round, new_session


def _value_bytes(values: np.ndarray, bits: int) -> np.ndarray:
    """The bytes that carry the b-bit values (the low bits/8 bytes of each little-endian word)."""
    return values.astype("<u4").view(np.uint8).reshape(-1, 4)[:, : bits // 8].ravel()


@pytest.mark.parametrize("bits", [32, 16])
def test_masked_input_of_an_all_zero_update_looks_uniform(bits):
    stats = pytest.importorskip("scipy.stats")
    m = 1 << 16
    r = make_round(3, vector_length=m, bits=bits, threshold=2)
    zero = np.zeros(m, dtype=np.uint32)
    r.inputs = {p: zero for p in r.inputs}
    r.clients = {p: new_session(r, p, inputs=zero) for p in r.clients}
    r.advertise()
    r.step()  # share keys: the outbox now holds each client's share bundle
    upload = r.clients[1].receive(r.outbox[1]).masked_vector
    assert int(upload.max()) < 2**bits

    masked = np.bincount(_value_bytes(upload, bits), minlength=256)
    p_masked = stats.chisquare(masked).pvalue
    assert p_masked > 1e-6, f"masked bytes are not uniform (p={p_masked:.2e})"
    # The same test rejects the input itself, so it can fail.
    plain = np.bincount(_value_bytes(zero, bits), minlength=256) + 1
    assert stats.chisquare(plain).pvalue < 1e-6
