"""Flooded decryption: add integer noise to ``c0 + c1*s`` before decoding (key holder only).

TenSEAL decrypts and decodes in one step, so the noise is added to the ciphertext instead: the
noise polynomial ``f`` is written as the ciphertext ``(f, 0)`` in coefficient form (SEAL's
uncompressed serialisation, loaded through TenSEAL), the sum's ciphertext is taken out of NTT form,
``(f, 0)`` is added (exact arithmetic modulo each RNS prime), and the result is put back in NTT form
and decrypted: ``c0 + f + c1*s = m + e + f``. Nothing unflooded is ever decoded.

The hand-made serialisation is checked once per context (:meth:`FloodedDecryptor.self_test`) by
adding a known constant and decoding it exactly; a SEAL build with another layout is refused with
:class:`~secagg.errors.HEError` rather than decrypting wrongly.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import tenseal as ts
import tenseal.sealapi as sealapi

from secagg.errors import HEError
from secagg.he.params import CkksParameters

__all__ = ["FloodedDecryptor"]

_SEAL_MAGIC: Final = 0xA15E
_SEAL_HEADER: Final = struct.Struct("<HB2sBHQ")  # magic, size, version (2 bytes), compr, 0, total
_COMPR_NONE: Final = 0


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + _varint(len(payload)) + payload


class FloodedDecryptor:
    """Decrypts one ciphertext at a time with a given integer noise polynomial added first.

    Args:
        context: the key holder's TenSEAL context (holds the secret key).
        params: its CKKS parameters.
    """

    def __init__(self, context: ts.Context, params: CkksParameters) -> None:
        self._ctx = context
        self._params = params
        seal = context.seal_context().data
        self._evaluator = sealapi.Evaluator(seal)
        self._decryptor = sealapi.Decryptor(seal, context.secret_key().data)
        self._encoder = sealapi.CKKSEncoder(seal)
        parms = seal.first_context_data().parms()
        self._primes = np.array([m.value() for m in parms.coeff_modulus()], dtype=np.int64)
        probe = ts.ckks_vector(context, [0.0])
        serialised: bytes = probe.serialize()
        at = serialised.find(struct.pack("<H", _SEAL_MAGIC))
        if at < 0:
            raise HEError("cannot read the SEAL serialisation version of this TenSEAL build")
        self._version = serialised[at + 3 : at + 5]
        ct = probe.ciphertext()[0]
        self._parms_id = tuple(ct.parms_id())
        self._scale = float(ct.scale)
        self._tested = False

    def _seal_header(self, total: int) -> bytes:
        size = _SEAL_HEADER.size
        return _SEAL_HEADER.pack(_SEAL_MAGIC, size, self._version, _COMPR_NONE, 0, total)

    def _noise_ciphertext(self, noise: npt.NDArray[np.int64]) -> Any:
        """The ciphertext ``(noise, 0)`` in coefficient form, at the data level."""
        n = self._params.poly_modulus_degree
        k = len(self._primes)
        polys = np.zeros((2, k, n), dtype="<u8")
        polys[0] = np.mod(noise[np.newaxis, :], self._primes[:, np.newaxis])
        array = struct.pack("<Q", polys.size) + polys.tobytes()
        array = self._seal_header(_SEAL_HEADER.size + len(array)) + array
        body = (
            struct.pack("<4Q", *self._parms_id)
            + b"\x00"  # not in NTT form
            + struct.pack("<QQQdQ", 2, n, k, self._scale, 1)  # size, N, RNS primes, scale, corr.
            + array
        )
        seal_bytes = self._seal_header(_SEAL_HEADER.size + len(body)) + body
        proto = (
            _field(0x0A, _varint(n // 2))  # shape (packed uint32)
            + _field(0x12, seal_bytes)  # the ciphertext
            + b"\x19"  # scale (double)
            + struct.pack("<d", self._scale)
        )
        try:
            vec = ts.ckks_vector_from(self._ctx, proto)
        except Exception as exc:  # the C++ loader refused the hand-made bytes
            raise HEError("this TenSEAL build refuses the flooding-noise ciphertext") from exc
        return vec.ciphertext()[0]

    def _decrypt(self, vec: ts.CKKSVector, noise: npt.NDArray[np.int64]) -> list[float]:
        cts: Sequence[Any] = vec.ciphertext()
        work = sealapi.Ciphertext()
        self._evaluator.transform_from_ntt(cts[0], work)
        self._evaluator.add_inplace(work, self._noise_ciphertext(noise))
        self._evaluator.transform_to_ntt_inplace(work)
        plain = sealapi.Plaintext()
        self._decryptor.decrypt(work, plain)
        values: list[float] = self._encoder.decode_double(plain)
        return values

    def self_test(self) -> None:
        """Check that adding ``(c, 0)`` shifts every decoded slot by exactly ``c / scale``."""
        if self._tested:
            return
        params = self._params
        constant = 2 ** min(62, params.global_scale_bits - 10)
        shift = constant / params.scale
        noise = np.zeros(params.poly_modulus_degree, dtype=np.int64)
        noise[0] = constant
        zero = ts.ckks_vector(self._ctx, [0.0] * params.slots)
        got = np.asarray(self._decrypt(zero, noise))
        tolerance = params.precision_bound(1, shift) + 1e-6 * shift
        if got.shape != (params.slots,) or not np.all(np.abs(got - shift) <= tolerance):
            raise HEError("flooded decryption self-test failed: unsupported SEAL serialisation")
        self._tested = True

    def decrypt(
        self, vec: ts.CKKSVector, length: int, noise: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        """The first ``length`` decoded real values of ``vec`` after adding ``noise``."""
        if noise.shape != (self._params.poly_modulus_degree,) or noise.dtype != np.int64:
            raise HEError("flooding noise must be one int64 coefficient per ring position")
        self.self_test()
        return np.asarray(self._decrypt(vec, noise)[:length], dtype=np.float64)
