"""RecordStore: finished-call records written off the hot path by one greenlet, read on demand.

Everything runs on the hub's one OS thread:

- `submit` (a call ending) only does `put_nowait` on a bounded gevent queue: no I/O, no
  waiting, no exception. A full queue drops the record and counts it.
- One writer greenlet drains the queue in batches of at most `BATCH_MAX` rows, one
  transaction per batch, and yields to the hub between batches.
- `get` and `latest` (admin requests) query directly from the requesting greenlet.

Where the records go is the database's business (`Database` below): an SQLite file
(records/sqlite.py, the embedded default: DATABASE_PATH) or PostgreSQL (records/postgres.py:
DATABASE_URL), so every node of a fleet writes one history.

A failed write (disk full, read-only file, locked, I/O error) never leaves the writer: it
is logged as `call_record_write_failed`, counted, and the batch retried after each delay
in `retry_delays_s`; after the last one the batch is dropped and counted. `healthy` is
False from a failure until the next successful write.

A database that cannot be reached (PostgreSQL down, restarting, or the network to it cut)
is an outage, not a failed write: the batch is kept and retried, reconnecting, every
`outage_delays_s` (the last delay repeating) until the server answers again, with one
WARNING when the outage starts (`call_records_unreachable`, counted in `outages`) and one
INFO when writes succeed again. Calls go on meanwhile: records wait in the bounded queue,
and only when that is full are new ones dropped and counted, never blocking a call.

With `retention_days` set (CALL_RECORDS_RETENTION_DAYS), the same writer deletes the
records of calls that ended longer ago than that, once at start and then every
`retention_every_s`, `RETENTION_CHUNK` rows per statement with live calls running between
statements: a server left running for months keeps a bounded history. In a fleet every
node does it against the one database; the deletes are idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import gevent
import gevent.event
import gevent.queue
import structlog

from observability.logging import Logger
from records.errors import DatabaseUnreachable, StoreUnavailable
from records.model import CallRecord
from records.rows import SELECT_SQL, from_row, to_row
from records.sqlite import SqliteDatabase

__all__ = ["BATCH_MAX", "RETENTION_CHUNK", "RETENTION_EVERY_S", "Database", "RecordStore"]

# Rows per transaction. 200 rows commit in about 1 ms on a local disk (WAL, NORMAL);
# larger batches would hold the hub longer, smaller ones pay a commit per handful of rows.
BATCH_MAX = 200

# Three tries in all. A transient lock or a burst of I/O errors clears within seconds; a
# full or read-only disk does not, and holding one batch longer only lets the queue fill.
DEFAULT_RETRY_DELAYS_S = (0.5, 2.0)

# Reconnection pace through an outage: quick for a server restart, then every 5 s, which
# costs the database one connection attempt per node and nothing else.
DEFAULT_OUTAGE_DELAYS_S = (0.25, 0.5, 1.0, 2.0, 5.0)

# Old records are deleted this many per statement: on SQLite a statement holds the hub,
# and 500 rows with their two index entries go in a few milliseconds.
RETENTION_CHUNK = 500
RETENTION_EVERY_S = 3600.0

LATEST_LIMIT_MIN = 1
LATEST_LIMIT_MAX = 1000

# stop() waits this long at least for the writer to die, even if flush used up the timeout.
_KILL_GRACE_S = 0.5


class Database(Protocol):
    """Where RecordStore keeps the `calls` table: records/sqlite.py or records/postgres.py."""

    name: str  # the path, or the URL less its password: what logs and errors show
    placeholder: str  # the driver's parameter marker in SQL: "?" or "%s"
    errors: tuple[type[Exception], ...]  # what write() raises for a failed write

    def open(self) -> tuple[int, int]: ...
    def write(self, rows: list[tuple[object, ...]]) -> None: ...
    def execute(self, sql: str, params: tuple[object, ...]) -> int: ...
    def read(self, sql: str, params: tuple[object, ...]) -> list[Any]: ...
    def is_outage(self, exc: BaseException) -> bool: ...
    def error_fields(self, exc: BaseException) -> dict[str, object]: ...
    def close(self) -> None: ...


def open_target(target: str) -> Database:
    """The database `target` names: a postgresql:// URL, else an SQLite path (or ":memory:")."""
    if target.startswith(("postgresql://", "postgres://")):
        # Imported here: psycopg is needed only with DATABASE_URL, and must be imported
        # after gevent's monkey-patching (it picks its wait function at import).
        from records.postgres import PostgresDatabase

        return PostgresDatabase(target)
    return SqliteDatabase(target)


class RecordStore:
    """Call records in a database: `submit` to write, `get` and `latest` to read.

    Lifecycle: construct, `start()`, `submit()` each finished call, `stop()` at shutdown.
    Records submitted before `start()` wait in the queue; after `stop()` they are refused.
    `target` is an SQLite path (or ":memory:") or a postgresql:// URL (`open_target`).
    Counters (`written`, `dropped`, `write_errors`, `outages`) and `healthy` are plain
    attributes, read by metrics and the admin API.
    """

    def __init__(
        self,
        target: str | Database,
        *,
        queue_limit: int = 10_000,
        log: Logger | None = None,
        retry_delays_s: Sequence[float] = DEFAULT_RETRY_DELAYS_S,
        outage_delays_s: Sequence[float] = DEFAULT_OUTAGE_DELAYS_S,
        retention_days: float = 0.0,
        retention_every_s: float = RETENTION_EVERY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if queue_limit < 1:
            raise ValueError(f"queue_limit={queue_limit!r} is not valid: expected an integer >= 1")
        if any(delay < 0 for delay in retry_delays_s):
            raise ValueError(f"retry_delays_s={retry_delays_s!r} is not valid: expected delays >= 0")
        if not outage_delays_s or any(delay <= 0 for delay in outage_delays_s):
            raise ValueError(f"outage_delays_s={outage_delays_s!r} is not valid: expected delays > 0")
        if retention_days < 0 or retention_every_s <= 0:
            raise ValueError(
                f"retention_days={retention_days!r}, retention_every_s={retention_every_s!r} are not valid: "
                "expected days >= 0 (0 keeps every record) and a period > 0"
            )
        self._database: Database = open_target(target) if isinstance(target, str) else target
        self._path = self._database.name
        self._log: Logger = log if log is not None else structlog.get_logger("records")
        self._retry_delays_s = tuple(retry_delays_s)
        self._outage_delays_s = tuple(outage_delays_s)
        self.retention_days = retention_days
        self._retention_every_s = retention_every_s
        self._clock = clock
        self._queue: gevent.queue.Queue[CallRecord] = gevent.queue.Queue(maxsize=queue_limit)
        self._open = False
        self._unreachable = False
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
        self.outages = 0
        self.deleted = 0  # by retention
        self.healthy = True

    @property
    def pending(self) -> int:
        """Records accepted but not yet written or given up on."""
        return self._accepted - self._settled

    def start(self, *, wait_for_database: bool = False) -> None:
        """Open or create the database, migrate it, and spawn the writer greenlet.

        `wait_for_database`: a database server that cannot be reached now is an outage, not
        an error: the store starts, warns once, and the writer connects (and migrates) as
        soon as the server answers. For a process whose database was checked moments ago by
        its parent (a gunicorn worker, booted or replaced during an outage).

        Raises:
            SchemaTooNew: the database comes from a newer program; it is left untouched.
            StoreUnavailable: the database cannot be opened (or reached), read, or migrated.
            RuntimeError: the store was already started or stopped.
        """
        if self._writer is not None or self._stopped:
            raise RuntimeError("RecordStore.start() may be called once, before stop()")
        try:
            found, reached = self._database.open()
        except DatabaseUnreachable as exc:
            if not wait_for_database:
                raise
            self.healthy = False
            self._on_unreachable(exc, 0)
            self._open = True
            self._spawn_writer()
            return
        self._open = True
        self._log.info(
            "call_records_opened", path=self._path, schema_version=reached, migrated_from=found,
            retention_days=self.retention_days,
        )
        self._spawn_writer()

    def _spawn_writer(self) -> None:
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
        rows = self._read(f"{SELECT_SQL} WHERE call_sid = {self._database.placeholder}", (call_sid,))
        return from_row(rows[0]) if rows else None

    def latest(self, limit: int = 50) -> list[CallRecord]:
        """The most recently ended calls, newest first; `limit` is clamped to 1..1000.

        With SQLite this runs on the hub like every sqlite call: 50 rows take well under a
        millisecond, the full 1000 about 10 ms, during which live calls wait. PostgreSQL
        reads yield while the server answers.

        Raises:
            StoreUnavailable: the store is not open, or the read failed.
        """
        limit = min(max(int(limit), LATEST_LIMIT_MIN), LATEST_LIMIT_MAX)
        sql = f"{SELECT_SQL} ORDER BY ended_at DESC, call_sid DESC LIMIT {self._database.placeholder}"
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
            # With SQLite the writer is waiting on the queue or in a backoff sleep, never
            # inside a transaction (sqlite calls do not yield). With PostgreSQL it may be
            # inside one only if flush timed out: the server rolls that transaction back
            # when the connection closes, and the batch is counted as lost below.
            writer.kill(block=True, timeout=_KILL_GRACE_S)
            self._writer = None
        lost = self._queue.qsize() + self._in_flight
        if lost:
            self.dropped += lost
            self._settled += lost
            self._log.error("call_records_lost_at_stop", count=lost)
        if self._open:
            self._open = False
            try:
                self._database.close()
            except self._database.errors as exc:
                self._log.warning("call_records_close_failed", error=str(exc))
        self._log.info(
            "call_records_closed",
            written=self.written,
            dropped=self.dropped,
            write_errors=self.write_errors,
        )

    # -- reads, in the requesting greenlet --------------------------------------------

    def _read(self, sql: str, params: tuple[object, ...]) -> list[Any]:
        if not self._open:
            raise StoreUnavailable(f"{self._path}: the call-records store is not open")
        return self._database.read(sql, params)

    # -- the writer greenlet ----------------------------------------------------------

    def _run(self) -> None:
        """Writer greenlet: drain the queue batch by batch, and apply retention when due, until stop() kills it."""
        retain_at = time.monotonic() if self.retention_days > 0 else None
        while True:
            if retain_at is not None and time.monotonic() >= retain_at:
                self._retain()
                retain_at = time.monotonic() + self._retention_every_s
            try:
                first = self._queue.get(timeout=None if retain_at is None else retain_at - time.monotonic())
            except gevent.queue.Empty:
                continue
            batch = [first]
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
        attempt = 0
        waits = 0
        while True:
            try:
                self._database.write(rows)
            except self._database.errors as exc:
                self.write_errors += 1
                self.healthy = False
                if self._database.is_outage(exc):
                    # Not an attempt: the batch waits for the server, however long it takes.
                    self._on_unreachable(exc, len(rows))
                    gevent.sleep(self._outage_delays_s[min(waits, len(self._outage_delays_s) - 1)])
                    waits += 1
                    continue
                attempt += 1
                self._log.error(
                    "call_record_write_failed",
                    error=str(exc),
                    **self._database.error_fields(exc),
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
                    self._log.info("call_records_writable_again", rows=len(rows), queued=self._queue.qsize())
                self._unreachable = False
                self.written += len(rows)
                self.healthy = True
                return

    def _retain(self) -> None:
        """Delete the records of calls that ended more than `retention_days` ago, a chunk at a time."""
        cutoff = self._clock() - self.retention_days * 86400.0
        p = self._database.placeholder
        sql = (  # constant SQL: values go in as parameters
            f"DELETE FROM calls WHERE call_sid IN "  # noqa: S608
            f"(SELECT call_sid FROM calls WHERE ended_at < {p} ORDER BY ended_at LIMIT {p})"
        )
        deleted = 0
        try:
            while True:
                count = self._database.execute(sql, (cutoff, RETENTION_CHUNK))
                deleted += count
                self.deleted += count
                if count < RETENTION_CHUNK:
                    break
                gevent.sleep(0)  # a long history goes chunk by chunk; live calls run in between
        except self._database.errors as exc:
            if self._database.is_outage(exc):
                self._on_unreachable(exc, 0)  # tried again at the next period
            else:
                self._log.warning(
                    "call_records_retention_failed", error=str(exc), **self._database.error_fields(exc)
                )
        finally:
            if deleted:
                self._log.info("call_records_deleted", count=deleted, retention_days=self.retention_days)

    def _on_unreachable(self, exc: BaseException, rows: int) -> None:
        """One WARNING per outage, however many reconnections it takes."""
        if self._unreachable:
            return
        self._unreachable = True
        self.outages += 1
        self._log.warning(
            "call_records_unreachable",
            error=" ".join(str(exc).split()),
            database=self._path,
            rows=rows,
            queued=self._queue.qsize(),
        )

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
