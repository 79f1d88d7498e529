"""Hot loops of masking and unmasking.

Each kernel has a plain-numpy reference in :mod:`secagg.kernels.reference` with the same signature;
the tests check that they agree.
"""

from secagg.kernels.reference import CHUNK_WORDS, add_masks

__all__ = ["CHUNK_WORDS", "add_masks"]
