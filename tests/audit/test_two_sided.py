"""The two-sided audit: the aggregator's chain against the sites' signed ledgers.

Every chain the issue found "verified OK" is built here with the library's own recorder and a
malicious aggregator where needed; each now fails ``verify`` (with the sites' ledgers where only
they can tell), naming the round and the reason. An honest 10-round run passes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from secagg.audit import (
    RecordChain,
    SiteLedgerFile,
    read_site_ledger,
    run_recorded_round,
    verify_records,
    write_jsonl,
)
from secagg.audit.crosscheck import crosscheck_sites
from secagg.crypto import IdentityKey
from secagg.errors import PolicyViolation, RoundAborted
from secagg.protocol import AdversaryClass, RoundConfig, ServerSession, SitePolicy, Stage

from .conftest import CREATED_AT, privacy_report

N = 6
M = 8
ROOT = Path(__file__).resolve().parents[2]


class Federation:
    """Six sites with file ledgers and an aggregator that records every round."""

    def __init__(self, tmp: Path, *, relaxed: bool = False) -> None:
        self.tmp = tmp
        self.aggregator = IdentityKey.generate()
        self.ids = {p: IdentityKey.generate() for p in range(1, N + 1)}
        self.roster = {p: k.public_key for p, k in self.ids.items()}
        self.ledgers = {p: SiteLedgerFile(tmp / f"site{p}.jsonl", k) for p, k in self.ids.items()}
        self.chain = RecordChain()
        self.policy = (
            SitePolicy(
                roster=self.roster, adversary=AdversaryClass.CURIOUS_SERVER, corrupt_fraction=0
            )
            if relaxed
            else SitePolicy(roster=self.roster)
        )
        self.rng = np.random.default_rng(0)

    def round(
        self,
        round_id: int,
        *,
        threshold: int = 5,
        drop: set[int] | None = None,
        server_class: type[ServerSession] = ServerSession,
        forgetful: bool = False,
    ) -> ServerSession:
        """Run and record one round. ``forgetful``: sites without their ledgers' memory (to
        forge chains that real sites would refuse to take part in)."""
        config = RoundConfig(
            round_id=round_id, roster=self.roster, threshold=threshold, vector_length=M
        )
        inputs = {
            p: self.rng.integers(0, 2**32, M, dtype=np.uint64).astype(np.uint32) for p in self.ids
        }
        server = server_class(config)
        with contextlib.suppress(RoundAborted):
            run_recorded_round(
                config,
                self.ids,
                inputs,
                self.chain,
                aggregator_key=self.aggregator,
                dropouts={Stage.MASKED_INPUT: drop or set()},
                privacy_report=privacy_report(round_id, 0.1 * (round_id + 1)),
                created_at=CREATED_AT,
                policy=self.policy,
                ledgers=None if forgetful else self.ledgers,
                server=server,
            )
        return server

    def problems(self, chain: RecordChain | None = None, **kw: object) -> list[str]:
        records = (self.chain if chain is None else chain).records
        report = verify_records(
            [r.to_json() for r in records], aggregator_key=self.aggregator.public_key, **kw
        )
        sites = [read_site_ledger(self.tmp / f"site{p}.jsonl") for p in self.ids]
        return report.problems + crosscheck_sites(report, sites)


def test_an_honest_ten_round_run_passes(tmp_path: Path) -> None:
    fed = Federation(tmp_path)
    for round_id in range(1, 11):
        fed.round(round_id, drop={1 + round_id % N} if round_id % 3 == 0 else None)
    assert fed.problems() == []
    assert len(fed.chain) == 10


class _ReleaseThenAbort(ServerSession):
    """Collects every unmask share, computes the true sum, then records 'aborted at unmask'."""

    def close_stage(self):  # type: ignore[no-untyped-def]
        if self.stage is Stage.UNMASK:
            super().close_stage()
            self.stolen = self.result.total.copy()
            self._stage = Stage.UNMASK  # pretend nothing happened, then abort
            self.abort("only 3 parties completed unmask, threshold is 5")
            raise RoundAborted("unmask", "only 3 parties completed unmask, threshold is 5")
        return super().close_stage()


def test_a_released_round_recorded_as_aborted_fails(tmp_path: Path) -> None:
    fed = Federation(tmp_path)
    fed.round(1)
    thief = fed.round(2, server_class=_ReleaseThenAbort)
    assert thief.stolen is not None  # type: ignore[attr-defined]  # it did learn the sum
    problems = fed.problems()
    assert any(
        "round 2" in p and "recorded as aborted although its sites revealed enough" in p
        for p in problems
    ), problems
    # Even with the receipts dropped from the record, the sites' ledgers tell.
    record = fed.chain.records[1]
    hidden = RecordChain([fed.chain.records[0]])
    hidden.append(
        dataclasses.replace(record, unmask_receipts=(), sequence=1).signed_by(fed.aggregator)
    )
    problems = fed.problems(hidden)
    assert any("round 2" in p and "hidden unmask receipt" in p for p in problems), problems
    assert any("round 2" in p and "hidden from the privacy accounting" in p for p in problems)


def test_the_same_round_id_twice_fails(tmp_path: Path) -> None:
    fed = Federation(tmp_path)
    fed.round(1)
    # Sites with their ledgers refuse a second round 1 before sending anything...
    with pytest.raises(PolicyViolation, match="round_id"):
        fed.round(1, drop={6})
    # ...so only sites without a memory take part; the verifier refuses such a chain too.
    fed.round(1, drop={6}, forgetful=True)
    assert len(fed.chain) == 2
    problems = fed.problems()
    assert any("round 1" in p and "round id 1 after round 1" in p for p in problems), problems


def test_decreasing_round_ids_fail(tmp_path: Path) -> None:
    fed = Federation(tmp_path)
    for round_id in (5, 3, 9):
        fed.round(round_id, forgetful=True)
    problems = fed.problems()
    assert any("round 3" in p and "round id 3 after round 5" in p for p in problems), problems


def test_an_unsafe_threshold_fails_even_when_the_sites_accepted_it(tmp_path: Path) -> None:
    fed = Federation(tmp_path, relaxed=True)  # sites that (wrongly) trust the aggregator
    fed.round(1, threshold=2)
    problems = fed.problems()
    assert any(
        "round 1" in p and "threshold 2 of 6" in p and "split view" in p for p in problems
    ), problems
    # Under the assumptions those sites stated (a curious aggregator), the chain is fine.
    curious = SitePolicy(roster=None, adversary=AdversaryClass.CURIOUS_SERVER, corrupt_fraction=0)
    assert fed.problems(assumptions=curious) == []


def test_an_empty_chain_fails(tmp_path: Path) -> None:
    report = verify_records([])
    assert report.problems == ["the chain holds no record: nothing was proven"]


def test_a_chain_cut_at_its_tail_fails_against_the_site_ledgers(tmp_path: Path) -> None:
    fed = Federation(tmp_path)
    for round_id in (1, 2, 3):
        fed.round(round_id)
    cut = RecordChain(list(fed.chain.records[:2]))
    problems = fed.problems(cut)
    assert any("round 3" in p and "no record of this round" in p for p in problems), problems


def test_a_survivor_set_the_sites_did_not_sign_fails(tmp_path: Path) -> None:
    fed = Federation(tmp_path)
    fed.round(1)
    record = fed.chain.records[0]
    edited = dataclasses.replace(record, survivors=record.survivors[:-1])
    chain = RecordChain([edited.signed_by(fed.aggregator)])
    problems = fed.problems(chain)
    assert any("round 1" in p and "the site signed survivors" in p for p in problems), problems


def test_the_cli_checks_site_ledgers_found_beside_the_records(tmp_path: Path) -> None:
    fed = Federation(tmp_path)
    for round_id in (1, 2, 3):
        fed.round(round_id)
    write_jsonl(tmp_path / "audit.jsonl", [r.to_json() for r in fed.chain.records[:2]])
    key = fed.aggregator.public_key.to_bytes().hex()
    cmd = [sys.executable, "-m", "secagg", "audit", "verify", str(tmp_path), "--aggregator-key"]
    out = subprocess.run([*cmd, key], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "site ledgers: 6" in out.stdout
    assert "round 3" in out.stderr and "no record of this round" in out.stderr
    write_jsonl(tmp_path / "audit.jsonl", [r.to_json() for r in fed.chain.records])
    out = subprocess.run([*cmd, key], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
