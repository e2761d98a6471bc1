"""The records tests' databases: an SQLite file, or a fresh PostgreSQL database on the real server."""

from __future__ import annotations

import pytest

from tests.services import PostgresServer


@pytest.fixture
def records_postgres(postgres_server: PostgresServer) -> PostgresServer:
    """The session's PostgreSQL server (an outage test stops and restarts it)."""
    return postgres_server


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path) -> str:
    """Where a store keeps its records: an SQLite file, or a PostgreSQL URL (each test its own)."""
    if request.param == "sqlite":
        return str(tmp_path / "calls.db")
    return str(request.getfixturevalue("postgres_url"))
