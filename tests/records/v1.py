"""The v1 schema exactly as released, frozen here: old database files look like this forever.

Copied rather than imported from records.schema, so a careless edit of the released step
there is caught by the tests instead of silently changing what "a v1 file" means.
"""

from __future__ import annotations

import sqlite3

V1_DDL = (
    """CREATE TABLE calls (
        call_sid            TEXT PRIMARY KEY NOT NULL,
        stream_sid          TEXT,
        started_at          REAL NOT NULL,
        ended_at            REAL NOT NULL,
        duration_s          REAL NOT NULL,
        outcome             TEXT NOT NULL,
        outcome_detail      TEXT NOT NULL DEFAULT '',
        restarts            TEXT NOT NULL DEFAULT '{}',
        vapi_links          INTEGER NOT NULL DEFAULT 0,
        barge_ins           INTEGER NOT NULL DEFAULT 0,
        turns               INTEGER NOT NULL DEFAULT 0,
        turn_latency_p50_ms REAL,
        turn_latency_p95_ms REAL,
        frames_in           INTEGER NOT NULL DEFAULT 0,
        frames_out          INTEGER NOT NULL DEFAULT 0,
        frames_dropped      INTEGER NOT NULL DEFAULT 0,
        cost_usd            REAL NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX calls_by_ended_at ON calls (ended_at)",
)


def write_v1_database(path: str) -> None:
    """A v1 file holding one call, written by plain SQL as the v1 program would have."""
    db = sqlite3.connect(path, isolation_level=None)
    for sql in V1_DDL:
        db.execute(sql)
    db.execute(
        "INSERT INTO calls (call_sid, stream_sid, started_at, ended_at, duration_s, outcome,"
        " restarts, turns, turn_latency_p50_ms, frames_in, cost_usd)"
        " VALUES ('CAold', 'MZold', 1700000000.0, 1700000030.0, 30.0, 'completed',"
        " '{\"twilio\":0,\"vapi\":1}', 2, 500.0, 1500, 0.0235)"
    )
    db.execute("PRAGMA user_version = 1")
    db.close()
