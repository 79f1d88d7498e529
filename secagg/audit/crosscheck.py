"""The two sides of the audit: the aggregator's chain against the sites' own ledgers.

The aggregator's chain proves only what the aggregator chose to write. Each site's ledger
(:mod:`secagg.audit.site_ledger`, signed by the site) states what the site accepted, what survivor
set it signed and which shares it revealed. :func:`crosscheck_sites` fails, naming the round, on:

* a round a site took part in that is missing from the chain (cut off, or hidden);
* a config digest other than the one the site accepted, or a threshold below the site's minimum;
* a site's signed survivor set that contradicts the recorded survivors;
* revealed shares the record does not list (a hidden unmask receipt), and a round whose revealed
  shares (the record's and the sites') sufficed to rebuild the sum but which is recorded as
  aborted or without a privacy report;
* an outcome alarm a site raised.
"""

from __future__ import annotations

from collections.abc import Iterable

from secagg.audit.record import RoundRecord
from secagg.audit.site_ledger import SiteLedgerReport
from secagg.audit.verify import ChainReport, _check_config, _Problem, recorded_receipts, releasable
from secagg.protocol.ledger import OutcomeChecked, RoundAccepted, SharesRevealed, SurvivorsSigned
from secagg.protocol.messages import UnmaskReceipt, survivors_digest

__all__ = ["crosscheck_sites"]


def crosscheck_sites(chain: ChainReport, sites: Iterable[SiteLedgerReport]) -> list[str]:
    """Every contradiction between the aggregator's records and the sites' ledgers."""
    problems: list[str] = []
    records: dict[int, RoundRecord] = {}
    for kept in chain.records:
        records.setdefault(kept.round_id, kept)
    revealed: dict[int, list[UnmaskReceipt]] = {}
    for site in sites:
        name = site.path.name
        for problem in site.problems:
            problems.append(f"site ledger {problem}")
        for event in site.events:
            where = f"round {event.round_id} ({name}, party {event.party})"
            record: RoundRecord | None = records.get(event.round_id)
            if isinstance(event, RoundAccepted):
                if record is None:
                    problems.append(
                        f"{where}: the site took part, but the aggregator's chain has no record "
                        "of this round (records cut off or hidden)"
                    )
                    continue
                if record.config_digest != event.config_digest:
                    problems.append(f"{where}: recorded with another config than the site accepted")
                if record.config.threshold < event.minimum_threshold:
                    problems.append(
                        f"{where}: threshold {record.config.threshold} is below the site's "
                        f"minimum {event.minimum_threshold}"
                    )
            elif record is None:
                continue
            elif isinstance(event, SurvivorsSigned):
                try:
                    config = _check_config(record)
                except _Problem:
                    continue
                assert config is not None
                signed = config.roster_index.decode(event.survivors)
                if event.session_id != record.session_id or signed != set(record.survivors):
                    problems.append(
                        f"{where}: the site signed survivors {sorted(signed)}, the record says "
                        f"{list(record.survivors)}"
                    )
            elif isinstance(event, SharesRevealed):
                listed = {r[0]: r for r in record.unmask_receipts}
                mine = listed.get(event.party)
                if mine is None or (mine[2], mine[3]) != (
                    event.self_mask_owners,
                    event.mask_key_owners,
                ):
                    problems.append(
                        f"{where}: the site revealed shares the record does not list (a hidden "
                        "unmask receipt)"
                    )
                revealed.setdefault(event.round_id, []).append(
                    UnmaskReceipt(
                        event.round_id,
                        event.party,
                        event.session_id,
                        event.survivors_digest,
                        event.self_mask_owners,
                        event.mask_key_owners,
                        b"",
                        b"",
                    )
                )
            elif isinstance(event, OutcomeChecked) and event.mismatch:
                problems.append(f"{where}: the site raised an outcome alarm: {event.mismatch}")
    for round_id, evidence in sorted(revealed.items()):
        released = records[round_id]
        if released.outcome == "completed" and released.privacy_report is not None:
            continue
        try:
            config = _check_config(released)
            assert config is not None
            union = {x.sender: x for x in recorded_receipts(released, config)}
        except _Problem:
            continue
        digest = survivors_digest(
            released.session_id, config.roster_index.encode(released.survivors)
        )
        for receipt in evidence:
            if receipt.survivors_digest == digest:
                union.setdefault(receipt.sender, receipt)
        if releasable(released, config, union.values()):
            problems.append(
                f"round {round_id}: the sites revealed enough shares to rebuild the sum, but the "
                f"aggregator recorded it as {released.outcome}"
                + ("" if released.privacy_report else " without a privacy report")
                + ": a released round hidden from the privacy accounting"
            )
    return problems
