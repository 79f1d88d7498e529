"""Chunked mask expansion fused with accumulation, on several cores.

``add_masks(vector, add_seeds, subtract_seeds)`` computes, in place and mod 2^32,

    vector += sum(PRG(s) for s in add_seeds) - sum(PRG(s) for s in subtract_seeds)

without ever holding a full-length mask. The vector is cut into one contiguous range per thread;
each thread keeps one :class:`~secagg.crypto.prg.MaskStream` per seed (keyed once, positioned at
the range's first word) and walks its range one chunk of ``CHUNK_WORDS`` words (64 KiB) at a time:
it lets OpenSSL write the next chunk of up to ``_BATCH`` streams into the rows of a small scratch
matrix (512 KiB, in L2), then one compiled :func:`combine_rows` call adds or subtracts those rows
into the vector's chunk, which stays in cache throughout. OpenSSL's ``update_into`` and the
compiled kernel both release the GIL, so the threads run in parallel.

Per-thread memory: the scratch matrix plus one cipher context per seed (under 1 KiB each).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

from secagg.crypto.prg import SEED_BYTES, MaskStream
from secagg.errors import ConfigError
from secagg.kernels._api import jit
from secagg.kernels.reference import CHUNK_WORDS

__all__ = ["add_masks", "get_num_threads", "set_num_threads"]

_BATCH = 8  # mask rows expanded before one combine call: 8 x 64 KiB = 512 KiB of scratch
# Below this many mask words in total, one thread is faster than handing work to a pool.
_MIN_PARALLEL_WORDS = 1 << 21
_MIN_RANGE_WORDS = 4 * CHUNK_WORDS


def _default_threads() -> int:
    env = os.environ.get("SECAGG_NUM_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ConfigError(f"SECAGG_NUM_THREADS must be an int, got {env!r}") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


_lock = threading.Lock()
_num_threads = _default_threads()
_pool: ThreadPoolExecutor | None = None


def set_num_threads(n: int) -> None:
    """Use up to ``n`` threads for mask expansion; default: usable cores or $SECAGG_NUM_THREADS."""
    global _num_threads, _pool
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"the number of threads must be an int >= 1, got {n!r}")
    with _lock:
        _num_threads = n
        if _pool is not None:
            _pool.shutdown(wait=True)
            _pool = None


def get_num_threads() -> int:
    """The number of threads :func:`add_masks` may use."""
    return _num_threads


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_num_threads, thread_name_prefix="secagg-masks")
        return _pool


def _masks_over_range(
    vector: npt.NDArray[np.uint32],
    seeds: Sequence[bytes],
    n_add: int,
    start_word: int,
    lo: int,
    hi: int,
    chunk_words: int,
) -> None:
    """Apply every seed's mask to ``vector[lo:hi]`` (word i gets stream word start_word + i)."""
    combine = jit().combine_rows
    fills = [MaskStream(seed, start_word + lo).fill_into_bytes for seed in seeds]
    batch = min(_BATCH, len(fills))
    scratch = np.empty((batch, min(chunk_words, hi - lo)), dtype=np.uint32)
    row_bytes = [memoryview(scratch[r]).cast("B") for r in range(batch)]
    n_seeds = len(fills)
    for c0 in range(lo, hi, chunk_words):
        width = min(chunk_words, hi - c0)
        nbytes = 4 * width
        target = vector[c0 : c0 + width]
        rows = scratch if width == scratch.shape[1] else scratch[:, :width]
        views = row_bytes if nbytes == len(row_bytes[0]) else [v[:nbytes] for v in row_bytes]
        for b0 in range(0, n_seeds, batch):
            group = fills[b0 : b0 + batch]
            for fill, view in zip(group, views, strict=False):
                fill(view)
            combine(target, rows[: len(group)], min(max(n_add - b0, 0), len(group)))


def add_masks(
    vector: npt.NDArray[np.uint32],
    add_seeds: Sequence[bytes],
    subtract_seeds: Sequence[bytes],
    *,
    start_word: int = 0,
    chunk_words: int = CHUNK_WORDS,
) -> None:
    """In place, mod 2^32: vector += sum(PRG(s) for add_seeds) - sum(PRG(s) for subtract_seeds).

    Word i of ``vector`` receives word ``start_word + i`` of each mask stream (the keystream of
    :func:`secagg.crypto.prg.fill_mask`). Same result as
    :func:`secagg.kernels.reference.add_masks`; no full-length temporary is allocated.

    Raises:
        ConfigError: ``vector`` not a writeable, contiguous 1-D uint32 array; a bad seed;
            a negative ``start_word``; ``chunk_words`` < 1.
    """
    if not isinstance(vector, np.ndarray) or vector.dtype != np.uint32 or vector.ndim != 1:
        raise ConfigError("vector must be a 1-D uint32 numpy array")
    if not vector.flags.c_contiguous or not vector.flags.writeable:
        raise ConfigError("vector must be C-contiguous and writeable")
    if isinstance(chunk_words, bool) or not isinstance(chunk_words, int) or chunk_words < 1:
        raise ConfigError("chunk_words must be an int >= 1")
    seeds = [*add_seeds, *subtract_seeds]
    for seed in seeds:
        if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
            raise ConfigError(f"a PRG seed is exactly {SEED_BYTES} bytes")
    if isinstance(start_word, bool) or not isinstance(start_word, int) or start_word < 0:
        raise ConfigError("start_word must be an int >= 0")
    m = vector.size
    if m == 0 or not seeds:
        return
    n_add = len(add_seeds)
    threads = min(_num_threads, max(1, m // _MIN_RANGE_WORDS))
    if threads == 1 or m * len(seeds) < _MIN_PARALLEL_WORDS:
        _masks_over_range(vector, seeds, n_add, start_word, 0, m, chunk_words)
        return
    # Ranges aligned to whole chunks, so every chunk but the last is full.
    chunks = -(-m // chunk_words)
    bounds = [min(m, (chunks * i // threads) * chunk_words) for i in range(threads + 1)]
    pool = _get_pool()
    futures = [
        pool.submit(_masks_over_range, vector, seeds, n_add, start_word, lo, hi, chunk_words)
        for lo, hi in itertools.pairwise(bounds)
        if hi > lo
    ]
    for future in futures:
        future.result()
