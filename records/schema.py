"""The `calls` table: opening the database file, and creating or migrating its schema.

The schema version lives in `PRAGMA user_version`. `MIGRATIONS[n - 1]` takes a database
from version n - 1 to n; each step runs in one transaction together with the version
bump, so a failed step leaves the previous version whole. Released steps are history:
never edit one, append the next.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from records.errors import SchemaTooNew, StoreUnavailable

__all__ = ["CURRENT_VERSION", "MIGRATIONS", "migrate", "open_database", "user_version"]

Migration = tuple[str, ...]

MIGRATIONS: tuple[Migration, ...] = (
    # v1: one row per finished call; restarts is a JSON object {"actor": count}.
    # history and dashboards read newest first, hence the ended_at index.
    (
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
    ),
    # v2: the call's recording file (RECORDINGS_DIR), NULL when there is none. Rows of v1
    # files read back with NULL: those calls were never recorded.
    ("ALTER TABLE calls ADD COLUMN recording_path TEXT",),
    # v3: the node (NODE_ID and pid) that held the call's stream, so a fleet's one history
    # says where each call ran; NULL for rows written before v3.
    ("ALTER TABLE calls ADD COLUMN node_id TEXT",),
    # v4: the phone call's hand-offs and resumes between nodes (calls/handoff.py), a JSON array
    # of {"from", "to", "reason", "left_at", "silence_ms"}, oldest first: one record per phone
    # call, written by the node where it ended. '[]' for rows of earlier versions.
    ("ALTER TABLE calls ADD COLUMN handoffs TEXT NOT NULL DEFAULT '[]'",),
    # v5 goes here, e.g. ("ALTER TABLE calls ADD COLUMN transferred_to TEXT",),
)

CURRENT_VERSION = len(MIGRATIONS)

# Opening happens once at start-up, before any call is served, so here it is acceptable
# for sqlite to wait (blocking the hub) for another process that is migrating the file.
_OPEN_BUSY_TIMEOUT_S = 2.0


def user_version(db: sqlite3.Connection) -> int:
    """The schema version stored in the database file (0 for a new, empty file)."""
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection, path: str, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the steps `db` has not seen yet, one transaction each; returns the version reached.

    `db` must be in autocommit mode (`isolation_level=None`): the transactions are explicit.

    Raises:
        SchemaTooNew: the file is newer than `migrations`; it is not modified.
        sqlite3.Error: a step failed; that step was rolled back.
    """
    found = user_version(db)
    if found > len(migrations):
        raise SchemaTooNew(path, found, len(migrations))
    for target, statements in enumerate(migrations, start=1):
        if target <= found:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            if user_version(db) < target:
                for sql in statements:
                    db.execute(sql)
                db.execute(f"PRAGMA user_version = {int(target)}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    return user_version(db)


def open_database(path: str) -> tuple[sqlite3.Connection, int, int]:
    """Open (or create) `path`, refuse a newer schema, then set WAL and migrate.

    Returns the connection (autocommit, busy timeout 0) and the versions before and after.
    `path` may be ":memory:". The version is checked before anything writes: even
    switching to WAL rewrites the file header, and a newer file must stay as it was.

    Raises:
        SchemaTooNew: the file comes from a newer program.
        StoreUnavailable: the file cannot be opened, read, or migrated.
    """
    try:
        db = sqlite3.connect(path, timeout=_OPEN_BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"{path}: cannot open the call-records database: {exc}") from exc
    try:
        found = user_version(db)
        if found > CURRENT_VERSION:
            raise SchemaTooNew(path, found, CURRENT_VERSION)
        # WAL: admin reads never wait for the writer, and a commit appends to the log
        # instead of rewriting pages. NORMAL: in WAL mode a commit is not fsynced (the
        # checkpoint is), so a power cut may lose the last records but never corrupts.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        reached = migrate(db, path)
        # From here on every sqlite call runs on the hub with live calls around it: a
        # locked database must fail at once and be retried cooperatively, not waited on.
        db.execute("PRAGMA busy_timeout = 0")
    except SchemaTooNew:
        db.close()
        raise
    except sqlite3.Error as exc:
        db.close()
        raise StoreUnavailable(f"{path}: cannot prepare the call-records database: {exc}") from exc
    return db, found, reached
