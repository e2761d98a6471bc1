"""Call records in PostgreSQL, against a real server: schema, cooperation with gevent, outages."""

from __future__ import annotations

import time
from collections.abc import Iterator

import gevent
import psycopg
import pytest

from records.errors import SchemaTooNew, StoreUnavailable
from records.postgres import PostgresDatabase, migrate, postgres_statement, redact_url, schema_version
from records.schema import CURRENT_VERSION, MIGRATIONS
from records.store import RecordStore
from tests.records.helpers import RecordingLog, live_greenlets, make_record, wait_until
from tests.services import PostgresServer

FAST_RETRIES = (0.05, 0.05)
FAST_OUTAGE = (0.05, 0.1)


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    gevent.sleep(0)
    before = live_greenlets()
    yield
    assert wait_until(lambda: live_greenlets() <= before), (live_greenlets(), before)


@pytest.fixture
def log() -> RecordingLog:
    return RecordingLog()


@pytest.fixture
def conn(postgres_url) -> Iterator[psycopg.Connection]:
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        yield connection


# -- schema -------------------------------------------------------------------------------


def test_the_sqlite_steps_are_translated_to_postgres_types_of_the_same_width():
    assert postgres_statement("started_at REAL NOT NULL, turns INTEGER NOT NULL") == (
        "started_at DOUBLE PRECISION NOT NULL, turns BIGINT NOT NULL"
    )
    assert postgres_statement("ALTER TABLE calls ADD COLUMN recording_path TEXT") == (
        "ALTER TABLE calls ADD COLUMN recording_path TEXT"
    )


def test_a_fresh_database_gets_every_step_and_the_same_columns_as_sqlite(conn, postgres_url):
    assert schema_version(conn) == 0
    assert migrate(conn, postgres_url) == CURRENT_VERSION
    types = dict(conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'calls'"
    ).fetchall())
    assert types["started_at"] == "double precision" and types["frames_in"] == "bigint"
    assert types["recording_path"] == "text" and types["node_id"] == "text"
    indexes = {name for (name,) in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'calls'")}
    assert indexes == {"calls_pkey", "calls_by_ended_at"}
    assert migrate(conn, postgres_url) == CURRENT_VERSION  # nothing left to do


def test_a_later_step_migrates_a_database_and_keeps_its_rows(conn, postgres_url, log):
    store = RecordStore(postgres_url, log=log)
    store.start()
    store.submit(make_record("CAkept"))
    store.stop()
    next_step = ("ALTER TABLE calls ADD COLUMN transferred_to TEXT",)
    assert migrate(conn, postgres_url, (*MIGRATIONS, next_step)) == CURRENT_VERSION + 1
    assert conn.execute("SELECT call_sid, transferred_to FROM calls").fetchall() == [("CAkept", None)]


def test_a_failed_step_is_rolled_back_and_the_previous_version_stays_whole(conn, postgres_url):
    migrate(conn, postgres_url)
    broken = ("ALTER TABLE calls ADD COLUMN half_done TEXT", "ALTER TABLE nowhere ADD COLUMN x TEXT")
    with pytest.raises(psycopg.errors.UndefinedTable):
        migrate(conn, postgres_url, (*MIGRATIONS, broken))
    assert schema_version(conn) == CURRENT_VERSION
    sql = "SELECT column_name FROM information_schema.columns WHERE table_name = 'calls'"
    columns = {c for (c,) in conn.execute(sql)}
    assert "half_done" not in columns


def test_nodes_starting_together_migrate_the_database_once(conn, postgres_url, log):
    stores = [RecordStore(postgres_url, log=log) for _ in range(4)]
    starters = [gevent.spawn(store.start) for store in stores]
    gevent.joinall(starters, timeout=20, raise_error=True)  # none failed on another's half-made table
    try:
        assert [f["schema_version"] for f in log.fields("call_records_opened")] == [CURRENT_VERSION] * 4
        assert conn.execute("SELECT version FROM records_schema").fetchall() == [(CURRENT_VERSION,)]
        for i, store in enumerate(stores):
            store.submit(make_record(f"CA{i}"))
            assert store.flush()
        assert {r.call_sid for r in stores[0].latest()} == {"CA0", "CA1", "CA2", "CA3"}
    finally:
        for store in stores:
            store.stop()


def test_a_database_from_a_newer_program_stops_the_store_from_starting(conn, postgres_url, log):
    migrate(conn, postgres_url)
    conn.execute("UPDATE records_schema SET version = %s", (CURRENT_VERSION + 5,))
    store = RecordStore(postgres_url, log=log)
    with pytest.raises(SchemaTooNew):
        store.start()
    store.stop()
    assert schema_version(conn) == CURRENT_VERSION + 5


def test_a_server_that_is_not_there_is_reported_unavailable_without_the_password(records_postgres, log):
    url = f"postgresql://bridge:s3cret-pw@127.0.0.1:{records_postgres.port + 1}/bridge"
    store = RecordStore(url, log=log)
    with pytest.raises(StoreUnavailable) as info:
        store.start()
    assert "s3cret-pw" not in str(info.value)
    assert "bridge:***@127.0.0.1" in str(info.value)


def test_urls_are_logged_without_their_password():
    assert redact_url("postgresql://u:pw@db:5432/calls?sslmode=require") == (
        "postgresql://u:***@db:5432/calls?sslmode=require"
    )
    assert redact_url("postgresql://u@db/calls?password=pw&sslmode=require") == (
        "postgresql://u@db/calls?password=***&sslmode=require"
    )
    assert redact_url("postgresql:///calls") == "postgresql:///calls"


# -- under gevent -------------------------------------------------------------------------


def test_a_slow_query_yields_to_other_greenlets(postgres_url, log):
    """psycopg waits for its socket through gevent: a 0.5 s query does not stop the hub."""
    database = PostgresDatabase(postgres_url)
    database.open()
    ticks: list[float] = []

    def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    other = gevent.spawn(ticker)
    try:
        gevent.sleep(0.02)
        started = time.monotonic()
        database.read("SELECT pg_sleep(0.5)", ())
        during = [t for t in ticks if t > started]
    finally:
        other.kill()
        database.close()
    assert time.monotonic() - started >= 0.5
    assert len(during) >= 5  # about 50 at 10 ms; none at all if the query held the hub


# -- outage ---------------------------------------------------------------------------------


def test_a_database_outage_keeps_the_records_and_writes_them_when_the_server_is_back(
    records_postgres: PostgresServer, postgres_url, log
):
    store = RecordStore(postgres_url, log=log, retry_delays_s=FAST_RETRIES, outage_delays_s=FAST_OUTAGE)
    store.start()
    try:
        store.submit(make_record("CAbefore"))
        assert store.flush()
        records_postgres.stop()
        try:
            started = time.monotonic()
            accepted = [store.submit(make_record(f"CAduring{i}")) for i in range(5)]
            assert time.monotonic() - started < 0.01  # calls ending during the outage never wait
            assert accepted == [True] * 5
            assert wait_until(lambda: store.outages == 1 and store.write_errors >= 3, timeout=5)
            assert store.healthy is False and store.dropped == 0
            assert store.flush(timeout_s=0.2) is False  # still held, not given up on
            with pytest.raises(StoreUnavailable):
                store.get("CAbefore")
        finally:
            records_postgres.start()
        assert store.flush(timeout_s=10)
        assert (store.written, store.dropped, store.healthy) == (6, 0, True)
        assert {r.call_sid for r in store.latest()} == {"CAbefore", *(f"CAduring{i}" for i in range(5))}
        # One WARNING for the whole outage, one INFO when it is over.
        assert log.events("warning") == ["call_records_unreachable"]
        assert log.events().count("call_records_writable_again") == 1
        assert "call_record_write_failed" not in log.events()
    finally:
        store.stop()


def test_an_outage_longer_than_the_queue_drops_and_counts_only_what_does_not_fit(
    records_postgres: PostgresServer, postgres_url, log
):
    store = RecordStore(postgres_url, queue_limit=3, log=log, outage_delays_s=FAST_OUTAGE)
    store.start()
    try:
        records_postgres.stop()
        try:
            store.submit(make_record("CAheld"))
            assert wait_until(lambda: store.outages == 1, timeout=5)  # the writer holds CAheld
            accepted = [store.submit(make_record(f"CAq{i}")) for i in range(5)]
            assert accepted == [True] * 3 + [False] * 2
            assert store.dropped == 2
        finally:
            records_postgres.start()
        assert store.flush(timeout_s=10)
        assert store.written == 4 and store.dropped == 2
    finally:
        store.stop()


def test_a_write_the_server_refuses_takes_the_bounded_retries_and_is_dropped(conn, postgres_url, log):
    store = RecordStore(postgres_url, log=log, retry_delays_s=FAST_RETRIES)
    store.start()
    try:
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'no'; END $$"
        )
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON calls FOR EACH ROW EXECUTE FUNCTION refuse()")
        store.submit(make_record("CArefused"))
        assert store.flush(timeout_s=5)
        assert (store.written, store.dropped, store.write_errors, store.outages) == (0, 1, 3, 0)
        assert [f["sqlstate"] for f in log.fields("call_record_write_failed")] == ["P0001"] * 3
        conn.execute("DROP TRIGGER refuse ON calls")
        store.submit(make_record("CAaccepted"))
        assert store.flush()
        assert store.get("CAaccepted") is not None and store.healthy
    finally:
        store.stop()


def test_a_store_told_to_wait_starts_while_the_server_is_down_and_migrates_once_it_is_up(
    records_postgres: PostgresServer, postgres_url, log
):
    records_postgres.stop()
    store = RecordStore(postgres_url, log=log, outage_delays_s=FAST_OUTAGE)
    try:
        with pytest.raises(StoreUnavailable):
            RecordStore(postgres_url, log=log).start()  # by default a server that is down stops start-up
        store.start(wait_for_database=True)
        assert (store.healthy, store.outages) == (False, 1)
        assert log.events("warning") == ["call_records_unreachable"]
        assert store.submit(make_record("CAwaited"))
    finally:
        records_postgres.start()
    try:
        assert store.flush(timeout_s=10)
        assert store.get("CAwaited") == make_record("CAwaited")
        assert (store.written, store.dropped, store.healthy) == (1, 0, True)
    finally:
        store.stop()


def test_the_urls_own_options_are_kept_and_every_statement_is_bounded(conn, postgres_url):
    conn.execute("CREATE SCHEMA bridge_history")
    url = postgres_url + "?options=-csearch_path%3Dbridge_history"
    database = PostgresDatabase(url)
    database.open()
    try:
        assert database.read("SHOW search_path", ()) == [("bridge_history",)]
        assert database.read("SHOW statement_timeout", ()) == [("10s",)]
    finally:
        database.close()
    tables = conn.execute("SELECT table_schema FROM information_schema.tables WHERE table_name = 'calls'").fetchall()
    assert tables == [("bridge_history",)]  # the table went where the URL said
