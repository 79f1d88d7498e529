"""``secagg audit``: verify and export the signed, hash-chained round records."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from secagg.commands.errors import EXIT_FILE, CommandError

_SQLITE_MAGIC = b"SQLite format 3\x00"
_DIR_CANDIDATES = (
    "audit.db",
    "ledger.db",
    "aggregator.db",
    "secagg.db",
    "records.jsonl",
    "audit.jsonl",
)


def register(sub: Any) -> None:
    audit = sub.add_parser("audit", help="verify or export the signed round records")
    cmds = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    verify = cmds.add_parser(
        "verify", help="check the whole record chain and every signature; print privacy spent"
    )
    verify.add_argument(
        "source", type=Path, help="run directory, ledger database, or records .jsonl file"
    )
    verify.add_argument(
        "--aggregator-key",
        metavar="HEX_OR_FILE",
        help="the aggregator's Ed25519 public key (64 hex digits, or a file holding them), "
        "pinned out of band; default: the key stored in the ledger (trust on first use)",
    )
    verify.add_argument(
        "--head",
        metavar="HEX",
        help="expected hash of the last record (printed by the previous audit): detects records "
        "cut off at the end of the chain",
    )
    verify.add_argument(
        "--site-ledger",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="a site's signed ledger to check the chain against (repeatable); site ledgers "
        "found under a SOURCE folder are checked too",
    )
    verify.add_argument(
        "--adversary",
        choices=("semi_malicious_server", "curious_server", "none"),
        default="semi_malicious_server",
        help="the assumption every round's threshold is checked against (default: a malicious "
        "aggregator, the sites' strict default)",
    )
    verify.add_argument(
        "--corrupt-fraction",
        type=float,
        default=0.1,
        help="fraction of the roster assumed to collude with the aggregator (default 0.1)",
    )
    verify.set_defaults(handler=run_verify)

    replay = cmds.add_parser(
        "replay",
        help="recompute a round's aggregate from its retained signed transcript and compare it "
        "with the released result",
    )
    replay.add_argument("data_dir", type=Path, help="the aggregator's data directory")
    replay.add_argument("round_id", type=int)
    replay.add_argument(
        "--aggregator-key", metavar="HEX_OR_FILE", help="pin the aggregator's record key"
    )
    replay.set_defaults(handler=run_replay)

    export = cmds.add_parser("export", help="write a ledger's records as JSON Lines")
    export.add_argument("database", type=Path, help="ledger database (SQLite)")
    export.add_argument("--out", type=Path, required=True, help="output .jsonl file")
    export.set_defaults(handler=run_export)


def _load_key(spec: str) -> Any:
    from secagg.audit import AuditError
    from secagg.crypto import IdentityPublicKey

    text = spec.strip()
    path = Path(text)
    if len(text) != 64 and path.is_file():
        text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        return IdentityPublicKey.from_bytes(bytes.fromhex(text))
    except ValueError:
        raise AuditError(
            f"--aggregator-key: expected 64 hex digits or a file holding them, got {spec!r}"
        ) from None


def _is_site_ledger(path: Path) -> bool:
    from secagg.audit import SITE_LEDGER_SCHEMA

    with open(path, "rb") as f:
        first = f.readline(1 << 20)
    return f'"schema":"{SITE_LEDGER_SCHEMA}"'.encode() in first


def _ledger_files(folder: Path) -> list[Path]:
    """The aggregator ledgers in ``folder``: its database (the first candidate found) and every
    .jsonl that is not a site's ledger."""
    dbs = [folder / n for n in _DIR_CANDIDATES if n.endswith(".db") and (folder / n).is_file()]
    return dbs[:1] + [p for p in sorted(folder.glob("*.jsonl")) if not _is_site_ledger(p)]


def _site_ledgers(source: Path, given: list[Path]) -> list[Path]:
    found = list(given)
    if source.is_dir():
        found += [p for p in sorted(source.rglob("*.jsonl")) if _is_site_ledger(p)]
    for path in found:
        if not path.is_file():
            raise CommandError(f"{path}: no such site ledger", EXIT_FILE)
    return sorted(set(found))


def _sources(source: Path) -> list[Path]:
    """What ``secagg audit verify SOURCE`` checks: the file itself, or every ledger of a folder,
    the aggregator's own data directory ``SOURCE/aggregator/`` (a demo run directory) first."""
    from secagg.audit import AuditError

    if not source.exists():
        raise CommandError(
            f"{source}: no such file or folder (give a run directory, a data directory, a "
            "ledger database or a .jsonl export)",
            EXIT_FILE,
        )
    if not source.is_dir():
        return [source]
    found = _ledger_files(source / "aggregator") if (source / "aggregator").is_dir() else []
    found += _ledger_files(source)
    if not found:
        raise AuditError(f"{source}: no ledger database or records .jsonl file found")
    return found


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC


def _read(source: Path) -> tuple[list[str], Any, str]:
    """The record texts, the stored aggregator key (or None) and a description of the source."""
    from secagg.audit import read_jsonl, read_ledger

    if _is_sqlite(source):
        texts, key = read_ledger(source)
        return texts, key, f"ledger {source}"
    texts = list(read_jsonl(source))
    stored_key_file = source.parent / "aggregator.pub"
    key = _load_key(str(stored_key_file)) if stored_key_file.is_file() else None
    return texts, key, f"JSON Lines {source}"


def _eps(v: float | None) -> str:
    if v is None:
        return "-"
    return "inf" if math.isinf(v) else f"{v:.3f}"


def run_verify(args: argparse.Namespace) -> int:
    from secagg.audit import AuditError

    pinned_key = _load_key(args.aggregator_key) if args.aggregator_key else None
    head = None
    if args.head:
        try:
            head = bytes.fromhex(args.head)
        except ValueError:
            raise AuditError(f"--head: expected 64 hex digits, got {args.head!r}") from None
        if len(head) != 32:
            raise AuditError(f"--head: expected 64 hex digits, got {args.head!r}")
    from secagg.audit import index_problems, read_site_ledger
    from secagg.audit.crosscheck import crosscheck_sites
    from secagg.protocol import AdversaryClass, SitePolicy

    assumptions = SitePolicy(
        roster=None,
        min_parties=2,
        adversary=AdversaryClass(args.adversary),
        corrupt_fraction=args.corrupt_fraction,
    )
    paths = _sources(args.source)
    sources = [_read(path) for path in paths]
    longest = max(sources, key=lambda s: len(s[0]))
    problems: list[str] = []
    chain = None
    for k, (texts, stored_key, what) in enumerate(sources):
        expected = head if len(texts) == len(longest[0]) else None  # a shorter copy: a prefix
        found, report = _verify_one(
            texts, stored_key, what, pinned_key, expected, assumptions, show_table=k == 0
        )
        problems += found
        if texts is longest[0]:
            chain = report
    for path in paths:
        if _is_sqlite(path):
            problems += index_problems(path)
    sites = [read_site_ledger(p) for p in _site_ledgers(args.source, args.site_ledger)]
    if sites:
        assert chain is not None
        print(f"site ledgers: {len(sites)} ({sum(len(s.events) for s in sites)} events)")
        problems += crosscheck_sites(chain, sites)
    # Every copy (the aggregator's ledger, an export) must tell the same story: each is the
    # same chain or a prefix of the longest one.
    for texts, _, what in sources:
        mismatch = next((i for i, t in enumerate(texts) if longest[0][i] != t), None)
        if mismatch is not None:
            problems.append(f"{what} differs from {longest[2]} at record {mismatch}")
    if problems:
        for problem in problems:
            print(f"secagg audit: FAIL: {problem}", file=sys.stderr)
        print(f"FAILED: {len(problems)} problem(s) in {args.source}", file=sys.stderr)
        return 1
    if pinned_key is None:
        print(
            "note: pin the aggregator key with --aggregator-key to detect a chain re-signed "
            "wholesale with another key",
            file=sys.stderr,
        )
    what = " and ".join(s[2] for s in sources)
    print(f"OK: {len(longest[0])} records, chain and every signature verified ({what})")
    return 0


def _verify_one(
    texts: list[str],
    stored_key: Any,
    what: str,
    pinned_key: Any,
    head: bytes | None,
    assumptions: Any,
    *,
    show_table: bool,
) -> tuple[list[str], Any]:
    """Verify one ledger and print its table; return its problems (each naming the source) and
    its report."""
    from secagg.accounting.report import render_table
    from secagg.audit import verify_records

    key = pinned_key if pinned_key is not None else stored_key
    if pinned_key is not None and stored_key is not None and stored_key != pinned_key:
        print(
            f"secagg audit: warning: {what} stores another aggregator key "
            f"({stored_key.fingerprint()}) than the pinned one ({pinned_key.fingerprint()})",
            file=sys.stderr,
        )
    report = verify_records(texts, aggregator_key=key, expected_head=head, assumptions=assumptions)
    print(f"{what}: {len(texts)} records")
    if report.aggregator_key is not None:
        how = "pinned" if pinned_key is not None else "NOT pinned: taken from the ledger"
        print(f"aggregator key {report.aggregator_key.to_bytes().hex()} ({how})")
    if show_table:
        header = f"{'seq':>4}  {'round':>6}  {'outcome':<9}  {'survivors':>9}  {'dropouts':>8}  "
        print(header + f"{'site eps (round/cum)':>20}  {'max record eps':>14}")
        for r in report.records:
            dropouts = sum(len(ps) for _, ps in r.dropouts)
            site = rec = "-"
            if r.privacy_report is not None:
                s = r.privacy_report.site_level
                if s is not None:
                    site = f"{_eps(s.epsilon_round)}/{_eps(s.epsilon_cumulative)}"
                rec = _eps(r.privacy_report.max_record_level_epsilon)
            print(
                f"{r.sequence:>4}  {r.round_id:>6}  {r.outcome:<9}  {len(r.survivors):>9}  "
                f"{dropouts:>8}  {site:>20}  {rec:>14}"
            )
        reports = [r.privacy_report for r in report.records if r.privacy_report is not None]
        if reports:
            print("\nprivacy spent (cumulative):")
            print(render_table(reports), end="")
    if report.ok:
        print(f"head {report.head.hex()} (pass it as --head to the next audit)")
    return [f"{what}: {problem}" for problem in report.problems], report


def run_replay(args: argparse.Namespace) -> int:
    """Recompute round ROUND's aggregate from the retained signed transcript alone."""
    import time

    from secagg.audit import AuditError, aggregate_digest, read_ledger, verify_records
    from secagg.service.transcript import replay, transcript_dir

    folder = transcript_dir(args.data_dir, args.round_id)
    if not folder.is_dir():
        raise CommandError(
            f"{folder}: no transcript of round {args.round_id} (kept while [service] "
            "retain_transcripts is on, the default)",
            EXIT_FILE,
        )
    database = args.data_dir / "audit.db"
    if not database.is_file():
        raise CommandError(f"{database}: no audit ledger in {args.data_dir}", EXIT_FILE)
    texts, stored_key = read_ledger(database)
    pinned = _load_key(args.aggregator_key) if args.aggregator_key else stored_key
    chain = verify_records(texts, aggregator_key=pinned)
    record = next((r for r in chain.records if r.round_id == args.round_id), None)
    if record is None:
        raise AuditError(f"round {args.round_id} has no record in {database}")
    if record.outcome != "completed" or record.aggregate_digest is None:
        raise AuditError(f"round {args.round_id} released nothing (recorded {record.outcome})")
    started = time.perf_counter()
    result = replay(folder)
    seconds = time.perf_counter() - started
    bits = record.config.bits
    if tuple(result.survivors) != tuple(record.survivors):
        raise AuditError(
            f"round {args.round_id}: the transcript sums {list(result.survivors)}, the record "
            f"released the sum of {list(record.survivors)}"
        )
    if aggregate_digest(result.total, bits) != record.aggregate_digest:
        raise AuditError(
            f"round {args.round_id}: the transcript's sum is not the released aggregate"
        )
    print(
        f"OK: round {args.round_id}: the released aggregate is exactly the sum of the "
        f"{len(result.survivors)} signed masked inputs of parties {list(result.survivors)} "
        f"({record.config.vector_length:,} values; every signature, commitment and unmask share "
        f"re-verified; {seconds:.2f} s)"
    )
    if not chain.ok:
        print(f"note: the chain itself has problems; run secagg audit verify {args.data_dir}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from secagg.audit import read_ledger, write_jsonl

    if not args.database.is_file():
        raise CommandError(
            f"{args.database}: no such file (the ledger is DATA_DIR/audit.db)", EXIT_FILE
        )
    texts, _ = read_ledger(args.database)
    count = write_jsonl(args.out, texts)
    print(f"wrote {count} records to {args.out}")
    return 0
