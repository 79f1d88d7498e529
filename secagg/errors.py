"""Every exception secagg raises, one type per situation.

Local mistakes (calling an API wrongly, an unsafe configuration) and remote misbehaviour (a peer or
the server sent something that does not fit the protocol) are different types, so that callers can
tell "fix your code" from "somebody is misbehaving" (the h11 split).
"""

from __future__ import annotations

__all__ = [
    "BudgetExceeded",
    "CheatingDetected",
    "ConfigError",
    "CryptoError",
    "DecryptionError",
    "HEError",
    "InvalidSignature",
    "LocalProtocolError",
    "MalformedMessage",
    "MaliciousServerError",
    "OutcomeMismatch",
    "OverflowRiskError",
    "PolicyViolation",
    "ProtocolError",
    "RemoteProtocolError",
    "ReplayedMessage",
    "RoundAborted",
    "SecAggError",
    "ShamirError",
    "UnexpectedMessage",
    "UnknownParty",
]


class SecAggError(Exception):
    """Base class of every error raised by secagg."""


class ConfigError(SecAggError, ValueError):
    """A configuration or argument is invalid (raised before any protocol step)."""


class OverflowRiskError(ConfigError):
    """The encoding could overflow Z_(2^b) for the configured number of clients."""


class CryptoError(SecAggError):
    """Base class of cryptographic failures."""


class InvalidSignature(CryptoError):
    """A signature did not verify under the claimed identity and context."""


class DecryptionError(CryptoError):
    """An AEAD ciphertext failed to authenticate (wrong key, associated data or bytes).

    The cause is deliberately not said: every failure looks the same.
    """


class ShamirError(CryptoError):
    """Shares are inconsistent, duplicated, too few, or malformed."""


class ProtocolError(SecAggError):
    """Base class of protocol failures."""


class LocalProtocolError(ProtocolError):
    """This side used a session wrongly (e.g. asked for output in the wrong stage)."""


class RemoteProtocolError(ProtocolError):
    """The other side sent something the protocol does not allow."""


class MalformedMessage(RemoteProtocolError):
    """A message's fields have the wrong type, size or shape."""


class UnexpectedMessage(RemoteProtocolError):
    """A message does not fit the session's current stage."""


class ReplayedMessage(RemoteProtocolError):
    """A message belongs to another round or session, or was already received."""


class UnknownParty(RemoteProtocolError):
    """A message names a party that is not in the roster (or not a neighbour)."""


class MaliciousServerError(RemoteProtocolError):
    """The server asked for something an honest server never asks for.

    Examples: both secrets of one peer, an unmask request contradicting the signed survivor set,
    too few valid consistency signatures.
    """


class CheatingDetected(RemoteProtocolError):
    """A party sent something provably false (signed evidence); ``party`` names it.

    Examples: a revealed share that does not match its dealer's signed commitment, a complaint
    about a share entry that decrypts fine, shares that do not reconstruct the committed secret.
    """

    def __init__(self, party: int, reason: str) -> None:
        super().__init__(f"party {party} cheated: {reason}")
        self.party = party
        self.reason = reason


class PolicyViolation(RemoteProtocolError):
    """The aggregator offered a round this site's policy does not accept; nothing was revealed.

    ``parameter`` names what is wrong (``threshold``, ``roster``, ``round_id``, ...), ``offered``
    and ``required`` say by how much, ``policy_line`` names the setting that would accept it.
    """

    def __init__(
        self, parameter: str, offered: object, required: object, reason: str, policy_line: str
    ) -> None:
        super().__init__(
            f"refused: {parameter} {offered} is not acceptable ({reason}; required: {required}); "
            f"to accept it, change {policy_line}"
        )
        self.parameter = parameter
        self.offered = offered
        self.required = required
        self.reason = reason
        self.policy_line = policy_line


class OutcomeMismatch(MaliciousServerError):
    """The outcome the aggregator announced contradicts what this site signed (an alarm)."""


class RoundAborted(ProtocolError):
    """The round cannot complete; ``stage`` names where it failed and ``reason`` says why."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"round aborted at stage {stage}: {reason}")
        self.stage = stage
        self.reason = reason


class BudgetExceeded(SecAggError):
    """A site's next round would exceed its privacy budget, so it declines to take part."""


class HEError(SecAggError):
    """A CKKS context, ciphertext or layout is invalid or does not match the round."""
