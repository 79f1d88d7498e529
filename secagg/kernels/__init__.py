"""Hot loops of masking and unmasking, compiled with Numba.

Each kernel here has a plain-numpy twin in :mod:`secagg.kernels.reference` with the same signature
and the same results (checked by ``tests/kernels``). Numba is imported only when a compiled kernel
is first called (``import secagg`` stays fast), and compiled code is cached on disk.

* :func:`add_masks` -- chunked mask expansion fused with accumulation, multi-threaded;
* :func:`stochastic_round` -- clip, scale, stochastic rounding, reduction into Z_(2^b);
* :func:`add_mod`, :func:`sub_mod` -- element-wise addition / subtraction in Z_(2^b);
* :func:`accumulate` -- the server's ``acc += masked_input`` mod 2^32;
* :func:`combine_rows` -- ``target += sum(rows[:a]) - sum(rows[a:])`` mod 2^32;
* :func:`pack_bits`, :func:`unpack_bits`, :func:`packed_size` -- b-bit values on the wire.
"""

from __future__ import annotations

from secagg.kernels._api import (
    accumulate,
    add_mod,
    combine_rows,
    pack_bits,
    packed_size,
    stochastic_round,
    sub_mod,
    unpack_bits,
)
from secagg.kernels._masks import add_masks, get_num_threads, set_num_threads
from secagg.kernels.reference import CHUNK_WORDS

__all__ = [
    "CHUNK_WORDS",
    "accumulate",
    "add_masks",
    "add_mod",
    "combine_rows",
    "get_num_threads",
    "pack_bits",
    "packed_size",
    "set_num_threads",
    "stochastic_round",
    "sub_mod",
    "unpack_bits",
]
