"""Mask seeds and mask application, shared by the client (masking) and the server (unmasking).

Client u sends y_u = x_u + PRG(b_u) + sum_{v in N(u) ∩ U2} sign(u, v) * PRG(s_uv) mod 2^b, where
sign(u, v) = +1 if u < v else -1, so each pairwise mask cancels in the sum of two live neighbours.
Masks are expanded chunk by chunk (64 KiB per seed, one AES key schedule per seed and thread) into
a small scratch matrix and combined in cache by a compiled kernel, on every usable core: no
full-length temporary per peer exists on either side. See :func:`secagg.kernels.add_masks`.

The server's unmask step regenerates only what the sum still contains: the self masks of the
survivors and, for each dropped party, its pairwise masks with its *surviving* neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from secagg.crypto import PURPOSE_PAIRWISE_MASK, derive_key
from secagg.kernels import add_masks

__all__ = ["apply_masks", "pairwise_seed", "pairwise_sign"]


def pairwise_sign(owner: int, peer: int) -> int:
    """+1 if ``owner`` adds the pairwise mask it shares with ``peer``, -1 if it subtracts it."""
    return 1 if owner < peer else -1


def pairwise_seed(
    shared_secret: bytes, *, round_id: int, session_id: bytes, a: int, b: int
) -> bytes:
    """The seed of the mask between parties a and b (symmetric in a and b)."""
    return derive_key(
        shared_secret,
        purpose=PURPOSE_PAIRWISE_MASK,
        round_id=round_id,
        session_id=session_id,
        parties=(min(a, b), max(a, b)),
    )


def apply_masks(
    vector: npt.NDArray[np.uint32],
    add_seeds: Sequence[bytes],
    subtract_seeds: Sequence[bytes],
    *,
    start_word: int = 0,
) -> None:
    """In place: vector += sum PRG(add) - sum PRG(subtract) mod 2^32, from word ``start_word``."""
    add_masks(vector, add_seeds, subtract_seeds, start_word=start_word)
