"""Call records: one row per finished call, in an embedded SQLite file or in PostgreSQL.

    model.py   CallRecord, the immutable record of one finished call
    cost.py    CostRates and estimate_cost (per started Twilio minute, per VAPI second)
    stats.py   percentile, for turn latency p50/p95
    errors.py  RecordsError and its subclasses
    schema.py  the versioned schema: open, refuse newer, migrate
    rows.py    CallRecord <-> table row, with per-field checks
    store.py   RecordStore: writes in one greenlet off the hot path, reads on demand
    sqlite.py  the SQLite file (DATABASE_PATH, the default)
    postgres.py  PostgreSQL (DATABASE_URL): one history for a fleet; same table, same migrations
    recordings.py  call recordings (stereo WAV): CallRecorder per call, RecordingWriter, retention
"""

from records.cost import CostRates, estimate_cost
from records.errors import DatabaseUnreachable, InvalidRecord, RecordsError, SchemaTooNew, StoreUnavailable
from records.model import OUTCOMES, CallRecord
from records.schema import CURRENT_VERSION
from records.stats import percentile
from records.store import RecordStore

__all__ = [
    "CURRENT_VERSION",
    "OUTCOMES",
    "CallRecord",
    "CostRates",
    "DatabaseUnreachable",
    "InvalidRecord",
    "RecordStore",
    "RecordsError",
    "SchemaTooNew",
    "StoreUnavailable",
    "estimate_cost",
    "percentile",
]
