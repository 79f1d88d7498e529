"""Typed protocol messages: frozen dataclasses, validated on construction.

Client messages are signed with the sender's roster identity over a context that binds the protocol
version, the stage, the round, the round configuration and (after the first stage) the session id,
and the sender; so no message can be replayed into another round, stage or session, or claimed by
another party. Server messages are not signed: clients check them against what they signed before.

Two pieces of a client message are also signed on their own, because the server forwards them to
one recipient without the rest: each *inbox key* of an advertisement (the X25519 key a party
receives one neighbour's shares under) and each *share entry* of a ShareKeys message (one
neighbour's encrypted shares and the dealer's commitments to them). A recipient can thus check
that what it got is what the sender signed, and a complaint about a bad entry carries evidence.

Party sets (who advertised, who survived) travel as roster bitmaps
(:mod:`secagg.protocol.partyset`); the survivor set is signed once per round as a digest.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import hashlib
import itertools
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeAlias

import numpy as np
import numpy.typing as npt

from secagg.crypto import (
    PROTOCOL_VERSION,
    SHARE_BYTES,
    IdentityKey,
    IdentityPublicKey,
    check_public_key,
    lp_encode,
    transcript_digest,
)
from secagg.crypto.aead import OVERHEAD_BYTES as AEAD_OVERHEAD_BYTES
from secagg.errors import CryptoError, MalformedMessage

__all__ = [
    "ACTIVE_STAGES",
    "AdvertiseKeys",
    "ClientMessage",
    "Complaint",
    "ConsistencySignature",
    "InboxKey",
    "KeyRoster",
    "MaskedInput",
    "ServerMessage",
    "ShareBundle",
    "ShareEntry",
    "ShareKeys",
    "Stage",
    "SurvivorsRequest",
    "UnmaskReceipt",
    "UnmaskRequest",
    "UnmaskShares",
    "compute_session_id",
    "seed_commitment",
    "share_commitment",
    "signing_context",
    "survivors_digest",
    "survivors_payload",
]

PUBLIC_KEY_BYTES = 32
PRIVATE_KEY_BYTES = 32
SIGNATURE_BYTES = 64
SESSION_ID_BYTES = 32
DIGEST_BYTES = 32
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


# --- what is signed and hashed ------------------------------------------------------------------


def signing_context(
    stage: Stage, round_id: int, config_digest: bytes, session_id: bytes, sender: int
) -> bytes:
    """What every client signature is bound to besides the message's own payload."""
    return lp_encode(PROTOCOL_VERSION, stage.value, round_id, config_digest, session_id, sender)


def compute_session_id(config_digest: bytes, advertised: bytes) -> bytes:
    """Hash of the config digest and the bitmap of the parties that advertised keys (U1).

    Clients that saw different configs or different U1 get different session ids and so can never
    complete one round together. The keys themselves are bound by their senders' signatures.
    """
    return transcript_digest("session-id", config_digest, advertised)


def survivors_digest(session_id: bytes, survivors: bytes) -> bytes:
    """The digest of the survivor bitmap (U3) that every survivor signs in the consistency check."""
    return transcript_digest("survivors", session_id, survivors)


def survivors_payload(digest: bytes) -> bytes:
    """The payload of a consistency signature."""
    return lp_encode("survivors", digest)


def seed_commitment(round_id: int, config_digest: bytes, party: int, seed: bytes) -> bytes:
    """A party's hiding commitment to its 32-byte self-mask seed (signed in its advertisement)."""
    return transcript_digest("self-mask-seed", round_id, config_digest, party, seed)


def share_commitment(
    kind: str, round_id: int, session_id: bytes, dealer: int, holder: int, share: bytes
) -> bytes:
    """The dealer's commitment to one share it gives one holder (``kind``: "seed" or "key").

    A share is 9 uniform field elements (~279 bits), so the hash hides it; the server checks every
    revealed share against the dealer's signed commitment, which names a holder that lies.
    """
    return transcript_digest("share", kind, round_id, session_id, dealer, holder, share)


# --- validation helpers ---------------------------------------------------------------------


def _check_int(name: str, value: object, low: int = 0, high: int = 2**63) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value < high:
        raise MalformedMessage(f"{name} must be an int in [{low}, {high}), got {value!r}")


def _check_bytes(name: str, value: object, length: int | None = None) -> None:
    if not isinstance(value, bytes):
        raise MalformedMessage(f"{name} must be bytes, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise MalformedMessage(f"{name} must be {length} bytes, got {len(value)}")


def _check_x25519(name: str, value: object) -> None:
    _check_bytes(name, value, PUBLIC_KEY_BYTES)
    try:
        check_public_key(value)  # type: ignore[arg-type]
    except CryptoError as exc:
        raise MalformedMessage(f"{name}: {exc}") from None


def _check_sorted_unique(name: str, ids: list[int]) -> None:
    if any(b <= a for a, b in itertools.pairwise(ids)):
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
    _check_sorted_unique(f"{name} parties", [p for p, _ in pairs])


def _check_tuple_of(name: str, items: object, kind: type) -> None:
    if not isinstance(items, tuple) or not all(isinstance(i, kind) for i in items):
        raise MalformedMessage(f"{name} must be a tuple of {kind.__name__}")


# --- signed pieces ------------------------------------------------------------------------------


@dataclass(frozen=True)
class InboxKey:
    """The X25519 key under which the advertising party receives one dealer's shares.

    One per neighbour, so revealing its private half (in a complaint) opens that one channel only.
    """

    dealer: int
    public_key: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_int("inbox key dealer", self.dealer, 1)
        _check_x25519("inbox public key", self.public_key)
        _check_bytes("inbox key signature", self.signature, SIGNATURE_BYTES)

    def payload(self) -> bytes:
        return lp_encode("inbox-key", self.dealer, self.public_key)


@dataclass(frozen=True)
class ShareEntry:
    """One dealer's encrypted shares for one holder, with its commitments to them, signed."""

    receiver: int
    ciphertext: bytes
    seed_commitment: bytes
    key_commitment: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_int("share entry receiver", self.receiver, 1)
        _check_bytes("share ciphertext", self.ciphertext, SHARE_CIPHERTEXT_BYTES)
        _check_bytes("seed-share commitment", self.seed_commitment, DIGEST_BYTES)
        _check_bytes("key-share commitment", self.key_commitment, DIGEST_BYTES)
        _check_bytes("share entry signature", self.signature, SIGNATURE_BYTES)

    def payload(self) -> bytes:
        return lp_encode(
            "share-entry",
            self.receiver,
            self.ciphertext,
            self.seed_commitment,
            self.key_commitment,
        )

    def record(self) -> bytes:
        """The entry as fixed-size bytes (what the dealer's ShareKeys signature covers)."""
        return (
            self.receiver.to_bytes(8, "big")
            + self.ciphertext
            + self.seed_commitment
            + self.key_commitment
            + self.signature
        )


@dataclass(frozen=True)
class Complaint:
    """A holder's evidence that a dealer's signed share entry is bad.

    ``inbox_private_key`` is the holder's private key for that dealer's channel only: with it the
    server recomputes the AEAD key, opens the entry and checks it against the dealer's signed
    commitments. If the entry is fine, the complaint is false and names its maker instead.
    """

    dealer: int
    inbox_private_key: bytes
    entry: ShareEntry

    def __post_init__(self) -> None:
        _check_int("complaint dealer", self.dealer, 1)
        _check_bytes("complaint inbox key", self.inbox_private_key, PRIVATE_KEY_BYTES)
        if not isinstance(self.entry, ShareEntry):
            raise MalformedMessage("a complaint carries the dealer's ShareEntry")

    def record(self) -> bytes:
        return lp_encode("complaint", self.dealer, self.inbox_private_key, self.entry.record())


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
    def signed(cls, identity: IdentityKey, config_digest: bytes, **fields: Any) -> Self:
        """The one factory of client messages: ``fields`` and the sender's signature over them."""
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
    """Stage 0: a party's fresh X25519 keys, its self-mask seed commitment, its inbox keys.

    The signature covers the cipher key, the mask key and the seed commitment; each inbox key
    carries its own signature (see :class:`InboxKey`), so the server can forward to each neighbour
    only the inbox key meant for it (``for_dealer``) and the neighbour can still verify both.
    """

    stage: ClassVar[Stage] = Stage.ADVERTISE_KEYS

    cipher_public_key: bytes
    mask_public_key: bytes
    seed_commitment: bytes
    inbox_keys: tuple[InboxKey, ...]
    signature: bytes

    def __post_init__(self) -> None:
        self._validate_common()
        _check_x25519("cipher_public_key", self.cipher_public_key)
        _check_x25519("mask_public_key", self.mask_public_key)
        if self.cipher_public_key == self.mask_public_key:
            raise MalformedMessage("the cipher and mask public keys must differ")
        _check_bytes("seed_commitment", self.seed_commitment, DIGEST_BYTES)
        _check_tuple_of("inbox_keys", self.inbox_keys, InboxKey)
        _check_sorted_unique("inbox key dealers", [k.dealer for k in self.inbox_keys])
        _check_bytes("signature", self.signature, SIGNATURE_BYTES)

    def payload(self) -> bytes:
        return lp_encode(
            "advertise-keys", self.cipher_public_key, self.mask_public_key, self.seed_commitment
        )

    def inbox_key(self, dealer: int) -> InboxKey | None:
        """The inbox key this party advertised for ``dealer`` (None if there is none)."""
        for key in self.inbox_keys:
            if key.dealer == dealer:
                return key
        return None

    def verify_inbox_key(
        self, key: InboxKey, config_digest: bytes, identity: IdentityPublicKey
    ) -> None:
        """Raise InvalidSignature unless this party (``identity``) signed ``key``."""
        identity.verify(key.signature, self.context(config_digest), key.payload())

    def for_dealer(self, dealer: int) -> AdvertiseKeys:
        """This advertisement with only the inbox key meant for ``dealer`` (what it is sent)."""
        key = self.inbox_key(dealer)
        return dataclasses.replace(self, inbox_keys=() if key is None else (key,))


@dataclass(frozen=True)
class ShareKeys(_SignedClientMessage):
    """Stage 1: the sender's share entries, one per receiving neighbour, sorted by receiver."""

    stage: ClassVar[Stage] = Stage.SHARE_KEYS

    session_id: bytes
    entries: tuple[ShareEntry, ...]
    signature: bytes

    def __post_init__(self) -> None:
        self._validate_common()
        _check_bytes("session_id", self.session_id, SESSION_ID_BYTES)
        _check_tuple_of("entries", self.entries, ShareEntry)
        _check_sorted_unique("share entry receivers", [e.receiver for e in self.entries])
        _check_bytes("signature", self.signature, SIGNATURE_BYTES)

    def _session(self) -> bytes:
        return self.session_id

    def payload(self) -> bytes:
        return lp_encode("share-keys", b"".join(e.record() for e in self.entries))

    def entry_context(self, config_digest: bytes) -> bytes:
        """What each entry's own signature is bound to (this message's context)."""
        return self.context(config_digest)


def vector_digest(vector: npt.NDArray[np.uint32]) -> bytes:
    """BLAKE2b-256 of the little-endian bytes of a masked vector (what the sender signs)."""
    return hashlib.blake2b(np.ascontiguousarray(vector, dtype="<u4").data, digest_size=32).digest()


@dataclass(frozen=True, eq=False)
class MaskedInput(_SignedClientMessage):
    """Stage 2: the sender's masked input vector in Z_(2^b), signed via its digest, and its
    complaints about share entries it could not accept."""

    stage: ClassVar[Stage] = Stage.MASKED_INPUT

    session_id: bytes
    masked_vector: npt.NDArray[np.uint32]
    signature: bytes
    complaints: tuple[Complaint, ...] = ()

    def __post_init__(self) -> None:
        self._validate_common()
        _check_bytes("session_id", self.session_id, SESSION_ID_BYTES)
        v = self.masked_vector
        if not (isinstance(v, np.ndarray) and v.dtype == np.uint32 and v.ndim == 1):
            raise MalformedMessage("masked_vector must be a 1-D uint32 array")
        _check_bytes("signature", self.signature, SIGNATURE_BYTES)
        _check_tuple_of("complaints", self.complaints, Complaint)
        _check_sorted_unique("complaint dealers", [c.dealer for c in self.complaints])

    def _session(self) -> bytes:
        return self.session_id

    def payload(self) -> bytes:
        return lp_encode(
            "masked-input",
            len(self.masked_vector),
            vector_digest(self.masked_vector),
            *(c.record() for c in self.complaints),
        )

    @classmethod
    def signed(cls, identity: IdentityKey, config_digest: bytes, **fields: Any) -> Self:
        vector = fields.get("masked_vector")
        if isinstance(vector, np.ndarray):
            vector.flags.writeable = False
        return super().signed(identity, config_digest, **fields)


@dataclass(frozen=True)
class ConsistencySignature(_SignedClientMessage):
    """Stage 3: the sender's signature over the digest of the survivor set the server showed it."""

    stage: ClassVar[Stage] = Stage.CONSISTENCY_CHECK

    session_id: bytes
    survivors_digest: bytes
    signature: bytes

    def __post_init__(self) -> None:
        self._validate_common()
        _check_bytes("session_id", self.session_id, SESSION_ID_BYTES)
        _check_bytes("survivors_digest", self.survivors_digest, DIGEST_BYTES)
        _check_bytes("signature", self.signature, SIGNATURE_BYTES)

    def _session(self) -> bytes:
        return self.session_id

    def payload(self) -> bytes:
        return survivors_payload(self.survivors_digest)


def unmask_payload(
    survivors_digest: bytes,
    self_mask_owners: tuple[int, ...],
    mask_key_owners: tuple[int, ...],
    shares_digest: bytes,
) -> bytes:
    """What an :class:`UnmaskShares` signature covers: its receipt needs no share to verify."""
    return lp_encode(
        "unmask",
        survivors_digest,
        len(self_mask_owners),
        *self_mask_owners,
        *mask_key_owners,
        shares_digest,
    )


@dataclass(frozen=True)
class UnmaskReceipt:
    """A site's signed statement of what it revealed in a round, without the shares: which
    owners' self-mask seed shares and mask-key shares, under which signed survivor digest.

    It is the :class:`UnmaskShares` signature itself, so the aggregator cannot forge one and must
    keep the ones it received (its round record lists them).
    """

    round_id: int
    sender: int
    session_id: bytes
    survivors_digest: bytes
    self_mask_owners: tuple[int, ...]
    mask_key_owners: tuple[int, ...]
    shares_digest: bytes
    signature: bytes

    def verify(self, key: IdentityPublicKey, config_digest: bytes) -> None:
        context = signing_context(
            Stage.UNMASK, self.round_id, config_digest, self.session_id, self.sender
        )
        payload = unmask_payload(
            self.survivors_digest, self.self_mask_owners, self.mask_key_owners, self.shares_digest
        )
        key.verify(self.signature, context, payload)


@dataclass(frozen=True)
class UnmaskShares(_SignedClientMessage):
    """Stage 4: self-mask shares of survivors and mask-key shares of dropped peers.

    An honest client never puts one owner in both tuples.
    """

    stage: ClassVar[Stage] = Stage.UNMASK

    session_id: bytes
    survivors_digest: bytes
    self_mask_shares: tuple[tuple[int, bytes], ...]  # (owner, share of owner's self-mask seed)
    mask_key_shares: tuple[tuple[int, bytes], ...]  # (owner, share of owner's mask private key)
    signature: bytes

    def __post_init__(self) -> None:
        self._validate_common()
        _check_bytes("session_id", self.session_id, SESSION_ID_BYTES)
        _check_bytes("survivors_digest", self.survivors_digest, DIGEST_BYTES)
        _check_pairs("self_mask_shares", self.self_mask_shares, SHARE_BYTES)
        _check_pairs("mask_key_shares", self.mask_key_shares, SHARE_BYTES)
        _check_bytes("signature", self.signature, SIGNATURE_BYTES)

    def _session(self) -> bytes:
        return self.session_id

    def shares_digest(self) -> bytes:
        h = hashlib.blake2b(digest_size=32)
        for _, share in self.self_mask_shares + self.mask_key_shares:
            h.update(share)
        return h.digest()

    def payload(self) -> bytes:
        return unmask_payload(
            self.survivors_digest,
            tuple(o for o, _ in self.self_mask_shares),
            tuple(o for o, _ in self.mask_key_shares),
            self.shares_digest(),
        )

    def receipt(self) -> UnmaskReceipt:
        return UnmaskReceipt(
            self.round_id,
            self.sender,
            self.session_id,
            self.survivors_digest,
            tuple(o for o, _ in self.self_mask_shares),
            tuple(o for o, _ in self.mask_key_shares),
            self.shares_digest(),
            self.signature,
        )


ClientMessage: TypeAlias = (
    AdvertiseKeys | ShareKeys | MaskedInput | ConsistencySignature | UnmaskShares
)


# --- server -> client -----------------------------------------------------------------------


@dataclass(frozen=True)
class KeyRoster:
    """End of stage 0, for one recipient: who advertised (U1, a roster bitmap) and the
    advertisements of the recipient's neighbours among them.

    In process the advertisements may carry every inbox key; on the wire each carries only the
    one meant for the recipient (:meth:`AdvertiseKeys.for_dealer`).
    """

    stage: ClassVar[Stage] = Stage.ADVERTISE_KEYS

    round_id: int
    recipient: int
    advertised: bytes
    advertisements: tuple[AdvertiseKeys, ...]

    def __post_init__(self) -> None:
        _check_int("round_id", self.round_id)
        _check_int("recipient", self.recipient, 1)
        _check_bytes("advertised", self.advertised)
        _check_tuple_of("advertisements", self.advertisements, AdvertiseKeys)
        _check_sorted_unique("advertisement senders", [a.sender for a in self.advertisements])


@dataclass(frozen=True)
class ShareBundle:
    """End of stage 1, for one recipient: its neighbours that shared keys (its view of U2) and the
    entries they addressed to it, by dealer."""

    stage: ClassVar[Stage] = Stage.SHARE_KEYS

    round_id: int
    session_id: bytes
    senders: tuple[int, ...]
    entries: tuple[tuple[int, ShareEntry], ...]  # (dealer, entry)

    def __post_init__(self) -> None:
        _check_int("round_id", self.round_id)
        _check_bytes("session_id", self.session_id, SESSION_ID_BYTES)
        if not isinstance(self.senders, tuple):
            raise MalformedMessage("senders must be a tuple of party ids")
        for p in self.senders:
            _check_int("share sender", p, 1)
        _check_sorted_unique("share senders", list(self.senders))
        if not isinstance(self.entries, tuple) or not all(
            isinstance(e, tuple) and len(e) == 2 and isinstance(e[1], ShareEntry)
            for e in self.entries
        ):
            raise MalformedMessage("entries must be a tuple of (dealer, ShareEntry) pairs")
        dealers = [d for d, _ in self.entries]
        _check_sorted_unique("share entry dealers", dealers)
        if not set(dealers) <= set(self.senders):
            raise MalformedMessage("a share entry comes from a party not listed as a sender")


@dataclass(frozen=True)
class SurvivorsRequest:
    """End of stage 2: the parties whose masked inputs are in the sum (U3, a roster bitmap)."""

    stage: ClassVar[Stage] = Stage.MASKED_INPUT

    round_id: int
    session_id: bytes
    survivors: bytes

    def __post_init__(self) -> None:
        _check_int("round_id", self.round_id)
        _check_bytes("session_id", self.session_id, SESSION_ID_BYTES)
        _check_bytes("survivors", self.survivors)


@dataclass(frozen=True)
class UnmaskRequest:
    """End of stage 3, for one recipient: the signed survivor digest and the consistency
    signatures of the recipient's share holders."""

    stage: ClassVar[Stage] = Stage.CONSISTENCY_CHECK

    round_id: int
    session_id: bytes
    survivors_digest: bytes
    consistency_signatures: tuple[tuple[int, bytes], ...]  # (signer, signature)

    def __post_init__(self) -> None:
        _check_int("round_id", self.round_id)
        _check_bytes("session_id", self.session_id, SESSION_ID_BYTES)
        _check_bytes("survivors_digest", self.survivors_digest, DIGEST_BYTES)
        _check_pairs("consistency_signatures", self.consistency_signatures, SIGNATURE_BYTES)


ServerMessage: TypeAlias = KeyRoster | ShareBundle | SurvivorsRequest | UnmaskRequest
