"""The admin API over real HTTP: off without a token, bearer-protected, chaos on demand."""

from __future__ import annotations

import pytest
import requests

from tests.integration.conftest import wait_until
from tests.integration.test_call_flow import sim_call_for, start_call

TOKEN = "admin-secret-token"


def admin(bridge, method, path, token=TOKEN, **kw):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, f"http://127.0.0.1:{bridge.port}/admin{path}", headers=headers, timeout=5, **kw)


def test_the_admin_api_is_off_without_a_token(bridge):
    assert admin(bridge, "GET", "/calls").status_code == 404


@pytest.mark.parametrize("server_env", [{"ADMIN_TOKEN": TOKEN}])
def test_the_admin_api_needs_the_bearer_token(bridge):
    assert admin(bridge, "GET", "/calls", token=None).status_code == 401
    assert admin(bridge, "GET", "/calls", token="wrong").status_code == 401
    assert admin(bridge, "GET", "/calls").json() == {"node": bridge.calls.node_id, "calls": []}


@pytest.mark.parametrize("server_env", [{"ADMIN_TOKEN": TOKEN}])
def test_live_calls_are_listed_with_their_actor_trees(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    sim_call_for(vapi_sim)
    assert wait_until(lambda: bridge.calls.get(caller.call_sid).state.stream_sid is not None)
    (listed,) = admin(bridge, "GET", "/calls").json()["calls"]
    assert listed["call_sid"] == caller.call_sid
    assert listed["stream_sid"] == caller.stream_sid
    assert listed["node"] == bridge.calls.node_id
    assert isinstance(listed["started_at"], float)
    assert set(listed["actors"]) == {"twilio", "vapi", "codec", "vad"}
    assert all(a == {"state": "running", "restarts": 0} for a in listed["actors"].values())


@pytest.mark.parametrize("server_env", [{"ADMIN_TOKEN": TOKEN}])
def test_chaos_requests_are_checked(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    sim_call_for(vapi_sim)
    path = f"/calls/{caller.call_sid}/chaos"
    assert admin(bridge, "POST", path, data="not json").status_code == 400
    assert admin(bridge, "POST", path, json={"actor": "db", "fault": "raise"}).status_code == 400
    assert admin(bridge, "POST", path, json={"actor": "vad", "fault": "explode"}).status_code == 400
    assert admin(bridge, "POST", path, json={"actor": "codec", "fault": "sever"}).status_code == 400
    missing = "/calls/CA" + "0" * 32 + "/chaos"
    assert admin(bridge, "POST", missing, json={"actor": "vad", "fault": "raise"}).status_code == 404


@pytest.mark.parametrize("server_env", [{"ADMIN_TOKEN": TOKEN}])
def test_an_injected_fault_shows_as_a_restart_in_the_listing(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    sim_call_for(vapi_sim)
    response = admin(bridge, "POST", f"/calls/{caller.call_sid}/chaos", json={"actor": "vad", "fault": "raise"})
    assert response.status_code == 202
    assert wait_until(
        lambda: admin(bridge, "GET", "/calls").json()["calls"][0]["actors"]["vad"]
        == {"state": "running", "restarts": 1}
    )
    assert bridge.metrics.value("bridge_chaos_faults_total", actor="vad", fault="raise") == 1


@pytest.mark.parametrize("server_env", [{"ADMIN_TOKEN": TOKEN}])
def test_the_event_stream_sends_snapshots_of_live_calls(bridge, vapi_sim, make_caller):
    import json

    caller = start_call(make_caller)
    sim_call_for(vapi_sim)
    with requests.get(
        f"http://127.0.0.1:{bridge.port}/admin/stream",
        headers={"Authorization": f"Bearer {TOKEN}"},
        stream=True,
        timeout=5,
    ) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        lines = response.iter_lines(decode_unicode=True)
        assert next(lines) == "event: snapshot"
        data = json.loads(next(lines).removeprefix("data: "))
    (call,) = data["calls"]
    assert call["call_sid"] == caller.call_sid
    assert call["supervisor"]["strategy"] == "one_for_one"
    assert set(call["actors"]) == {"twilio", "vapi", "codec", "vad"}
    assert data["finished"] == []
    assert admin(bridge, "GET", "/stream", token="nope").status_code == 401
