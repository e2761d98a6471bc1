"""RecordStore: finished-call records written off the hot path by one greenlet, read on demand.

Everything runs on the hub's one OS thread:

- `submit` (a call ending) only does `put_nowait` on a bounded gevent queue: no I/O, no
  waiting, no exception. A full queue drops the record and counts it.
- One writer greenlet drains the queue in batches of at most `BATCH_MAX` rows, one
  transaction per batch, and yields to the hub between batches.
- `get` and `latest` (admin requests) query directly from the requesting greenlet.

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

A failed write (disk full, read-only file, locked, I/O error) never leaves the writer: it
is logged as `call_record_write_failed`, counted, and the batch retried after each delay
in `retry_delays_s`; after the last one the batch is dropped and counted. `healthy` is
False from a failure until the next successful write.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import gevent
import gevent.event
import gevent.queue
import structlog

from observability.logging import Logger
from records.errors import StoreUnavailable
from records.model import CallRecord
from records.rows import INSERT_SQL, SELECT_SQL, from_row, to_row
from records.schema import open_database

__all__ = ["BATCH_MAX", "RecordStore"]

# Rows per transaction. 200 rows commit in about 1 ms on a local disk (WAL, NORMAL);
# larger batches would hold the hub longer, smaller ones pay a commit per handful of rows.
BATCH_MAX = 200

# Three tries in all. A transient lock or a burst of I/O errors clears within seconds; a
# full or read-only disk does not, and holding one batch longer only lets the queue fill.
DEFAULT_RETRY_DELAYS_S = (0.5, 2.0)

LATEST_LIMIT_MIN = 1
LATEST_LIMIT_MAX = 1000

# stop() waits this long at least for the writer to die, even if flush used up the timeout.
_KILL_GRACE_S = 0.5


class RecordStore:
    """Call records in an SQLite file: `submit` to write, `get` and `latest` to read.

    Lifecycle: construct, `start()`, `submit()` each finished call, `stop()` at shutdown.
    Records submitted before `start()` wait in the queue; after `stop()` they are refused.
    Counters (`written`, `dropped`, `write_errors`) and `healthy` are plain attributes,
    read by metrics and the admin API.
    """

    def __init__(
        self,
        path: str,
        *,
        queue_limit: int = 10_000,
        log: Logger | None = None,
        retry_delays_s: Sequence[float] = DEFAULT_RETRY_DELAYS_S,
    ) -> None:
        if queue_limit < 1:
            raise ValueError(f"queue_limit={queue_limit!r} is not valid: expected an integer >= 1")
        if any(delay < 0 for delay in retry_delays_s):
            raise ValueError(f"retry_delays_s={retry_delays_s!r} is not valid: expected delays >= 0")
        self._path = path
        self._log: Logger = log if log is not None else structlog.get_logger("records")
        self._retry_delays_s = tuple(retry_delays_s)
        self._queue: gevent.queue.Queue[CallRecord] = gevent.queue.Queue(maxsize=queue_limit)
        self._db: sqlite3.Connection | None = None
        self._writer: gevent.Greenlet[[], None] | None = None
        self._stopped = False
        # flush() compares how many records were accepted with how many the writer has
        # finished with (written, or given up on); the event wakes it after each batch.
        self._accepted = 0
        self._settled = 0
        self._in_flight = 0
        self._progress = gevent.event.Event()
        self.written = 0
        self.dropped = 0
        self.write_errors = 0
        self.healthy = True

    @property
    def pending(self) -> int:
        """Records accepted but not yet written or given up on."""
        return self._accepted - self._settled

    def start(self) -> None:
        """Open or create the database, migrate it, and spawn the writer greenlet.

        Raises:
            SchemaTooNew: the file comes from a newer program; it is left untouched.
            StoreUnavailable: the file cannot be opened, read, or migrated.
            RuntimeError: the store was already started or stopped.
        """
        if self._writer is not None or self._stopped:
            raise RuntimeError("RecordStore.start() may be called once, before stop()")
        self._db, found, reached = open_database(self._path)
        self._log.info(
            "call_records_opened", path=self._path, schema_version=reached, migrated_from=found
        )
        writer: gevent.Greenlet[[], None] = gevent.Greenlet(self._run)
        writer.link_exception(self._on_writer_crash)
        writer.start()
        self._writer = writer

    def submit(self, record: CallRecord) -> bool:
        """Queue `record` for writing; never blocks, never raises.

        Returns False, counting the record in `dropped`, if the queue is full or the store
        has stopped. A later record with the same call_sid replaces the earlier one.
        """
        if self._stopped:
            return self._refuse(record, "store_stopped")
        try:
            self._queue.put_nowait(record)
        except gevent.queue.Full:
            return self._refuse(record, "queue_full")
        self._accepted += 1
        return True

    def get(self, call_sid: str) -> CallRecord | None:
        """The stored record of `call_sid`, or None if there is none (yet).

        Raises:
            StoreUnavailable: the store is not open, or the read failed.
        """
        rows = self._read(f"{SELECT_SQL} WHERE call_sid = ?", (call_sid,))
        return from_row(rows[0]) if rows else None

    def latest(self, limit: int = 50) -> list[CallRecord]:
        """The most recently ended calls, newest first; `limit` is clamped to 1..1000.

        Runs on the hub like every sqlite call: 50 rows take well under a millisecond,
        the full 1000 about 10 ms, during which live calls wait.

        Raises:
            StoreUnavailable: the store is not open, or the read failed.
        """
        limit = min(max(int(limit), LATEST_LIMIT_MIN), LATEST_LIMIT_MAX)
        sql = f"{SELECT_SQL} ORDER BY ended_at DESC, call_sid DESC LIMIT ?"
        return [from_row(row) for row in self._read(sql, (limit,))]

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every record submitted so far is written or given up on.

        Returns False if that did not happen within `timeout_s` (or no writer is running).
        Whether records were lost shows in `dropped`, not here.
        """
        target = self._accepted
        deadline = time.monotonic() + timeout_s
        while self._settled < target:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._writer is None or self._writer.dead:
                return False
            # No switch between the check above and clear(): no wake-up can be missed.
            self._progress.clear()
            self._progress.wait(remaining)
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        """Refuse new records, flush for up to `timeout_s`, end the writer, close. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        writer = self._writer
        if writer is not None:
            self.flush(timeout_s)
            # The writer is waiting on the queue or in a backoff sleep, never inside a
            # transaction (sqlite calls do not yield), so killing it cannot cut one short.
            writer.kill(block=True, timeout=_KILL_GRACE_S)
            self._writer = None
        lost = self._queue.qsize() + self._in_flight
        if lost:
            self.dropped += lost
            self._settled += lost
            self._log.error("call_records_lost_at_stop", count=lost)
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error as exc:
                self._log.warning("call_records_close_failed", error=str(exc))
            self._db = None
        self._log.info(
            "call_records_closed",
            written=self.written,
            dropped=self.dropped,
            write_errors=self.write_errors,
        )

    # -- reads, in the requesting greenlet --------------------------------------------

    def _read(self, sql: str, params: tuple[object, ...]) -> list[Any]:
        if self._db is None:
            raise StoreUnavailable(f"{self._path}: the call-records store is not open")
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self._path}: reading call records failed: {exc}") from exc

    # -- the writer greenlet ----------------------------------------------------------

    def _run(self) -> None:
        """Writer greenlet: drain the queue batch by batch until stop() kills it."""
        while True:
            batch = [self._queue.get()]
            while len(batch) < BATCH_MAX and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._in_flight = len(batch)
            try:
                self._write(batch)
            except Exception:  # noqa: BLE001 - logged with its traceback below
                # Not a database error (those are handled in _write): a bug. Keep the
                # writer alive for the next batch rather than silently stop recording.
                self.dropped += len(batch)
                self.healthy = False
                self._log.error("call_record_writer_error", rows=len(batch), exc_info=True)
            self._in_flight = 0
            self._settled += len(batch)
            self._progress.set()
            # A backlog is written batch after batch; let live calls run in between.
            gevent.sleep(0)

    def _write(self, batch: list[CallRecord]) -> None:
        rows: list[tuple[object, ...]] = []
        call_sids: list[str] = []
        for record in batch:
            try:
                rows.append(to_row(record))
            except Exception as exc:  # noqa: BLE001 - one malformed record is refused alone, and logged
                self.dropped += 1
                self._in_flight -= 1  # already counted: stop() must not count it as lost
                self._log.error(
                    "call_record_invalid", call_sid=getattr(record, "call_sid", None), error=str(exc)
                )
            else:
                call_sids.append(record.call_sid)
        if not rows:
            return
        tries = len(self._retry_delays_s) + 1
        for attempt in range(1, tries + 1):
            try:
                self._insert(rows)
            except sqlite3.Error as exc:
                self.write_errors += 1
                self.healthy = False
                self._log.error(
                    "call_record_write_failed",
                    error=str(exc),
                    sqlite_error=getattr(exc, "sqlite_errorname", None),
                    rows=len(rows),
                    attempt=attempt,
                    tries=tries,
                )
                if attempt == tries:
                    self.dropped += len(rows)
                    self._log.error("call_records_dropped", rows=len(rows), call_sids=call_sids)
                    return
                gevent.sleep(self._retry_delays_s[attempt - 1])
            else:
                if not self.healthy:
                    self._log.info("call_records_writable_again", rows=len(rows))
                self.written += len(rows)
                self.healthy = True
                return

    def _insert(self, rows: list[tuple[object, ...]]) -> None:
        """One transaction for the whole batch; rolled back before any error leaves."""
        db = self._db
        if db is None:  # the writer runs only while the connection is open
            raise StoreUnavailable(f"{self._path}: the call-records store is not open")
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(INSERT_SQL, rows)
            db.execute("COMMIT")
        except sqlite3.Error:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # the original error is the one worth reporting
                    db.execute("ROLLBACK")
            raise

    def _refuse(self, record: CallRecord, reason: str) -> bool:
        self.dropped += 1
        self._log.warning(
            "call_record_dropped", call_sid=getattr(record, "call_sid", None), reason=reason
        )
        return False

    def _on_writer_crash(self, writer: gevent.Greenlet[[], None]) -> None:
        # _run catches Exception per batch, so only a BaseException gets here.
        self.healthy = False
        self._log.error("call_record_writer_crashed", error=repr(writer.exception))
        self._progress.set()  # wake a flush() so it sees the writer dead
