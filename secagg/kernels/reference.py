"""Plain-numpy reference kernels (the definition of what the compiled kernels must compute)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from secagg.crypto.prg import fill_mask

__all__ = ["CHUNK_WORDS", "add_masks"]

CHUNK_WORDS = 1 << 14  # 64 KiB of uint32: mask chunk and accumulator slice both stay in L2


def add_masks(
    vector: npt.NDArray[np.uint32],
    add_seeds: Sequence[bytes],
    subtract_seeds: Sequence[bytes],
    *,
    start_word: int = 0,
    chunk_words: int = CHUNK_WORDS,
) -> None:
    """In place, mod 2^32: vector += sum(PRG(s) for add_seeds) - sum(PRG(s) for subtract_seeds).

    Word i of ``vector`` receives word ``start_word + i`` of each mask stream. Masks are expanded
    one cache-sized chunk at a time into one scratch buffer, so no full-length temporary exists.
    """
    m = len(vector)
    if m == 0 or not (add_seeds or subtract_seeds):
        return
    scratch = np.empty(min(chunk_words, m), dtype=np.uint32)
    for lo in range(0, m, chunk_words):
        hi = min(lo + chunk_words, m)
        view = vector[lo:hi]
        mask = scratch[: hi - lo]
        for seed in add_seeds:
            fill_mask(seed, mask, start_word + lo)
            np.add(view, mask, out=view)
        for seed in subtract_seeds:
            fill_mask(seed, mask, start_word + lo)
            np.subtract(view, mask, out=view)
