"""Persistence of the aggregator: rounds, participation, results and per-round JSON records."""

from secagg.store.sqlite import RoundOutcomeRecord, RoundStore, StoredRecord, StoredRound

__all__ = ["RoundOutcomeRecord", "RoundStore", "StoredRecord", "StoredRound"]
