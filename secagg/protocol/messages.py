"""Typed protocol messages: frozen dataclasses, validated on construction.

Client messages are signed with the sender's roster identity over a context that binds the protocol
version, the stage, the round, the round configuration and (after the first stage) the session id,
and the sender; so no message can be replayed into another round, stage or session, or claimed by
another party. Server messages are not signed: clients check them against what they signed before.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeAlias

import numpy as np
import numpy.typing as npt

from secagg.crypto import (
    PROTOCOL_VERSION,
    SHARE_BYTES,
    IdentityKey,
    IdentityPublicKey,
    lp_encode,
    transcript_digest,
)
from secagg.crypto.aead import OVERHEAD_BYTES as AEAD_OVERHEAD_BYTES
from secagg.errors import MalformedMessage

__all__ = [
    "AdvertiseKeys",
    "ClientMessage",
    "ConsistencySignature",
    "KeyRoster",
    "MaskedInput",
    "ServerMessage",
    "ShareBundle",
    "ShareKeys",
    "Stage",
    "SurvivorsRequest",
    "UnmaskRequest",
    "UnmaskShares",
    "compute_session_id",
    "signing_context",
    "survivors_payload",
]

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
SESSION_ID_BYTES = 32
SHARE_CIPHERTEXT_BYTES = 2 * SHARE_BYTES + AEAD_OVERHEAD_BYTES
"""An encrypted share pair (self-mask seed share || mask-key share) is exactly this long."""


class Stage(enum.Enum):
    """The stages of a round, in order, and the two terminal states."""

    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY_CHECK = "consistency_check"
    UNMASK = "unmask"
    COMPLETED = "completed"
    ABORTED = "aborted"

    @property
    def is_terminal(self) -> bool:
        return self in (Stage.COMPLETED, Stage.ABORTED)


ACTIVE_STAGES: tuple[Stage, ...] = (
    Stage.ADVERTISE_KEYS,
    Stage.SHARE_KEYS,
    Stage.MASKED_INPUT,
    Stage.CONSISTENCY_CHECK,
    Stage.UNMASK,
)


def signing_context(
    stage: Stage, round_id: int, config_digest: bytes, session_id: bytes, sender: int
) -> bytes:
    """What every client signature is bound to besides the message's own payload."""
    return lp_encode(PROTOCOL_VERSION, stage.value, round_id, config_digest, session_id, sender)


def survivors_payload(survivors: Iterable[int]) -> bytes:
    """The payload a client signs in the consistency check: the sorted survivor set."""
    return lp_encode("survivors", *sorted(survivors))


def compute_session_id(config_digest: bytes, advertisements: Iterable[AdvertiseKeys]) -> bytes:
    """Hash of the config digest and every advertised key, length-prefixed and sorted by party.

    Clients that saw different rosters, keys or configs (model-inconsistency attacks) end up with
    different session ids and so can never complete one round together.
    """
    return _session_id(config_digest, tuple(sorted(advertisements, key=lambda a: a.sender)))


@functools.lru_cache(maxsize=8)
def _session_id(config_digest: bytes, advertisements: tuple[AdvertiseKeys, ...]) -> bytes:
    # Cached on the (immutable) inputs: in-process simulations hand one roster to every client.
    parts: list[bytes | int | str] = ["session-id", config_digest]
    for ad in advertisements:
        parts += [ad.sender, ad.cipher_public_key, ad.mask_public_key]
    return transcript_digest(*parts)


# --- validation helpers ---------------------------------------------------------------------


def _check_int(name: str, value: object, low: int = 0, high: int = 2**63) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value < high:
        raise MalformedMessage(f"{name} must be an int in [{low}, {high}), got {value!r}")


def _check_bytes(name: str, value: object, length: int | None = None) -> None:
    if not isinstance(value, bytes):
        raise MalformedMessage(f"{name} must be bytes, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise MalformedMessage(f"{name} must be {length} bytes, got {len(value)}")


def _check_party_set(name: str, parties: object) -> None:
    if not isinstance(parties, tuple):
        raise MalformedMessage(f"{name} must be a tuple of party ids")
    for p in parties:
        _check_int(f"{name} entry", p, 1)
    if list(parties) != sorted(set(parties)):
        raise MalformedMessage(f"{name} must be sorted and free of duplicates")


def _check_pairs(name: str, pairs: object, value_length: int | None = None) -> None:
    """A tuple of (party, bytes) sorted by party without duplicates."""
    if not isinstance(pairs, tuple):
        raise MalformedMessage(f"{name} must be a tuple of (party, bytes) pairs")
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise MalformedMessage(f"{name} entries must be (party, bytes) pairs")
        _check_int(f"{name} party", pair[0], 1)
        _check_bytes(f"{name} value", pair[1], value_length)
    _check_party_set(f"{name} parties", tuple(p for p, _ in pairs))


# --- client -> server -----------------------------------------------------------------------


@dataclass(frozen=True)
class _SignedClientMessage(abc.ABC):
    stage: ClassVar[Stage]

    round_id: int
    sender: int

    @abc.abstractmethod
    def payload(self) -> bytes:
        """The message-specific bytes that the signature covers."""

    def _session(self) -> bytes:
        return b""

    def context(self, config_digest: bytes) -> bytes:
        return signing_context(
            self.stage, self.round_id, config_digest, self._session(), self.sender
        )

    @classmethod
    def _signed(cls, identity: IdentityKey, config_digest: bytes, **fields: Any) -> Self:
        """Build the message with ``fields`` and the sender's signature over it."""
        build: Any = cls  # every concrete message declares a ``signature`` field
        unsigned = build(signature=bytes(SIGNATURE_BYTES), **fields)
        signature = identity.sign(unsigned.context(config_digest), unsigned.payload())
        signed: Self = dataclasses.replace(unsigned, signature=signature)
        return signed

    def verify(self, key: IdentityPublicKey, config_digest: bytes) -> None:
        """Raise :class:`~secagg.errors.InvalidSignature` unless the sender signed this message."""
        key.verify(self.signature, self.context(config_digest), self.payload())  # type: ignore[attr-defined]

    def _validate_common(self) -> None:
        _check_int("round_id", self.round_id)
        _check_int("sender", self.sender, 1)


@dataclass(frozen=True)
class AdvertiseKeys(_SignedClientMessage):
    """Stage 0: a client's fresh X25519 public keys, signed with its identity key."""

    stage: ClassVar[Stage] = Stage.ADVERTISE_KEYS

    cipher_public_key: bytes
    mask_public_key: bytes
    signature: bytes

    def __post_init__(self) -> None:
        self._validate_common()
        _check_bytes("cipher_public_key", self.cipher_public_key, PUBLIC_KEY_BYTES)
        _check_bytes("mask_public_key", self.mask_public_key, PUBLIC_KEY_BYTES)
        _check_bytes("signature", self.signature, SIGNATURE_BYTES)

    def payload(self) -> bytes:
        return lp_encode("advertise-keys", self.cipher_public_key, self.mask_public_key)

    @classmethod
    def create(
        cls,
        identity: IdentityKey,
        *,
        round_id: int,
        sender: int,
        config_digest: bytes,
        cipher_public_key: bytes,
        mask_public_key: bytes,
    ) -> AdvertiseKeys:
        return cls._signed(
            identity,
            config_digest,
            round_id=round_id,
            sender=sender,
            cipher_public_key=cipher_public_key,
            mask_public_key=mask_public_key,
        )


@dataclass(frozen=True)
class ShareKeys(_SignedClientMessage):
    """Stage 1: the sender's Shamir shares, one AEAD ciphertext per receiving neighbour."""

    stage: ClassVar[Stage] = Stage.SHARE_KEYS

    session_id: bytes
    encrypted_shares: tuple[tuple[int, bytes], ...]  # (receiver, ciphertext), sorted by receiver
    signature: bytes

    def __post_init__(self) -> None:
        self._validate_common()
        _check_bytes("session_id", self.session_id, SESSION_ID_BYTES)
        _check_pairs("encrypted_shares", self.encrypted_shares, SHARE_CIPHERTEXT_BYTES)
        _check_bytes("signature", self.signature, SIGNATURE_BYTES)

    def _session(self) -> bytes:
        return self.session_id

    def payload(self) -> bytes:
        flat: list[bytes | int | str] = ["share-keys"]
        for receiver, ct in self.encrypted_shares:
            flat += [receiver, ct]
        return lp_encode(*flat)

    @classmethod
    def create(
        cls,
        identity: IdentityKey,
        *,
        round_id: int,
        sender: int,
        config_digest: bytes,
        session_id: bytes,
        encrypted_shares: tuple[tuple[int, bytes], ...],
    ) -> ShareKeys:
        return cls._signed(
            identity,
            config_digest,
            round_id=round_id,
            sender=sender,
            session_id=session_id,
            encrypted_shares=encrypted_shares,
        )


def vector_digest(vector: npt.NDArray[np.uint32]) -> bytes:
    """BLAKE2b-256 of the little-endian bytes of a masked vector (what the sender signs)."""
    return hashlib.blake2b(np.ascontiguousarray(vector, dtype="<u4").data, digest_size=32).digest()


@dataclass(frozen=True, eq=False)
class MaskedInput(_SignedClientMessage):
    """Stage 2: the sender's masked input vector in Z_(2^b), signed via its digest."""

    stage: ClassVar[Stage] = Stage.MASKED_INPUT

    session_id: bytes
    masked_vector: npt.NDArray[np.uint32]
    signature: bytes

    def __post_init__(self) -> None:
        self._validate_common()
        _check_bytes("session_id", self.session_id, SESSION_ID_BYTES)
        v = self.masked_vector
        if not (isinstance(v, np.ndarray) and v.dtype == np.uint32 and v.ndim == 1):
            raise MalformedMessage("masked_vector must be a 1-D uint32 array")
        _check_bytes("signature", self.signature, SIGNATURE_BYTES)

    def _session(self) -> bytes:
        return self.session_id

    def payload(self) -> bytes:
        return lp_encode("masked-input", len(self.masked_vector), vector_digest(self.masked_vector))

    @classmethod
    def create(
        cls,
        identity: IdentityKey,
        *,
        round_id: int,
        sender: int,
        config_digest: bytes,
        session_id: bytes,
        masked_vector: npt.NDArray[np.uint32],
    ) -> MaskedInput:
        masked_vector.flags.writeable = False
        return cls._signed(
            identity,
            config_digest,
            round_id=round_id,
            sender=sender,
            session_id=session_id,
            masked_vector=masked_vector,
        )


@dataclass(frozen=True)
class ConsistencySignature(_SignedClientMessage):
    """Stage 3: the sender's signature over the survivor set the server showed it."""

    stage: ClassVar[Stage] = Stage.CONSISTENCY_CHECK

    session_id: bytes
    signature: bytes
    survivors: tuple[int, ...]

    def __post_init__(self) -> None:
        self._validate_common()
        _check_bytes("session_id", self.session_id, SESSION_ID_BYTES)
        _check_bytes("signature", self.signature, SIGNATURE_BYTES)
        _check_party_set("survivors", self.survivors)

    def _session(self) -> bytes:
        return self.session_id

    def payload(self) -> bytes:
        return survivors_payload(self.survivors)

    @classmethod
    def create(
        cls,
        identity: IdentityKey,
        *,
        round_id: int,
        sender: int,
        config_digest: bytes,
        session_id: bytes,
        survivors: tuple[int, ...],
    ) -> ConsistencySignature:
        return cls._signed(
            identity,
            config_digest,
            round_id=round_id,
            sender=sender,
            session_id=session_id,
            survivors=survivors,
        )


@dataclass(frozen=True)
class UnmaskShares(_SignedClientMessage):
    """Stage 4: self-mask shares of survivors and mask-key shares of dropped peers.

    An honest client never puts one owner in both tuples.
    """

    stage: ClassVar[Stage] = Stage.UNMASK

    session_id: bytes
    self_mask_shares: tuple[tuple[int, bytes], ...]  # (owner, share of owner's self-mask seed)
    mask_key_shares: tuple[tuple[int, bytes], ...]  # (owner, share of owner's mask private key)
    signature: bytes

    def __post_init__(self) -> None:
        self._validate_common()
        _check_bytes("session_id", self.session_id, SESSION_ID_BYTES)
        _check_pairs("self_mask_shares", self.self_mask_shares, SHARE_BYTES)
        _check_pairs("mask_key_shares", self.mask_key_shares, SHARE_BYTES)
        _check_bytes("signature", self.signature, SIGNATURE_BYTES)

    def _session(self) -> bytes:
        return self.session_id

    def payload(self) -> bytes:
        flat: list[bytes | int | str] = ["unmask", len(self.self_mask_shares)]
        for owner, share in self.self_mask_shares + self.mask_key_shares:
            flat += [owner, share]
        return lp_encode(*flat)

    @classmethod
    def create(
        cls,
        identity: IdentityKey,
        *,
        round_id: int,
        sender: int,
        config_digest: bytes,
        session_id: bytes,
        self_mask_shares: tuple[tuple[int, bytes], ...],
        mask_key_shares: tuple[tuple[int, bytes], ...],
    ) -> UnmaskShares:
        return cls._signed(
            identity,
            config_digest,
            round_id=round_id,
            sender=sender,
            session_id=session_id,
            self_mask_shares=self_mask_shares,
            mask_key_shares=mask_key_shares,
        )


ClientMessage: TypeAlias = (
    AdvertiseKeys | ShareKeys | MaskedInput | ConsistencySignature | UnmaskShares
)


# --- server -> client -----------------------------------------------------------------------


@dataclass(frozen=True)
class KeyRoster:
    """End of stage 0: every advertisement the server accepted (the set U1)."""

    stage: ClassVar[Stage] = Stage.ADVERTISE_KEYS

    round_id: int
    advertisements: tuple[AdvertiseKeys, ...]

    def __post_init__(self) -> None:
        _check_int("round_id", self.round_id)
        if not isinstance(self.advertisements, tuple) or not all(
            isinstance(a, AdvertiseKeys) for a in self.advertisements
        ):
            raise MalformedMessage("advertisements must be a tuple of AdvertiseKeys")
        _check_party_set("advertisement senders", tuple(a.sender for a in self.advertisements))


@dataclass(frozen=True)
class ShareBundle:
    """End of stage 1: the ciphertexts addressed to one client, by sender (its view of U2)."""

    stage: ClassVar[Stage] = Stage.SHARE_KEYS

    round_id: int
    session_id: bytes
    encrypted_shares: tuple[tuple[int, bytes], ...]  # (sender, ciphertext)

    def __post_init__(self) -> None:
        _check_int("round_id", self.round_id)
        _check_bytes("session_id", self.session_id, SESSION_ID_BYTES)
        _check_pairs("encrypted_shares", self.encrypted_shares, SHARE_CIPHERTEXT_BYTES)


@dataclass(frozen=True)
class SurvivorsRequest:
    """End of stage 2: the parties whose masked inputs are in the sum (U3), to be signed."""

    stage: ClassVar[Stage] = Stage.MASKED_INPUT

    round_id: int
    session_id: bytes
    survivors: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_int("round_id", self.round_id)
        _check_bytes("session_id", self.session_id, SESSION_ID_BYTES)
        _check_party_set("survivors", self.survivors)


@dataclass(frozen=True)
class UnmaskRequest:
    """End of stage 3: survivors and dropped parties, with the survivors' consistency signatures."""

    stage: ClassVar[Stage] = Stage.CONSISTENCY_CHECK

    round_id: int
    session_id: bytes
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    consistency_signatures: tuple[tuple[int, bytes], ...]  # (signer, signature over survivors)

    def __post_init__(self) -> None:
        _check_int("round_id", self.round_id)
        _check_bytes("session_id", self.session_id, SESSION_ID_BYTES)
        _check_party_set("survivors", self.survivors)
        _check_party_set("dropped", self.dropped)
        _check_pairs("consistency_signatures", self.consistency_signatures, SIGNATURE_BYTES)


ServerMessage: TypeAlias = KeyRoster | ShareBundle | SurvivorsRequest | UnmaskRequest
