"""Packing of updates into CKKS ciphertext chunks, and the wire form of a chunk.

A :class:`Layout` says how a flat float vector (or a dict of named float arrays, flattened in sorted
name order) is cut into chunks of at most ``slots`` values: chunk ``i`` carries values
``[i*slots, min((i+1)*slots, m))`` in one ciphertext, so an update of ``m`` values travels in
``ceil(m/slots)`` chunks.

Wire form of one chunk (all integers big-endian)::

    offset  size  field
    0       4     magic b"SGHE"
    4       1     format version (1)
    5       1     kind: 1 = a site's update, 2 = the aggregator's encrypted sum
    6       32    parameters digest (CkksParameters.digest())
    38      32    key id (digest of the key holder's public context)
    70      32    layout digest (Layout.digest())
    102     4     chunk index
    106     4     chunk count
    110     8     vector length m
    118     4     values in this chunk
    122     8     payload length
    130     32    BLAKE2b-256 checksum of bytes [0, 130) and of the payload
    162     ...   payload: one TenSEAL CKKSVector holding one ciphertext

Every field is checked on arrival (:func:`parse_chunk`) and the payload is then loaded and checked
(:func:`load_ciphertext`); any mismatch raises :class:`~secagg.errors.HEError` naming the field.
The checksum detects corruption, not forgery. A site's update chunk travels signed: this wire form
followed by the site's 64-byte Ed25519 signature for the round (:mod:`secagg.he.signed`), checked
by the aggregator and again by the key holder; the aggregator's sum chunks are not signed (the key
holder recomputes the sum from the signed chunks instead).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import tenseal as ts

from secagg.errors import ConfigError, HEError
from secagg.he.params import CkksParameters

__all__ = [
    "KIND_SUM",
    "KIND_UPDATE",
    "ChunkHeader",
    "Layout",
    "ParsedSum",
    "check_site_id",
    "encode_chunk",
    "encode_sum",
    "load_ciphertext",
    "parse_chunk",
    "parse_sum",
]

MAGIC: Final = b"SGHE"
VERSION: Final = 1
KIND_UPDATE: Final = 1
KIND_SUM: Final = 2
_KIND_NAMES: Final = {KIND_UPDATE: "update", KIND_SUM: "sum"}
_HEADER = struct.Struct(">4sBB32s32s32sIIQIQ")
_CHECKSUM_SIZE: Final = 32
HEADER_SIZE: Final = _HEADER.size + _CHECKSUM_SIZE
_MAX_NAME_BYTES: Final = 1024
_LAYOUT_LABEL: Final = b"secagg/he/layout/v1"

Update = npt.ArrayLike | Mapping[str, npt.ArrayLike]
"""A flat float vector, or a mapping of names to float arrays."""


def _checksum(*parts: bytes | memoryview) -> bytes:
    h = hashlib.blake2b(digest_size=_CHECKSUM_SIZE)
    for p in parts:
        h.update(p)
    return h.digest()


def _as_real_array(value: npt.ArrayLike, what: str) -> npt.NDArray[np.float64]:
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} is not an array of numbers") from exc
    if arr.dtype.kind not in "fiub":
        raise ConfigError(f"{what} must hold real numbers, not dtype {arr.dtype}")
    out = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(out)):
        raise ConfigError(f"{what} contains NaN or infinite values")
    return out


class _Reader:
    """Bounds-checked reader over untrusted bytes; every overrun raises HEError."""

    def __init__(self, view: memoryview, what: str) -> None:
        self._view = view
        self._pos = 0
        self._what = what

    def take(self, n: int) -> memoryview:
        if n < 0 or self._pos + n > len(self._view):
            raise HEError(f"{self._what}: truncated or malformed")
        out = self._view[self._pos : self._pos + n]
        self._pos += n
        return out

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        st = struct.Struct(fmt)
        return st.unpack(self.take(st.size))

    def u64(self) -> int:
        value: int = self.unpack(">Q")[0]
        return value

    @property
    def position(self) -> int:
        return self._pos

    def finish(self) -> None:
        if self._pos != len(self._view):
            raise HEError(f"{self._what}: {len(self._view) - self._pos} trailing bytes")


@dataclass(frozen=True)
class Layout:
    """How an update is flattened and cut into ciphertext chunks.

    Build one with :meth:`for_vector` or :meth:`for_arrays`; every party of a round builds the same
    layout (its :meth:`digest` travels in each chunk).

    Attributes:
        names: array names in flattening order (sorted); ``("",)`` for a flat vector.
        shapes: the shape of each named array; ``((m,),)`` for a flat vector.
        slots: values per ciphertext (``CkksParameters.slots``).
        named: whether updates are dicts of named arrays (``True``) or flat vectors.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    slots: int
    named: bool = True

    def __post_init__(self) -> None:
        names = tuple(self.names)
        shapes = tuple(tuple(int(d) for d in s) for s in self.shapes)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "shapes", shapes)
        if not isinstance(self.slots, int) or isinstance(self.slots, bool) or self.slots < 1:
            raise ConfigError("slots must be a positive int")
        if len(names) != len(shapes) or not names:
            raise ConfigError("a layout needs one shape per name and at least one name")
        if self.named:
            for name in names:
                if not isinstance(name, str) or not name:
                    raise ConfigError("array names must be non-empty strings")
                if len(name.encode("utf-8")) > _MAX_NAME_BYTES:
                    raise ConfigError(f"array name longer than {_MAX_NAME_BYTES} bytes")
            if list(names) != sorted(set(names)):
                raise ConfigError("array names must be unique and sorted")
        elif names != ("",) or len(shapes[0]) != 1:
            raise ConfigError("a flat layout has the single name '' and a 1-D shape")
        for shape in shapes:
            if any(d < 0 for d in shape):
                raise ConfigError("array dimensions must be non-negative")
        if self.total_length < 1:
            raise ConfigError("an update must hold at least one value")

    # ------------------------------------------------------------------ constructors

    @classmethod
    def for_vector(cls, length: int, params: CkksParameters) -> Layout:
        """Layout of a flat vector of ``length`` values."""
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise ConfigError("vector length must be a positive int")
        return cls(names=("",), shapes=((length,),), slots=params.slots, named=False)

    @classmethod
    def for_arrays(
        cls, arrays: Mapping[str, npt.ArrayLike | tuple[int, ...]], params: CkksParameters
    ) -> Layout:
        """Layout of a dict of named arrays; values may be arrays or shapes (tuples of ints)."""
        if not isinstance(arrays, Mapping) or not arrays:
            raise ConfigError("expected a non-empty mapping of names to arrays")
        names = sorted(arrays)
        shapes = []
        for name in names:
            value = arrays[name]
            if isinstance(value, tuple) and all(isinstance(d, int) for d in value):
                shapes.append(value)
            else:
                shapes.append(np.shape(value))
        return cls(names=tuple(names), shapes=tuple(shapes), slots=params.slots, named=True)

    @classmethod
    def of(cls, update: Update, params: CkksParameters) -> Layout:
        """The layout an update implies (a flat vector or a dict of named arrays)."""
        if isinstance(update, Mapping):
            return cls.for_arrays(update, params)
        arr = np.asarray(update)
        if arr.ndim != 1:
            raise ConfigError("a vector update must be 1-D (use a dict of named arrays otherwise)")
        return cls.for_vector(int(arr.shape[0]), params)

    # ------------------------------------------------------------------ derived

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of values in each named array."""
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def total_length(self) -> int:
        """``m``: values in a flattened update."""
        return sum(self.sizes)

    @property
    def chunk_count(self) -> int:
        """``ceil(m / slots)``: ciphertexts per update."""
        return -(-self.total_length // self.slots)

    def chunk_bounds(self, index: int) -> tuple[int, int]:
        """``(start, stop)`` of chunk ``index`` in the flat vector."""
        if not 0 <= index < self.chunk_count:
            raise ConfigError(f"chunk index {index} outside [0, {self.chunk_count})")
        start = index * self.slots
        return start, min(start + self.slots, self.total_length)

    def chunk_length(self, index: int) -> int:
        """Values carried by chunk ``index`` (``slots`` except possibly for the last chunk)."""
        start, stop = self.chunk_bounds(index)
        return stop - start

    def to_bytes(self) -> bytes:
        """Canonical encoding: label, flags, slots, then each name and shape length-prefixed."""
        parts: list[bytes] = [
            struct.pack(">Q", len(_LAYOUT_LABEL)) + _LAYOUT_LABEL,
            struct.pack(">BQQ", self.named, self.slots, len(self)),
        ]
        for name, shape in zip(self.names, self.shapes, strict=True):
            raw = name.encode("utf-8")
            parts.append(struct.pack(">Q", len(raw)) + raw)
            parts.append(
                struct.pack(">Q", len(shape)) + b"".join(struct.pack(">Q", d) for d in shape)
            )
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> Layout:
        """Parse :meth:`to_bytes` output.

        Raises:
            HEError: the bytes are malformed or describe an invalid layout.
        """
        reader = _Reader(memoryview(data).cast("B"), "layout")
        if bytes(reader.take(reader.u64())) != _LAYOUT_LABEL:
            raise HEError("layout: unknown encoding label")
        named, slots, count = reader.unpack(">BQQ")
        if named not in (0, 1) or count > len(data):
            raise HEError("layout: malformed header")
        names, shapes = [], []
        for _ in range(count):
            try:
                names.append(str(reader.take(reader.u64()), "utf-8"))
            except UnicodeDecodeError as exc:
                raise HEError("layout: a name is not UTF-8") from exc
            ndim = reader.u64()
            if ndim > 64:
                raise HEError("layout: too many dimensions")
            shapes.append(tuple(reader.u64() for _ in range(ndim)))
        reader.finish()
        try:
            return cls(names=tuple(names), shapes=tuple(shapes), slots=slots, named=bool(named))
        except ConfigError as exc:
            raise HEError(f"layout: {exc}") from exc

    def digest(self) -> bytes:
        """32-byte BLAKE2b digest of :meth:`to_bytes`, carried by every chunk."""
        return hashlib.blake2b(self.to_bytes(), digest_size=32).digest()

    def __len__(self) -> int:
        return len(self.names)

    # ------------------------------------------------------------------ (un)flattening

    def flatten(self, update: Update) -> npt.NDArray[np.float64]:
        """Check ``update`` against the layout and return it as one float64 vector.

        Raises:
            ConfigError: wrong kind (vector vs dict), names, shapes, dtype, or non-finite values.
        """
        if not self.named:
            if isinstance(update, Mapping):
                raise ConfigError("this layout expects a flat vector, not a dict")
            arr = _as_real_array(update, "update")
            if arr.shape != self.shapes[0]:
                raise ConfigError(f"update has shape {arr.shape}, layout expects {self.shapes[0]}")
            return arr
        if not isinstance(update, Mapping):
            raise ConfigError("this layout expects a dict of named arrays")
        if set(update) != set(self.names):
            missing = sorted(set(self.names) - set(update))
            extra = sorted(str(k) for k in set(update) - set(self.names))
            raise ConfigError(
                f"update names differ from the layout (missing {missing}, extra {extra})"
            )
        parts = []
        for name, shape in zip(self.names, self.shapes, strict=True):
            arr = _as_real_array(update[name], f"array {name!r}")
            if arr.shape != shape:
                raise ConfigError(f"array {name!r} has shape {arr.shape}, layout expects {shape}")
            parts.append(arr.reshape(-1))
        return np.concatenate(parts)

    def unflatten(
        self, vector: npt.ArrayLike
    ) -> npt.NDArray[np.float64] | dict[str, npt.NDArray[np.float64]]:
        """Inverse of :meth:`flatten`: a flat vector, or a dict of arrays in their shapes."""
        flat = np.asarray(vector, dtype=np.float64)
        if flat.shape != (self.total_length,):
            raise ConfigError(f"expected {self.total_length} values, got shape {flat.shape}")
        if not self.named:
            return flat
        out: dict[str, npt.NDArray[np.float64]] = {}
        offset = 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes, strict=True):
            out[name] = flat[offset : offset + size].reshape(shape)
            offset += size
        return out


# ---------------------------------------------------------------------- wire form


@dataclass(frozen=True)
class ChunkHeader:
    """The parsed header of one chunk (see the module docstring for the wire form)."""

    kind: int
    params_digest: bytes
    key_id: bytes
    layout_digest: bytes
    index: int
    count: int
    vector_length: int
    chunk_length: int


def encode_chunk(header: ChunkHeader, payload: bytes) -> bytes:
    """Frame ``payload`` (TenSEAL bytes) with ``header`` and a checksum."""
    fixed = _HEADER.pack(
        MAGIC,
        VERSION,
        header.kind,
        header.params_digest,
        header.key_id,
        header.layout_digest,
        header.index,
        header.count,
        header.vector_length,
        header.chunk_length,
        len(payload),
    )
    return fixed + _checksum(fixed, payload) + payload


def parse_chunk(
    data: bytes | bytearray | memoryview,
    *,
    kind: int,
    params: CkksParameters,
    key_id: bytes,
    layout: Layout,
) -> tuple[int, memoryview]:
    """Check one chunk's framing against the round and return ``(index, payload)``.

    Raises:
        HEError: not bytes, truncated, wrong magic/version/kind, corrupted (checksum), or a
            parameters digest, key id, layout digest, chunk count, index, vector length or chunk
            length that does not match the round.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise HEError(f"a chunk must be bytes, not {type(data).__name__}")
    view = memoryview(data).cast("B")
    if len(view) < HEADER_SIZE:
        raise HEError(f"chunk too short ({len(view)} bytes) to hold a header")
    fields = _HEADER.unpack_from(view)
    magic, version, got_kind, p_digest, k_id, l_digest, index, count, vlen, clen, plen = fields
    if magic != MAGIC:
        raise HEError("not a secagg CKKS chunk (bad magic)")
    if version != VERSION:
        raise HEError(f"unsupported chunk format version {version} (expected {VERSION})")
    if len(view) != HEADER_SIZE + plen:
        raise HEError(
            f"chunk length {len(view)} does not match its declared payload of {plen} bytes"
        )
    payload = view[HEADER_SIZE:]
    checksum = bytes(view[_HEADER.size : HEADER_SIZE])
    if _checksum(view[: _HEADER.size], payload) != checksum:
        raise HEError("chunk is corrupted (checksum mismatch)")
    if got_kind != kind:
        raise HEError(
            f"expected a {_KIND_NAMES.get(kind, kind)} chunk, "
            f"got kind {_KIND_NAMES.get(got_kind, got_kind)}"
        )
    if p_digest != params.digest():
        raise HEError("chunk was made under different CKKS parameters (parameters digest differs)")
    if k_id != key_id:
        raise HEError("chunk was encrypted under another key (key id differs from the round's)")
    if l_digest != layout.digest():
        raise HEError("chunk was made for another layout (layout digest differs)")
    if vlen != layout.total_length:
        raise HEError(
            f"chunk declares vector length {vlen}, the round expects {layout.total_length}"
        )
    if count != layout.chunk_count:
        raise HEError(f"chunk declares {count} chunks, the round expects {layout.chunk_count}")
    if index >= count:
        raise HEError(f"chunk index {index} outside [0, {count})")
    if clen != layout.chunk_length(index):
        raise HEError(
            f"chunk {index} declares {clen} values, the layout expects {layout.chunk_length(index)}"
        )
    return index, payload


def load_ciphertext(
    context: ts.Context,
    payload: bytes | memoryview,
    *,
    params: CkksParameters,
    expected_length: int,
    index: int,
) -> ts.CKKSVector:
    """Deserialise a chunk's payload under ``context`` and check it is a fresh, summable ciphertext.

    Checks: it parses under the context's parameters; it holds exactly ``expected_length`` values
    in exactly one ciphertext of two polynomials, at the first data level, in NTT form, at the
    round's scale (so adding it can neither fail nor silently misalign).

    Raises:
        HEError: any of the above fails.
    """
    try:
        vec = ts.ckks_vector_from(context, bytes(payload))
    except Exception as exc:  # any failure of the C++ parser means the bytes are unusable
        raise HEError(
            f"chunk {index}: payload is not a ciphertext under the round's context"
        ) from exc
    if vec.size() != expected_length:
        raise HEError(
            f"chunk {index}: ciphertext holds {vec.size()} values, expected {expected_length}"
        )
    cts: Sequence[Any] = vec.ciphertext()
    if len(cts) != 1:
        raise HEError(f"chunk {index}: expected one ciphertext, found {len(cts)}")
    ct = cts[0]
    seal = context.seal_context().data
    if ct.size() != 2:
        raise HEError(f"chunk {index}: ciphertext has {ct.size()} polynomials, expected 2")
    if list(ct.parms_id()) != list(seal.first_parms_id()):
        raise HEError(f"chunk {index}: ciphertext is not at the round's data level")
    if not ct.is_ntt_form():
        raise HEError(f"chunk {index}: ciphertext is not in NTT form")
    if ct.scale != params.scale:
        raise HEError(
            f"chunk {index}: ciphertext scale {ct.scale!r} "
            f"differs from 2^{params.global_scale_bits}"
        )
    return vec


# ---------------------------------------------------------------------- encrypted-sum container

SUM_MAGIC: Final = b"SGHS"
_SUM_HEADER = struct.Struct(">4sB32s32s")
_MAX_SITE_ID_BYTES: Final = 256


def check_site_id(site_id: object) -> str:
    """Return ``site_id`` if it is a usable site id (non-empty str of at most 256 UTF-8 bytes).

    Raises:
        ConfigError: it is not.
    """
    if not isinstance(site_id, str) or not site_id:
        raise ConfigError("site_id must be a non-empty str")
    if len(site_id.encode("utf-8")) > _MAX_SITE_ID_BYTES:
        raise ConfigError(f"site_id longer than {_MAX_SITE_ID_BYTES} UTF-8 bytes")
    return site_id


def encode_sum(
    *,
    params: CkksParameters,
    key_id: bytes,
    layout: Layout,
    sites: Sequence[str],
    chunks: Sequence[bytes],
) -> bytes:
    """Frame an encrypted sum for the key holder.

    Wire form: ``b"SGHS"``, version (1 byte), parameters digest, key id (32 bytes each), layout
    (u32 length + :meth:`Layout.to_bytes`), site count (u32) and each site id (u16 length +
    UTF-8), chunk count (u32), a BLAKE2b-256 checksum of all of the above, then each chunk (u64
    length + a ``KIND_SUM`` chunk in the chunk wire form).
    """
    layout_bytes = layout.to_bytes()
    head = [
        _SUM_HEADER.pack(SUM_MAGIC, VERSION, params.digest(), key_id),
        struct.pack(">I", len(layout_bytes)),
        layout_bytes,
        struct.pack(">I", len(sites)),
    ]
    for site in sites:
        raw = site.encode("utf-8")
        head.append(struct.pack(">H", len(raw)) + raw)
    head.append(struct.pack(">I", len(chunks)))
    fixed = b"".join(head)
    body = b"".join(struct.pack(">Q", len(c)) + c for c in chunks)
    return fixed + _checksum(fixed) + body


@dataclass(frozen=True)
class ParsedSum:
    """An encrypted-sum container whose framing has been checked (chunks not yet loaded)."""

    layout: Layout
    sites: tuple[str, ...]
    chunks: tuple[memoryview, ...]


def parse_sum(
    data: bytes | bytearray | memoryview, *, params: CkksParameters, key_id: bytes
) -> ParsedSum:
    """Check an encrypted-sum container's framing and split it into its chunks.

    Raises:
        HEError: malformed, corrupted, or made under other parameters or another key.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise HEError(f"an encrypted sum must be bytes, not {type(data).__name__}")
    view = memoryview(data).cast("B")
    reader = _Reader(view, "encrypted sum")
    magic, version, p_digest, k_id = reader.unpack(_SUM_HEADER.format)
    if magic != SUM_MAGIC:
        raise HEError("not a secagg encrypted sum (bad magic)")
    if version != VERSION:
        raise HEError(f"unsupported encrypted-sum format version {version}")
    layout_view = reader.take(reader.unpack(">I")[0])
    n_sites = reader.unpack(">I")[0]
    if n_sites > len(view):
        raise HEError("encrypted sum: malformed site count")
    raw_sites = [bytes(reader.take(reader.unpack(">H")[0])) for _ in range(n_sites)]
    n_chunks = reader.unpack(">I")[0]
    end = reader.position
    if bytes(reader.take(_CHECKSUM_SIZE)) != _checksum(view[:end]):
        raise HEError("encrypted sum is corrupted (checksum mismatch)")
    if p_digest != params.digest():
        raise HEError("encrypted sum was made under different CKKS parameters")
    if k_id != key_id:
        raise HEError("encrypted sum was made under another key")
    layout = Layout.from_bytes(layout_view)
    try:
        sites = tuple(check_site_id(s.decode("utf-8")) for s in raw_sites)
    except (UnicodeDecodeError, ConfigError) as exc:
        raise HEError("encrypted sum: malformed site id") from exc
    if len(set(sites)) != len(sites) or not sites:
        raise HEError("encrypted sum: site list empty or with duplicates")
    if n_chunks != layout.chunk_count:
        raise HEError(
            f"encrypted sum holds {n_chunks} chunks, its layout needs {layout.chunk_count}"
        )
    chunks = tuple(reader.take(reader.u64()) for _ in range(n_chunks))
    reader.finish()
    return ParsedSum(layout=layout, sites=sites, chunks=chunks)
