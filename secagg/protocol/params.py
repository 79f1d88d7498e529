"""Degree k and Shamir threshold t for a SecAgg+ round (and t for a full-graph SecAgg round).

This is a faithful Python port of Google's production parameter finder, repository
google-parfait/federated-compute, ``fcp/secagg/server/graph_parameter_finder.cc``
(``HararyGraphParameterFinder`` and ``CheckFullGraphParameters``) with its hypergeometric helper
``fcp/secagg/server/distribution_utilities.cc``; the analysis is that of Bell, Bonawitz, Gascón,
Lepoint and Raykova, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020.
Our regression tests pin the values of Google's ``graph_parameter_finder_test.cc``.

Model. n clients; at most ``floor(corrupt_fraction * n)`` are corrupt (colluding with the server)
and at most ``floor(dropout_rate * n)`` drop out. Each client has k neighbours on a Harary graph
H(k, n) with a uniformly random ring order, and secret-shares among its k neighbours and itself
(k + 1 holders) with threshold t. The number of corrupt (resp. surviving) neighbours of a client is
then hypergeometric: ``X ~ HG(n, floor(c*n), k)`` and ``S ~ HG(n, ceil((1-d)*n), k)``.

Rule, for the smallest even k = 2, 4, ... < n - 1 (security s = 40 bits, correctness r = 20 bits):

1. *Connectivity.* Removing the corrupt and dropped clients must not disconnect the graph, or the
   server learns partial sums. A cut of a Harary ring needs two disjoint runs of k/2 removed
   nodes; by a union bound over the n(n-k-1)/2 pairs of cut positions
   ``P[disconnected] <= n(n-k-1)/2 * B!(n-k)! / (n!(B-k)!)``, B = floor(c*n) + floor(d*n), which
   must be < 2^-(s+1) (zero when k > B).
2. *Security.* ``t1`` is the smallest value with ``P[X > t1] < 2^-(s+1) / n``: with t = t1 + 1 a
   union bound over n clients gives ``P[some client has >= t corrupt holders] < 2^-(s+1)``.
   Against a *semi-malicious* server, which may tell different honest neighbours different
   dropout sets, it can obtain both the self-mask and the key shares of a client whenever
   X >= 2t - k, so t1 is raised to ``ceil((t1 + k - 1.25) / 2)``, i.e. 2t - k > t1.
   Both security events together fail with probability < 2 * 2^-(s+1) = 2^-s.
3. *Correctness.* ``t2`` is the smallest value with ``P[S <= t2] >= 2^-r / n``; the round only
   fails if some client has fewer than t surviving holders, and t <= t2 gives probability < 2^-r.
4. k is accepted when t1 < t2; then t = max(t1 + 1, 2) (Shamir needs t >= 2).

Feasibility (Google): a + d <= 0.9 for an honest-but-curious server (or no adversary), and
a + 2d <= 0.9 for a semi-malicious server. Floating-point rounding is pushed towards the safe side
with Google's ``kSmall = 1e-14``.

One deliberate difference: Google returns t = 2 when t1 + 1 < 2 without re-checking correctness
for t = 2; we additionally require t <= t2 so that the correctness claim holds for the t returned.
This changes none of Google's pinned test values.

When no k < n - 1 qualifies (small n, large rates), Google falls back to the full graph, and so do
we, with :func:`full_graph_threshold`.

Full graph (plain SecAgg, k = n - 1), from ``CheckFullGraphParameters`` and Bonawitz et al. 2017:
the threshold is the number of clients that must survive, ``t = ceil((1 - d) * n)`` (the largest t
that ``n - floor(d*n)`` survivors reach); it must satisfy 2 <= t <= n and

* honest-but-curious server: ``t > ceil(c * n)`` (the corrupt clients alone hold fewer than t
  shares);
* semi-malicious (active) server: ``t > ceil((n + c * n) / 2)`` (Bonawitz et al. 2017, active
  security needs 2t > n + n_C, so that two inconsistent views of the survivors cannot both reach t);
* no adversary: only 2 <= t <= n.

Otherwise there is no safe threshold and :class:`~secagg.errors.ConfigError` is raised.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from secagg.errors import ConfigError

__all__ = [
    "AdversaryClass",
    "GraphParameters",
    "choose_parameters",
    "full_graph_threshold",
    "hypergeometric_cdf",
    "hypergeometric_sf",
    "log_prob_disconnected",
]

# Google's kSmall: keeps float rounding from being magnified in an insecure direction.
_SMALL = 1e-14
_MAX_CLIENTS = 1_000_000
# Google: "a + d <= 0.9" (curious / none) and "a + 2d <= 0.9" (semi-malicious).
_FEASIBILITY_LIMIT = 0.9


class AdversaryClass(enum.Enum):
    """Threat model, as Google's ``AdversaryClass`` (secagg_server_enums.proto)."""

    NONE = "none"
    """No adversary at all (corrupt_fraction must be 0); only dropouts matter."""
    CURIOUS_SERVER = "curious_server"
    """Honest-but-curious server colluding with the corrupt clients."""
    SEMI_MALICIOUS_SERVER = "semi_malicious_server"
    """Active server that may lie about which clients dropped (Bell et al.'s semi-malicious)."""


@dataclass(frozen=True)
class GraphParameters:
    """A neighbour-graph degree k (neighbours, self excluded) and a Shamir threshold t."""

    degree: int
    threshold: int

    def __post_init__(self) -> None:
        if self.degree < 1 or self.threshold < 1:
            raise ConfigError("degree and threshold must be positive")
        if self.threshold > self.degree + 1:
            raise ConfigError("threshold cannot exceed degree + 1 share holders")

    def is_full_graph(self, n: int) -> bool:
        """True when every one of the ``n`` clients is a neighbour of every other."""
        return self.degree >= n - 1


# -- hypergeometric distribution (number of marked items in a sample without replacement) -------


def _check_hg(total: int, marked: int, sampled: int) -> None:
    if total < 0 or marked < 0 or sampled < 0 or marked > total or sampled > total:
        raise ConfigError(f"invalid hypergeometric parameters ({total}, {marked}, {sampled})")


def _hg_pmf(x: float, total: int, counted: int, sampled: int) -> float:
    if x < 0 or x > sampled or x > counted or total + x < counted + sampled:
        return 0.0
    lpmf = (
        math.lgamma(sampled + 1)
        + math.lgamma(counted + 1)
        + math.lgamma(total - counted + 1)
        + math.lgamma(total - sampled + 1)
        - math.lgamma(x + 1)
        - math.lgamma(sampled - x + 1)
        - math.lgamma(counted - x + 1)
        - math.lgamma(total + 1)
        - math.lgamma(total - sampled - counted + x + 1)
    )
    return math.exp(lpmf)


def _hg_lower_tail(x: float, total: int, counted: int, sampled: int) -> float:
    """P[X <= x], summed downwards from x with the pmf ratio until the terms are negligible."""
    pmf = _hg_pmf(x, total, counted, sampled)
    result = 0.0
    while pmf > result * 1e-16:
        result += pmf
        pmf *= x
        pmf *= total - counted - sampled + x
        pmf /= counted - x + 1
        pmf /= sampled - x + 1
        x -= 1
    return result


def hypergeometric_cdf(x: int, total: int, marked: int, sampled: int) -> float:
    """P[X <= x] for X ~ HG(total, marked, sampled), accurate in both tails."""
    _check_hg(total, marked, sampled)
    xf = float(math.floor(x))
    mean = marked * sampled / total if total else 0.0
    if xf > mean:
        return 1.0 - _hg_lower_tail(sampled - xf - 1, total, total - marked, sampled)
    return _hg_lower_tail(xf, total, marked, sampled)


def hypergeometric_sf(x: int, total: int, marked: int, sampled: int) -> float:
    """P[X > x] for X ~ HG(total, marked, sampled), accurate in the upper tail."""
    _check_hg(total, marked, sampled)
    # X > x  <=>  sampled - X <= sampled - x - 1, and sampled - X ~ HG(total, total - marked, ...).
    return hypergeometric_cdf(sampled - x - 1, total, total - marked, sampled)


def _quantile_impl(quantile: float, total: int, counted: int, sampled: int) -> int:
    """The largest x with P[X <= x] < quantile (X counts ``counted`` items), or -1."""
    basic_bound = counted + sampled - total - 1
    # Hoeffding: P[X <= sampled * (p - eps)] <= exp(-2 sampled eps^2) = quantile.
    fancy_bound = sampled * (counted / total - math.sqrt(-math.log(quantile) / (2 * sampled)))
    result = math.floor(max(-1.0, float(basic_bound), fancy_bound))
    current_cdf = _hg_lower_tail(result, total, counted, sampled)
    current_pmf = _hg_pmf(result, total, counted, sampled)
    while current_cdf < quantile and result < sampled:
        if current_pmf > 0:
            current_pmf /= result + 1
            current_pmf /= total - counted - sampled + result + 1
            current_pmf *= counted - result
            current_pmf *= sampled - result
        else:
            current_pmf = _hg_pmf(result + 1, total, counted, sampled)
        current_cdf += current_pmf
        result += 1
    return result - 1


def _find_quantile(
    quantile: float, total: int, marked: int, sampled: int, *, complement: bool = False
) -> int:
    """Google's ``FindQuantile``: integer quantile rounded away from the median.

    complement=False: largest x with P[X <= x] < quantile.
    complement=True: smallest x with P[X > x] < quantile (computed on sampled - X).
    """
    if quantile > 0.5:
        quantile = 1 - quantile
        complement = not complement
    if complement:
        return sampled - _quantile_impl(quantile, total, total - marked, sampled) - 1
    return _quantile_impl(quantile, total, marked, sampled)


# -- the finder --------------------------------------------------------------------------------


def _validate(
    n: int, dropout_rate: float, corrupt_fraction: float, adversary: AdversaryClass
) -> None:
    if isinstance(n, bool) or not isinstance(n, int):
        raise ConfigError(f"the number of clients must be an int, got {type(n).__name__}")
    if n < 2:
        raise ConfigError(f"secure aggregation needs at least 2 clients, got n = {n}")
    if n > _MAX_CLIENTS:
        raise ConfigError(f"the parameter finder is validated up to {_MAX_CLIENTS} clients")
    if not isinstance(adversary, AdversaryClass):
        raise ConfigError(f"adversary must be an AdversaryClass, got {adversary!r}")
    for name, rate in (("dropout_rate", dropout_rate), ("corrupt_fraction", corrupt_fraction)):
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate < 1:
            raise ConfigError(f"{name} must be in [0, 1), got {rate!r}")
    if adversary is AdversaryClass.NONE and corrupt_fraction > 0:
        raise ConfigError("AdversaryClass.NONE expects corrupt_fraction = 0")
    if adversary is AdversaryClass.SEMI_MALICIOUS_SERVER:
        if corrupt_fraction + 2 * dropout_rate > _FEASIBILITY_LIMIT:
            raise ConfigError(
                "against a semi-malicious server corrupt_fraction + 2 * dropout_rate <= 0.9 must "
                f"hold; got {corrupt_fraction} + 2 * {dropout_rate}"
            )
    elif corrupt_fraction + dropout_rate > _FEASIBILITY_LIMIT:
        raise ConfigError(
            "corrupt_fraction + dropout_rate <= 0.9 must hold; "
            f"got {corrupt_fraction} + {dropout_rate}"
        )


def _max_corrupt(n: int, corrupt_fraction: float) -> int:
    return math.floor((corrupt_fraction + _SMALL) * n)


def _max_dropped(n: int, dropout_rate: float) -> int:
    return math.floor((dropout_rate + _SMALL) * n)


def _min_survivors(n: int, dropout_rate: float) -> int:
    return math.ceil((1 - dropout_rate - _SMALL) * n)


def log_prob_disconnected(
    n: int, degree: int, *, dropout_rate: float, corrupt_fraction: float
) -> float:
    """Natural log of Google's union bound on P[H(k, n) minus corrupt and dropped is disconnected].

    Returns -inf when k exceeds the number of removed clients (the ring cannot be cut).
    """
    bad = _max_corrupt(n, corrupt_fraction) + _max_dropped(n, dropout_rate)
    if degree > bad:
        return -math.inf
    log_gap_pairs = math.log(n) + math.log(n - degree - 1) - math.log(2)
    return (
        log_gap_pairs
        + math.lgamma(bad + 1)
        + math.lgamma(n - degree + 1)
        - math.lgamma(n + 1)
        - math.lgamma(bad - degree + 1)
    )


def _threshold_for_degree(
    n: int,
    degree: int,
    *,
    dropout_rate: float,
    corrupt_fraction: float,
    adversary: AdversaryClass,
    security_bits: float,
    correctness_bits: float,
) -> int | None:
    """Google's ``CheckNumberOfNeighbors``: a threshold for this degree, or None."""
    per_event_bits = security_bits + 1  # the security budget is split over two bad events
    if log_prob_disconnected(
        n, degree, dropout_rate=dropout_rate, corrupt_fraction=corrupt_fraction
    ) >= -per_event_bits * math.log(2):
        return None
    corrupt = _max_corrupt(n, corrupt_fraction)
    survivors = _min_survivors(n, dropout_rate)
    q_security = 2.0**-per_event_bits / n
    q_correct = 2.0**-correctness_bits / n
    t1 = _find_quantile(q_security, n, corrupt, degree, complement=True)
    t2 = _find_quantile(q_correct, n, survivors, degree)
    if hypergeometric_cdf(t2, n, survivors, degree) < q_correct:
        t2 += 1
    if adversary is AdversaryClass.SEMI_MALICIOUS_SERVER:
        t1 = math.ceil((t1 + degree - 1.25) / 2)
    if t2 <= t1:
        return None
    threshold = max(t1 + 1, 2)
    if threshold > t2:  # our extra check: correctness must hold for the t actually returned
        return None
    return threshold


def full_graph_threshold(
    n: int,
    *,
    dropout_rate: float,
    corrupt_fraction: float,
    adversary: AdversaryClass = AdversaryClass.SEMI_MALICIOUS_SERVER,
) -> int:
    """Threshold t for plain SecAgg (k = n - 1): ``ceil((1 - d) * n)``, checked as Google does.

    Raises ConfigError when that t is not above the adversary's reach (see the module docstring).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ConfigError(f"secure aggregation needs an int n >= 2 clients, got {n!r}")
    for name, rate in (("dropout_rate", dropout_rate), ("corrupt_fraction", corrupt_fraction)):
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate < 1:
            raise ConfigError(f"{name} must be in [0, 1), got {rate!r}")
    if not isinstance(adversary, AdversaryClass):
        raise ConfigError(f"adversary must be an AdversaryClass, got {adversary!r}")
    if adversary is AdversaryClass.NONE and corrupt_fraction > 0:
        raise ConfigError("AdversaryClass.NONE expects corrupt_fraction = 0")
    threshold = min(n, _min_survivors(n, dropout_rate))
    if threshold < 2:
        raise ConfigError(
            f"with n = {n} and dropout_rate = {dropout_rate} fewer than 2 clients may survive; "
            "Shamir sharing needs a threshold >= 2"
        )
    if adversary is AdversaryClass.CURIOUS_SERVER:
        floor_needed = math.ceil(corrupt_fraction * n)
        rule = "t > ceil(corrupt_fraction * n)"
    elif adversary is AdversaryClass.SEMI_MALICIOUS_SERVER:
        floor_needed = math.ceil((n + corrupt_fraction * n) / 2)
        rule = "t > ceil((n + corrupt_fraction * n) / 2)"
    else:
        return threshold
    if threshold <= floor_needed:
        raise ConfigError(
            f"no safe full-graph threshold for n = {n}, dropout_rate = {dropout_rate}, "
            f"corrupt_fraction = {corrupt_fraction}: the {n - threshold} tolerated dropouts leave "
            f"t = {threshold} survivors but {rule} = {floor_needed + 1} is required"
        )
    return threshold


def choose_parameters(
    n: int,
    *,
    dropout_rate: float,
    corrupt_fraction: float,
    security_bits: int = 40,
    correctness_bits: int = 20,
    adversary: AdversaryClass = AdversaryClass.SEMI_MALICIOUS_SERVER,
) -> GraphParameters:
    """The smallest even degree k (and its threshold t) meeting the security/correctness targets.

    Follows Google's ``HararyGraphParameterFinder`` (see the module docstring). If no k < n - 1
    qualifies, returns the full graph (k = n - 1) with :func:`full_graph_threshold`.
    """
    _validate(n, dropout_rate, corrupt_fraction, adversary)
    if security_bits <= 0 or correctness_bits <= 0:
        raise ConfigError("security_bits and correctness_bits must be positive")
    for degree in range(2, n - 1, 2):
        threshold = _threshold_for_degree(
            n,
            degree,
            dropout_rate=dropout_rate,
            corrupt_fraction=corrupt_fraction,
            adversary=adversary,
            security_bits=security_bits,
            correctness_bits=correctness_bits,
        )
        if threshold is not None:
            return GraphParameters(degree=degree, threshold=threshold)
    threshold = full_graph_threshold(
        n, dropout_rate=dropout_rate, corrupt_fraction=corrupt_fraction, adversary=adversary
    )
    return GraphParameters(degree=n - 1, threshold=threshold)


# -- what a site requires of a round it is offered ----------------------------------------------


def full_graph_minimum_threshold(
    n: int, *, corrupt_fraction: float, adversary: AdversaryClass
) -> int:
    """The smallest safe full-graph threshold for n parties: the adversary rule of
    :func:`full_graph_threshold`, solved for t (at least 2).

    * semi-malicious server: ``t > ceil((n + corrupt_fraction * n) / 2)`` (Bonawitz et al. 2017:
      two inconsistent survivor views cannot both gather t signatures);
    * honest-but-curious server: ``t > ceil(corrupt_fraction * n)``;
    * no adversary: ``t >= 2``.
    """
    if adversary is AdversaryClass.SEMI_MALICIOUS_SERVER:
        bound = math.ceil((n + corrupt_fraction * n) / 2)
    elif adversary is AdversaryClass.CURIOUS_SERVER:
        bound = math.ceil(corrupt_fraction * n)
    else:
        bound = 1
    return max(bound + 1, 2)


def sparse_minimum_threshold(
    n: int,
    degree: int,
    *,
    dropout_rate: float,
    corrupt_fraction: float,
    adversary: AdversaryClass,
    security_bits: int = 40,
) -> int:
    """The smallest threshold that keeps a SecAgg+ round of degree ``degree`` secure.

    The security half of Google's ``CheckNumberOfNeighbors`` (see the module docstring), for a
    degree the site did not choose: the graph must stay connected once the corrupt and dropped
    parties are removed, and t must exceed the 2^-(s+1)/n quantile of corrupt neighbours (against
    a semi-malicious server, 2t - k must). Correctness (enough survivors) is the aggregator's
    concern, not a privacy one, so it is not checked here.

    Raises:
        ConfigError: the degree itself is unsafe (the graph may disconnect), with the reason.
    """
    _validate(n, dropout_rate, corrupt_fraction, adversary)
    per_event_bits = security_bits + 1
    if log_prob_disconnected(
        n, degree, dropout_rate=dropout_rate, corrupt_fraction=corrupt_fraction
    ) >= -per_event_bits * math.log(2):
        raise ConfigError(
            f"degree {degree} is too small for n = {n}: removing "
            f"{_max_corrupt(n, corrupt_fraction)} corrupt and {_max_dropped(n, dropout_rate)} "
            f"dropped parties may disconnect the graph with probability above 2^-{per_event_bits}"
        )
    q_security = 2.0**-per_event_bits / n
    t1 = _find_quantile(q_security, n, _max_corrupt(n, corrupt_fraction), degree, complement=True)
    if adversary is AdversaryClass.SEMI_MALICIOUS_SERVER:
        t1 = math.ceil((t1 + degree - 1.25) / 2)
    return max(t1 + 1, 2)
