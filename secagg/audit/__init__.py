"""Signed, hash-chained round records and their offline verification (``secagg audit``).

After every finished or aborted round the aggregator builds a :class:`RoundRecord`
(:func:`build_record` / :func:`record_round`), signs it with its Ed25519 aggregator key and
appends it to an :class:`AuditLedger` (SQLite, durable before the result is released) or an
in-memory :class:`RecordChain`. :func:`verify_records` checks a whole chain offline: every link,
the aggregator's signatures, the config digest, the session id and the clients' consistency
signatures over the survivor set.
"""

from secagg.audit.chain import RecordChain, RecordSink, record_round, run_recorded_round
from secagg.audit.ledger import AuditLedger, index_problems, read_jsonl, read_ledger, write_jsonl
from secagg.audit.record import (
    AUDIT_SIGNING_CONTEXT,
    GENESIS_HASH,
    MAX_RECORD_BYTES,
    RECORD_SCHEMA,
    AuditError,
    RecordedConfig,
    RecordFormatError,
    RoundRecord,
    aggregate_digest,
    build_record,
)
from secagg.audit.site_ledger import (
    SITE_LEDGER_SCHEMA,
    SiteLedgerFile,
    SiteLedgerReport,
    read_site_ledger,
)
from secagg.audit.verify import ChainReport, verify_chain, verify_records

__all__ = [
    "AUDIT_SIGNING_CONTEXT",
    "GENESIS_HASH",
    "MAX_RECORD_BYTES",
    "RECORD_SCHEMA",
    "SITE_LEDGER_SCHEMA",
    "AuditError",
    "AuditLedger",
    "ChainReport",
    "RecordChain",
    "RecordFormatError",
    "RecordSink",
    "RecordedConfig",
    "RoundRecord",
    "SiteLedgerFile",
    "SiteLedgerReport",
    "aggregate_digest",
    "build_record",
    "index_problems",
    "read_jsonl",
    "read_ledger",
    "read_site_ledger",
    "record_round",
    "run_recorded_round",
    "verify_chain",
    "verify_records",
    "write_jsonl",
]
