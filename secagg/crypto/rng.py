"""Where every random byte of a session comes from: the OS CSPRNG, or a replayable test stream.

Sessions, Shamir sharing and AEAD nonces take a :class:`RandomSource` (as Google's fcp/secagg
injects its ``SecurePrng``), so a failing property test can be replayed bit for bit with
:class:`DeterministicRandom`. The default everywhere is :data:`SYSTEM_RANDOM`, libsodium's
``randombytes_buf`` (the operating system's CSPRNG); nothing in secagg falls back to anything else.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import nacl.utils
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from secagg.errors import ConfigError

__all__ = ["SYSTEM_RANDOM", "DeterministicRandom", "RandomSource", "SystemRandom", "resolve"]


@runtime_checkable
class RandomSource(Protocol):
    """A source of uniformly random bytes."""

    def random_bytes(self, n: int) -> bytes:
        """``n`` uniformly random bytes."""


class SystemRandom:
    """The operating system's CSPRNG through libsodium (``randombytes_buf``)."""

    __slots__ = ()

    def random_bytes(self, n: int) -> bytes:
        return bytes(nacl.utils.random(n))

    def __repr__(self) -> str:
        return "SystemRandom()"


SYSTEM_RANDOM = SystemRandom()


class DeterministicRandom:
    """A replayable stream: the ChaCha20 keystream of a 32-byte seed (for tests only).

    Anyone who knows the seed knows every key drawn from it: never use it outside tests and
    reproducible examples.
    """

    __slots__ = ("_stream",)

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise ConfigError("a DeterministicRandom seed is exactly 32 bytes")
        self._stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()

    @classmethod
    def from_int(cls, seed: int) -> DeterministicRandom:
        """A stream named by a small integer (hypothesis examples, test parametrisation)."""
        return cls(seed.to_bytes(32, "little", signed=False))

    def random_bytes(self, n: int) -> bytes:
        return self._stream.update(bytes(n))

    def __repr__(self) -> str:
        return "DeterministicRandom(<seed>)"


def resolve(rng: RandomSource | None) -> RandomSource:
    """``rng``, or the OS CSPRNG when none is given."""
    return SYSTEM_RANDOM if rng is None else rng
