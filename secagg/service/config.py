"""The aggregator's configuration: a TOML file plus command-line overrides.

Example (paths are relative to the file)::

    listen = "127.0.0.1:50051"
    data_dir = "aggregator-data"
    aggregator_key = "aggregator.key"  # Ed25519 key that signs the audit records (required;
                                      # create it with `secagg keys generate --out aggregator.key`)
    rounds = 3
    vector_length = 10000
    context = "model-v7"            # optional, bound into every round

    [encoding]
    clip = 1.0
    bits = 32                       # scale defaults to the finest that cannot overflow

    [protocol]                      # either explicit t (and optional SecAgg+ degree) ...
    threshold = 3
    # degree = 4
    # ... or the SecAgg+ parameter finder:
    # dropout_rate = 0.1
    # corrupt_fraction = 0.05

    [deadlines]                     # seconds per stage
    advertise_keys = 60
    share_keys = 10
    masked_input = 60
    consistency_check = 10
    unmask = 10

    [tls]                           # required unless listening on loopback
    certificate = "server.crt"
    private_key = "server.key"
    client_ca = "clients-ca.crt"    # optional: mutual TLS

    [distributed_dp]                # optional: site-level distributed DP the sites apply
    l2_clip = 5.0
    noise_multiplier = 0.5          # or target_epsilon (with rounds_planned)
    # epsilon_budget = 8.0          # no round starts that could take the site-level epsilon
                                    # (cumulative, at the fewest survivors allowed) above it
    # min_clients = 3               # default: the threshold; expected_clients: the roster size
    # dimension = 1000              # floats per update (default: vector_length); vector_length
                                    # must be its padded size (next power of two with hadamard)
    # mechanism = "ddgauss"         # or "skellam"; delta = 1e-5; rotation = "hadamard"

    [[roster]]
    party = 1
    public_key = "<hex or base64 Ed25519 public key>"
    name = "hospital-1"             # optional: the site's name in privacy reports (default "1")
"""

from __future__ import annotations

import base64
import binascii
import math
import pathlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from secagg._toml import check_keys
from secagg.crypto import IdentityKey, IdentityPublicKey
from secagg.dp.distributed import DistributedDPConfig
from secagg.encoding import FixedPointEncoding
from secagg.errors import ConfigError
from secagg.protocol import ACTIVE_STAGES, Stage, choose_parameters
from secagg.protocol.params import AdversaryClass, full_graph_threshold
from secagg.transport.tls import is_loopback

__all__ = [
    "SITE_POLICY_CORRUPT_FRACTION",
    "ServiceConfig",
    "load_config",
    "parse_public_key",
    "threshold_advice",
    "tolerable_dropouts",
]

DEFAULT_DEADLINES: dict[Stage, float] = {
    Stage.ADVERTISE_KEYS: 60.0,
    Stage.SHARE_KEYS: 30.0,
    Stage.MASKED_INPUT: 120.0,
    Stage.CONSISTENCY_CHECK: 30.0,
    Stage.UNMASK: 30.0,
}
MiB = 1 << 20


def parse_public_key(text: str) -> IdentityPublicKey:
    """An Ed25519 public key written in hex (64 digits) or base64."""
    text = text.strip()
    raw: bytes | None = None
    if len(text) == 64:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = None
    if raw is None:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(
                "a public key must be 32 bytes in hex (64 digits) or base64"
            ) from None
    return IdentityPublicKey.from_bytes(raw)


@dataclass(frozen=True)
class ServiceConfig:
    roster: Mapping[int, IdentityPublicKey] = field(repr=False)
    vector_length: int
    threshold: int
    degree: int | None
    encoding: FixedPointEncoding
    aggregator_key: IdentityKey = field(repr=False)
    listen: str = "127.0.0.1:50051"
    data_dir: pathlib.Path = pathlib.Path("aggregator-data")
    rounds: int = 1
    exit_after_rounds: bool = False
    deadlines: Mapping[Stage, float] = field(default_factory=lambda: dict(DEFAULT_DEADLINES))
    context: bytes = b""
    join_wait: float = 30.0
    handshake_timeout: float = 30.0
    hello_timeout: float = 5.0
    """Seconds a new stream has to send its signed Hello (outsiders are cut off after it)."""
    max_unauthenticated_streams: int = 128
    """Streams that have not yet proven an identity, at once (well below the worker pool)."""
    max_unary_calls: int = 8
    """Concurrent GetRoundRecord / ListRounds calls (their own capacity)."""
    retain_transcripts: bool = True
    """Keep every round's signed transcript (about 4 n m bytes) for `secagg audit replay`."""
    auditors: tuple[IdentityPublicKey, ...] = field(default=(), repr=False)
    """Identity keys, besides the roster's, allowed to read results and records."""
    shutdown_grace: float = 5.0
    max_message_bytes: int = 4 * MiB
    max_chunk_bytes: int = 1 * MiB
    tls_certificate: bytes | None = field(default=None, repr=False)
    tls_private_key: bytes | None = field(default=None, repr=False)
    tls_client_ca: bytes | None = field(default=None, repr=False)
    insecure_allow_plaintext: bool = False
    distributed_dp: DistributedDPConfig | None = None
    epsilon_budget: float | None = None
    """Site-level epsilon no round may take the cumulative figure above (None: no cap)."""
    site_names: Mapping[int, str] = field(default_factory=dict)
    """party -> the site's name in privacy reports (default: the party id as a string)."""

    def site_name(self, party: int) -> str:
        return self.site_names.get(party, str(party))

    def __post_init__(self) -> None:
        n = len(self.roster)
        if not isinstance(self.aggregator_key, IdentityKey):
            raise ConfigError("aggregator_key must be an IdentityKey (see load_identity)")
        names = [self.site_name(p) for p in self.roster]
        if len(set(names)) != len(names):
            raise ConfigError("two roster parties share one name")
        if n < 2:
            raise ConfigError(f"the roster needs at least 2 parties, it has {n}")
        keys = [k.to_bytes() for k in self.roster.values()]
        if len(set(keys)) != len(keys):
            raise ConfigError("two roster parties share one public key")
        if self.rounds < 0:
            raise ConfigError("rounds must be >= 0")
        if not 1 <= self.vector_length <= 2**32 - 1:
            raise ConfigError("vector_length must be in [1, 2^32 - 1]")
        if self.encoding.max_clients < n:
            raise ConfigError(
                f"the encoding holds the sum of {self.encoding.max_clients} clients, the roster "
                f"has {n}"
            )
        if self.max_chunk_bytes < 4096 or self.max_chunk_bytes + 64 * 1024 > self.max_message_bytes:
            raise ConfigError(
                "max_chunk_bytes must be >= 4096 and leave 64 KiB under max_message_bytes"
            )
        if self.tls_enabled and not (self.tls_certificate and self.tls_private_key):
            raise ConfigError("TLS needs both [tls] certificate and private_key")
        if self.tls_client_ca and not self.tls_enabled:
            raise ConfigError("[tls] client_ca needs a server certificate and key")
        plaintext_ok = self.insecure_allow_plaintext or is_loopback(self.listen)
        if not self.tls_enabled and not plaintext_ok:
            raise ConfigError(
                f"refusing to listen on {self.listen} without TLS: configure [tls] "
                "certificate and private_key, listen on 127.0.0.1, or pass "
                "--insecure-allow-plaintext if you really mean it"
            )

    @property
    def tls_enabled(self) -> bool:
        return self.tls_certificate is not None or self.tls_private_key is not None

    def with_overrides(self, **changes: Any) -> ServiceConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _auditors(value: Any) -> tuple[IdentityPublicKey, ...]:
    if not isinstance(value, list):
        raise ConfigError("auditors must be a list of public keys (hex or base64)")
    return tuple(parse_public_key(str(k)) for k in value)


def _section(doc: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _number(table: Mapping[str, Any], key: str, where: str, default: Any = None) -> Any:
    value = table.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}{key} must be a number, got {value!r}")
    return value


_TOP_KEYS = {
    "listen",
    "data_dir",
    "aggregator_key",
    "rounds",
    "exit_after_rounds",
    "vector_length",
    "context",
    "insecure_allow_plaintext",
    "encoding",
    "protocol",
    "deadlines",
    "tls",
    "limits",
    "service",
    "distributed_dp",
    "roster",
    "auditors",
}
_SECTION_KEYS: dict[str, set[str]] = {
    "encoding": {"clip", "bits", "scale"},
    "protocol": {"threshold", "degree", "dropout_rate", "corrupt_fraction"},
    "deadlines": {s.value for s in ACTIVE_STAGES},
    "tls": {"certificate", "private_key", "client_ca"},
    "limits": {"max_message_bytes", "max_chunk_bytes"},
    "service": {
        "shutdown_grace",
        "join_wait",
        "handshake_timeout",
        "hello_timeout",
        "max_unauthenticated_streams",
        "max_unary_calls",
        "retain_transcripts",
    },
}
_ROSTER_KEYS = {"party", "public_key", "name"}


def _check_document(doc: Mapping[str, Any]) -> None:
    check_keys(doc, _TOP_KEYS, "the top level")
    for name, allowed in _SECTION_KEYS.items():
        check_keys(_section(doc, name), allowed, f"[{name}]")
    check_keys(_section(doc, "distributed_dp"), _DP_KEYS, "[distributed_dp]")
    entries = doc.get("roster", [])
    if isinstance(entries, list):
        for k, entry in enumerate(entries):
            if isinstance(entry, Mapping):
                check_keys(entry, _ROSTER_KEYS, f"[[roster]] entry {k + 1}")


# -- what a threshold means for a small roster --------------------------------------------------

#: The sites' default assumption (the strict site policy): a malicious aggregator that may lie
#: about dropouts, with 10 % of the roster colluding with it.
SITE_POLICY_CORRUPT_FRACTION = 0.1


def tolerable_dropouts(
    n: int,
    *,
    corrupt_fraction: float = SITE_POLICY_CORRUPT_FRACTION,
    adversary: AdversaryClass = AdversaryClass.SEMI_MALICIOUS_SERVER,
) -> int | None:
    """The most dropouts per round a full-graph round of ``n`` sites can tolerate while its
    threshold stays safe (:func:`~secagg.protocol.params.full_graph_threshold`); None if no
    threshold is safe for ``n`` at all."""
    for dropped in range(max(n - 2, 0), -1, -1):
        try:
            full_graph_threshold(
                n, dropout_rate=dropped / n, corrupt_fraction=corrupt_fraction, adversary=adversary
            )
        except ConfigError:
            continue
        return dropped
    return None


def threshold_advice(n: int, threshold: int) -> str | None:
    """What a full-graph ``threshold`` of ``n`` sites means, when it is surprising (no dropout
    tolerated, or below what the sites' default policy accepts), and how to fix it; else None."""
    policy = (
        "the sites' default policy (a malicious aggregator with 10% of the sites colluding: "
        "t > ceil((n + 0.1 n) / 2))"
    )
    safe = tolerable_dropouts(n)
    if safe is None:
        return f"no threshold of {n} sites satisfies {policy}: add sites (3 or more)"
    smallest = n - safe
    if threshold < smallest:
        return (
            f"threshold {threshold} of {n} is below {smallest}, the smallest that {policy} "
            f"accepts: such sites refuse the round; set [protocol] threshold = {smallest}"
        )
    if threshold < n:
        return None
    if safe == 0:
        enough = next(m for m in range(n + 1, 8 * n + 8) if (tolerable_dropouts(m) or 0) >= 1)
        return (
            f"threshold {n} of {n}: any dropout aborts the round. Tolerating one needs t = "
            f"{n - 1}, below {smallest}, the smallest that {policy} accepts; to tolerate a "
            f"dropout add sites ({enough} or more), or have the sites assume an "
            "honest-but-curious aggregator"
        )
    return (
        f"threshold {n} of {n}: any dropout aborts the round; [protocol] threshold = {smallest} "
        f"tolerates {safe} dropout(s) per round and is the smallest that {policy} accepts"
    )


def _explain(exc: ConfigError, n: int) -> ConfigError:
    advice = threshold_advice(n, n)
    return ConfigError(f"[protocol] {exc}" + (f". {advice}" if advice else ""))


def _load_aggregator_key(path: pathlib.Path) -> IdentityKey:
    from secagg.client import load_identity

    if not path.is_file():
        raise ConfigError(
            f"the aggregator key {path} does not exist; create it with: "
            f"secagg keys generate --out {path}"
        )
    try:
        return load_identity(path)
    except OSError as exc:
        raise ConfigError(f"cannot read the aggregator key {path}: {exc}") from exc


_DP_KEYS = {
    "epsilon_budget",
    "l2_clip",
    "noise_multiplier",
    "target_epsilon",
    "rounds_planned",
    "min_clients",
    "expected_clients",
    "dimension",
    "bits",
    "delta",
    "beta",
    "mechanism",
    "rotation",
    "max_wraparound_probability",
}


def _distributed_dp(
    dp: Mapping[str, Any], *, vector_length: int, bits: int, threshold: int, roster_size: int
) -> DistributedDPConfig | None:
    """The [distributed_dp] section as a DistributedDPConfig (None if the section is absent)."""
    if not dp:
        return None
    unknown = set(dp) - _DP_KEYS
    if unknown:
        raise ConfigError(f"unknown [distributed_dp] entries: {sorted(unknown)}")
    where = "[distributed_dp] "
    if _number(dp, "l2_clip", where) is None:
        raise ConfigError(f"{where}l2_clip is required")
    kwargs: dict[str, Any] = {
        "l2_clip": float(_number(dp, "l2_clip", where)),
        "expected_clients": int(_number(dp, "expected_clients", where, roster_size)),
        "min_clients": int(_number(dp, "min_clients", where, threshold)),
        "dimension": int(_number(dp, "dimension", where, vector_length)),
        "bits": int(_number(dp, "bits", where, bits)),
        "delta": float(_number(dp, "delta", where, 1e-5)),
        "rounds": int(_number(dp, "rounds_planned", where, 1)),
    }
    for key in ("noise_multiplier", "target_epsilon", "beta", "max_wraparound_probability"):
        value = _number(dp, key, where)
        if value is not None:
            kwargs[key] = float(value)
    for key in ("mechanism", "rotation"):
        if key in dp:
            kwargs[key] = str(dp[key])
    try:
        config = DistributedDPConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}{exc}") from exc
    if config.padded_dimension != vector_length:
        raise ConfigError(
            f"{where}the sites encode {config.dimension} values into {config.padded_dimension} "
            f"coordinates: set vector_length = {config.padded_dimension}"
        )
    return config


def _epsilon_budget(dp: Mapping[str, Any]) -> float | None:
    budget = _number(dp, "epsilon_budget", "[distributed_dp] ")
    if budget is None:
        return None
    if not 0 < float(budget) < math.inf:
        raise ConfigError(f"[distributed_dp] epsilon_budget must be positive, got {budget}")
    return float(budget)


def load_config(path: str | pathlib.Path, **overrides: Any) -> ServiceConfig:
    """Read a TOML configuration; ``overrides`` (not None) replace its values."""
    path = pathlib.Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the configuration {path}: {exc}") from exc
    _check_document(doc)
    base = path.parent

    def resolve(p: str) -> pathlib.Path:
        q = pathlib.Path(p).expanduser()
        return q if q.is_absolute() else base / q

    def read(p: Any, what: str) -> bytes | None:
        if p is None:
            return None
        try:
            return resolve(str(p)).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the {what} {p}: {exc}") from exc

    roster: dict[int, IdentityPublicKey] = {}
    site_names: dict[int, str] = {}
    entries = doc.get("roster", [])
    if not isinstance(entries, list):
        raise ConfigError("roster must be an array of tables ([[roster]])")
    for entry in entries:
        if not isinstance(entry, Mapping) or "party" not in entry or "public_key" not in entry:
            raise ConfigError("each [[roster]] entry needs party and public_key")
        party = entry["party"]
        if isinstance(party, bool) or not isinstance(party, int) or not 1 <= party < 2**31 - 1:
            raise ConfigError(f"roster party ids must be ints in [1, 2^31 - 2], got {party!r}")
        if party in roster:
            raise ConfigError(f"the roster lists party {party} twice")
        try:
            roster[party] = parse_public_key(str(entry["public_key"]))
        except ConfigError as exc:
            raise ConfigError(f"roster party {party}: {exc}") from exc
        if "name" in entry:
            name = entry["name"]
            if not isinstance(name, str) or not 1 <= len(name) <= 128:
                raise ConfigError(f"roster party {party}: name must be a string of 1-128 chars")
            site_names[party] = name
    n = len(roster)
    if n < 2:
        raise ConfigError(f"the roster needs at least 2 parties, it has {n}")

    vector_length = doc.get("vector_length")
    if isinstance(vector_length, bool) or not isinstance(vector_length, int):
        raise ConfigError("vector_length (an int) is required")

    enc = _section(doc, "encoding")
    clip = float(_number(enc, "clip", "[encoding] ", 1.0))
    bits = int(_number(enc, "bits", "[encoding] ", 32))
    scale = _number(enc, "scale", "[encoding] ")
    if scale is None:
        encoding = FixedPointEncoding.for_clients(clip=clip, max_clients=n, bits=bits)
    else:
        encoding = FixedPointEncoding(clip=clip, scale=float(scale), max_clients=n, bits=bits)

    proto = _section(doc, "protocol")
    threshold = _number(proto, "threshold", "[protocol] ")
    degree = _number(proto, "degree", "[protocol] ")
    dropout_rate = _number(proto, "dropout_rate", "[protocol] ")
    corrupt_fraction = _number(proto, "corrupt_fraction", "[protocol] ")
    if threshold is not None:
        if dropout_rate is not None or corrupt_fraction is not None:
            raise ConfigError("give either [protocol] threshold (and degree) or dropout_rate")
        threshold = int(threshold)
        degree = None if degree is None else int(degree)
    elif dropout_rate is not None:
        try:
            params = choose_parameters(
                n, dropout_rate=float(dropout_rate), corrupt_fraction=float(corrupt_fraction or 0.0)
            )
        except ConfigError as exc:
            raise _explain(exc, n) from None
        threshold = params.threshold
        degree = None if params.is_full_graph(n) else params.degree
    else:
        if degree is not None:
            raise ConfigError("[protocol] degree needs an explicit threshold")
        threshold = n // 2 + 1

    dl = _section(doc, "deadlines")
    deadlines = dict(DEFAULT_DEADLINES)
    for stage in ACTIVE_STAGES:
        value = _number(dl, stage.value, "[deadlines] ")
        if value is not None:
            if not 0 < value <= 86_400:
                raise ConfigError(f"[deadlines] {stage.value} must be in (0, 86400] seconds")
            deadlines[stage] = float(value)
    unknown = set(dl) - {s.value for s in ACTIVE_STAGES}
    if unknown:
        raise ConfigError(f"unknown [deadlines] entries: {sorted(unknown)}")

    limits = _section(doc, "limits")
    tls = _section(doc, "tls")
    service = _section(doc, "service")
    context = doc.get("context", "")
    if not isinstance(context, str):
        raise ConfigError("context must be a string")

    key_path = doc.get("aggregator_key")
    if "aggregator_key" in overrides and overrides["aggregator_key"] is not None:
        key_path = overrides.pop("aggregator_key")
    else:
        overrides.pop("aggregator_key", None)
    if key_path is None:
        raise ConfigError(
            "aggregator_key (the path of the aggregator's Ed25519 key, which signs the audit "
            "records) is required; create one with: secagg keys generate --out aggregator.key"
        )
    aggregator_key = _load_aggregator_key(
        key_path if isinstance(key_path, pathlib.Path) else resolve(str(key_path))
    )
    distributed_dp = _distributed_dp(
        _section(doc, "distributed_dp"),
        vector_length=vector_length,
        bits=bits,
        threshold=int(threshold),
        roster_size=n,
    )

    kwargs: dict[str, Any] = {
        "roster": roster,
        "site_names": site_names,
        "aggregator_key": aggregator_key,
        "distributed_dp": distributed_dp,
        "epsilon_budget": _epsilon_budget(_section(doc, "distributed_dp")),
        "vector_length": vector_length,
        "threshold": threshold,
        "degree": degree,
        "encoding": encoding,
        "listen": str(doc.get("listen", "127.0.0.1:50051")),
        "data_dir": resolve(str(doc.get("data_dir", "aggregator-data"))),
        "rounds": int(doc.get("rounds", 1)),
        "exit_after_rounds": bool(doc.get("exit_after_rounds", False)),
        "deadlines": deadlines,
        "context": context.encode(),
        "join_wait": float(_number(service, "join_wait", "[service] ", 30.0)),
        "handshake_timeout": float(_number(service, "handshake_timeout", "[service] ", 30.0)),
        "hello_timeout": float(_number(service, "hello_timeout", "[service] ", 5.0)),
        "max_unauthenticated_streams": int(
            _number(service, "max_unauthenticated_streams", "[service] ", 128)
        ),
        "max_unary_calls": int(_number(service, "max_unary_calls", "[service] ", 8)),
        "retain_transcripts": bool(service.get("retain_transcripts", True)),
        "auditors": _auditors(doc.get("auditors", [])),
        "shutdown_grace": float(_number(service, "shutdown_grace", "[service] ", 5.0)),
        "max_message_bytes": int(_number(limits, "max_message_bytes", "[limits] ", 4 * MiB)),
        "max_chunk_bytes": int(_number(limits, "max_chunk_bytes", "[limits] ", MiB)),
        "tls_certificate": read(tls.get("certificate"), "TLS certificate"),
        "tls_private_key": read(tls.get("private_key"), "TLS private key"),
        "tls_client_ca": read(tls.get("client_ca"), "TLS client CA"),
        "insecure_allow_plaintext": bool(doc.get("insecure_allow_plaintext", False)),
    }
    for key, value in overrides.items():
        if value is not None:
            kwargs[key] = value
    return ServiceConfig(**kwargs)
