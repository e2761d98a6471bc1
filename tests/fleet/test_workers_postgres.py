"""WORKERS with DATABASE_URL: a worker that dies while PostgreSQL is down is replaced, and serves."""

from __future__ import annotations

import os
import signal

import psycopg
import requests

from sims.caller import CallerConfig, SimulatedCaller
from tests.integration.conftest import wait_until
from tests.services import PostgresServer
from tests.test_run import TOKEN, stop_server
from tests.test_service_workers import listening_workers, start_workers, workers_of


def _call(base: str) -> str:
    """A short call on the workers' port: the greeting arrives, then the caller hangs up."""
    caller = SimulatedCaller(CallerConfig(server_url=base, public_url=base, auth_token=TOKEN))
    try:
        assert caller.post_webhook()[0] == 200
        caller.connect()
        caller.start_stream()
        assert caller.wait_for_audio(800, timeout_s=5)
        caller.send_stop()
        assert caller.closed.wait(5)
    finally:
        caller.close()
    return caller.call_sid


def test_a_worker_replaced_during_a_database_outage_serves_and_every_record_arrives_later(
    tmp_path, postgres_server: PostgresServer, postgres_url
):
    process, base = start_workers(tmp_path, WORKERS="2", DRAIN_TIMEOUT_S="1", DATABASE_URL=postgres_url)
    try:
        assert wait_until(lambda: len(listening_workers(process, tmp_path)) == 2, timeout=10)
        postgres_server.stop()
        try:
            victim = min(workers_of(process))
            os.kill(victim, signal.SIGKILL)
            # gunicorn boots a replacement while the database is down: it must come up and serve,
            # not fail to boot (which makes gunicorn's master stop every worker).
            def replaced() -> bool:
                return len(listening_workers(process, tmp_path)) == 2 and victim not in workers_of(process)

            assert wait_until(replaced, timeout=15), (tmp_path / "server.log").read_text()[-3000:]
            assert process.poll() is None
            calls = [_call(base) for _ in range(4)]  # each taken by whichever worker accepts it
            assert requests.get(base + "/readyz", timeout=5).status_code == 200
        finally:
            postgres_server.start()

        def stored() -> set[str]:
            with psycopg.connect(postgres_url) as conn:
                rows = conn.execute("SELECT call_sid FROM calls WHERE call_sid = ANY(%s)", (calls,)).fetchall()
            return {sid for (sid,) in rows}

        assert wait_until(lambda: stored() == set(calls), timeout=15), (stored(), calls)
    finally:
        stop_server(process)
