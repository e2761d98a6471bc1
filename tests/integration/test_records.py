"""Call records over real sockets: what a finished call's row holds, and that it outlives the server."""

from __future__ import annotations

import socket

import pytest
import requests
import structlog

from actors.messages import InjectFault
from audio.signals import silence
from service import BridgeService
from tests.integration.conftest import make_settings, wait_until
from tests.integration.test_call_flow import sim_call_for, speak_and_wait_for_answer, start_call

TOKEN = "records-admin-token"


def get_record(port, call_sid):
    return requests.get(
        f"http://127.0.0.1:{port}/admin/calls/{call_sid}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    )


@pytest.fixture(params=["sqlite", "postgres"])
def database_env(request, tmp_path) -> dict[str, str]:
    """Where the server keeps its records: an SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return {"DATABASE_PATH": str(tmp_path / "calls.db")}
    return {"DATABASE_URL": request.getfixturevalue("postgres_url")}


@pytest.fixture
def server_env(database_env):
    return {"ADMIN_TOKEN": TOKEN, **database_env}


def test_a_finished_calls_record_holds_outcome_duration_and_restarts_after_chaos(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    sim_call_for(vapi_sim)
    # A moment of line noise first: the VAD learns the floor from the call's first frames.
    caller.send_audio(silence(300, 8000))
    assert speak_and_wait_for_answer(caller)
    call = bridge.calls.get(caller.call_sid)
    before = call.children.get("vad")
    call.children.tell("vad", InjectFault("raise"))
    assert wait_until(lambda: call.children.get("vad") not in (None, before))
    caller.send_audio(silence(300, 8000))
    caller.send_stop()
    assert wait_until(lambda: bridge.calls.outcome(caller.call_sid) == "completed")
    assert bridge.records.flush(5)
    record = get_record(bridge.port, caller.call_sid).json()
    assert record["live"] is False
    assert record["outcome"] == "completed"
    assert record["restarts"]["vad"] == 1 and record["restarts"]["vapi"] == 0
    assert 1.0 < record["duration_s"] < 30.0
    assert record["turns"] >= 1 and record["turn_latency_p50_ms"] > 0
    assert record["frames_in"] > 50 and record["frames_out"] > 10
    assert record["cost_usd"] > 0
    history = requests.get(
        f"http://127.0.0.1:{bridge.port}/admin/history?limit=5", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    ).json()
    assert history["calls"][0]["call_sid"] == caller.call_sid


def test_records_survive_a_restart_of_the_server(bridge, vapi_sim, make_caller, database_env):
    caller = start_call(make_caller)
    sim_call_for(vapi_sim)
    caller.send_audio(silence(300, 8000))
    vapi_sim.calls[0].end_call()
    assert caller.closed.wait(3)
    assert wait_until(lambda: bridge.calls.outcome(caller.call_sid) == "assistant-ended")
    bridge.stop()  # a clean stop flushes the records
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    again = BridgeService(
        make_settings(listener.getsockname()[1], vapi_sim, ADMIN_TOKEN=TOKEN, **database_env),
        log=structlog.get_logger("test"),
        listener=listener,
    )
    again.start()
    try:
        record = get_record(again.port, caller.call_sid).json()
        assert record["outcome"] == "assistant-ended" and record["call_sid"] == caller.call_sid
    finally:
        again.stop()


@pytest.mark.parametrize("database_env", ["postgres"], indirect=True)
def test_a_postgres_outage_loses_no_live_call_and_its_record_is_written_when_the_server_is_back(
    bridge, vapi_sim, postgres_server, make_caller
):
    caller = start_call(make_caller)
    sim_call_for(vapi_sim)
    caller.send_audio(silence(300, 8000))
    postgres_server.stop()
    try:
        assert speak_and_wait_for_answer(caller)  # the call goes on with the database gone
        caller.send_stop()
        assert wait_until(lambda: bridge.calls.outcome(caller.call_sid) == "completed")
        assert wait_until(lambda: bridge.records.outages == 1, timeout=5)
        assert bridge.records.written == 0 and bridge.records.dropped == 0
        assert get_record(bridge.port, caller.call_sid).status_code == 503  # history unreadable, not wrong
        second = start_call(make_caller)  # and a new call is taken and bridged
        sim_call_for(vapi_sim, index=1)
        assert speak_and_wait_for_answer(second)
        second.send_stop()
        assert wait_until(lambda: bridge.calls.outcome(second.call_sid) == "completed")
    finally:
        postgres_server.start()
    assert bridge.records.flush(10)
    assert (bridge.records.written, bridge.records.dropped, bridge.records.healthy) == (2, 0, True)
    assert get_record(bridge.port, caller.call_sid).json()["outcome"] == "completed"
    assert get_record(bridge.port, second.call_sid).json()["outcome"] == "completed"
