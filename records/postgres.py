"""Call records in PostgreSQL (DATABASE_URL): the same `calls` table and migrations as SQLite.

Several bridge nodes write one history. Used by RecordStore exactly like the SQLite file
(records/sqlite.py): open and migrate at start, one transaction per batch from the writer
greenlet, reads from the requesting greenlet.

Cooperation with gevent: psycopg 3's synchronous API waits for its socket with a Python
wait function, and it picks one that gevent has patched when `select` is monkey-patched
at the time psycopg is first imported (run.py patches before importing anything; psycopg
3.1.14 and later, see docs/nginx-and-postgresql.md). So a query in flight yields to the hub
like any socket read: live calls go on while the database answers.
tests/records/test_postgres.py shows it with a slow query.

The writer and the readers use separate connections, because here (unlike sqlite) a
query yields: a read must never land inside the writer's open transaction.

Timeouts: every connection attempt gives up after CONNECT_TIMEOUT_S, every statement after
STATEMENT_TIMEOUT_MS (server side), and TCP keepalives plus TCP_USER_TIMEOUT turn a
vanished server into an error instead of an endless wait.

Migrations: the steps in records.schema.MIGRATIONS, translated from sqlite's type names
(`postgres_statement`), one transaction each, serialised between nodes starting at once by
a transaction-scoped advisory lock. The version lives in the one-row table `records_schema`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import psycopg

from records.errors import DatabaseUnreachable, SchemaTooNew, StoreUnavailable
from records.rows import COLUMNS
from records.schema import MIGRATIONS, Migration

__all__ = [
    "PostgresDatabase",
    "insert_sql",
    "migrate",
    "postgres_statement",
    "redact_url",
    "schema_version",
]

CONNECT_TIMEOUT_S = 3
STATEMENT_TIMEOUT_MS = 10_000
# A server that stops answering mid-query (host gone, network cut) is declared dead after
# about this long instead of the kernel's default of many minutes.
_TCP = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}
# pg_advisory_xact_lock key shared by every node migrating the same database ("calls" in ASCII).
_MIGRATION_LOCK = 0x63616C6C73

_ROW = f"({', '.join('%s' for _ in COLUMNS)})"
_UPSERT = "ON CONFLICT (call_sid) DO UPDATE SET " + ", ".join(
    f"{column} = EXCLUDED.{column}" for column in COLUMNS if column != "call_sid"
)


def insert_sql(rows: int) -> str:
    """One INSERT of `rows` rows that replaces a call's earlier row: one round trip per batch.

    Built from the constant COLUMNS only; values always go in as parameters.
    """
    values = ", ".join(_ROW for _ in range(rows))
    return f"INSERT INTO calls ({', '.join(COLUMNS)}) VALUES {values} {_UPSERT}"  # noqa: S608

# sqlite's REAL is an 8-byte float, PostgreSQL's only 4 bytes (a unix time would lose its
# seconds); sqlite's INTEGER holds 64 bits, PostgreSQL's 32.
_TYPES = {"REAL": "DOUBLE PRECISION", "INTEGER": "BIGINT"}
_TYPE_WORD = re.compile(r"\b(REAL|INTEGER)\b")


def postgres_statement(sql: str) -> str:
    """A migration statement written for sqlite, with PostgreSQL's equivalent column types."""
    return _TYPE_WORD.sub(lambda match: _TYPES[match.group(1)], sql)


def redact_url(url: str) -> str:
    """`url` without its password (in the authority or a `password=` parameter): safe to log."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hosts}" if ":" in userinfo else f"{user}@{hosts}"
    query = urlencode([(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)], safe="*")
    # Built by hand: urlunsplit drops the empty authority of postgresql:///dbname.
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The schema version of the database (0 for one the bridge never opened)."""
    exists = conn.execute("SELECT to_regclass('records_schema') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return 0
    row = conn.execute("SELECT version FROM records_schema").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: psycopg.Connection[Any], name: str, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the steps the database has not seen yet, one transaction each; the version reached.

    `conn` must be in autocommit mode: the transactions are explicit.

    Raises:
        SchemaTooNew: the database is newer than `migrations`; it is not modified.
        psycopg.Error: a step failed; that step was rolled back.
    """
    found = schema_version(conn)
    if found > len(migrations):
        raise SchemaTooNew(name, found, len(migrations))
    for target, statements in enumerate(migrations, start=1):
        if target <= found:
            continue
        with conn.transaction():
            # Another node may be migrating the same database right now: wait for it,
            # then re-read the version under the lock.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS records_schema (version BIGINT NOT NULL)")
            current = schema_version(conn)
            if current > len(migrations):
                raise SchemaTooNew(name, current, len(migrations))
            if current < target:
                for sql in statements:
                    conn.execute(postgres_statement(sql))  # constant DDL from records.schema
                conn.execute("DELETE FROM records_schema")
                conn.execute("INSERT INTO records_schema (version) VALUES (%s)", (target,))
    return schema_version(conn)


class PostgresDatabase:
    """The `calls` table in the PostgreSQL database at `url`, for RecordStore.

    `name` (the URL less its password) is what logs and errors show.
    """

    placeholder = "%s"
    errors: tuple[type[Exception], ...] = (psycopg.Error,)

    def __init__(self, url: str) -> None:
        self._url = url
        self.name = redact_url(url)
        self._writer: psycopg.Connection[Any] | None = None
        self._reader: psycopg.Connection[Any] | None = None

    def open(self) -> tuple[int, int]:
        """Connect, refuse a newer schema, migrate; (version found, version reached).

        Raises:
            SchemaTooNew: the database was written by a newer program.
            DatabaseUnreachable: connecting failed (server down or unreachable, or it refused us).
            StoreUnavailable: migrating failed.
        """
        try:
            conn = self._connect()
        except psycopg.Error as exc:
            raise DatabaseUnreachable(f"{self.name}: cannot connect to the call-records database: {exc}") from exc
        try:
            found = schema_version(conn)
            reached = migrate(conn, self.name)
        except SchemaTooNew:
            conn.close()
            raise
        except psycopg.Error as exc:
            conn.close()
            raise StoreUnavailable(f"{self.name}: cannot prepare the call-records database: {exc}") from exc
        self._writer = conn
        return found, reached

    def write(self, rows: list[tuple[object, ...]]) -> None:
        """Insert or replace `rows` in one statement; reconnects (and migrates) first if the link was lost.

        Raises:
            psycopg.Error: the write failed and was rolled back (or the server is gone).
        """
        conn = self._writer_connection()
        # One statement may not update a row twice: a call's later record wins, as in sqlite.
        latest = list({row[0]: row for row in rows}.values())
        params = [value for row in latest for value in row]
        # One statement in autocommit mode is one transaction: no BEGIN/COMMIT round trips.
        conn.execute(insert_sql(len(latest)), params)  # built from constants

    def execute(self, sql: str, params: tuple[object, ...]) -> int:
        """One write statement (with `%s` placeholders), its own transaction; rows it changed.

        Raises:
            psycopg.Error: the statement failed (or the server is gone).
        """
        return self._writer_connection().execute(sql, params).rowcount  # constant SQL built in store.py

    def _writer_connection(self) -> psycopg.Connection[Any]:
        """The writer's connection, made again (and the schema migrated) if the link was lost."""
        conn = self._writer
        if conn is None or conn.closed:
            self._writer = None
            conn = self._connect()
            try:
                migrate(conn, self.name)  # the server may come back as a new, empty database
            except BaseException:
                conn.close()
                raise
            self._writer = conn
        return conn

    def read(self, sql: str, params: tuple[object, ...]) -> list[Any]:
        """Rows of `sql` (written with `%s` placeholders), on the readers' connection.

        Raises:
            StoreUnavailable: the server cannot be reached or the query failed.
        """
        try:
            conn = self._reader
            if conn is None or conn.closed:
                conn = self._reader = self._connect()
            return conn.execute(sql, params).fetchall()  # constant SQL built in store.py
        except psycopg.Error as exc:
            self._close_reader()
            raise StoreUnavailable(f"{self.name}: reading call records failed: {exc}") from exc

    def is_outage(self, exc: BaseException) -> bool:
        """True for a lost or refused connection, or a server too slow to answer: retried until it is back."""
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) or (
            self._writer is not None and self._writer.closed
        )

    def error_fields(self, exc: BaseException) -> dict[str, object]:
        return {"sqlstate": getattr(exc, "sqlstate", None)}

    def close(self) -> None:
        for conn in (self._writer, self._reader):
            if conn is not None:
                with contextlib.suppress(psycopg.Error):  # a broken connection: nothing left to save
                    conn.close()
        self._writer = self._reader = None

    def _close_reader(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(psycopg.Error):
                self._reader.close()
            self._reader = None

    def _connect(self) -> psycopg.Connection[Any]:
        # Keyword arguments win over the URL's own parameters, so the URL's `options` (a
        # search_path, say) are left alone and the timeout is set by a statement instead.
        conn = psycopg.connect(
            self._url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name="twilio-vapi-bridge",
            **_TCP,  # type: ignore[arg-type]
        )
        try:
            conn.execute(f"SET statement_timeout = {int(STATEMENT_TIMEOUT_MS)}")
        except BaseException:
            conn.close()
            raise
        return conn
