"""Flower's SecAgg+ (flwr 1.42) client and server work, reproduced in one process.

Each method is the body of the corresponding stage of ``flwr/client/mod/secure_aggregation/
secaggplus_mod.py`` (client) or ``flwr/server/workflow/secure_aggregation/secaggplus_workflow.py``
(server), calling the same helpers of ``flwr.common.secure_aggregation`` with Flower's default
parameters (clipping range 8, quantisation range 2^22, modulus 2^32), minus logging and message
(de)serialisation. One deliberate difference, in Flower's favour: when a dropped client's pairwise
masks are recomputed, only its *surviving* neighbours are visited (Flower visits all of them, which
also gives a wrong sum when two neighbours drop).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from flwr.common import bytes_to_ndarray, ndarray_to_bytes
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_combine,
    factor_extract,
    get_parameters_shape,
    parameters_addition,
    parameters_mod,
    parameters_multiply,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from flwr.common.secure_aggregation.secaggplus_utils import (
    pseudo_rand_gen,
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

CLIPPING_RANGE = 8.0
TARGET_RANGE = 1 << 22
MOD_RANGE = 1 << 32


@dataclass
class FlowerClient:
    nid: int
    threshold: int
    rd_seed: bytes = b""
    sk1: bytes = b""
    pk1: bytes = b""
    sk2: bytes = b""
    pk2: bytes = b""
    public_keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    ss2: dict[int, bytes] = field(default_factory=dict)
    rd_seed_shares: dict[int, bytes] = field(default_factory=dict)
    sk1_shares: dict[int, bytes] = field(default_factory=dict)
    mask_seconds: float = 0.0  # the masking computation of the last masked_vector call

    def setup(self) -> tuple[bytes, bytes]:
        sk1, pk1 = generate_key_pairs()
        sk2, pk2 = generate_key_pairs()
        self.sk1, self.pk1 = private_key_to_bytes(sk1), public_key_to_bytes(pk1)
        self.sk2, self.pk2 = private_key_to_bytes(sk2), public_key_to_bytes(pk2)
        return self.pk1, self.pk2

    def share_keys(self, keys: dict[int, tuple[bytes, bytes]]) -> dict[int, bytes]:
        self.public_keys = keys
        pk_list = [k for pair in keys.values() for k in pair]
        if len(set(pk_list)) != len(pk_list):
            raise ValueError("Some public keys are identical")
        self.rd_seed = os.urandom(32)
        b_shares = create_shares(self.rd_seed, self.threshold, len(keys))
        sk1_shares = create_shares(self.sk1, self.threshold, len(keys))
        out: dict[int, bytes] = {}
        for idx, (nid, (_, pk2)) in enumerate(keys.items()):
            if nid == self.nid:
                self.rd_seed_shares[nid] = b_shares[idx]
                self.sk1_shares[nid] = sk1_shares[idx]
            else:
                shared_key = generate_shared_key(
                    bytes_to_private_key(self.sk2), bytes_to_public_key(pk2)
                )
                self.ss2[nid] = shared_key
                plaintext = share_keys_plaintext_concat(
                    self.nid, nid, b_shares[idx], sk1_shares[idx]
                )
                out[nid] = encrypt(shared_key, plaintext)
        return out

    def masked_vector(
        self, ciphertexts: dict[int, bytes], update: npt.NDArray[np.float32]
    ) -> list[bytes]:
        available = []
        for src, ciphertext in ciphertexts.items():
            plaintext = decrypt(self.ss2[src], ciphertext)
            actual_src, dst, rd_seed_share, sk1_share = share_keys_plaintext_separate(plaintext)
            if src != actual_src or dst != self.nid:
                raise ValueError("misrouted share")
            available.append(src)
            self.rd_seed_shares[src] = rd_seed_share
            self.sk1_shares[src] = sk1_share
        q_ratio = TARGET_RANGE  # num_examples == max_weight
        parameters = parameters_multiply([update], q_ratio / TARGET_RANGE)
        quantized = quantize(parameters, CLIPPING_RANGE, TARGET_RANGE)
        quantized = factor_combine(q_ratio, quantized)
        dims = [a.shape for a in quantized]
        t0 = time.perf_counter()
        quantized = parameters_addition(quantized, pseudo_rand_gen(self.rd_seed, MOD_RANGE, dims))
        for node_id in available:
            shared_key = generate_shared_key(
                bytes_to_private_key(self.sk1),
                bytes_to_public_key(self.public_keys[node_id][0]),
            )
            mask = pseudo_rand_gen(shared_key, MOD_RANGE, dims)
            if self.nid > node_id:
                quantized = parameters_addition(quantized, mask)
            else:
                quantized = parameters_subtraction(quantized, mask)
        quantized = parameters_mod(quantized, MOD_RANGE)
        self.mask_seconds = time.perf_counter() - t0
        return [ndarray_to_bytes(a) for a in quantized]

    def unmask(self, active: list[int], dead: list[int]) -> tuple[list[int], list[bytes]]:
        shares = [self.rd_seed_shares[n] for n in active] + [self.sk1_shares[n] for n in dead]
        return active + dead, shares


@dataclass
class FlowerServer:
    """The aggregation and unmask work of Flower's SecAgg+ workflow."""

    neighbours: dict[int, frozenset[int]]  # party -> its neighbours (self excluded)
    public_keys: dict[int, tuple[bytes, bytes]]
    masked: list[npt.NDArray[np.int64]] | None = None
    secrets: dict[int, bytes] = field(default_factory=dict)

    def add_masked(self, blobs: list[bytes]) -> None:
        vec = [bytes_to_ndarray(b) for b in blobs]
        self.masked = vec if self.masked is None else parameters_addition(self.masked, vec)

    def close_masked(self) -> None:
        assert self.masked is not None
        self.masked = parameters_mod(self.masked, MOD_RANGE)

    def reconstruct(self, collected: dict[int, list[bytes]]) -> None:
        """Phase 1 of the unmask stage: Shamir reconstruction (GF(2^128), pure Python)."""
        self.secrets = {nid: combine_shares(shares) for nid, shares in collected.items()}

    def remove_masks(self, active: set[int]) -> list[npt.NDArray[np.int64]]:
        """Phase 2 of the unmask stage: regenerate and remove masks; returns the reduced sum."""
        assert self.masked is not None
        vec = self.masked
        for nid, secret in self.secrets.items():
            shape = get_parameters_shape(vec)
            if nid in active:
                vec = parameters_subtraction(vec, pseudo_rand_gen(secret, MOD_RANGE, shape))
                continue
            for nb in sorted(self.neighbours[nid] & active):
                shared_key = generate_shared_key(
                    bytes_to_private_key(secret), bytes_to_public_key(self.public_keys[nb][0])
                )
                mask = pseudo_rand_gen(shared_key, MOD_RANGE, shape)
                if nid > nb:
                    vec = parameters_addition(vec, mask)
                else:
                    vec = parameters_subtraction(vec, mask)
        return parameters_mod(vec, MOD_RANGE)

    @staticmethod
    def decode(reduced: list[npt.NDArray[np.int64]], n_active: int) -> npt.NDArray[np.float64]:
        q_total, params = factor_extract(reduced)
        out = dequantize(params, CLIPPING_RANGE, TARGET_RANGE)[0]
        out += -(n_active - 1) * CLIPPING_RANGE
        out *= TARGET_RANGE / q_total
        return np.asarray(out, dtype=np.float64)


def now() -> float:
    return time.perf_counter()
