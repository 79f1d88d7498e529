"""A site's own configuration: its policy (what it accepts) and its ledger (what it did).

Read from the ``[policy]`` section of a TOML file the site keeps itself (never from anything the
aggregator sends). Paths in the file are relative to the file; paths on the command line to the
working directory::

    ledger = "site-ledger.jsonl"          # this site's signed ledger (created on first use)

    [policy]
    roster_file = "roster.toml"          # the consortium's [[roster]] list, pinned out of band
    # roster_fingerprint = "ab12..."     # ... or just its fingerprint (`secagg roster fingerprint`)
    corrupt_fraction = 0.1               # of the roster, colluding with the aggregator
    dropout_rate = 0.1
    adversary = "semi_malicious_server"  # or "curious_server" / "none" (weaker, by name)
    # context_digest = "..."             # the model/context this site expects, if known
    # aggregator = "agg.example.org"     # round ids are monotonic per aggregator label

    [policy.dp]                          # the weakest site-level DP this site accepts
    # min_noise_multiplier = 1.0
    # max_epsilon_per_round = 2.0
    # max_epsilon_total = 10.0

Without a ``[policy]`` section nothing is accepted: the roster must be pinned, and the strict
defaults (a malicious aggregator, 10 % corrupt) apply to everything not set.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secagg._toml import check_keys
from secagg.audit.site_ledger import SiteLedgerFile
from secagg.crypto import IdentityKey, IdentityPublicKey
from secagg.dp.distributed import DistributedDPParams, distributed_dp_epsilon
from secagg.errors import ConfigError
from secagg.protocol import AdversaryClass, DPFloor, OfferedDP, SitePolicy

__all__ = ["SiteConfig", "dp_offer", "load_site_config", "policy_from_mapping", "read_roster"]

_TOP_KEYS = {"ledger", "policy"}
_POLICY_KEYS = {
    "roster",
    "roster_file",
    "roster_fingerprint",
    "corrupt_fraction",
    "dropout_rate",
    "adversary",
    "security_bits",
    "context_digest",
    "aggregator",
    "min_parties",
    "roster_subsets",
    "unpinned",
    "dp",
}
_DP_KEYS = {
    "required",
    "min_noise_multiplier",
    "max_epsilon_per_round",
    "max_epsilon_total",
    "delta",
    "max_record_epsilon",
}


@dataclass(frozen=True)
class SiteConfig:
    """A site's policy and where its ledger lives."""

    policy: SitePolicy
    ledger_path: Path

    def open_ledger(self, identity: IdentityKey) -> SiteLedgerFile:
        return SiteLedgerFile(self.ledger_path, identity)


def read_roster(entries: Any, where: str) -> dict[int, IdentityPublicKey]:
    """``[[roster]]`` entries (party, public_key hex; other keys such as name are ignored)."""
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where} must be a non-empty list of [[roster]] entries")
    roster: dict[int, IdentityPublicKey] = {}
    for entry in entries:
        try:
            party = int(entry["party"])
            key = IdentityPublicKey.from_bytes(bytes.fromhex(str(entry["public_key"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"{where}: a roster entry needs party and public_key ({exc})"
            ) from None
        if party in roster:
            raise ConfigError(f"{where}: party {party} is listed twice")
        roster[party] = key
    return roster


def policy_from_mapping(section: Mapping[str, Any], base_dir: Path) -> SitePolicy:
    """A :class:`SitePolicy` from a ``[policy]`` table (relative paths from ``base_dir``)."""
    check_keys(section, _POLICY_KEYS, "[policy]")
    d = dict(section)
    pins = [k for k in ("roster", "roster_file", "roster_fingerprint") if k in d]
    unpinned = bool(d.pop("unpinned", False))
    if len(pins) > 1:
        raise ConfigError(f"[policy] pins the roster twice ({', '.join(pins)}): keep one")
    if not pins and not unpinned:
        raise ConfigError(
            '[policy] must pin the roster this site trusts: roster_file = "roster.toml", '
            '[[policy.roster]] entries, or roster_fingerprint = "..." '
            "(or, weaker by name, unpinned = true)"
        )
    roster: Mapping[int, IdentityPublicKey] | bytes | None = None
    if "roster" in d:
        roster = read_roster(d.pop("roster"), "[[policy.roster]]")
    elif "roster_file" in d:
        path = base_dir / str(d.pop("roster_file"))
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"[policy] roster_file: cannot read {path}: {exc}") from None
        roster = read_roster(doc.get("roster"), f"{path} [[roster]]")
    elif "roster_fingerprint" in d:
        try:
            roster = bytes.fromhex(str(d.pop("roster_fingerprint")))
        except ValueError:
            raise ConfigError("[policy] roster_fingerprint must be hex") from None
    dp = d.pop("dp", {})
    if not isinstance(dp, Mapping):
        raise ConfigError("[policy.dp] must be a table")
    check_keys(dp, _DP_KEYS, "[policy.dp]")
    if "adversary" in d:
        try:
            d["adversary"] = AdversaryClass(str(d["adversary"]))
        except ValueError:
            choices = [a.value for a in AdversaryClass]
            raise ConfigError(f"[policy] adversary must be one of {choices}") from None
    if "context_digest" in d:
        try:
            d["context_digest"] = bytes.fromhex(str(d["context_digest"]))
        except ValueError:
            raise ConfigError("[policy] context_digest must be hex") from None
    try:
        return SitePolicy(roster=roster, dp=DPFloor(**dp), **d)
    except TypeError as exc:
        raise ConfigError(f"[policy]: {exc}") from None


def load_site_config(path: str | os.PathLike[str]) -> SiteConfig:
    """Read a site's TOML file (``[policy]`` and ``ledger``); ConfigError names what is wrong."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"the site configuration {p} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the site configuration {p}: {exc}") from None
    check_keys(doc, _TOP_KEYS, str(p))
    if "policy" not in doc:
        raise ConfigError(f"{p} has no [policy] section: a site must say what it accepts")
    base = p.resolve().parent
    policy = policy_from_mapping(doc["policy"], base)
    ledger = base / str(doc.get("ledger", "site-ledger.jsonl"))
    return SiteConfig(policy, ledger)


def dp_offer(params: DistributedDPParams, policy: SitePolicy, n: int) -> OfferedDP:
    """A round's site-level distributed DP as this site sees it, for its :class:`DPFloor`."""
    del policy, n  # colluder-aware accounting arrives with issue 14 (tolerated_corrupt(n))
    return OfferedDP(
        noise_multiplier=params.noise_multiplier,
        epsilon_per_round=distributed_dp_epsilon(params),
        delta=params.config.delta,
    )
