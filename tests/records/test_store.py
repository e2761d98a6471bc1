import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest

from records.errors import SchemaTooNew, StoreUnavailable
from records.schema import CURRENT_VERSION
from records.store import BATCH_MAX, RETENTION_CHUNK, RecordStore
from tests.records.helpers import RecordingLog, live_greenlets, make_record, wait_until
from tests.records.v1 import write_v1_database

# Short enough to keep the failure tests fast, long enough for a test to act between tries.
FAST_RETRIES = (0.05, 0.05)


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every test must leave no greenlet behind (the writer ends with stop())."""
    gevent.sleep(0)
    before = live_greenlets()
    yield
    assert wait_until(lambda: live_greenlets() <= before), (live_greenlets(), before)


@pytest.fixture
def log() -> RecordingLog:
    return RecordingLog()


@pytest.fixture
def path(tmp_path) -> str:
    """An SQLite file, for the tests of what only a file does (locks, read-only, old files)."""
    return str(tmp_path / "calls.db")


@pytest.fixture
def store(target, log) -> Iterator[RecordStore]:
    store = RecordStore(target, log=log, retry_delays_s=FAST_RETRIES)
    store.start()
    yield store
    store.stop()


# -- round trip ---------------------------------------------------------------------------


def test_a_record_reads_back_with_every_field_intact(store):
    full = make_record("CAfull")
    sparse = make_record(
        "CAsparse",
        stream_sid=None,
        turn_latency_p50_ms=None,
        turn_latency_p95_ms=None,
        recording_path=None,
        node_id=None,
        restarts=(),
        outcome="gave-up",
        outcome_detail="",
    )
    assert store.submit(full) and store.submit(sparse)
    assert store.flush()
    assert store.get("CAfull") == full
    assert store.get("CAsparse") == sparse
    assert (store.written, store.dropped, store.write_errors, store.healthy) == (2, 0, 0, True)


def test_an_in_memory_store_reads_back_what_it_wrote(log):
    store = RecordStore(":memory:", log=log)
    store.start()
    try:
        store.submit(make_record("CAmem"))
        assert store.flush()
        assert store.get("CAmem") == make_record("CAmem")
    finally:
        store.stop()


def test_an_unknown_call_has_no_record(store):
    assert store.get("CAnobody") is None


def test_a_second_record_for_the_same_call_replaces_the_first(store):
    store.submit(make_record("CAsame", outcome="failed"))
    store.submit(make_record("CAsame", outcome="completed"))
    assert store.flush()
    assert store.get("CAsame").outcome == "completed"
    assert [r.call_sid for r in store.latest()] == ["CAsame"]


def test_records_submitted_before_start_are_written_once_started(target, log):
    store = RecordStore(target, log=log)
    store.submit(make_record("CAearly"))
    store.start()
    try:
        assert store.flush()
        assert store.get("CAearly") is not None
    finally:
        store.stop()


# -- latest -------------------------------------------------------------------------------


def test_latest_returns_the_newest_ended_calls_first_up_to_the_limit(store):
    for i, ended_at in enumerate([300.0, 100.0, 500.0, 200.0, 400.0]):
        store.submit(make_record(f"CA{i}", started_at=50.0, ended_at=ended_at))
    assert store.flush()
    assert [r.ended_at for r in store.latest(3)] == [500.0, 400.0, 300.0]
    assert [r.ended_at for r in store.latest()] == [500.0, 400.0, 300.0, 200.0, 100.0]


def test_latest_clamps_the_limit_to_1_through_1000(store):
    for i in range(1005):
        store.submit(make_record(f"CA{i:04d}", ended_at=1_760_000_100.0 + i))
    assert store.flush()
    assert len(store.latest(0)) == 1
    assert len(store.latest(-7)) == 1
    assert len(store.latest(5000)) == 1000
    assert store.latest(1)[0].call_sid == "CA1004"


# -- restart, migration, refusal ----------------------------------------------------------


def test_records_survive_a_restart_of_the_store(target, log):
    written = [make_record(f"CA{i}", ended_at=1_760_000_100.0 + i) for i in range(3)]
    first = RecordStore(target, log=log)
    first.start()
    for record in written:
        first.submit(record)
    first.stop()

    second = RecordStore(target, log=log)
    second.start()
    try:
        assert second.latest() == written[::-1]
        assert [second.get(r.call_sid) for r in written] == written
    finally:
        second.stop()


def test_a_v1_database_from_an_earlier_release_opens_and_reads_back(path, log):
    write_v1_database(path)
    store = RecordStore(path, log=log)
    store.start()
    try:
        old = store.get("CAold")
        assert old is not None
        assert old.recording_path is None  # v1 had no recordings: the v2 column reads back NULL
        assert old.node_id is None  # nor nodes: the v3 column reads back NULL
        assert (old.duration_s, old.restarts, old.turns, old.turn_latency_p95_ms) == (
            30.0,
            (("twilio", 0), ("vapi", 1)),
            2,
            None,
        )
        assert log.fields("call_records_opened") == [
            {"path": path, "schema_version": CURRENT_VERSION, "migrated_from": 1, "retention_days": 0.0}
        ]
    finally:
        store.stop()


def test_a_database_from_a_newer_program_stops_the_store_from_starting(path, log):
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {CURRENT_VERSION + 5}")
    db.close()
    store = RecordStore(path, log=log)
    with pytest.raises(SchemaTooNew):
        store.start()
    store.stop()  # still safe: nothing to end


# -- failing disk -------------------------------------------------------------------------


def test_a_lock_a_sibling_worker_holds_for_a_moment_is_waited_out_without_a_failed_write(path, log):
    store = RecordStore(path, log=log, retry_delays_s=(0.3,))
    store.start()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another worker's batch, committing
    try:
        released = gevent.spawn_later(0.1, blocker.execute, "COMMIT")
        assert store.submit(make_record("CAsibling")) is True
        assert store.flush()
        released.join()
        assert store.get("CAsibling") is not None
        assert (store.written, store.dropped, store.write_errors) == (1, 0, 0)
        assert log.fields("call_record_write_failed") == []
    finally:
        blocker.close()
        store.stop()


def test_a_locked_database_fails_writes_without_raising_and_the_retry_succeeds_once_released(
    path, log, monkeypatch
):
    monkeypatch.setattr("records.sqlite._LOCKED_WAIT_S", 0.02)  # a lock held longer than a sibling's commit
    store = RecordStore(path, log=log, retry_delays_s=(0.3,))  # time to release the lock
    store.start()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        started = time.monotonic()
        assert store.submit(make_record("CAlocked")) is True
        assert time.monotonic() - started < 0.01
        assert wait_until(lambda: store.write_errors >= 1)
        assert store.healthy is False
        blocker.execute("ROLLBACK")
        assert store.flush()
        assert store.get("CAlocked") is not None
        assert (store.written, store.dropped, store.write_errors, store.healthy) == (1, 0, 1, True)
        failure = log.fields("call_record_write_failed")[0]
        assert failure["sqlite_error"] == "SQLITE_BUSY" and failure["attempt"] == 1
    finally:
        blocker.close()
        store.stop()


@pytest.fixture
def sqlite_store(path, log) -> Iterator[RecordStore]:
    store = RecordStore(path, log=log, retry_delays_s=FAST_RETRIES)
    store.start()
    yield store
    store.stop()


@pytest.fixture
def sqlite_store_factory(path, log) -> Iterator[Callable[..., RecordStore]]:
    made: list[RecordStore] = []

    def make(**options: Any) -> RecordStore:
        store = RecordStore(path, log=log, retry_delays_s=FAST_RETRIES, **options)
        store.start()
        made.append(store)
        return store

    yield make
    for store in made:
        store.stop()


def test_a_read_only_database_drops_the_batch_after_bounded_retries_and_later_writes_succeed(
    sqlite_store, log
):
    store = sqlite_store
    # Root ignores file permissions, so make the store's own connection refuse writes.
    store._database._db.execute("PRAGMA query_only = ON")

    assert store.submit(make_record("CAlost")) is True
    assert store.flush(timeout_s=2.0)
    assert (store.written, store.dropped, store.write_errors) == (0, 1, 3)
    assert store.healthy is False
    assert store.get("CAlost") is None
    failures = log.fields("call_record_write_failed")
    assert [f["sqlite_error"] for f in failures] == ["SQLITE_READONLY"] * 3
    assert [f["attempt"] for f in failures] == [1, 2, 3]
    # Identifiers and counts only: a log line never carries a record's contents.
    assert set(failures[0]) == {"error", "sqlite_error", "rows", "attempt", "tries"}
    assert log.fields("call_records_dropped") == [{"rows": 1, "call_sids": ["CAlost"]}]

    store._database._db.execute("PRAGMA query_only = OFF")  # the disk is writable again
    assert store.submit(make_record("CAback")) is True
    assert store.flush()
    assert store.get("CAback") is not None
    assert (store.written, store.dropped, store.healthy) == (1, 1, True)
    assert "call_records_writable_again" in log.events("info")


def test_flush_gives_up_at_its_timeout_while_writes_keep_failing(path, log, monkeypatch):
    monkeypatch.setattr("records.sqlite._LOCKED_WAIT_S", 0.02)
    store = RecordStore(path, log=log, retry_delays_s=(10.0,))
    store.start()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        store.submit(make_record("CAslow"))
        started = time.monotonic()
        assert store.flush(timeout_s=0.1) is False
        assert time.monotonic() - started < 0.5
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        store.stop(timeout_s=0.1)  # the batch is still in its backoff: counted as lost
    assert store.dropped == 1
    assert log.fields("call_records_lost_at_stop") == [{"count": 1}]
    assert "call_record_writer_crashed" not in log.events()  # a kill is not a crash


def test_an_invalid_record_is_dropped_alone_and_its_batch_mates_are_written(store, log):
    store.submit(make_record("CAgood1"))
    store.submit(make_record("CAbad", turns=None))
    store.submit(make_record("CAgood2"))
    assert store.flush()
    assert [r.call_sid for r in store.latest()] == ["CAgood2", "CAgood1"]  # same end: by sid
    assert (store.written, store.dropped, store.write_errors, store.healthy) == (2, 1, 0, True)
    assert log.fields("call_record_invalid")[0]["call_sid"] == "CAbad"


# -- never blocking -----------------------------------------------------------------------


def test_submit_never_blocks_when_the_queue_is_full_and_counts_the_drops(target, log):
    store = RecordStore(target, queue_limit=3, log=log)
    store.start()
    try:
        started = time.monotonic()
        # No yield inside the loop, so the writer cannot drain: the queue fills at 3.
        accepted = [store.submit(make_record(f"CA{i}")) for i in range(10)]
        assert time.monotonic() - started < 0.05
        assert accepted == [True] * 3 + [False] * 7
        assert store.dropped == 7
        assert [f["reason"] for f in log.fields("call_record_dropped")] == ["queue_full"] * 7
        assert store.flush()
        assert store.written == 3
    finally:
        store.stop()


def test_submit_after_stop_is_refused_and_counted(store, log):
    store.stop()
    assert store.submit(make_record("CAlate")) is False
    assert store.dropped == 1
    assert log.fields("call_record_dropped")[0]["reason"] == "store_stopped"


def test_a_backlog_is_written_in_batches_that_let_other_greenlets_run(store):
    ticks = 0

    def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            gevent.sleep(0)

    for i in range(BATCH_MAX * 5):
        store.submit(make_record(f"CA{i:04d}"))
    other = gevent.spawn(ticker)
    try:
        assert store.flush()
    finally:
        other.kill()
    assert store.written == BATCH_MAX * 5
    assert ticks >= 5  # the ticker ran between batches, not only after the backlog


# -- retention ----------------------------------------------------------------------------

DAY = 86400.0
NOW = 1_790_000_000.0


def _ended(store: RecordStore, days_ago: dict[str, float]) -> None:
    for call_sid, days in days_ago.items():
        store.submit(make_record(call_sid, started_at=NOW - days * DAY - 60, ended_at=NOW - days * DAY))
    assert store.flush()


def _sids(target: str) -> set[str]:
    reader = RecordStore(target)
    reader.start()
    try:
        return {record.call_sid for record in reader.latest(1000)}
    finally:
        reader.stop()


def test_records_of_calls_that_ended_before_the_retention_period_are_deleted_at_start(target, log):
    keeper = RecordStore(target)
    keeper.start()
    _ended(keeper, {"CAold": 31, "CAolder": 400, "CAyoung": 29, "CAtoday": 0})
    keeper.stop()

    store = RecordStore(target, log=log, retention_days=30, clock=lambda: NOW)
    store.start()
    try:
        assert wait_until(lambda: store.deleted == 2)
        assert {r.call_sid for r in store.latest()} == {"CAyoung", "CAtoday"}
        assert log.fields("call_records_deleted") == [{"count": 2, "retention_days": 30}]
        store.submit(make_record("CAnew", ended_at=NOW))  # the writer goes on writing
        assert store.flush()
        assert store.get("CAnew") is not None
    finally:
        store.stop()


def test_without_a_retention_period_every_record_is_kept(target, log):
    store = RecordStore(target, log=log, clock=lambda: NOW)  # the default: 0 keeps them forever
    store.start()
    _ended(store, {"CAancient": 3650, "CAtoday": 0})
    store.stop()
    assert _sids(target) == {"CAancient", "CAtoday"}
    assert store.deleted == 0
    assert "call_records_deleted" not in log.events()


def test_retention_runs_again_each_period_so_records_age_out_while_the_server_runs(target, log):
    now = [NOW]
    store = RecordStore(target, log=log, retention_days=1, retention_every_s=0.05, clock=lambda: now[0])
    store.start()
    try:
        _ended(store, {"CAfirst": 0.5, "CAsecond": 0})
        gevent.sleep(0.15)  # periods pass: both are younger than a day
        assert {r.call_sid for r in store.latest()} == {"CAfirst", "CAsecond"}
        now[0] += 0.75 * DAY  # CAfirst is now 1.25 days old, CAsecond 0.75
        assert wait_until(lambda: store.deleted == 1)
        assert {r.call_sid for r in store.latest()} == {"CAsecond"}
    finally:
        store.stop()


def test_a_long_history_is_deleted_in_chunks_with_live_calls_running_between_them(path, log):
    keeper = RecordStore(path)
    keeper.start()
    old = RETENTION_CHUNK * 3 + 7
    _ended(keeper, {f"CA{i:05d}": 40 + i / 1000 for i in range(old)} | {"CAyoung": 1})
    keeper.stop()
    store = RecordStore(path, log=log, retention_days=30, clock=lambda: NOW)
    seen: set[int] = set()

    def ticker():  # a live call's greenlet, noting how far the deleting had got each time it ran
        while True:
            seen.add(store.deleted)
            gevent.sleep(0)

    other = gevent.spawn(ticker)
    try:
        store.start()
        assert wait_until(lambda: store.deleted == old)
    finally:
        other.kill()
        store.stop()
    assert {RETENTION_CHUNK, 2 * RETENTION_CHUNK, 3 * RETENTION_CHUNK} <= seen  # it ran between chunks
    assert _sids(path) == {"CAyoung"}
    assert log.fields("call_records_deleted") == [{"count": old, "retention_days": 30}]


def test_a_failed_delete_is_one_warning_and_neither_stops_the_writer_nor_the_next_period(sqlite_store_factory, log):
    now = [NOW]
    store = sqlite_store_factory(retention_days=1, retention_every_s=0.05, clock=lambda: now[0])
    _ended(store, {"CAold": 0})
    store._database._db.execute("PRAGMA query_only = ON")  # root ignores file permissions
    now[0] += 2 * DAY
    assert wait_until(lambda: "call_records_retention_failed" in log.events("warning"))
    assert log.fields("call_records_retention_failed")[0]["sqlite_error"] == "SQLITE_READONLY"
    assert store.get("CAold") is not None and store.deleted == 0
    store._database._db.execute("PRAGMA query_only = OFF")
    assert wait_until(lambda: store.deleted == 1)  # the next period deletes it
    assert store.get("CAold") is None
    assert "call_record_writer_error" not in log.events()


def test_a_negative_retention_period_is_refused(path):
    with pytest.raises(ValueError, match="retention_days"):
        RecordStore(path, retention_days=-1)
    with pytest.raises(ValueError, match="retention_every_s"):
        RecordStore(path, retention_days=1, retention_every_s=0)


# -- lifecycle ----------------------------------------------------------------------------


def test_stop_flushes_what_was_submitted_and_is_idempotent(target, log):
    store = RecordStore(target, log=log)
    store.start()
    store.submit(make_record("CAlast"))
    store.stop()
    store.stop()
    assert store.written == 1
    assert log.events().count("call_records_closed") == 1


def test_reads_on_a_store_that_is_not_open_raise_unavailable(target, log):
    store = RecordStore(target, log=log)
    with pytest.raises(StoreUnavailable, match="not open"):
        store.get("CA1")
    with pytest.raises(StoreUnavailable, match="not open"):
        store.latest()


def test_start_may_be_called_only_once(store):
    with pytest.raises(RuntimeError):
        store.start()
