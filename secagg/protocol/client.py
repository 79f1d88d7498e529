"""The client side of one round, as a sans-IO state machine.

A session is built from the round config the aggregator proposed *and the site's own*
:class:`~secagg.protocol.policy.SitePolicy`: if the proposal is not acceptable (roster, threshold,
degree, context, round id), construction raises :class:`~secagg.errors.PolicyViolation` before
anything exists that could be sent. Feed it the server's messages with
:meth:`ClientSession.receive`; it returns the message to send back. Any server message that does
not fit the current stage, or that an honest server would never send, moves the session to
``Stage.ABORTED`` for good and raises; nothing secret is revealed after that. Every step is
recorded in the site's ledger before its message leaves (:mod:`secagg.protocol.ledger`).

The unmask answer is built from one per-peer switch over the signed survivor set (survivor ->
self-mask share, dropped -> mask-key share), and the session answers at most one unmask request,
so it can never reveal both secrets of one peer.

Shares this site cannot accept (a dealer's entry that does not decrypt, or does not match the
dealer's signed commitments) are not held; the site complains with evidence in its masked input
(its inbox private key for that dealer only), so the server can tell who cheated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from secagg.crypto import (
    PURPOSE_SHARE_AEAD,
    PURPOSE_SHARE_INBOX,
    SHARE_BYTES,
    IdentityKey,
    KeyAgreementKey,
    RandomSource,
    derive_key,
    exchange,
    lp_encode,
    open_sealed,
    random_seed,
    seal,
    split_many,
)
from secagg.crypto.rng import resolve
from secagg.errors import (
    CryptoError,
    InvalidSignature,
    LocalProtocolError,
    MalformedMessage,
    MaliciousServerError,
    OutcomeMismatch,
    PolicyViolation,
    ReplayedMessage,
    RoundAborted,
    UnexpectedMessage,
    UnknownParty,
)
from secagg.protocol.config import RoundConfig
from secagg.protocol.ledger import (
    OutcomeChecked,
    RoundAccepted,
    RoundRefused,
    ShareComplaint,
    SharesRevealed,
    SiteLedger,
    SurvivorsSigned,
    epsilon_spent,
    last_round_id,
)
from secagg.protocol.masking import apply_masks, pairwise_seed, pairwise_sign
from secagg.protocol.messages import (
    AdvertiseKeys,
    ClientMessage,
    Complaint,
    ConsistencySignature,
    InboxKey,
    KeyRoster,
    MaskedInput,
    ServerMessage,
    ShareBundle,
    ShareEntry,
    ShareKeys,
    Stage,
    SurvivorsRequest,
    UnmaskRequest,
    UnmaskShares,
    compute_session_id,
    seed_commitment,
    share_commitment,
    signing_context,
    survivors_digest,
    survivors_payload,
)
from secagg.protocol.policy import OfferedDP, SitePolicy

__all__ = [
    "STATE_FORMAT",
    "ClientSession",
    "StateValue",
    "check_offer",
    "inbox_private_key",
    "open_share_entry",
    "share_associated_data",
    "share_key",
]

STATE_FORMAT = "secagg.client-session/2"
StateValue = bytes | int | str | bool | list[int] | list[bytes]
"""A value of :meth:`ClientSession.export_state` (plain types any key-value store can hold)."""


def share_key(
    shared_secret: bytes, *, round_id: int, session_id: bytes, sender: int, receiver: int
) -> bytes:
    """The AEAD key of the shares ``sender`` deals to ``receiver`` (one direction only)."""
    return derive_key(
        shared_secret,
        purpose=PURPOSE_SHARE_AEAD,
        round_id=round_id,
        session_id=session_id,
        parties=(sender, receiver),
    )


def share_associated_data(round_id: int, session_id: bytes, sender: int, receiver: int) -> bytes:
    """Associated data binding a share ciphertext to its round, session, sender and receiver."""
    return lp_encode("share", round_id, session_id, sender, receiver)


def inbox_private_key(inbox_seed: bytes, *, round_id: int, holder: int, dealer: int) -> bytes:
    """The X25519 private key under which ``holder`` receives ``dealer``'s shares."""
    return derive_key(
        inbox_seed,
        purpose=PURPOSE_SHARE_INBOX,
        round_id=round_id,
        session_id=b"",
        parties=(holder, dealer),
    )


def open_share_entry(
    entry: ShareEntry,
    *,
    inbox_private: bytes,
    dealer_cipher_public: bytes,
    round_id: int,
    session_id: bytes,
    dealer: int,
) -> tuple[bytes, bytes]:
    """Decrypt ``entry`` and check it against the dealer's commitments.

    Used by the holder (with its own inbox key) and by the server to judge a complaint (with the
    key the complaint reveals). Returns (seed share, key share). Raises:
        CryptoError: the entry does not decrypt, or a share does not match its commitment.
    """
    key = share_key(
        exchange(inbox_private, dealer_cipher_public),
        round_id=round_id,
        session_id=session_id,
        sender=dealer,
        receiver=entry.receiver,
    )
    aad = share_associated_data(round_id, session_id, dealer, entry.receiver)
    plaintext = open_sealed(key, entry.ciphertext, aad)
    if len(plaintext) != 2 * SHARE_BYTES:
        raise CryptoError("a decrypted share has the wrong length")
    seed_share, key_share = plaintext[:SHARE_BYTES], plaintext[SHARE_BYTES:]
    for kind, share, committed in (
        ("seed", seed_share, entry.seed_commitment),
        ("key", key_share, entry.key_commitment),
    ):
        if share_commitment(kind, round_id, session_id, dealer, entry.receiver, share) != committed:
            raise CryptoError(f"the {kind} share does not match the dealer's commitment")
    return seed_share, key_share


def check_offer(
    config: RoundConfig,
    party: int,
    *,
    policy: SitePolicy,
    ledger: SiteLedger,
    dp: OfferedDP | None = None,
) -> None:
    """Refuse (PolicyViolation, recorded in the ledger) a round the site's policy does not accept.

    A :class:`ClientSession` runs it on construction; transports run it as soon as the round is
    offered, before the site even computes its update.
    """
    scope = policy.scope(config)
    try:
        policy.check_round(config)
        policy.check_round_id(config, last_round_id(ledger, scope))
        policy.check_distributed_dp(dp, epsilon_spent(ledger, scope))
    except PolicyViolation as exc:
        ledger.append(
            RoundRefused(
                config.round_id,
                party,
                scope=scope,
                config_digest=config.digest,
                parameter=exc.parameter,
                offered=str(exc.offered),
                required=str(exc.required),
                reason=exc.reason,
            )
        )
        raise


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
        *,
        policy: SitePolicy,
        ledger: SiteLedger,
        dp: OfferedDP | None = None,
        rng: RandomSource | None = None,
    ) -> None:
        if not isinstance(policy, SitePolicy):
            raise LocalProtocolError("policy must be a SitePolicy (the site's own assumptions)")
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
        self.policy = policy
        self._ledger = ledger
        self._dp = dp
        self._scope = policy.scope(config)
        self._check_policy()
        rng = resolve(rng)
        self._rng = rng
        self._identity = identity
        self._input = x
        self._stage = Stage.ADVERTISE_KEYS
        self._advertised = False
        self._abort_reason: str | None = None
        self._cipher_key = KeyAgreementKey.generate(rng)
        self._mask_key = KeyAgreementKey.generate(rng)
        self._self_mask_seed = random_seed(rng)
        self._inbox_seed = random_seed(rng)
        self._session_id = b""
        self._holders: frozenset[int] = frozenset()
        self._peer_keys: dict[int, AdvertiseKeys] = {}
        # Shares this client holds, by owner: (share of owner's self-mask seed, of its mask key).
        self._held_shares: dict[int, tuple[bytes, bytes]] = {}
        self._share_senders: frozenset[int] = frozenset()
        self._survivors: bytes | None = None  # the survivor bitmap this client signed
        self._survivors_digest: bytes | None = None

    def _check_policy(self) -> None:
        check_offer(self.config, self.party, policy=self.policy, ledger=self._ledger, dp=self._dp)

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

    @property
    def signed_survivors(self) -> frozenset[int] | None:
        """The survivor set this client signed (None before the consistency check)."""
        if self._survivors is None:
            return None
        return self.config.roster_index.decode(self._survivors)

    def advertise_keys(self) -> AdvertiseKeys:
        """The first message of the round. May be called once."""
        if self._advertised or self._stage is not Stage.ADVERTISE_KEYS:
            raise LocalProtocolError("advertise_keys() was already called for this round")
        cfg = self.config
        # Re-checked here: another session of this site may have taken this round id meanwhile.
        self.policy.check_round_id(cfg, last_round_id(self._ledger, self._scope))
        context = signing_context(Stage.ADVERTISE_KEYS, cfg.round_id, cfg.digest, b"", self.party)
        inbox = []
        for dealer in sorted(cfg.graph.neighbours(self.party)):
            public = KeyAgreementKey(self._inbox_private(dealer)).public_bytes
            unsigned = InboxKey(dealer, public, bytes(64))
            inbox.append(InboxKey(dealer, public, self._identity.sign(context, unsigned.payload())))
        p = self.policy
        self._ledger.append(
            RoundAccepted(
                cfg.round_id,
                self.party,
                scope=self._scope,
                config_digest=cfg.digest,
                roster_fingerprint=cfg.roster_fingerprint,
                roster_size=len(cfg.roster),
                threshold=cfg.threshold,
                degree=0 if cfg.graph.is_full else cfg.graph.degree,
                minimum_threshold=p.minimum_threshold(cfg),
                policy=(
                    f"adversary={p.adversary.value} corrupt_fraction={p.corrupt_fraction:g} "
                    f"dropout_rate={p.dropout_rate:g} security_bits={p.security_bits}"
                ),
                dp_epsilon=0.0 if self._dp is None else self._dp.epsilon_per_round,
                dp_delta=0.0 if self._dp is None else self._dp.delta,
            )
        )
        self._advertised = True
        return AdvertiseKeys.signed(
            self._identity,
            cfg.digest,
            round_id=cfg.round_id,
            sender=self.party,
            cipher_public_key=self._cipher_key.public_bytes,
            mask_public_key=self._mask_key.public_bytes,
            seed_commitment=seed_commitment(
                cfg.round_id, cfg.digest, self.party, self._self_mask_seed
            ),
            inbox_keys=tuple(inbox),
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
        except Exception as exc:
            # Any failure (a remote lie, a local fault such as a ledger that cannot be written) is
            # final: the session forgets its secrets and never sends again.
            self.abort(str(exc))
            raise
        self._stage = next_stage
        if next_stage is Stage.COMPLETED:
            self._forget_secrets()
        return reply

    def check_outcome(self, survivors: Iterable[int], result_digest: bytes) -> None:
        """Compare the announced outcome with the survivor set this client signed.

        Records the outcome in the ledger; raises :class:`~secagg.errors.OutcomeMismatch` (an
        alarm, also recorded) when the aggregator claims another survivor set.
        """
        if self._stage is not Stage.COMPLETED or self._survivors is None:
            raise LocalProtocolError("only a completed session can check the round's outcome")
        announced = tuple(sorted(set(survivors)))
        signed = tuple(sorted(self.config.roster_index.decode(self._survivors)))
        mismatch = ""
        if announced != signed:
            extra = sorted(set(announced) - set(signed))
            missing = sorted(set(signed) - set(announced))
            mismatch = (
                f"the outcome's survivors differ from the set this site signed: "
                f"not signed {extra}, signed but missing {missing}"
            )
        self._ledger.append(
            OutcomeChecked(
                self.config.round_id,
                self.party,
                survivors=announced,
                result_digest=bytes(result_digest),
                mismatch=mismatch,
            )
        )
        if mismatch:
            raise OutcomeMismatch(mismatch)

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
        round ends. The identity key, the round config, the policy and the ledger are not
        included; pass them again to :meth:`restore`.
        """
        peers = [self._peer_keys[p] for p in sorted(self._peer_keys)]
        held = sorted(self._held_shares.items())
        inbox = [ad.inbox_key(self.party) for ad in peers]
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
            "inbox_seed": self._inbox_seed,
            "session_id": self._session_id,
            "holders": sorted(self._holders),
            "peer_senders": [ad.sender for ad in peers],
            "peer_cipher_keys": [ad.cipher_public_key for ad in peers],
            "peer_mask_keys": [ad.mask_public_key for ad in peers],
            "peer_seed_commitments": [ad.seed_commitment for ad in peers],
            "peer_signatures": [ad.signature for ad in peers],
            "peer_inbox_keys": [b"" if k is None else k.public_key for k in inbox],
            "peer_inbox_signatures": [b"" if k is None else k.signature for k in inbox],
            "held_owners": [owner for owner, _ in held],
            "held_seed_shares": [pair[0] for _, pair in held],
            "held_key_shares": [pair[1] for _, pair in held],
            "share_senders": sorted(self._share_senders),
            "survivors": self._survivors or b"",
            "survivors_digest": self._survivors_digest or b"",
        }

    @classmethod
    def restore(
        cls,
        config: RoundConfig,
        identity: IdentityKey,
        state: Mapping[str, Any],
        *,
        policy: SitePolicy,
        ledger: SiteLedger,
        rng: RandomSource | None = None,
    ) -> ClientSession:
        """Rebuild a session saved by :meth:`export_state` (for the same config and identity).

        The policy is checked again (a restored session is still this site's decision); the
        round-id check is skipped once the saved session has advertised, since the ledger
        already holds this very round.
        """
        try:
            if state["format"] != STATE_FORMAT:
                raise LocalProtocolError(f"unknown session state format {state['format']!r}")
            if bytes(state["config_digest"]) != config.digest:
                raise LocalProtocolError("the saved session belongs to another round config")
            vector = np.frombuffer(bytes(state["input"]), dtype="<u4").astype(np.uint32)
            session = cls.__new__(cls)
            session.config = config
            session.party = int(state["party"])
            session.policy = policy
            session._ledger = ledger
            session._dp = None
            session._scope = policy.scope(config)
            policy.check_round(config)
            if not bool(state["advertised"]):
                session._check_policy()
            session._rng = resolve(rng)
            session._identity = identity
            if config.roster.get(session.party) != identity.public_key:
                raise LocalProtocolError("the identity key does not match the saved party")
            session._input = vector
            session._stage = Stage(state["stage"])
            session._advertised = bool(state["advertised"])
            session._abort_reason = str(state["abort_reason"]) or None
            session._cipher_key = KeyAgreementKey.from_private_bytes(bytes(state["cipher_key"]))
            session._mask_key = KeyAgreementKey.from_private_bytes(bytes(state["mask_key"]))
            session._self_mask_seed = bytes(state["self_mask_seed"])
            session._inbox_seed = bytes(state["inbox_seed"])
            session._session_id = bytes(state["session_id"])
            session._holders = frozenset(int(p) for p in state["holders"])
            session._peer_keys = {}
            for p, c, m, com, sig, ik, isig in zip(
                state["peer_senders"],
                state["peer_cipher_keys"],
                state["peer_mask_keys"],
                state["peer_seed_commitments"],
                state["peer_signatures"],
                state["peer_inbox_keys"],
                state["peer_inbox_signatures"],
                strict=True,
            ):
                inbox = (InboxKey(session.party, bytes(ik), bytes(isig)),) if ik else ()
                session._peer_keys[int(p)] = AdvertiseKeys(
                    config.round_id, int(p), bytes(c), bytes(m), bytes(com), inbox, bytes(sig)
                )
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
            session._survivors = bytes(state["survivors"]) or None
            session._survivors_digest = bytes(state["survivors_digest"]) or None
        except (KeyError, TypeError, ValueError) as exc:
            raise LocalProtocolError(f"the saved client session is unreadable: {exc}") from exc
        return session

    # --- stage handlers -------------------------------------------------------------------

    def _on_key_roster(self, msg: KeyRoster) -> ShareKeys:
        cfg = self.config
        if msg.recipient != self.party:
            raise MaliciousServerError(f"the key roster is addressed to party {msg.recipient}")
        index = cfg.roster_index
        index.check(msg.advertised)
        if not index.contains(msg.advertised, self.party):
            raise MaliciousServerError("the key roster says this client did not advertise keys")
        advertised = index.count(msg.advertised)
        if advertised < cfg.threshold:
            raise RoundAborted(
                Stage.ADVERTISE_KEYS.value,
                f"only {advertised} parties advertised keys, threshold is {cfg.threshold}",
            )
        ads = {ad.sender: ad for ad in msg.advertisements}
        neighbours = frozenset(
            v for v in cfg.graph.neighbours(self.party) if index.contains(msg.advertised, v)
        )
        if ads.keys() != neighbours:
            raise MaliciousServerError(
                "the key roster does not hold exactly the advertisements of this client's "
                "neighbours that advertised"
            )
        keys = [self._cipher_key.public_bytes, self._mask_key.public_bytes]
        sendable: dict[int, bytes] = {}  # neighbour -> its inbox key for this client
        for v, ad in ads.items():
            if ad.round_id != cfg.round_id:
                raise ReplayedMessage(f"advertisement of party {v} is from another round")
            try:
                ad.verify(cfg.roster[v], cfg.digest)
            except InvalidSignature as exc:
                raise InvalidSignature(f"advertisement of party {v} is not signed by it") from exc
            keys += [ad.cipher_public_key, ad.mask_public_key]
            inbox = ad.inbox_key(self.party)
            if inbox is None:
                raise MaliciousServerError(f"party {v}'s advertisement has no inbox key for us")
            try:
                ad.verify_inbox_key(inbox, cfg.digest, cfg.roster[v])
            except InvalidSignature:
                continue  # the sender or the server spoiled it: send v nothing (v's loss only)
            sendable[v] = inbox.public_key
        if len(set(keys)) != len(keys):
            raise MaliciousServerError("the key roster repeats a public key")
        holders = frozenset(neighbours | {self.party})
        if len(sendable) + 1 < cfg.threshold:
            raise RoundAborted(
                Stage.ADVERTISE_KEYS.value,
                f"only {len(sendable) + 1} of party {self.party}'s neighbourhood can receive "
                f"shares, threshold is {cfg.threshold}",
            )
        self._session_id = compute_session_id(cfg.digest, msg.advertised)
        self._holders = holders
        self._peer_keys = {v: ad.for_dealer(self.party) for v, ad in ads.items()}

        seed_shares, key_shares = split_many(
            [self._self_mask_seed, self._mask_key.private_bytes()],
            threshold=cfg.threshold,
            xs=sorted(holders),
            rng=self._rng,
        )
        self._held_shares[self.party] = (seed_shares[self.party], key_shares[self.party])
        context = signing_context(
            Stage.SHARE_KEYS, cfg.round_id, cfg.digest, self._session_id, self.party
        )
        entries = []
        for v in sorted(sendable):
            key = share_key(
                self._cipher_key.exchange(sendable[v]),
                round_id=cfg.round_id,
                session_id=self._session_id,
                sender=self.party,
                receiver=v,
            )
            aad = share_associated_data(cfg.round_id, self._session_id, self.party, v)
            commitments = [
                share_commitment(kind, cfg.round_id, self._session_id, self.party, v, share)
                for kind, share in (("seed", seed_shares[v]), ("key", key_shares[v]))
            ]
            unsigned = ShareEntry(
                v,
                seal(key, seed_shares[v] + key_shares[v], aad, rng=self._rng),
                commitments[0],
                commitments[1],
                bytes(64),
            )
            signature = self._identity.sign(context, unsigned.payload())
            entries.append(
                ShareEntry(v, unsigned.ciphertext, commitments[0], commitments[1], signature)
            )
        return ShareKeys.signed(
            self._identity,
            cfg.digest,
            round_id=cfg.round_id,
            sender=self.party,
            session_id=self._session_id,
            entries=tuple(entries),
        )

    def _on_share_bundle(self, msg: ShareBundle) -> MaskedInput:
        cfg = self.config
        self._check_session(msg.session_id)
        senders = frozenset(msg.senders)
        strangers = senders - self._peer_keys.keys()
        if strangers:
            raise UnknownParty(f"shares from parties that are not neighbours: {sorted(strangers)}")
        complaints: list[Complaint] = []
        for dealer, entry in msg.entries:
            if entry.receiver != self.party:
                raise MaliciousServerError(f"party {dealer}'s entry is addressed to another party")
            context = signing_context(
                Stage.SHARE_KEYS, cfg.round_id, cfg.digest, self._session_id, dealer
            )
            try:
                cfg.roster[dealer].verify(entry.signature, context, entry.payload())
            except InvalidSignature:
                continue  # unverifiable: neither proof nor shares; this site holds none of them
            inbox_private = self._inbox_private(dealer)
            try:
                self._held_shares[dealer] = open_share_entry(
                    entry,
                    inbox_private=inbox_private,
                    dealer_cipher_public=self._peer_keys[dealer].cipher_public_key,
                    round_id=cfg.round_id,
                    session_id=self._session_id,
                    dealer=dealer,
                )
            except CryptoError as exc:
                self._ledger.append(
                    ShareComplaint(
                        cfg.round_id, self.party, self._session_id, dealer, str(exc) or "bad entry"
                    )
                )
                complaints.append(Complaint(dealer, inbox_private, entry))
        live = senders | {self.party}
        if len(live) < cfg.threshold:
            raise RoundAborted(
                Stage.SHARE_KEYS.value,
                f"only {len(live)} of party {self.party}'s neighbourhood shared keys, "
                f"threshold is {cfg.threshold}",
            )
        self._share_senders = senders

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
        return MaskedInput.signed(
            self._identity,
            cfg.digest,
            round_id=cfg.round_id,
            sender=self.party,
            session_id=self._session_id,
            masked_vector=masked,
            complaints=tuple(complaints),
        )

    def _on_survivors(self, msg: SurvivorsRequest) -> ConsistencySignature:
        cfg = self.config
        self._check_session(msg.session_id)
        index = cfg.roster_index
        try:
            index.check(msg.survivors)
        except MalformedMessage as exc:
            raise MaliciousServerError(f"the survivor set is malformed: {exc}") from None
        if not index.contains(msg.survivors, self.party):
            raise MaliciousServerError("the survivor set omits this client, which sent its input")
        # A neighbour can only be a survivor if it shared keys with us (U3 is a subset of U2).
        impossible = sorted(
            v
            for v in cfg.graph.neighbours(self.party) - self._share_senders
            if index.contains(msg.survivors, v)
        )
        if impossible:
            raise MaliciousServerError(
                f"survivors {impossible} never shared keys with party {self.party}"
            )
        count = index.count(msg.survivors)
        if count < cfg.threshold:
            raise RoundAborted(
                Stage.MASKED_INPUT.value,
                f"only {count} masked inputs, threshold is {cfg.threshold}",
            )
        digest = survivors_digest(self._session_id, msg.survivors)
        self._ledger.append(
            SurvivorsSigned(cfg.round_id, self.party, self._session_id, msg.survivors, digest)
        )
        self._survivors, self._survivors_digest = msg.survivors, digest
        return ConsistencySignature.signed(
            self._identity,
            cfg.digest,
            round_id=cfg.round_id,
            sender=self.party,
            session_id=self._session_id,
            survivors_digest=digest,
        )

    def _on_unmask_request(self, msg: UnmaskRequest) -> UnmaskShares:
        cfg = self.config
        self._check_session(msg.session_id)
        survivors = self._survivors
        if survivors is None or msg.survivors_digest != self._survivors_digest:
            raise MaliciousServerError("the unmask request contradicts the signed survivor set")
        self._check_consistency_signatures(msg, survivors)

        index = cfg.roster_index
        self_mask_shares: list[tuple[int, bytes]] = []
        mask_key_shares: list[tuple[int, bytes]] = []
        for owner in sorted(self._held_shares):
            if owner == self.party and not self._reveals_own_seed_share():
                continue
            seed_share, key_share = self._held_shares[owner]
            # One switch per peer over the signed set: never both secrets of one owner.
            if index.contains(survivors, owner):  # alive: its self mask must go
                self_mask_shares.append((owner, seed_share))
            elif owner in self._share_senders:  # dropped: its pairwise masks must be recomputed
                mask_key_shares.append((owner, key_share))
        self._ledger.append(
            SharesRevealed(
                cfg.round_id,
                self.party,
                self._session_id,
                msg.survivors_digest,
                tuple(o for o, _ in self_mask_shares),
                tuple(o for o, _ in mask_key_shares),
            )
        )
        return UnmaskShares.signed(
            self._identity,
            cfg.digest,
            round_id=cfg.round_id,
            sender=self.party,
            session_id=self._session_id,
            survivors_digest=msg.survivors_digest,
            self_mask_shares=tuple(self_mask_shares),
            mask_key_shares=tuple(mask_key_shares),
        )

    # --- helpers --------------------------------------------------------------------------

    def _check_consistency_signatures(self, msg: UnmaskRequest, survivors: bytes) -> None:
        """Require t valid signatures over the survivor digest from this client's holders.

        In the full graph that is Bonawitz et al.'s check; in a sparse graph the neighbourhood is
        where this client's shares live. Verification stops after t valid signatures, but any
        invalid signature met on the way aborts as malicious: an honest server only forwards
        valid ones. Too few valid ones abort the round (RoundAborted) without blaming the server.
        """
        cfg = self.config
        index = cfg.roster_index
        payload = survivors_payload(msg.survivors_digest)
        valid = 0
        for signer, signature in msg.consistency_signatures:
            if not index.contains(survivors, signer):
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
        # Not an accusation: an honest server under dropouts can have too few. Either way this
        # client reveals nothing.
        raise RoundAborted(
            Stage.CONSISTENCY_CHECK.value,
            f"only {valid} valid consistency signatures from this client's neighbourhood, "
            f"threshold is {cfg.threshold}",
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

    def _inbox_private(self, dealer: int) -> bytes:
        return inbox_private_key(
            self._inbox_seed, round_id=self.config.round_id, holder=self.party, dealer=dealer
        )

    def _check_session(self, session_id: bytes) -> None:
        if session_id != self._session_id:
            raise ReplayedMessage("message belongs to another session")

    def _forget_secrets(self) -> None:
        self._held_shares.clear()
        self._self_mask_seed = b""
        self._inbox_seed = b""

    def __repr__(self) -> str:
        stage = self._stage.value
        return f"ClientSession(party={self.party}, round={self.config.round_id}, stage={stage})"
