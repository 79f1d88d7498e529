"""Fixed-point encoding of float updates into Z_(2^b)."""

from secagg.encoding.fixed_point import MAX_BITS, FixedPointEncoding

__all__ = ["MAX_BITS", "FixedPointEncoding"]
