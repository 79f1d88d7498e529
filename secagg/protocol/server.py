"""The server side of one round, as a sans-IO state machine.

The transport feeds client messages to :meth:`ServerSession.receive` and, when a stage's deadline
passes (or every expected party has answered), calls :meth:`ServerSession.close_stage`, which
returns the messages to deliver for the next stage, one per recipient. Parties that did not answer
in time are the stage's dropouts. Too few parties at any stage abort the round with
:class:`~secagg.errors.RoundAborted` naming the stage.

What each stage accepts and how it ends is one row of :data:`_STAGES`, so no transition lives
outside the table. A bad client message raises a typed error and changes nothing but, when it is
provably a lie (:class:`~secagg.errors.CheatingDetected`), the record of who cheated: one faulty or
malicious client cannot spoil the round for the others. Any other failure (a bug, a local fault)
aborts the round for good, as h11 does.

Cheaters are found from signed evidence only: a revealed share is checked against its dealer's
signed commitment (the holder lied), a reconstructed seed against its owner's signed commitment
and a reconstructed mask key against its owner's public key (the dealer lied), a complaint about a
share entry by opening the entry with the key the complaint reveals (the dealer lied, or the
complainer). No site can frame another.

Masked inputs are added into one accumulator on arrival; the server never holds n vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from secagg.crypto import KeyAgreementKey, exchange, reconstruct_many
from secagg.errors import (
    CheatingDetected,
    CryptoError,
    LocalProtocolError,
    MalformedMessage,
    RemoteProtocolError,
    ReplayedMessage,
    RoundAborted,
    ShamirError,
    UnexpectedMessage,
    UnknownParty,
)
from secagg.protocol.client import open_share_entry
from secagg.protocol.config import RoundConfig
from secagg.protocol.masking import apply_masks, pairwise_seed, pairwise_sign
from secagg.protocol.messages import (
    ACTIVE_STAGES,
    AdvertiseKeys,
    ClientMessage,
    Complaint,
    ConsistencySignature,
    KeyRoster,
    MaskedInput,
    ServerMessage,
    ShareBundle,
    ShareEntry,
    ShareKeys,
    Stage,
    SurvivorsRequest,
    UnmaskReceipt,
    UnmaskRequest,
    UnmaskShares,
    compute_session_id,
    seed_commitment,
    share_commitment,
    survivors_digest,
)

__all__ = ["AggregateResult", "RoundTranscript", "ServerSession"]

_CLIENT_FAULTS = (RemoteProtocolError, CryptoError)
"""Errors that blame the sending client: they reject its message and leave the round as it was."""


@dataclass(frozen=True, eq=False)
class AggregateResult:
    """The outcome of a completed round: the sum over ``survivors`` in Z_(2^b)."""

    round_id: int
    session_id: bytes
    total: npt.NDArray[np.uint32]
    survivors: tuple[int, ...]
    participants: Mapping[Stage, tuple[int, ...]] = field(repr=False)
    dropouts: Mapping[Stage, tuple[int, ...]] = field(repr=False)
    cheaters: Mapping[int, str] = field(default_factory=dict, repr=False)
    """Parties proven to have cheated, with the evidence in words (their inputs may be summed)."""


@dataclass(frozen=True, eq=False)
class RoundTranscript:
    """The public, signed facts of a round (finished or aborted), for audit records.

    Everything here is either public (keys, who answered at which stage) or a signature a client
    made; no share, seed or input is included.
    """

    round_id: int
    session_id: bytes
    stage: Stage
    abort_stage: Stage | None
    abort_reason: str | None
    advertisements: tuple[AdvertiseKeys, ...]
    participants: Mapping[Stage, tuple[int, ...]]
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    survivors_digest: bytes
    consistency_signatures: tuple[tuple[int, bytes], ...]
    cheaters: Mapping[int, str]
    unmask_receipts: tuple[UnmaskReceipt, ...]


@dataclass(frozen=True)
class _StageRule:
    """One row of the server's transition table."""

    message: type
    check: Callable[[ServerSession, ClientMessage], None]
    accept: Callable[[ServerSession, ClientMessage], None]
    close: Callable[[ServerSession], dict[int, ServerMessage]]


class ServerSession:
    """The aggregator's view of one round."""

    def __init__(self, config: RoundConfig) -> None:
        self.config = config
        self._stage = Stage.ADVERTISE_KEYS
        self._abort_reason: str | None = None
        self._abort_stage: Stage | None = None
        self._session_id = b""
        # Who completed each stage (U1..U5), filled as messages arrive.
        self._senders: dict[Stage, set[int]] = {s: set() for s in ACTIVE_STAGES}
        self._advertisements: dict[int, AdvertiseKeys] = {}
        self._advertised = b""
        # dealer -> holder -> the dealer's signed entry (commitments judge revealed shares).
        self._entries: dict[int, dict[int, ShareEntry]] = {}
        self._consistency: dict[int, bytes] = {}
        self._survivors: tuple[int, ...] = ()
        self._survivor_set: frozenset[int] = frozenset()
        self._survivor_bitmap = b""
        self._survivors_digest = b""
        self._dropped: tuple[int, ...] = ()
        self._seed_shares: dict[int, dict[int, bytes]] = {}  # owner -> holder -> share
        self._key_shares: dict[int, dict[int, bytes]] = {}
        self._cheaters: dict[int, str] = {}
        self._receipts: dict[int, UnmaskReceipt] = {}
        self._accumulator: npt.NDArray[np.uint32] | None = None
        self._result: AggregateResult | None = None

    # --- public surface -------------------------------------------------------------------

    @property
    def stage(self) -> Stage:
        return self._stage

    @property
    def session_id(self) -> bytes:
        return self._session_id

    @property
    def abort_reason(self) -> str | None:
        return self._abort_reason

    @property
    def abort_stage(self) -> Stage | None:
        return self._abort_stage

    @property
    def cheaters(self) -> Mapping[int, str]:
        """Parties proven to have cheated so far, with the reason."""
        return MappingProxyType(self._cheaters)

    @property
    def result(self) -> AggregateResult:
        if self._result is None:
            raise LocalProtocolError(f"the round has no result (stage {self._stage.value})")
        return self._result

    def transcript(self) -> RoundTranscript:
        """The round's public, signed facts so far (see :class:`RoundTranscript`)."""
        return RoundTranscript(
            round_id=self.config.round_id,
            session_id=self._session_id,
            stage=self._stage,
            abort_stage=self._abort_stage,
            abort_reason=self._abort_reason,
            advertisements=tuple(self._advertisements[p] for p in sorted(self._advertisements)),
            participants=MappingProxyType(
                {s: tuple(sorted(self._senders[s])) for s in ACTIVE_STAGES}
            ),
            survivors=self._survivors,
            dropped=self._dropped,
            survivors_digest=self._survivors_digest,
            consistency_signatures=tuple(sorted(self._consistency.items())),
            cheaters=MappingProxyType(dict(self._cheaters)),
            unmask_receipts=tuple(self._receipts[p] for p in sorted(self._receipts)),
        )

    def participants(self, stage: Stage) -> frozenset[int]:
        """The parties whose message of ``stage`` was accepted so far."""
        return frozenset(self._senders[stage])

    def expected(self) -> frozenset[int]:
        """The parties that may still send a message in the current stage."""
        if self._stage.is_terminal:
            return frozenset()
        return frozenset(self._eligible(self._stage)) - self._senders[self._stage]

    def receive(self, message: ClientMessage) -> None:
        """Accept one client message, or raise a typed error and change nothing (but the record
        of a proven cheater)."""
        stage = self._stage
        if stage.is_terminal:
            raise UnexpectedMessage(f"the round is {stage.value}; no more messages are accepted")
        rule = _STAGES[stage]
        if not isinstance(message, rule.message):
            raise UnexpectedMessage(
                f"{type(message).__name__} does not fit stage {stage.value} "
                f"(expected {rule.message.__name__})"
            )
        cfg = self.config
        if message.round_id != cfg.round_id:
            raise ReplayedMessage(
                f"message for round {message.round_id}, this is round {cfg.round_id}"
            )
        if stage is not Stage.ADVERTISE_KEYS and message.session_id != self._session_id:  # type: ignore[union-attr]
            raise ReplayedMessage("message belongs to another session of this round")
        sender = message.sender
        if sender not in cfg.roster:
            raise UnknownParty(f"party {sender} is not in the roster")
        if sender not in self._eligible(stage):
            raise UnexpectedMessage(
                f"party {sender} did not complete the previous stage and cannot send {stage.value}"
            )
        if sender in self._senders[stage]:
            raise ReplayedMessage(f"party {sender} already sent its {stage.value} message")
        try:
            rule.check(self, message)
            message.verify(cfg.roster[sender], cfg.digest)
            rule.accept(self, message)
        except _CLIENT_FAULTS:
            raise
        except Exception as exc:
            self._abort(stage.value, f"internal error while accepting a message: {exc!r}")
            raise
        self._senders[stage].add(sender)

    def close_stage(self) -> dict[int, ServerMessage]:
        """End the current stage; return the next stage's messages by recipient.

        After the unmask stage the round is complete and :attr:`result` holds the sum.
        """
        stage = self._stage
        if stage.is_terminal:
            raise LocalProtocolError(f"the round is already {stage.value}")
        cfg = self.config
        done = self._senders[stage]
        try:
            if len(done) < cfg.threshold:
                raise RoundAborted(
                    stage.value,
                    f"only {len(done)} parties completed {stage.value}, "
                    f"threshold is {cfg.threshold}",
                )
            outgoing = _STAGES[stage].close(self)
        except RoundAborted as exc:
            self._abort(exc.stage, exc.reason)
            raise
        except Exception as exc:
            self._abort(stage.value, f"internal error while closing the stage: {exc!r}")
            raise
        next_index = ACTIVE_STAGES.index(stage) + 1
        self._stage = (
            ACTIVE_STAGES[next_index] if next_index < len(ACTIVE_STAGES) else Stage.COMPLETED
        )
        return outgoing

    def abort(self, reason: str) -> None:
        """Abort the round from outside (e.g. the service is shutting down)."""
        if not self._stage.is_terminal:
            self._abort(self._stage.value, reason)

    # --- stage 0: advertise keys ----------------------------------------------------------

    def _eligible(self, stage: Stage) -> set[int] | Mapping[int, object]:
        if stage is Stage.ADVERTISE_KEYS:
            return self.config.roster
        previous = ACTIVE_STAGES[ACTIVE_STAGES.index(stage) - 1]
        return self._senders[previous]

    def _check_advertisement(self, message: AdvertiseKeys) -> None:
        taken = {
            k
            for ad in self._advertisements.values()
            for k in (ad.cipher_public_key, ad.mask_public_key)
        }
        if {message.cipher_public_key, message.mask_public_key} & taken:
            raise MalformedMessage(f"party {message.sender} reuses a public key")
        neighbours = self.config.graph.neighbours(message.sender)
        if {k.dealer for k in message.inbox_keys} != neighbours:
            raise MalformedMessage(
                f"party {message.sender} must advertise one inbox key per neighbour"
            )

    def _accept_advertisement(self, message: AdvertiseKeys) -> None:
        self._advertisements[message.sender] = message

    def _close_advertise_keys(self) -> dict[int, ServerMessage]:
        cfg = self.config
        u1 = self._senders[Stage.ADVERTISE_KEYS]
        self._advertised = cfg.roster_index.encode(u1)
        self._session_id = compute_session_id(cfg.digest, self._advertised)
        ads = self._advertisements
        return {
            h: KeyRoster(
                cfg.round_id,
                h,
                self._advertised,
                tuple(ads[v] for v in sorted(cfg.graph.neighbours(h) & u1)),
            )
            for h in u1
        }

    # --- stage 1: share keys --------------------------------------------------------------

    def _check_share_keys(self, message: ShareKeys) -> None:
        cfg = self.config
        allowed = (cfg.holders(message.sender) & self._senders[Stage.ADVERTISE_KEYS]) - {
            message.sender
        }
        receivers = {e.receiver for e in message.entries}
        if not receivers <= allowed:
            raise MalformedMessage(
                f"party {message.sender} sent shares to parties that are not its advertising "
                f"neighbours: {sorted(receivers - allowed)}"
            )
        if len(receivers) + 1 < cfg.threshold:
            raise MalformedMessage(
                f"party {message.sender} shares with {len(receivers) + 1} holders, fewer than "
                f"the threshold {cfg.threshold}: its secrets could not be recovered"
            )

    def _accept_share_keys(self, message: ShareKeys) -> None:
        self._entries[message.sender] = {e.receiver: e for e in message.entries}

    def _close_share_keys(self) -> dict[int, ServerMessage]:
        cfg = self.config
        u2 = self._senders[Stage.SHARE_KEYS]
        out: dict[int, ServerMessage] = {}
        for h in u2:
            senders = tuple(sorted(cfg.graph.neighbours(h) & u2))
            entries = tuple((d, self._entries[d][h]) for d in senders if h in self._entries[d])
            out[h] = ShareBundle(cfg.round_id, self._session_id, senders, entries)
        return out

    # --- stage 2: masked input ------------------------------------------------------------

    def _check_masked_input(self, message: MaskedInput) -> None:
        cfg = self.config
        v = message.masked_vector
        if v.shape != (cfg.vector_length,):
            raise MalformedMessage(
                f"masked input has length {v.shape[0]}, the round's vectors have "
                f"{cfg.vector_length}"
            )
        if cfg.bits < 32 and int(v.max(initial=0)) > cfg.modulus_mask:
            raise MalformedMessage(f"masked input has values outside Z_(2^{cfg.bits})")
        for complaint in message.complaints:
            if complaint.dealer not in cfg.graph.neighbours(message.sender) or (
                complaint.dealer not in self._senders[Stage.SHARE_KEYS]
            ):
                raise MalformedMessage(
                    f"party {message.sender} complains about party {complaint.dealer}, which "
                    "dealt it nothing"
                )

    def _accept_masked_input(self, message: MaskedInput) -> None:
        # Signature verified: the complaints are the sender's signed claims; judge each one.
        for complaint in message.complaints:
            self._judge_complaint(message.sender, complaint)
        if self._accumulator is None:
            self._accumulator = np.zeros(self.config.vector_length, dtype=np.uint32)
        np.add(self._accumulator, message.masked_vector, out=self._accumulator)

    def _judge_complaint(self, holder: int, complaint: Complaint) -> None:
        """Convict the dealer (the entry is bad) or the holder (the complaint is false)."""
        dealer = complaint.dealer
        dealt = self._entries.get(dealer, {}).get(holder)
        advertised = self._advertisements[holder].inbox_key(dealer)
        lie: str | None = None
        if dealt is None or dealt != complaint.entry:
            lie = f"it complained about an entry party {dealer} never sent it"
        elif advertised is None or (
            KeyAgreementKey.from_private_bytes(complaint.inbox_private_key).public_bytes
            != advertised.public_key
        ):
            lie = f"the key in its complaint about party {dealer} is not its advertised inbox key"
        else:
            try:
                open_share_entry(
                    dealt,
                    inbox_private=complaint.inbox_private_key,
                    dealer_cipher_public=self._advertisements[dealer].cipher_public_key,
                    round_id=self.config.round_id,
                    session_id=self._session_id,
                    dealer=dealer,
                )
            except CryptoError as exc:
                self._cheaters.setdefault(
                    dealer,
                    f"its share entry for party {holder} is bad ({exc}); evidence: "
                    f"party {holder}'s signed complaint",
                )
                return
            lie = f"it complained about party {dealer}'s entry, which opens and matches"
        self._cheaters[holder] = lie
        raise CheatingDetected(holder, lie)

    def _close_masked_input(self) -> dict[int, ServerMessage]:
        cfg = self.config
        u3 = self._senders[Stage.MASKED_INPUT]
        self._survivors = tuple(sorted(u3))
        self._survivor_set = frozenset(u3)
        self._survivor_bitmap = cfg.roster_index.encode(u3)
        self._survivors_digest = survivors_digest(self._session_id, self._survivor_bitmap)
        self._dropped = tuple(sorted(self._senders[Stage.SHARE_KEYS] - u3))
        request = SurvivorsRequest(cfg.round_id, self._session_id, self._survivor_bitmap)
        return {p: request for p in self._survivors}

    # --- stage 3: consistency check -------------------------------------------------------

    def _check_consistency(self, message: ConsistencySignature) -> None:
        if message.survivors_digest != self._survivors_digest:
            raise MalformedMessage("the signed survivor set is not the one the server sent")

    def _accept_consistency(self, message: ConsistencySignature) -> None:
        self._consistency[message.sender] = message.signature

    def _close_consistency(self) -> dict[int, ServerMessage]:
        cfg = self.config
        u4 = self._senders[Stage.CONSISTENCY_CHECK]
        signatures = self._consistency
        return {
            h: UnmaskRequest(
                cfg.round_id,
                self._session_id,
                self._survivors_digest,
                tuple((s, signatures[s]) for s in sorted(cfg.holders(h) & u4)),
            )
            for h in u4
        }

    # --- stage 4: unmask ------------------------------------------------------------------

    def _check_unmask(self, message: UnmaskShares) -> None:
        cfg = self.config
        sender = message.sender
        if message.survivors_digest != self._survivors_digest:
            raise MalformedMessage("the unmask shares answer another survivor set")
        dropped = set(self._dropped)
        for owners, allowed, kind in (
            (message.self_mask_shares, self._survivor_set, "seed"),
            (message.mask_key_shares, dropped, "key"),
        ):
            for owner, share in owners:
                if owner not in allowed or sender not in cfg.holders(owner):
                    raise MalformedMessage(
                        f"party {sender} cannot hold a {kind} share of party {owner}"
                    )
                if owner == sender:
                    continue  # its own share: checked by the reconstruction and commitment
                entry = self._entries.get(owner, {}).get(sender)
                committed = (
                    None
                    if entry is None
                    else (entry.seed_commitment if kind == "seed" else entry.key_commitment)
                )
                actual = share_commitment(
                    kind, cfg.round_id, self._session_id, owner, sender, share
                )
                if committed != actual:
                    message.verify(cfg.roster[sender], cfg.digest)  # evidence must be signed
                    reason = (
                        f"its {kind} share of party {owner} is not the one party {owner} dealt "
                        "it (signed commitment)"
                    )
                    self._cheaters[sender] = reason
                    raise CheatingDetected(sender, reason)

    def _accept_unmask(self, message: UnmaskShares) -> None:
        self._receipts[message.sender] = message.receipt()
        for owner, share in message.self_mask_shares:
            self._seed_shares.setdefault(owner, {})[message.sender] = share
        for owner, share in message.mask_key_shares:
            self._key_shares.setdefault(owner, {})[message.sender] = share

    def _close_unmask(self) -> dict[int, ServerMessage]:
        self._unmask()
        return {}

    def _unmask(self) -> None:
        cfg = self.config
        survivors, alive = self._survivors, self._survivor_set
        # Only dropped parties with a surviving neighbour left masks in the sum.
        dropped = [v for v in self._dropped if cfg.graph.neighbours(v) & alive]
        seeds = self._reconstruct(survivors, self._seed_shares, "self-mask seed")
        for owner, seed in zip(survivors, seeds, strict=True):
            committed = self._advertisements[owner].seed_commitment
            if seed_commitment(cfg.round_id, cfg.digest, owner, seed) != committed:
                self._blame_dealer(owner, "its seed shares do not rebuild its committed seed")
        keys = self._reconstruct(dropped, self._key_shares, "mask key")

        add: list[bytes] = []
        subtract = list(seeds)
        for v, private in zip(dropped, keys, strict=True):
            expected = self._advertisements[v].mask_public_key
            if KeyAgreementKey.from_private_bytes(private).public_bytes != expected:
                self._blame_dealer(v, "its mask-key shares do not rebuild its public key")
            for w in sorted(cfg.graph.neighbours(v) & alive):
                secret = exchange(private, self._advertisements[w].mask_public_key)
                seed = pairwise_seed(
                    secret, round_id=cfg.round_id, session_id=self._session_id, a=v, b=w
                )
                # w added sign(w, v) * PRG(seed); take it back out.
                (subtract if pairwise_sign(w, v) > 0 else add).append(seed)

        total = self._accumulator
        if total is None:  # pragma: no cover - threshold >= 2 guarantees masked inputs
            raise RoundAborted(Stage.UNMASK.value, "no masked input was received")
        apply_masks(total, add, subtract)
        np.bitwise_and(total, np.uint32(cfg.modulus_mask), out=total)
        self._accumulator = None
        participants = {s: tuple(sorted(self._senders[s])) for s in ACTIVE_STAGES}
        dropouts: dict[Stage, tuple[int, ...]] = {}
        previous: set[int] = set(cfg.roster)
        for s in ACTIVE_STAGES:
            dropouts[s] = tuple(sorted(previous - self._senders[s]))
            previous = self._senders[s]
        self._result = AggregateResult(
            round_id=cfg.round_id,
            session_id=self._session_id,
            total=total,
            survivors=survivors,
            participants=MappingProxyType(participants),
            dropouts=MappingProxyType(dropouts),
            cheaters=MappingProxyType(dict(self._cheaters)),
        )
        self._seed_shares.clear()
        self._key_shares.clear()
        self._entries.clear()

    def _reconstruct(
        self, owners: tuple[int, ...] | list[int], shares: dict[int, dict[int, bytes]], what: str
    ) -> list[bytes]:
        """Every owner's secret from its holders' (commitment-checked) shares.

        With more than t shares the extras must lie on the same polynomial: since every share a
        holder revealed matched the dealer's own commitment, a mismatch convicts the dealer.
        """
        threshold = self.config.threshold
        share_sets = []
        for owner in owners:
            held = shares.get(owner, {})
            if len(held) < threshold:
                raise RoundAborted(
                    Stage.UNMASK.value,
                    f"cannot reconstruct the {what} of party {owner}: {len(held)} of its share "
                    f"holders answered, threshold is {threshold}",
                )
            share_sets.append(held)
        try:
            return reconstruct_many(share_sets, threshold=threshold, verify_extra=True)
        except ShamirError:
            for owner, held in zip(owners, share_sets, strict=True):
                try:
                    reconstruct_many([held], threshold=threshold, verify_extra=True)
                except ShamirError as exc:
                    self._blame_dealer(owner, f"its {what} shares are inconsistent ({exc})")
            raise  # pragma: no cover - one owner above always fails

    def _blame_dealer(self, owner: int, reason: str) -> None:
        self._cheaters[owner] = reason
        raise RoundAborted(
            Stage.UNMASK.value,
            f"party {owner} cheated: {reason}; its masks cannot be removed, so no sum is released",
        )

    def _abort(self, stage: str, reason: str) -> None:
        self._stage = Stage.ABORTED
        self._abort_stage = Stage(stage)
        self._abort_reason = reason
        self._accumulator = None
        self._seed_shares.clear()
        self._key_shares.clear()
        self._entries.clear()

    def __repr__(self) -> str:
        return f"ServerSession(round={self.config.round_id}, stage={self._stage.value})"


def _rule(
    message: type,
    check: Callable[..., None],
    accept: Callable[..., None],
    close: Callable[..., dict[int, ServerMessage]],
) -> _StageRule:
    return _StageRule(message, check, accept, close)


_STAGES: dict[Stage, _StageRule] = {
    Stage.ADVERTISE_KEYS: _rule(
        AdvertiseKeys,
        ServerSession._check_advertisement,
        ServerSession._accept_advertisement,
        ServerSession._close_advertise_keys,
    ),
    Stage.SHARE_KEYS: _rule(
        ShareKeys,
        ServerSession._check_share_keys,
        ServerSession._accept_share_keys,
        ServerSession._close_share_keys,
    ),
    Stage.MASKED_INPUT: _rule(
        MaskedInput,
        ServerSession._check_masked_input,
        ServerSession._accept_masked_input,
        ServerSession._close_masked_input,
    ),
    Stage.CONSISTENCY_CHECK: _rule(
        ConsistencySignature,
        ServerSession._check_consistency,
        ServerSession._accept_consistency,
        ServerSession._close_consistency,
    ),
    Stage.UNMASK: _rule(
        UnmaskShares,
        ServerSession._check_unmask,
        ServerSession._accept_unmask,
        ServerSession._close_unmask,
    ),
}
"""The transition table: per stage, the message it accepts, its checks before and after the
signature, and how the stage ends."""
