"""What the Flower client mod and the server workflow agree on: record keys, stages, context."""

from __future__ import annotations

import enum
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from secagg.errors import ConfigError, MalformedMessage

__all__ = [
    "RECORD_KEY",
    "DistributedDP",
    "FlowerStage",
    "RoundContext",
    "model_digest",
]

RECORD_KEY = "secagg"
"""Name of the ConfigRecord that carries secagg's messages inside Flower messages."""
CONTEXT_FORMAT = "secagg.flower/1"


class FlowerStage(enum.Enum):
    """The message exchanges of one round over Flower (each is one ``grid.send_and_receive``)."""

    REGISTER = "register"  # FitIns out; the client trains and answers with its identity key
    ADVERTISE_KEYS = "advertise_keys"  # round parameters out; AdvertiseKeys back
    SHARE_KEYS = "share_keys"  # KeyRoster out; ShareKeys back
    MASKED_INPUT = "masked_input"  # ShareBundle out; MaskedInput back
    CONSISTENCY_CHECK = "consistency_check"  # SurvivorsRequest out; ConsistencySignature back
    UNMASK = "unmask"  # UnmaskRequest out; UnmaskShares back
    OUTCOME = "outcome"  # survivors and result digest out; each survivor checks them


@dataclass(frozen=True)
class DistributedDP:
    """Site-level distributed DP for the Flower adapter (see :mod:`secagg.dp.distributed`).

    Each client clips its model *update* (new parameters minus the global ones) to ``l2_clip`` in
    L2 norm and adds its share of discrete Gaussian (or Skellam) noise under the masks; the noise of
    any ``threshold`` survivors carries the full ``noise_multiplier * l2_clip`` stddev. Give
    exactly one of ``noise_multiplier`` and ``target_epsilon`` (over ``rounds`` rounds).
    Aggregation is then unweighted (a site's example count would otherwise shift its sensitivity).
    """

    l2_clip: float
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    rounds: int = 1
    mechanism: Literal["ddgauss", "skellam"] = "ddgauss"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.l2_clip) and self.l2_clip > 0):
            raise ConfigError(f"l2_clip must be positive and finite, got {self.l2_clip}")
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ConfigError("give exactly one of noise_multiplier and target_epsilon")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> DistributedDP:
        if not isinstance(d, dict) or set(d) != {f for f in cls.__dataclass_fields__}:
            raise MalformedMessage("the distributed-DP parameters are malformed")
        return cls(**d)


@dataclass(frozen=True)
class RoundContext:
    """Everything about a Flower round that clients must agree on besides the protocol config.

    Serialised canonically and bound into ``RoundConfig.context_digest``, so every signature of the
    round covers it: a server cannot show two clients different models, weights or DP parameters.
    """

    run_id: int
    round: int
    model_digest: str  # hex BLAKE2b-256 of the global parameters (see model_digest)
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    max_weight: float  # 0 = unweighted
    dp: DistributedDP | None = None

    def to_bytes(self) -> bytes:
        d = {
            "format": CONTEXT_FORMAT,
            "run_id": self.run_id,
            "round": self.round,
            "model_digest": self.model_digest,
            "shapes": [list(s) for s in self.shapes],
            "dtypes": list(self.dtypes),
            "max_weight": self.max_weight,
            "dp": None if self.dp is None else self.dp.to_dict(),
        }
        return json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RoundContext:
        try:
            d = json.loads(data)
            if d.pop("format") != CONTEXT_FORMAT:
                raise MalformedMessage("unknown round context format")
            dp = d.pop("dp")
            return cls(
                run_id=int(d["run_id"]),
                round=int(d["round"]),
                model_digest=str(d["model_digest"]),
                shapes=tuple(tuple(int(x) for x in s) for s in d["shapes"]),
                dtypes=tuple(str(t) for t in d["dtypes"]),
                max_weight=float(d["max_weight"]),
                dp=None if dp is None else DistributedDP.from_dict(dp),
            )
        except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as exc:
            raise MalformedMessage(f"the round context is malformed: {exc}") from exc

    @property
    def dimension(self) -> int:
        return sum(math.prod(s) for s in self.shapes)


def model_digest(arrays: Sequence[npt.NDArray[Any]]) -> str:
    """BLAKE2b-256 over the dtype, shape and C-order bytes of each array, length-prefixed."""
    h = hashlib.blake2b(digest_size=32)
    for a in arrays:
        arr = np.ascontiguousarray(a)
        for part in (arr.dtype.str.encode(), json.dumps(list(arr.shape)).encode(), arr.tobytes()):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return h.hexdigest()


def flatten(arrays: Sequence[npt.NDArray[Any]]) -> npt.NDArray[np.float64]:
    if not arrays:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def unflatten(
    vector: npt.NDArray[np.float64], shapes: Sequence[tuple[int, ...]], dtypes: Sequence[str]
) -> list[npt.NDArray[Any]]:
    out, pos = [], 0
    for shape, dtype in zip(shapes, dtypes, strict=True):
        size = math.prod(shape)
        out.append(vector[pos : pos + size].reshape(shape).astype(np.dtype(dtype)))
        pos += size
    return out


def rotation_seed(context: bytes) -> int:
    """The public seed of the DP rotation: derived from the round context, fresh every round."""
    return int.from_bytes(hashlib.blake2b(context, digest_size=8).digest(), "little")


# --- turning updates into protocol inputs and the protocol's sum back into parameters -------------


def dp_config(dp: DistributedDP, *, n: int, threshold: int, dimension: int, bits: int) -> Any:
    """The :class:`~secagg.dp.DistributedDPConfig` of one round (both sides derive the same)."""
    from secagg.dp.distributed import DistributedDPConfig

    return DistributedDPConfig(
        l2_clip=dp.l2_clip,
        expected_clients=n,
        min_clients=threshold,
        dimension=dimension,
        bits=bits,
        noise_multiplier=dp.noise_multiplier,
        target_epsilon=dp.target_epsilon,
        delta=dp.delta,
        rounds=dp.rounds,
        mechanism=dp.mechanism,
    )


def dp_encoder(
    ctx: RoundContext, context_bytes: bytes, *, n: int, threshold: int, bits: int
) -> Any:
    from secagg.dp.distributed import DistributedDPEncoder

    if ctx.dp is None:
        raise ConfigError("this round has no distributed DP")
    cfg = dp_config(ctx.dp, n=n, threshold=threshold, dimension=ctx.dimension, bits=bits)
    return DistributedDPEncoder(cfg, rotation_seed=rotation_seed(context_bytes))


def vector_length(ctx: RoundContext, padded_dp_dimension: int | None = None) -> int:
    """Length of the protocol vector: the DP-padded update, or the parameters (+1 weight slot)."""
    if ctx.dp is not None:
        if padded_dp_dimension is None:
            raise ConfigError("a DP round needs the padded dimension")
        return padded_dp_dimension
    return ctx.dimension + (1 if ctx.max_weight > 0 else 0)
