"""Fixed-point encoding of float vectors into Z_(2^b), and decoding of their sum.

Each input is clipped to ``[-clip, clip]``, multiplied by ``scale`` and rounded *stochastically*
(``floor(v) + Bernoulli(v - floor(v))``), so the encoding is unbiased: E[decode(encode(x))] = x, and
each coordinate is off by less than ``1 / scale``. Values are stored in two's complement modulo
``2^bits``; the sum of n inputs decodes exactly as long as ``n * ceil(clip * scale) < 2^(bits-1)``,
which :class:`FixedPointEncoding` checks when it is built, refusing configurations that could wrap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from secagg.errors import ConfigError, OverflowRiskError
from secagg.kernels import stochastic_round

__all__ = ["MAX_BITS", "FixedPointEncoding"]

MAX_BITS = 32  # values live in uint32 words; Z_(2^b) for b <= 32 reduces from them exactly


@dataclass(frozen=True)
class FixedPointEncoding:
    """How floats become elements of Z_(2^bits) and how a sum of ``max_clients`` of them comes back.

    Build it with :meth:`for_clients` to get the largest safe scale, or pass ``scale`` yourself and
    let the constructor refuse it if ``max_clients`` inputs could overflow.
    """

    clip: float
    scale: float
    max_clients: int
    bits: int = 32

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= MAX_BITS:
            raise ConfigError(f"bits must be in [2, {MAX_BITS}], got {self.bits}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"clip must be a positive finite number, got {self.clip}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ConfigError(f"scale must be a positive finite number, got {self.scale}")
        if self.max_clients < 1:
            raise ConfigError(f"max_clients must be >= 1, got {self.max_clients}")
        worst = self.max_clients * self.max_abs_quantised
        if worst >= 2 ** (self.bits - 1):
            raise OverflowRiskError(
                f"{self.max_clients} inputs clipped to +-{self.clip} at scale {self.scale:g} can "
                f"reach {worst}, beyond the {self.bits}-bit signed range +-{2 ** (self.bits - 1)}; "
                "lower the scale, the clip or the number of clients, or raise bits"
            )

    @classmethod
    def for_clients(cls, *, clip: float, max_clients: int, bits: int = 32) -> FixedPointEncoding:
        """The encoding with the finest resolution that cannot overflow for ``max_clients``."""
        if max_clients < 1:
            raise ConfigError(f"max_clients must be >= 1, got {max_clients}")
        if not (math.isfinite(clip) and clip > 0):
            raise ConfigError(f"clip must be a positive finite number, got {clip}")
        per_client = (2 ** (bits - 1) - 1) // max_clients
        if per_client < 2:
            raise OverflowRiskError(
                f"{bits} bits cannot hold the sum of {max_clients} inputs at any useful resolution"
            )
        # ceil(clip * scale) <= per_client must hold; one unit is left for float rounding.
        scale = (per_client - 1) / clip
        return cls(clip=clip, scale=scale, max_clients=max_clients, bits=bits)

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    @property
    def word_mask(self) -> np.uint32:
        """AND-mask that reduces a uint32 word modulo 2^bits."""
        return np.uint32(self.modulus - 1)

    @property
    def max_abs_quantised(self) -> int:
        """The largest |q| one encoded coordinate can take."""
        return math.ceil(self.clip * self.scale)

    @property
    def resolution(self) -> float:
        """Per-input, per-coordinate error bound of the encoding: |decode - clipped x| < this."""
        return 1.0 / self.scale

    def quantise(
        self, values: npt.ArrayLike, uniforms: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.int64]:
        """Clip, scale and stochastically round; ``uniforms`` are i.i.d. U[0,1), one per value."""
        x = np.asarray(values, dtype=np.float64).ravel()
        if x.shape != uniforms.shape:
            raise ConfigError(f"need one uniform per value: {x.shape} vs {uniforms.shape}")
        if not np.all(np.isfinite(x)):
            raise ConfigError("input contains NaN or infinity")
        v = np.clip(x, -self.clip, self.clip) * self.scale
        low = np.floor(v)
        return (low + (uniforms < (v - low))).astype(np.int64)

    def encode(
        self, values: npt.ArrayLike, uniforms: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.uint32]:
        """Encode floats as elements of Z_(2^bits), stored in uint32 words.

        Equal to ``quantise(values, uniforms) & word_mask``, computed in one compiled pass.
        """
        x = np.ascontiguousarray(np.asarray(values, dtype=np.float64).ravel())
        u = np.ascontiguousarray(uniforms, dtype=np.float64)
        if x.shape != u.shape:
            raise ConfigError(f"need one uniform per value: {x.shape} vs {u.shape}")
        if not np.isfinite(x).all():
            raise ConfigError("input contains NaN or infinity")
        return stochastic_round(x, u, self.clip, self.scale, int(self.word_mask))

    def decode_sum(self, total: npt.NDArray[np.uint32], n_inputs: int) -> npt.NDArray[np.float64]:
        """Decode the modular sum of ``n_inputs`` encodings back to floats."""
        if not 1 <= n_inputs <= self.max_clients:
            raise ConfigError(f"n_inputs must be in [1, {self.max_clients}], got {n_inputs}")
        return self.lift_signed(total).astype(np.float64) / self.scale

    def lift_signed(self, total: npt.NDArray[np.uint32]) -> npt.NDArray[np.int64]:
        """Map Z_(2^bits) to the signed range [-2^(bits-1), 2^(bits-1))."""
        t = (np.asarray(total, dtype=np.uint32) & self.word_mask).astype(np.int64)
        half = 1 << (self.bits - 1)
        return np.where(t >= half, t - self.modulus, t)
