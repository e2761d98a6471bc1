"""Call records in an embedded SQLite file (DATABASE_PATH), for RecordStore: the default.

Writer and readers share one sqlite3 connection. That is safe because a sqlite3 call is a
blocking C call that never yields to gevent: BEGIN … COMMIT (or ROLLBACK on failure) runs
without a greenlet switch, so a read can never land inside the writer's transaction, and
the writer only yields (queue wait, backoff, between batches) with no transaction open.
Reads exhaust their cursors (`fetchall`) so no statement stays open across a switch. One
connection is also what makes ":memory:" work: a second one would see another, empty
database. The connection keeps sqlite3's same-OS-thread check, so use from a real thread
fails loudly instead of corrupting anything.

Those blocking calls stall every live call while they run, so they are kept short: small
batches, indexed reads, and a busy timeout of 0 (sqlite's busy handler would sleep inside
the C call; instead a locked database fails at once and the writer backs off cooperatively).
Several workers of one machine share the file: one worker's commit locks it for a moment,
so a write that finds it locked tries again a few times within _LOCKED_WAIT_S, sleeping
between tries as a greenlet, before it counts as a failed write.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any

import gevent

from records.errors import StoreUnavailable
from records.rows import INSERT_SQL
from records.schema import open_database

__all__ = ["SqliteDatabase"]

# A sibling worker's batch commits in milliseconds; a lock held longer than this is not
# a sibling's commit, and the store's own retries and logging take over.
_LOCKED_WAIT_S = 2.0
_LOCKED_FIRST_SLEEP_S = 0.005


class SqliteDatabase:
    """The `calls` table in the SQLite file at `path` (or ":memory:"); `name` is the path."""

    placeholder = "?"
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, path: str) -> None:
        self.name = path
        self._db: sqlite3.Connection | None = None

    def open(self) -> tuple[int, int]:
        """Open or create the file and migrate it; (version found, version reached).

        Raises:
            SchemaTooNew: the file comes from a newer program; it is left untouched.
            StoreUnavailable: the file cannot be opened, read, or migrated.
        """
        self._db, found, reached = open_database(self.name)
        return found, reached

    def write(self, rows: list[tuple[object, ...]]) -> None:
        """One transaction for the whole batch; rolled back before any error leaves."""
        with self._transaction() as db:
            db.executemany(INSERT_SQL, rows)

    def execute(self, sql: str, params: tuple[object, ...]) -> int:
        """One write statement (with `?` placeholders) in a transaction of its own; rows it changed."""
        with self._transaction() as db:
            return db.execute(sql, params).rowcount

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        if db is None:  # the writer runs only while the connection is open
            raise StoreUnavailable(f"{self.name}: the call-records store is not open")
        try:
            self._begin(db)
            yield db
            db.execute("COMMIT")
        except sqlite3.Error:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # the original error is the one worth reporting
                    db.execute("ROLLBACK")
            raise

    @staticmethod
    def _begin(db: sqlite3.Connection) -> None:
        """Take the write lock, waiting cooperatively while another process holds it."""
        sleep_s, waited_s = _LOCKED_FIRST_SLEEP_S, 0.0
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or waited_s >= _LOCKED_WAIT_S:
                    raise
            gevent.sleep(sleep_s)
            waited_s += sleep_s
            sleep_s = min(sleep_s * 2, 0.2)

    def read(self, sql: str, params: tuple[object, ...]) -> list[Any]:
        """Rows of `sql` (with `?` placeholders).

        Raises:
            StoreUnavailable: the store is not open, or the read failed.
        """
        if self._db is None:
            raise StoreUnavailable(f"{self.name}: the call-records store is not open")
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self.name}: reading call records failed: {exc}") from exc

    def is_outage(self, exc: BaseException) -> bool:
        """A local file has no outage to wait out: every failure takes the bounded retries."""
        return False

    def error_fields(self, exc: BaseException) -> dict[str, object]:
        return {"sqlite_error": getattr(exc, "sqlite_errorname", None)}

    def close(self) -> None:
        """Close the file. Raises sqlite3.Error if that fails (the store logs it)."""
        if self._db is not None:
            db, self._db = self._db, None
            db.close()
