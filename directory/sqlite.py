"""The call directory in an SQLite file that the worker processes of one machine share.

Every operation is one short transaction. Writers take the database's write lock at
BEGIN (IMMEDIATE), so two workers claiming the same call are serialized by SQLite and
the first claim wins. A sqlite3 call blocks the whole process while it runs, so the busy
timeout is 0: a locked database fails at once and the operation is retried here with
cooperative sleeps, within `timeout_s`, after which it raises DirectoryUnavailable.
Each process opens its own connection (after the fork, never inherited).

WAL mode lets readers (the gate, after-stream) go on while a worker writes. Expired rows
are deleted by the heartbeats.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import gevent

from calls.directory import ALREADY_STREAMING, ENDED, NOT_ADMITTED, OUTCOME_KEPT_S, DirectoryUnavailable, NodeView
from calls.handoff import Handoff
from calls.outcome import Outcome

__all__ = ["SqliteDirectory"]

T = TypeVar("T")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS calls (
    call_sid TEXT PRIMARY KEY,
    state TEXT NOT NULL,            -- admitted, claimed, ended
    node_id TEXT NOT NULL,
    outcome TEXT,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    calls TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id TEXT NOT NULL,
    body TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS commands_by_node ON commands (node_id);
CREATE TABLE IF NOT EXISTS moving (
    call_sid TEXT PRIMARY KEY,
    handoff TEXT NOT NULL,          -- calls/handoff.py's JSON
    expires_at REAL NOT NULL
);
"""
_RETRY_STEP_S: Final = 0.005
_RETRY_MAX_STEP_S: Final = 0.05
# How often take_commands looks again while it waits.
_POLL_S: Final = 0.2


class SqliteDirectory:
    """A CallDirectory over one SQLite file; every process opens its own."""

    def __init__(self, path: str, *, timeout_s: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._timeout_s = timeout_s
        self._clock = clock
        self._db: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"SqliteDirectory({self._path!r})"

    @property
    def shared(self) -> bool:
        return True

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self._path, timeout=0, isolation_level=None, check_same_thread=True)
            db.execute("PRAGMA busy_timeout = 0")
            self._db = db
            self._run(lambda: self._setup(db))
        return self._db

    @staticmethod
    def _setup(db: sqlite3.Connection) -> None:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(_SCHEMA)

    def _run(self, operation: Callable[[], T]) -> T:
        """`operation`, retried while the database is locked, within the timeout."""
        deadline = time.monotonic() + self._timeout_s
        step = _RETRY_STEP_S
        while True:
            try:
                return operation()
            except sqlite3.OperationalError as exc:
                locked = "locked" in str(exc) or "busy" in str(exc)
                if not locked or time.monotonic() + step > deadline:
                    raise DirectoryUnavailable(f"call directory {self._path}: {exc}") from None
            except sqlite3.Error as exc:
                raise DirectoryUnavailable(f"call directory {self._path}: {exc}") from None
            gevent.sleep(step)
            step = min(step * 2, _RETRY_MAX_STEP_S)

    def _write(self, body: Callable[[sqlite3.Connection], T]) -> T:
        def transaction() -> T:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                result = body(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        return self._run(transaction)

    def _read(self, body: Callable[[sqlite3.Connection], T]) -> T:
        return self._run(lambda: body(self._connection()))

    # CallDirectory ------------------------------------------------------------------

    def admit(self, call_sid: str, node_id: str, ttl_s: float) -> None:
        now = self._clock()

        def body(db: sqlite3.Connection) -> None:
            # A retried webhook refreshes its admission; a claimed or ended call stays as it is.
            db.execute(
                "INSERT INTO calls (call_sid, state, node_id, expires_at) VALUES (?, 'admitted', ?, ?) "
                "ON CONFLICT (call_sid) DO UPDATE SET node_id = excluded.node_id, expires_at = excluded.expires_at "
                "WHERE calls.state = 'admitted' OR calls.expires_at <= ?",
                (call_sid, node_id, now + ttl_s, now),
            )

        self._write(body)

    @staticmethod
    def _refusal(row: tuple[str, float] | None, now: float) -> str | None:
        if row is None:
            return NOT_ADMITTED
        state, expires_at = row
        if state == "ended":
            return ENDED if expires_at > now else NOT_ADMITTED
        if expires_at <= now:
            return NOT_ADMITTED
        return ALREADY_STREAMING if state == "claimed" else None

    def refusal(self, call_sid: str) -> str | None:
        row = self._read(
            lambda db: db.execute("SELECT state, expires_at FROM calls WHERE call_sid = ?", (call_sid,)).fetchone()
        )
        return self._refusal(row, self._clock())

    def claim(self, call_sid: str, node_id: str, lease_s: float) -> str | None:
        now = self._clock()

        def body(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT state, expires_at FROM calls WHERE call_sid = ?", (call_sid,)).fetchone()
            refusal = self._refusal(row, now)
            if refusal is None:
                db.execute(
                    "UPDATE calls SET state = 'claimed', node_id = ?, expires_at = ? WHERE call_sid = ?",
                    (node_id, now + lease_s, call_sid),
                )
            return refusal

        return self._write(body)

    def finish(self, call_sid: str, outcome: Outcome) -> None:
        now = self._clock()

        def body(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO calls (call_sid, state, node_id, outcome, expires_at) VALUES (?, 'ended', '', ?, ?) "
                "ON CONFLICT (call_sid) DO UPDATE SET state = 'ended', outcome = excluded.outcome, "
                "expires_at = excluded.expires_at",
                (call_sid, outcome.value, now + OUTCOME_KEPT_S),
            )
            db.execute("DELETE FROM moving WHERE call_sid = ?", (call_sid,))

        self._write(body)

    def outcome(self, call_sid: str) -> Outcome | None:
        row = self._read(
            lambda db: db.execute(
                "SELECT outcome FROM calls WHERE call_sid = ? AND state = 'ended' AND expires_at > ?",
                (call_sid, self._clock()),
            ).fetchone()
        )
        if row is None:
            return None
        try:
            return Outcome(row[0])
        except ValueError:
            return None

    def owner(self, call_sid: str) -> str | None:
        row = self._read(
            lambda db: db.execute(
                "SELECT node_id FROM calls WHERE call_sid = ? AND state = 'claimed' AND expires_at > ?",
                (call_sid, self._clock()),
            ).fetchone()
        )
        return None if row is None else str(row[0])

    def heartbeat(self, node_id: str, calls: Sequence[dict[str, Any]], ttl_s: float, *, draining: bool = False) -> None:
        now = self._clock()
        sids = [(now + ttl_s, str(call.get("call_sid")), node_id) for call in calls]
        # A list (the calls), or with `draining` an object: files written before it read the same.
        listed: list[dict[str, Any]] | dict[str, Any] = list(calls)
        if draining:
            listed = {"calls": listed, "draining": True}
        view = json.dumps(listed, separators=(",", ":"))

        def body(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE calls SET expires_at = ? WHERE call_sid = ? AND node_id = ? AND state = 'claimed'", sids
            )
            db.execute(
                "INSERT INTO nodes (node_id, at, calls, expires_at) VALUES (?, ?, ?, ?) ON CONFLICT (node_id) "
                "DO UPDATE SET at = excluded.at, calls = excluded.calls, expires_at = excluded.expires_at",
                (node_id, now, view, now + ttl_s),
            )
            # The heartbeats keep the file small: what expired is of no use to anyone.
            db.execute("DELETE FROM calls WHERE expires_at <= ?", (now,))
            db.execute("DELETE FROM nodes WHERE expires_at <= ?", (now,))
            db.execute("DELETE FROM commands WHERE expires_at <= ?", (now,))
            db.execute("DELETE FROM moving WHERE expires_at <= ?", (now,))

        self._write(body)

    def nodes(self) -> list[NodeView]:
        rows = self._read(
            lambda db: db.execute(
                "SELECT node_id, at, calls FROM nodes WHERE expires_at > ? ORDER BY node_id", (self._clock(),)
            ).fetchall()
        )
        views = []
        for node_id, at, calls in rows:
            try:
                parsed = json.loads(calls)
            except ValueError:
                continue
            draining = isinstance(parsed, dict) and parsed.get("draining") is True
            if isinstance(parsed, dict):
                parsed = parsed.get("calls")
            views.append(NodeView(str(node_id), float(at), parsed if isinstance(parsed, list) else [], draining))
        return views

    def send_command(self, node_id: str, command: dict[str, Any], ttl_s: float) -> None:
        body_text = json.dumps(command, separators=(",", ":"))
        expires_at = self._clock() + ttl_s
        self._write(
            lambda db: db.execute(
                "INSERT INTO commands (node_id, body, expires_at) VALUES (?, ?, ?)", (node_id, body_text, expires_at)
            )
        )

    def take_commands(self, node_id: str, wait_s: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + wait_s
        while True:
            now = self._clock()

            def body(db: sqlite3.Connection, now: float = now) -> list[str]:
                rows = db.execute(
                    "SELECT id, body FROM commands WHERE node_id = ? AND expires_at > ? ORDER BY id", (node_id, now)
                ).fetchall()
                if rows:
                    db.execute("DELETE FROM commands WHERE node_id = ? AND id <= ?", (node_id, rows[-1][0]))
                return [str(row[1]) for row in rows]

            # A plain read first: most polls find nothing and need no write lock.
            pending = self._read(
                lambda db: db.execute("SELECT 1 FROM commands WHERE node_id = ? LIMIT 1", (node_id,)).fetchone()
            )
            bodies = self._write(body) if pending else []
            commands = [parsed for text in bodies if isinstance(parsed := json.loads(text), dict)]
            if commands or time.monotonic() >= deadline:
                return commands
            gevent.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))

    def mark_moving(self, call_sid: str, handoff: Handoff, ttl_s: float) -> None:
        text, expires_at = handoff.to_json(), self._clock() + ttl_s

        def body(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO moving (call_sid, handoff, expires_at) VALUES (?, ?, ?) ON CONFLICT (call_sid) "
                "DO UPDATE SET handoff = excluded.handoff, expires_at = excluded.expires_at",
                (call_sid, text, expires_at),
            )
            db.execute("DELETE FROM calls WHERE call_sid = ? AND state = 'claimed'", (call_sid,))

        self._write(body)

    def moving(self, call_sid: str) -> Handoff | None:
        row = self._read(
            lambda db: db.execute(
                "SELECT handoff FROM moving WHERE call_sid = ? AND expires_at > ?", (call_sid, self._clock())
            ).fetchone()
        )
        return None if row is None else Handoff.from_json(str(row[0]))

    def take_moving(self, call_sid: str, node_id: str) -> Handoff | None:
        now = self._clock()

        def body(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "SELECT handoff FROM moving WHERE call_sid = ? AND expires_at > ?", (call_sid, now)
            ).fetchone()
            db.execute("DELETE FROM moving WHERE call_sid = ?", (call_sid,))
            return None if row is None else str(row[0])

        text = self._write(body)
        return None if text is None else Handoff.from_json(text)

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()
