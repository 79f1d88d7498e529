"""What a site accepts: its own trust assumptions, checked by its own session before it reveals
anything.

The aggregator proposes every parameter of a round (roster, threshold t, degree k, round id,
context, DP noise); a :class:`SitePolicy` says which proposals this site accepts. It is built from
the site's own configuration, never from anything the aggregator sends:

* the **roster** the site trusts, pinned out of band (the roster itself or its
  :func:`roster_fingerprint`); the round's roster must be exactly that one, which also fixes the
  SecAgg+ neighbour graph (:attr:`RoundConfig.graph` depends on the roster alone);
* the site's **assumptions**: the fraction of roster parties that may collude with the aggregator,
  the dropout rate it expects, and whether the aggregator itself is treated as malicious; from
  them the site computes the smallest safe threshold for the offered graph
  (:func:`~secagg.protocol.params.full_graph_minimum_threshold`,
  :func:`~secagg.protocol.params.sparse_minimum_threshold`) and refuses anything below it;
* the **context digest** (model, training config) it expects, if it knows it;
* the site-level **DP floor** it accepts (:class:`DPFloor`), checked by the adapters that know the
  round's DP parameters (:meth:`SitePolicy.check_distributed_dp`).

Round ids must increase strictly per aggregator and roster; the site's ledger
(:class:`~secagg.protocol.ledger.SiteLedger`) remembers the last one.

The defaults are the strictest: a malicious (semi-malicious, in Bell et al.'s terms) aggregator,
10 % of the roster corrupt, and therefore for the full graph ``t > ceil((n + 0.1 n) / 2)``, a strict
majority with a corrupt margin. Anything weaker must be asked for by name (``adversary=``,
``corrupt_fraction=``, ``SitePolicy.unpinned(...)``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from secagg.crypto import IdentityPublicKey, transcript_digest
from secagg.errors import ConfigError, PolicyViolation
from secagg.protocol.config import RoundConfig, roster_fingerprint
from secagg.protocol.graph import NeighbourGraph
from secagg.protocol.params import (
    AdversaryClass,
    full_graph_minimum_threshold,
    sparse_minimum_threshold,
)

__all__ = ["DPFloor", "OfferedDP", "SitePolicy", "roster_fingerprint"]

_FINGERPRINT_BYTES = 32


@dataclass(frozen=True)
class OfferedDP:
    """The site-level distributed DP a round offers, as the adapter computed it for this site.

    ``epsilon_per_round`` is an upper bound at ``delta`` that already assumes the site's own
    tolerated colluders (see :meth:`SitePolicy.tolerated_corrupt`).
    """

    noise_multiplier: float
    epsilon_per_round: float
    delta: float


@dataclass(frozen=True)
class DPFloor:
    """The weakest site-level DP a site accepts (all limits optional, none by default).

    ``required``: refuse rounds without distributed DP. ``min_noise_multiplier``: refuse less noise.
    ``max_epsilon_per_round`` / ``max_epsilon_total``: refuse a round whose site-level epsilon
    (per round, or accumulated over this site's rounds including it) would exceed the limit at
    ``delta``. ``max_record_epsilon``: the site's own record-level (DP-SGD) budget, for the site's
    training code to honour (``secagg.dp.opacus_site``).
    """

    required: bool = False
    min_noise_multiplier: float | None = None
    max_epsilon_per_round: float | None = None
    max_epsilon_total: float | None = None
    delta: float = 1e-5
    max_record_epsilon: float | None = None

    def __post_init__(self) -> None:
        for name in ("min_noise_multiplier", "max_epsilon_per_round", "max_epsilon_total"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"[policy.dp] {name} must be positive, got {value}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"[policy.dp] delta must be in (0, 1), got {self.delta}")
        any_limit = (self.min_noise_multiplier, self.max_epsilon_per_round, self.max_epsilon_total)
        if any(v is not None for v in any_limit) and not self.required:
            object.__setattr__(self, "required", True)  # a DP limit implies that DP is required


@dataclass(frozen=True)
class SitePolicy:
    """A site's trust assumptions and the round parameters they imply (see the module doc).

    ``roster``: the pinned roster (party -> identity key) or its 32-byte fingerprint.
    ``corrupt_fraction``: the fraction of the roster that may collude with the aggregator.
    ``dropout_rate``: the fraction of the roster that may drop out (SecAgg+ connectivity).
    ``adversary``: what the aggregator may do (default: lie about who dropped, i.e. malicious).
    ``security_bits``: the SecAgg+ security target (2^-s failure probability).
    ``context_digest``: the round context digest this site expects (model and training config).
    ``aggregator``: a label of the aggregator (address or key); round ids are monotonic per label.
    """

    roster: Mapping[int, IdentityPublicKey] | bytes | None
    corrupt_fraction: float = 0.1
    dropout_rate: float = 0.1
    adversary: AdversaryClass = AdversaryClass.SEMI_MALICIOUS_SERVER
    security_bits: int = 40
    context_digest: bytes | None = None
    aggregator: str = ""
    dp: DPFloor = field(default_factory=DPFloor)
    min_parties: int = 3
    """For :meth:`unpinned` and ``roster_subsets`` policies: refuse rosters smaller than this."""
    roster_subsets: bool = False
    """Accept a round whose roster is any subset (by identity key, ids may differ) of the pinned
    one, as when an FL stack samples clients. Weaker by name: the corrupt parties counted are
    still ``corrupt_fraction`` of the *pinned* roster, so in a small sample they weigh more and the
    threshold rises accordingly; but the aggregator's choice of sample is also a choice among
    neighbour graphs."""

    def __post_init__(self) -> None:
        if isinstance(self.roster, Mapping):
            object.__setattr__(self, "roster", MappingProxyType(dict(sorted(self.roster.items()))))
        elif isinstance(self.roster, bytes):
            if len(self.roster) != _FINGERPRINT_BYTES:
                raise ConfigError(f"a roster fingerprint is {_FINGERPRINT_BYTES} bytes")
        elif self.roster is not None:
            raise ConfigError("roster must be a mapping party -> IdentityPublicKey, or bytes")
        if not isinstance(self.adversary, AdversaryClass):
            raise ConfigError(f"adversary must be an AdversaryClass, got {self.adversary!r}")
        for name in ("corrupt_fraction", "dropout_rate"):
            rate = getattr(self, name)
            if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate < 1:
                raise ConfigError(f"[policy] {name} must be in [0, 1), got {rate!r}")
        if self.adversary is AdversaryClass.NONE and self.corrupt_fraction > 0:
            raise ConfigError("[policy] adversary = 'none' needs corrupt_fraction = 0")
        if self.security_bits < 20:
            raise ConfigError("[policy] security_bits below 20 is not a security target")
        if self.context_digest is not None and not isinstance(self.context_digest, bytes):
            raise ConfigError("[policy] context_digest must be bytes")
        if self.min_parties < 2:
            raise ConfigError("[policy] min_parties must be at least 2")
        if self.roster_subsets and not isinstance(self.roster, Mapping):
            raise ConfigError("[policy] roster_subsets needs the pinned roster itself (its keys)")

    @classmethod
    def unpinned(cls, *, min_parties: int = 3, **settings: object) -> SitePolicy:
        """A policy that accepts whatever roster the aggregator sends (at least ``min_parties``).

        Weaker by name: an aggregator that controls the roster can add parties it controls
        (Sybils) until the honest parties are a minority. Prefer pinning the roster.
        """
        return cls(roster=None, min_parties=min_parties, **settings)  # type: ignore[arg-type]

    @classmethod
    def trusting_keys(
        cls, keys: Iterable[IdentityPublicKey], *, min_parties: int = 3, **settings: object
    ) -> SitePolicy:
        """A policy pinned to a set of identity keys and accepting any sample of them (FL stacks
        that sample clients each round, such as Flower): see ``roster_subsets``."""
        roster = dict(enumerate(sorted(keys, key=lambda k: k.to_bytes()), start=1))
        return cls(roster=roster, roster_subsets=True, min_parties=min_parties, **settings)  # type: ignore[arg-type]

    # --- what the policy implies ------------------------------------------------------------

    @property
    def pinned_fingerprint(self) -> bytes | None:
        if self.roster is None:
            return None
        if isinstance(self.roster, bytes):
            return self.roster
        return roster_fingerprint(self.roster)

    def _corrupt_amount(self, n: int) -> float:
        """The (possibly fractional) number of the round's n parties assumed corrupt: the corrupt
        fraction of the pinned roster, all of whom may sit in the round."""
        reference = len(self.roster) if isinstance(self.roster, Mapping) else n
        return min(self.corrupt_fraction * max(reference, n), n - 1)

    def tolerated_corrupt(self, n: int) -> int:
        """How many of a round's n parties this site assumes may collude with the aggregator."""
        return math.floor(self._corrupt_amount(n) + 1e-9)

    def scope(self, config: RoundConfig) -> bytes:
        """What round ids are monotonic over: this aggregator label and the pinned roster (the
        round's roster when nothing is pinned)."""
        pinned = self.pinned_fingerprint or roster_fingerprint(config.roster)
        return transcript_digest("site-scope", self.aggregator, pinned)

    def minimum_threshold(self, config: RoundConfig) -> int:
        """The smallest t this site accepts for the round's graph (PolicyViolation if none)."""
        return self.minimum_threshold_for(len(config.roster), config.graph)

    def minimum_threshold_for(self, n: int, graph: NeighbourGraph) -> int:
        """The smallest t this site accepts for ``graph`` over n parties (PolicyViolation if
        the graph itself is unsafe)."""
        corrupt_fraction = self._corrupt_amount(n) / n
        if graph.is_full:
            return full_graph_minimum_threshold(
                n, corrupt_fraction=corrupt_fraction, adversary=self.adversary
            )
        try:
            return sparse_minimum_threshold(
                n,
                graph.degree,
                dropout_rate=self.dropout_rate,
                corrupt_fraction=corrupt_fraction,
                adversary=self.adversary,
                security_bits=self.security_bits,
            )
        except ConfigError as exc:
            raise PolicyViolation(
                "degree",
                graph.degree,
                "a larger degree",
                str(exc),
                "[policy] corrupt_fraction / dropout_rate, or ask the aggregator for the "
                "parameters of secagg.protocol.choose_parameters",
            ) from None

    # --- checks -----------------------------------------------------------------------------

    def check_round(self, config: RoundConfig) -> None:
        """Refuse (PolicyViolation) a round this policy does not accept; return if it does."""
        self._check_roster(config)
        if self.context_digest is not None and config.context_digest != self.context_digest:
            raise PolicyViolation(
                "context_digest",
                config.context_digest.hex()[:16] + "...",
                self.context_digest.hex()[:16] + "...",
                "the round binds another model or training configuration than this site expects",
                "[policy] context_digest",
            )
        minimum = self.minimum_threshold(config)
        n = len(config.roster)
        neighbourhood = n if config.graph.is_full else config.graph.degree + 1
        if minimum > neighbourhood:
            needed = next(
                m
                for m in range(n + 1, 10 * n + 10)
                if self.minimum_threshold_for(m, NeighbourGraph.full(range(1, m + 1))) <= m
            )
            raise PolicyViolation(
                "roster size",
                n,
                f">= {needed}",
                f"no threshold is safe for {n} parties under this site's assumptions (it would "
                f"have to be {minimum}): the aggregator could learn a party's input",
                "[policy] corrupt_fraction or adversary, or enlarge the consortium",
            )
        if config.threshold < minimum:
            graph = (
                "full graph" if config.graph.is_full else f"SecAgg+ degree {config.graph.degree}"
            )
            raise PolicyViolation(
                "threshold",
                f"{config.threshold} of {n}",
                f">= {minimum}",
                f"{graph}, adversary {self.adversary.value}, up to "
                f"{self.tolerated_corrupt(n)} of {n} parties corrupt "
                f"(corrupt_fraction {self.corrupt_fraction:g}): below {minimum} an aggregator "
                "could show two groups of sites two survivor sets and unmask a site",
                "[policy] corrupt_fraction or adversary (weaker assumptions), or ask the "
                f"aggregator for threshold >= {minimum}",
            )

    def check_round_id(self, config: RoundConfig, last_round_id: int | None) -> None:
        """Refuse a round id that does not exceed the last one this site took part in."""
        if last_round_id is not None and config.round_id <= last_round_id:
            raise PolicyViolation(
                "round_id",
                config.round_id,
                f"> {last_round_id}",
                "this site already took part in that round id or a later one with this "
                "aggregator and roster (a repeated round lets the aggregator isolate a site by "
                "difference)",
                "nothing: an honest aggregator never reuses a round id",
            )

    def check_distributed_dp(self, offered: OfferedDP | None, spent: float = 0.0) -> None:
        """Refuse a round whose site-level DP is below this site's :class:`DPFloor`.

        ``spent``: the site-level epsilon of the rounds this site already took part in; the total
        is bounded by basic composition (epsilons and deltas add up: Dwork & Roth 2014, Thm. 3.16),
        a proven upper bound whatever each round's mechanism was.
        """
        floor = self.dp
        if offered is None:
            if floor.required:
                raise PolicyViolation(
                    "distributed_dp",
                    "none",
                    "site-level distributed DP",
                    "this site only takes part in rounds with site-level DP",
                    "[policy.dp]",
                )
            return
        checks = (
            ("noise_multiplier", offered.noise_multiplier, floor.min_noise_multiplier, ">="),
            ("epsilon per round", offered.epsilon_per_round, floor.max_epsilon_per_round, "<="),
            ("epsilon in total", spent + offered.epsilon_per_round, floor.max_epsilon_total, "<="),
        )
        for name, value, limit, relation in checks:
            if limit is None:
                continue
            ok = value >= limit if relation == ">=" else value <= limit
            if not ok:
                raise PolicyViolation(
                    name,
                    f"{value:.4g}",
                    f"{relation} {limit:g}",
                    f"at delta {offered.delta:g}, assuming this site's tolerated colluders",
                    f"[policy.dp] {name.replace(' ', '_')}",
                )

    def _check_roster(self, config: RoundConfig) -> None:
        n = len(config.roster)
        pinned = self.pinned_fingerprint
        if pinned is None:
            if n < self.min_parties:
                raise PolicyViolation(
                    "roster size",
                    n,
                    f">= {self.min_parties}",
                    "with an unpinned roster a tiny round can hold one honest site among Sybils",
                    "[policy] min_parties, or pin the roster",
                )
            return
        offered = roster_fingerprint(config.roster)
        if offered == pinned:
            return
        if self.roster_subsets and isinstance(self.roster, Mapping):
            outsiders = set(config.roster.values()) - set(self.roster.values())
            if not outsiders and n >= self.min_parties:
                return
            if not outsiders:
                raise PolicyViolation(
                    "roster size",
                    n,
                    f">= {self.min_parties}",
                    "too few of the pinned parties in this round",
                    "[policy] min_parties",
                )
            raise PolicyViolation(
                "roster",
                f"{len(outsiders)} unknown identity keys",
                "keys of the pinned roster only",
                "the round holds parties this site does not trust (Sybils?)",
                "[policy] roster (only if the consortium changed its roster)",
            )
        detail = "its fingerprint differs from the pinned one"
        if isinstance(self.roster, Mapping):
            extra = sorted(set(config.roster.items()) - set(self.roster.items()))
            missing = sorted(set(self.roster.items()) - set(config.roster.items()))
            detail = (
                f"parties not in the pinned roster (or with other keys): "
                f"{[p for p, _ in extra]}; pinned parties missing: {[p for p, _ in missing]}"
            )
        raise PolicyViolation(
            "roster",
            offered.hex()[:16] + "...",
            pinned.hex()[:16] + "...",
            detail,
            "[policy] roster / roster_fingerprint (only if the consortium changed its roster)",
        )
