"""The client side of one round, as a sans-IO state machine.

Feed it the server's messages with :meth:`ClientSession.receive`; it returns the message to send
back. Any server message that does not fit the current stage, or that an honest server would never
send, moves the session to ``Stage.ABORTED`` for good and raises; nothing secret is revealed after
that. The unmask answer is built from one per-peer switch (survivor -> self-mask share, dropped ->
mask-key share), and the session answers at most one unmask request, so it can never reveal both
secrets of one peer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from secagg.crypto import (
    PURPOSE_SHARE_AEAD,
    SHARE_BYTES,
    IdentityKey,
    KeyAgreementKey,
    derive_key,
    lp_encode,
    open_sealed,
    random_seed,
    seal,
    split_many,
)
from secagg.errors import (
    CryptoError,
    InvalidSignature,
    LocalProtocolError,
    MalformedMessage,
    MaliciousServerError,
    ProtocolError,
    ReplayedMessage,
    RoundAborted,
    UnexpectedMessage,
    UnknownParty,
)
from secagg.protocol.config import RoundConfig
from secagg.protocol.masking import apply_masks, pairwise_seed, pairwise_sign
from secagg.protocol.messages import (
    AdvertiseKeys,
    ClientMessage,
    ConsistencySignature,
    KeyRoster,
    MaskedInput,
    ServerMessage,
    ShareBundle,
    ShareKeys,
    Stage,
    SurvivorsRequest,
    UnmaskRequest,
    UnmaskShares,
    compute_session_id,
    signing_context,
    survivors_payload,
)

__all__ = ["STATE_FORMAT", "ClientSession", "StateValue", "share_associated_data", "share_key"]

STATE_FORMAT = "secagg.client-session/1"
StateValue = bytes | int | str | bool | list[int] | list[bytes]
"""A value of :meth:`ClientSession.export_state` (plain types any key-value store can hold)."""


def share_key(shared_secret: bytes, *, round_id: int, session_id: bytes, a: int, b: int) -> bytes:
    """The AEAD key for shares exchanged between parties a and b (symmetric)."""
    return derive_key(
        shared_secret,
        purpose=PURPOSE_SHARE_AEAD,
        round_id=round_id,
        session_id=session_id,
        parties=(min(a, b), max(a, b)),
    )


def share_associated_data(round_id: int, session_id: bytes, sender: int, receiver: int) -> bytes:
    """Associated data binding a share ciphertext to its round, session, sender and receiver."""
    return lp_encode("share", round_id, session_id, sender, receiver)


class ClientSession:
    """One client's view of one round."""

    _TRANSITIONS: ClassVar[dict[tuple[Stage, type], tuple[str, Stage]]] = {
        (Stage.ADVERTISE_KEYS, KeyRoster): ("_on_key_roster", Stage.SHARE_KEYS),
        (Stage.SHARE_KEYS, ShareBundle): ("_on_share_bundle", Stage.MASKED_INPUT),
        (Stage.MASKED_INPUT, SurvivorsRequest): ("_on_survivors", Stage.CONSISTENCY_CHECK),
        (Stage.CONSISTENCY_CHECK, UnmaskRequest): ("_on_unmask_request", Stage.COMPLETED),
    }

    def __init__(
        self,
        config: RoundConfig,
        party: int,
        identity: IdentityKey,
        encoded_input: npt.NDArray[np.uint32],
    ) -> None:
        if party not in config.roster:
            raise LocalProtocolError(f"party {party} is not in the round's roster")
        if identity.public_key != config.roster[party]:
            raise LocalProtocolError(f"the identity key does not match party {party}'s roster key")
        x = np.asarray(encoded_input)
        if x.dtype != np.uint32 or x.shape != (config.vector_length,):
            raise LocalProtocolError(
                f"encoded_input must be uint32 of shape ({config.vector_length},), "
                f"got {x.dtype} {x.shape}"
            )
        if np.any(x > config.modulus_mask):
            raise LocalProtocolError(f"encoded_input has values outside Z_(2^{config.bits})")
        self.config = config
        self.party = party
        self._identity = identity
        self._input = x
        self._stage = Stage.ADVERTISE_KEYS
        self._advertised = False
        self._abort_reason: str | None = None
        self._cipher_key = KeyAgreementKey.generate()
        self._mask_key = KeyAgreementKey.generate()
        self._self_mask_seed = random_seed()
        self._session_id = b""
        self._holders: frozenset[int] = frozenset()
        self._peer_keys: dict[int, AdvertiseKeys] = {}
        # Shares this client holds, by owner: (share of owner's self-mask seed, of its mask key).
        self._held_shares: dict[int, tuple[bytes, bytes]] = {}
        self._share_senders: frozenset[int] = frozenset()
        self._signed_survivors: tuple[int, ...] | None = None
        self._share_keys: dict[int, bytes] = {}  # derived AEAD keys, kept from stage 1 to stage 2

    # --- public surface -------------------------------------------------------------------

    @property
    def stage(self) -> Stage:
        return self._stage

    @property
    def abort_reason(self) -> str | None:
        return self._abort_reason

    @property
    def session_id(self) -> bytes:
        return self._session_id

    def advertise_keys(self) -> AdvertiseKeys:
        """The first message of the round. May be called once."""
        if self._advertised or self._stage is not Stage.ADVERTISE_KEYS:
            raise LocalProtocolError("advertise_keys() was already called for this round")
        self._advertised = True
        return AdvertiseKeys.create(
            self._identity,
            round_id=self.config.round_id,
            sender=self.party,
            config_digest=self.config.digest,
            cipher_public_key=self._cipher_key.public_bytes,
            mask_public_key=self._mask_key.public_bytes,
        )

    def receive(self, message: ServerMessage) -> ClientMessage:
        """Process one server message and return the reply; abort on anything out of place."""
        if self._stage.is_terminal:
            raise LocalProtocolError(
                f"the session is {self._stage.value}"
                + (f" ({self._abort_reason})" if self._abort_reason else "")
            )
        if not self._advertised:
            raise LocalProtocolError("call advertise_keys() before receiving server messages")
        entry = self._TRANSITIONS.get((self._stage, type(message)))
        try:
            if entry is None:
                raise UnexpectedMessage(
                    f"{type(message).__name__} does not fit stage {self._stage.value}"
                )
            if message.round_id != self.config.round_id:
                raise ReplayedMessage(
                    f"message for round {message.round_id}, this is round {self.config.round_id}"
                )
            handler_name, next_stage = entry
            handler: Callable[[ServerMessage], ClientMessage] = getattr(self, handler_name)
            reply = handler(message)
        except (ProtocolError, CryptoError) as exc:
            self.abort(str(exc))
            raise
        self._stage = next_stage
        if next_stage is Stage.COMPLETED:
            self._forget_secrets()
        return reply

    def abort(self, reason: str) -> None:
        """Move to the aborted state for good and drop every secret."""
        self._stage = Stage.ABORTED
        self._abort_reason = reason
        self._forget_secrets()

    # --- persistence between messages ----------------------------------------------------

    def export_state(self) -> dict[str, StateValue]:
        """The session's complete state, **secrets included**, as plain values.

        For stacks that handle each message in a fresh process (Flower's SuperNode does): keep the
        result where the node keeps its own keys, never send it anywhere, delete it when the
        round ends. The identity key and the round config are not included; pass them again to
        :meth:`restore`.
        """
        peers = [self._peer_keys[p] for p in sorted(self._peer_keys)]
        held = sorted(self._held_shares.items())
        return {
            "format": STATE_FORMAT,
            "config_digest": self.config.digest,
            "party": self.party,
            "input": np.ascontiguousarray(self._input, dtype="<u4").tobytes(),
            "stage": self._stage.value,
            "advertised": self._advertised,
            "abort_reason": self._abort_reason or "",
            "cipher_key": self._cipher_key.private_bytes(),
            "mask_key": self._mask_key.private_bytes(),
            "self_mask_seed": self._self_mask_seed,
            "session_id": self._session_id,
            "holders": sorted(self._holders),
            "peer_senders": [ad.sender for ad in peers],
            "peer_cipher_keys": [ad.cipher_public_key for ad in peers],
            "peer_mask_keys": [ad.mask_public_key for ad in peers],
            "peer_signatures": [ad.signature for ad in peers],
            "held_owners": [owner for owner, _ in held],
            "held_seed_shares": [pair[0] for _, pair in held],
            "held_key_shares": [pair[1] for _, pair in held],
            "share_senders": sorted(self._share_senders),
            "signed_survivors": list(self._signed_survivors or ()),
            "has_signed_survivors": self._signed_survivors is not None,
        }

    @classmethod
    def restore(
        cls, config: RoundConfig, identity: IdentityKey, state: Mapping[str, Any]
    ) -> ClientSession:
        """Rebuild a session saved by :meth:`export_state` (for the same config and identity)."""
        try:
            if state["format"] != STATE_FORMAT:
                raise LocalProtocolError(f"unknown session state format {state['format']!r}")
            if bytes(state["config_digest"]) != config.digest:
                raise LocalProtocolError("the saved session belongs to another round config")
            vector = np.frombuffer(bytes(state["input"]), dtype="<u4").astype(np.uint32)
            session = cls(config, int(state["party"]), identity, vector)
            session._stage = Stage(state["stage"])
            session._advertised = bool(state["advertised"])
            session._abort_reason = str(state["abort_reason"]) or None
            session._cipher_key = KeyAgreementKey.from_private_bytes(bytes(state["cipher_key"]))
            session._mask_key = KeyAgreementKey.from_private_bytes(bytes(state["mask_key"]))
            session._self_mask_seed = bytes(state["self_mask_seed"])
            session._session_id = bytes(state["session_id"])
            session._holders = frozenset(int(p) for p in state["holders"])
            session._peer_keys = {
                int(p): AdvertiseKeys(config.round_id, int(p), bytes(c), bytes(m), bytes(sig))
                for p, c, m, sig in zip(
                    state["peer_senders"],
                    state["peer_cipher_keys"],
                    state["peer_mask_keys"],
                    state["peer_signatures"],
                    strict=True,
                )
            }
            session._held_shares = {
                int(o): (bytes(a), bytes(b))
                for o, a, b in zip(
                    state["held_owners"],
                    state["held_seed_shares"],
                    state["held_key_shares"],
                    strict=True,
                )
            }
            session._share_senders = frozenset(int(p) for p in state["share_senders"])
            session._signed_survivors = (
                tuple(int(p) for p in state["signed_survivors"])
                if state["has_signed_survivors"]
                else None
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LocalProtocolError(f"the saved client session is unreadable: {exc}") from exc
        return session

    # --- stage handlers -------------------------------------------------------------------

    def _on_key_roster(self, msg: KeyRoster) -> ShareKeys:
        cfg = self.config
        ads = {ad.sender: ad for ad in msg.advertisements}
        mine = ads.get(self.party)
        if mine is None or (
            mine.cipher_public_key != self._cipher_key.public_bytes
            or mine.mask_public_key != self._mask_key.public_bytes
        ):
            raise MaliciousServerError("the key roster does not contain this client's own keys")
        for ad in ads.values():
            if ad.round_id != cfg.round_id:
                raise ReplayedMessage(f"advertisement of party {ad.sender} is from another round")
            if ad.sender not in cfg.roster:
                raise UnknownParty(f"party {ad.sender} is not in the roster")
        if len(ads) < cfg.threshold:
            raise RoundAborted(
                Stage.ADVERTISE_KEYS.value,
                f"only {len(ads)} parties advertised keys, threshold is {cfg.threshold}",
            )
        all_keys = [k for ad in ads.values() for k in (ad.cipher_public_key, ad.mask_public_key)]
        if len(set(all_keys)) != len(all_keys):
            raise MaliciousServerError("the key roster repeats a public key")
        neighbours = cfg.graph.neighbours(self.party) & ads.keys()
        for v in neighbours:
            try:
                ads[v].verify(cfg.roster[v], cfg.digest)
            except InvalidSignature as exc:
                raise InvalidSignature(f"advertisement of party {v} is not signed by it") from exc
        holders = frozenset(neighbours | {self.party})
        if len(holders) < cfg.threshold:
            raise RoundAborted(
                Stage.ADVERTISE_KEYS.value,
                f"only {len(holders)} of party {self.party}'s neighbourhood advertised keys, "
                f"threshold is {cfg.threshold}",
            )
        self._session_id = compute_session_id(cfg.digest, ads.values())
        self._holders = holders
        self._peer_keys = {v: ads[v] for v in neighbours}

        xs = sorted(holders)
        seed_shares, key_shares = split_many(
            [self._self_mask_seed, self._mask_key.private_bytes()],
            threshold=cfg.threshold,
            xs=xs,
        )
        self._held_shares[self.party] = (seed_shares[self.party], key_shares[self.party])
        encrypted: list[tuple[int, bytes]] = []
        for v in xs:
            if v == self.party:
                continue
            key = self._share_key(v)
            plaintext = seed_shares[v] + key_shares[v]
            aad = share_associated_data(cfg.round_id, self._session_id, self.party, v)
            encrypted.append((v, seal(key, plaintext, aad)))
        return ShareKeys.create(
            self._identity,
            round_id=cfg.round_id,
            sender=self.party,
            config_digest=cfg.digest,
            session_id=self._session_id,
            encrypted_shares=tuple(encrypted),
        )

    def _on_share_bundle(self, msg: ShareBundle) -> MaskedInput:
        cfg = self.config
        self._check_session(msg.session_id)
        senders = {sender for sender, _ in msg.encrypted_shares}
        strangers = senders - self._peer_keys.keys()
        if strangers:
            raise UnknownParty(f"shares from parties that are not neighbours: {sorted(strangers)}")
        for sender, box in msg.encrypted_shares:
            aad = share_associated_data(cfg.round_id, self._session_id, sender, self.party)
            plaintext = open_sealed(self._share_key(sender), box, aad)
            self._held_shares[sender] = _split_share_plaintext(plaintext)
        live = senders | {self.party}
        if len(live) < cfg.threshold:
            raise RoundAborted(
                Stage.SHARE_KEYS.value,
                f"only {len(live)} of party {self.party}'s neighbourhood shared keys, "
                f"threshold is {cfg.threshold}",
            )
        self._share_senders = frozenset(senders)

        masked = self._input.copy()
        add: list[bytes] = [self._self_mask_seed]
        subtract: list[bytes] = []
        for v in sorted(senders):
            secret = self._mask_key.exchange(self._peer_keys[v].mask_public_key)
            seed = pairwise_seed(
                secret, round_id=cfg.round_id, session_id=self._session_id, a=self.party, b=v
            )
            (add if pairwise_sign(self.party, v) > 0 else subtract).append(seed)
        apply_masks(masked, add, subtract)
        np.bitwise_and(masked, np.uint32(cfg.modulus_mask), out=masked)
        return MaskedInput.create(
            self._identity,
            round_id=cfg.round_id,
            sender=self.party,
            config_digest=cfg.digest,
            session_id=self._session_id,
            masked_vector=masked,
        )

    def _on_survivors(self, msg: SurvivorsRequest) -> ConsistencySignature:
        cfg = self.config
        self._check_session(msg.session_id)
        survivors = set(msg.survivors)
        if self.party not in survivors:
            raise MaliciousServerError("the survivor set omits this client, which sent its input")
        unknown = survivors - cfg.roster.keys()
        if unknown:
            raise UnknownParty(f"survivors not in the roster: {sorted(unknown)}")
        # A neighbour can only be a survivor if it shared keys with us (U3 is a subset of U2).
        impossible = (survivors & cfg.graph.neighbours(self.party)) - self._share_senders
        if impossible:
            raise MaliciousServerError(
                f"survivors {sorted(impossible)} never shared keys with party {self.party}"
            )
        if len(survivors) < cfg.threshold:
            raise RoundAborted(
                Stage.MASKED_INPUT.value,
                f"only {len(survivors)} masked inputs, threshold is {cfg.threshold}",
            )
        self._signed_survivors = msg.survivors
        return ConsistencySignature.create(
            self._identity,
            round_id=cfg.round_id,
            sender=self.party,
            config_digest=cfg.digest,
            session_id=self._session_id,
            survivors=msg.survivors,
        )

    def _on_unmask_request(self, msg: UnmaskRequest) -> UnmaskShares:
        cfg = self.config
        self._check_session(msg.session_id)
        if msg.survivors != self._signed_survivors:
            raise MaliciousServerError("the unmask request contradicts the signed survivor set")
        both = set(msg.survivors) & set(msg.dropped)
        if both:
            raise MaliciousServerError(
                f"the unmask request asks for both secrets of parties {sorted(both)}"
            )
        self._check_consistency_signatures(msg)

        survivors, dropped = set(msg.survivors), set(msg.dropped)
        self_mask_shares: list[tuple[int, bytes]] = []
        mask_key_shares: list[tuple[int, bytes]] = []
        for owner in sorted(self._held_shares):
            if owner == self.party and not self._reveals_own_seed_share():
                continue
            seed_share, key_share = self._held_shares[owner]
            if owner in survivors:  # alive: its self mask must go, its pairwise masks cancel
                self_mask_shares.append((owner, seed_share))
            elif owner in dropped:  # dropped: its pairwise masks must be recomputed
                mask_key_shares.append((owner, key_share))
        return UnmaskShares.create(
            self._identity,
            round_id=cfg.round_id,
            sender=self.party,
            config_digest=cfg.digest,
            session_id=self._session_id,
            self_mask_shares=tuple(self_mask_shares),
            mask_key_shares=tuple(mask_key_shares),
        )

    # --- helpers --------------------------------------------------------------------------

    def _check_consistency_signatures(self, msg: UnmaskRequest) -> None:
        """Require t valid signatures over the survivor set from this client's neighbourhood.

        In the full graph that is Bonawitz et al.'s check; in a sparse graph the neighbourhood is
        where this client's shares live. Verification stops after t valid signatures, but any
        invalid signature met on the way aborts: an honest server only forwards valid ones.
        """
        cfg = self.config
        payload = survivors_payload(msg.survivors)
        valid = 0
        for signer, signature in msg.consistency_signatures:
            if signer not in msg.survivors:
                raise MaliciousServerError(f"consistency signature from non-survivor {signer}")
            if signer not in self._holders:
                continue
            context = signing_context(
                Stage.CONSISTENCY_CHECK, cfg.round_id, cfg.digest, self._session_id, signer
            )
            try:
                cfg.roster[signer].verify(signature, context, payload)
            except InvalidSignature as exc:
                raise MaliciousServerError(
                    f"the consistency signature of party {signer} does not verify"
                ) from exc
            valid += 1
            if valid == cfg.threshold:
                return
        raise MaliciousServerError(
            f"only {valid} valid consistency signatures from this client's neighbourhood, "
            f"threshold is {cfg.threshold}"
        )

    def _reveals_own_seed_share(self) -> bool:
        """Whether this client sends the server its own share of its own self-mask seed.

        In a sparse (SecAgg+) graph it does so only when the threshold needs every holder
        (t = k + 1). Otherwise a semi-malicious server that shows this client's k neighbours
        different survivor sets gets, besides the X corrupt neighbours' shares, this client's own
        seed share on top of the honest neighbours' split: it would need only X >= 2t - k - 1
        corrupt neighbours to rebuild both the self-mask seed and the mask key, one fewer than the
        X >= 2t - k that :func:`secagg.protocol.params.choose_parameters` makes negligible. Without
        the own share the attack needs X >= 2t - k again, and correctness needs t surviving
        neighbours, which is what the parameter finder's correctness bound already assumes.
        The full graph keeps the own share: its rule 2t > n + n_C counts every party as a holder.
        """
        graph = self.config.graph
        return graph.is_full or self.config.threshold > graph.degree

    def _check_session(self, session_id: bytes) -> None:
        if session_id != self._session_id:
            raise ReplayedMessage("message belongs to another session")

    def _share_key(self, peer: int) -> bytes:
        key = self._share_keys.get(peer)
        if key is None:
            secret = self._cipher_key.exchange(self._peer_keys[peer].cipher_public_key)
            key = self._share_keys[peer] = share_key(
                secret,
                round_id=self.config.round_id,
                session_id=self._session_id,
                a=self.party,
                b=peer,
            )
        return key

    def _forget_secrets(self) -> None:
        self._held_shares.clear()
        self._share_keys.clear()
        self._self_mask_seed = b""

    def __repr__(self) -> str:
        stage = self._stage.value
        return f"ClientSession(party={self.party}, round={self.config.round_id}, stage={stage})"


def _split_share_plaintext(plaintext: bytes) -> tuple[bytes, bytes]:
    """A share plaintext is seed share || key share; sender and receiver are bound by the AD."""
    if len(plaintext) != 2 * SHARE_BYTES:
        raise MalformedMessage("a decrypted share has the wrong length")
    return plaintext[:SHARE_BYTES], plaintext[SHARE_BYTES:]
