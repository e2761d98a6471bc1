import hashlib
import sqlite3

import pytest

from records.errors import SchemaTooNew, StoreUnavailable
from records.schema import CURRENT_VERSION, MIGRATIONS, migrate, open_database, user_version
from tests.records.v1 import V1_DDL, write_v1_database

# A plausible next release, used to exercise the migration ladder.
NEXT_STEP = ("ALTER TABLE calls ADD COLUMN transferred_to TEXT",)


def columns(db: sqlite3.Connection) -> list[str]:
    return [row[1] for row in db.execute("PRAGMA table_info(calls)")]


def test_the_released_v1_step_is_unchanged():
    def squeeze(statements):  # indentation may move; the SQL may not
        return [" ".join(sql.split()) for sql in statements]

    assert squeeze(MIGRATIONS[0]) == squeeze(V1_DDL)


def test_a_fresh_database_is_created_at_the_current_version_in_wal_mode(tmp_path):
    db, found, reached = open_database(str(tmp_path / "calls.db"))
    try:
        assert (found, reached) == (0, CURRENT_VERSION)
        assert user_version(db) == CURRENT_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 0
        indexes = [row[1] for row in db.execute("PRAGMA index_list(calls)")]
        assert "calls_by_ended_at" in indexes
    finally:
        db.close()


def test_opening_a_current_database_again_changes_nothing(tmp_path):
    path = str(tmp_path / "calls.db")
    open_database(path)[0].close()
    db, found, reached = open_database(path)
    db.close()
    assert found == reached == CURRENT_VERSION


def test_a_v1_database_is_migrated_step_by_step_and_keeps_its_rows(tmp_path):
    path = str(tmp_path / "calls.db")
    write_v1_database(path)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        assert migrate(db, path, (*MIGRATIONS, NEXT_STEP)) == CURRENT_VERSION + 1
        assert {"recording_path", "transferred_to"} <= set(columns(db))
        assert db.execute("SELECT call_sid, recording_path, transferred_to FROM calls").fetchall() == [
            ("CAold", None, None)
        ]
        assert migrate(db, path, (*MIGRATIONS, NEXT_STEP)) == CURRENT_VERSION + 1  # nothing left to do
    finally:
        db.close()


def test_v2_adds_a_nullable_recording_path_and_a_v1_file_opens_at_the_current_version(tmp_path):
    path = str(tmp_path / "calls.db")
    write_v1_database(path)
    db, found, reached = open_database(path)
    try:
        assert (found, reached) == (1, CURRENT_VERSION) and CURRENT_VERSION >= 2
        info = {row[1]: row for row in db.execute("PRAGMA table_info(calls)")}
        assert info["recording_path"][2] == "TEXT" and info["recording_path"][3] == 0  # nullable
        assert db.execute("SELECT recording_path FROM calls WHERE call_sid = 'CAold'").fetchone() == (None,)
    finally:
        db.close()


def test_v3_adds_a_nullable_node_id(tmp_path):
    path = str(tmp_path / "calls.db")
    write_v1_database(path)
    db, _, reached = open_database(path)
    try:
        assert reached == CURRENT_VERSION and CURRENT_VERSION >= 3
        info = {row[1]: row for row in db.execute("PRAGMA table_info(calls)")}
        assert info["node_id"][2] == "TEXT" and info["node_id"][3] == 0  # nullable
        assert db.execute("SELECT node_id FROM calls WHERE call_sid = 'CAold'").fetchone() == (None,)
    finally:
        db.close()


def test_a_failed_step_is_rolled_back_and_the_previous_version_stays_whole(tmp_path):
    path = str(tmp_path / "calls.db")
    write_v1_database(path)
    broken = ("ALTER TABLE calls ADD COLUMN half_done TEXT", "ALTER TABLE nowhere ADD COLUMN x")
    db = sqlite3.connect(path, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError):
            migrate(db, path, (*MIGRATIONS, broken))
        assert user_version(db) == CURRENT_VERSION
        assert "half_done" not in columns(db)
        assert not db.in_transaction
    finally:
        db.close()


def test_a_database_from_a_newer_program_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "calls.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE calls (call_sid TEXT PRIMARY KEY, shiny_new_thing BLOB)")
    db.execute(f"PRAGMA user_version = {CURRENT_VERSION + 1}")
    db.close()
    before = hashlib.sha256(path.read_bytes()).hexdigest()

    with pytest.raises(SchemaTooNew) as info:
        open_database(str(path))

    assert (info.value.found, info.value.known) == (CURRENT_VERSION + 1, CURRENT_VERSION)
    assert f"version {CURRENT_VERSION + 1} is newer than this program's {CURRENT_VERSION}" in str(
        info.value
    )
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calls.db"]  # not even a WAL file


def test_a_file_that_is_not_a_database_is_reported_unavailable_with_its_path(tmp_path):
    path = tmp_path / "calls.db"
    path.write_bytes(b"this is a text file, not sqlite" * 100)
    with pytest.raises(StoreUnavailable, match=r"calls\.db"):
        open_database(str(path))


def test_a_path_in_a_missing_directory_is_reported_unavailable(tmp_path):
    with pytest.raises(StoreUnavailable, match="missing"):
        open_database(str(tmp_path / "missing" / "calls.db"))
