"""Outbound calls end to end: POST /admin/calls and `run.py dial` → the Twilio REST stand-in → the bridge.

The stand-in answers the REST request like api.twilio.com, then plays Twilio's part of the
call: the signed `outbound-api` webhook for the new CallSid, the TwiML's media stream, a
short script. So a passing test has crossed the whole path an outbound call takes.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator

import pytest
import requests

from sims.twilio_rest import TwilioRestConfig, TwilioRestSimulator
from tests.integration.conftest import AUTH_TOKEN, wait_until
from tests.test_run import ROOT, TOKEN, free_port, start_server, stop_server

ADMIN = "outbound-admin-token"
SID = "AC" + "0123456789abcdef" * 2
FROM = "+15557654321"
TO = "+15551234567"


@pytest.fixture
def twilio_rest() -> Iterator[TwilioRestSimulator]:
    sim = TwilioRestSimulator(TwilioRestConfig(account_sid=SID, auth_token=AUTH_TOKEN))
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def outbound_env(twilio_rest) -> dict[str, str]:
    return {"TWILIO_ACCOUNT_SID": SID, "TWILIO_FROM_NUMBER": FROM, "TWILIO_API_BASE_URL": twilio_rest.base_url}


@pytest.fixture
def server_env(outbound_env) -> dict[str, str]:
    return {"ADMIN_TOKEN": ADMIN, **outbound_env}


@pytest.fixture
def stand_in(bridge, twilio_rest) -> TwilioRestSimulator:
    # The bridge's PUBLIC_URL (https://bridge.test:<port>) resolves nowhere: deliver to its loopback port.
    twilio_rest.config = dataclasses.replace(twilio_rest.config, server_url=f"http://127.0.0.1:{bridge.port}")
    return twilio_rest


def dial(bridge, body, token=ADMIN):
    return requests.post(f"http://127.0.0.1:{bridge.port}/admin/calls", json=body,
                         headers={"Authorization": f"Bearer {token}"}, timeout=15)


def record(bridge, call_sid):
    return requests.get(f"http://127.0.0.1:{bridge.port}/admin/calls/{call_sid}",
                        headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5)


def test_an_admin_call_is_placed_through_twilio_and_runs_through_the_bridge(bridge, vapi_sim, stand_in):
    response = dial(bridge, {"to": TO})
    assert response.status_code == 202, response.text
    placed = response.json()
    call_sid = placed["call_sid"]
    assert placed == {"call_sid": call_sid, "status": "queued", "to": TO, "from": FROM}
    assert response.headers["Location"] == f"/admin/calls/{call_sid}"

    # What reached "Twilio": the account's basic auth, the caller ID, and the bridge's own webhook.
    (created,) = stand_in.requests
    assert (created.username, created.password, created.path_account_sid) == (SID, AUTH_TOKEN, SID)
    assert created.form["Url"] == bridge.settings.public_url + "/voice/incoming"
    assert created.form.get("Method", "POST") == "POST"
    assert (created.form["To"], created.form["From"]) == (TO, FROM)

    # Then the call itself: answered, a VAPI call made, audio both ways, ended with a record.
    call = stand_in.calls[call_sid]
    assert call.done.wait(30)
    report = call.report
    assert report is not None and report.ok, report
    assert report.turns and report.audio_ms_received > 500
    assert len(vapi_sim.calls) == 1 and vapi_sim.calls[0].received_pcm16().size > 8000
    assert wait_until(lambda: bridge.calls.outcome(call_sid) == "completed", timeout=5)
    assert bridge.records.flush(5)
    kept = record(bridge, call_sid).json()
    assert kept["live"] is False and kept["outcome"] == "completed"
    assert kept["turns"] >= 1 and kept["frames_in"] > 50 and kept["frames_out"] > 10


def test_from_in_the_body_replaces_the_configured_caller_id(bridge, stand_in):
    response = dial(bridge, {"to": TO, "from": "+442071838750"})
    assert response.status_code == 202
    assert response.json()["from"] == "+442071838750"
    assert stand_in.requests[0].form["From"] == "+442071838750"
    assert stand_in.calls[response.json()["call_sid"]].done.wait(30)


@pytest.mark.parametrize("body", [None, [], {"to": 15551234567}, {"from": FROM}, {"to": TO, "from": 1}])
def test_a_body_without_a_to_string_is_400(bridge, stand_in, body):
    response = requests.post(f"http://127.0.0.1:{bridge.port}/admin/calls", data="not json" if body is None else None,
                             json=body, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5)
    assert response.status_code == 400
    assert '"to"' in response.json()["error"]
    assert stand_in.requests == []


@pytest.mark.parametrize("body, field", [({"to": "5551234567"}, "to="), ({"to": "+1 555 123 4567"}, "to="),
                                         ({"to": TO, "from": "555"}, "from=")])
def test_a_number_that_is_not_e164_is_400_and_twilio_is_not_asked(bridge, stand_in, body, field):
    response = dial(bridge, body)
    assert response.status_code == 400
    assert response.json()["kind"] == "invalid" and field in response.json()["error"]
    assert "E.164" in response.json()["error"]
    assert stand_in.requests == []


def test_the_route_needs_the_admin_token(bridge, stand_in):
    assert dial(bridge, {"to": TO}, token="wrong").status_code == 401
    assert stand_in.requests == []


def test_a_twilio_error_is_a_502_with_twilios_status_and_code(bridge, stand_in, capsys):
    stand_in.fail_next_create(400, 21211, f"The 'To' number {TO} is not a valid phone number.")
    response = dial(bridge, {"to": TO})
    assert response.status_code == 502
    body = response.json()
    assert body["kind"] == "rejected" and body["twilio_status"] == 400 and body["twilio_code"] == 21211
    assert "not a valid phone number" in body["error"]
    assert stand_in.calls == {}
    assert AUTH_TOKEN not in response.text and AUTH_TOKEN not in "".join(capsys.readouterr())


@pytest.mark.parametrize("server_env", [{"ADMIN_TOKEN": ADMIN}])
def test_without_any_outbound_setting_the_route_is_a_503_naming_them(bridge):
    response = dial(bridge, {"to": TO})
    assert response.status_code == 503
    assert "TWILIO_ACCOUNT_SID is unset" in response.json()["error"]
    assert "TWILIO_FROM_NUMBER is unset" in response.json()["error"]


@pytest.mark.parametrize("server_env", [{"ADMIN_TOKEN": ADMIN, "TWILIO_ACCOUNT_SID": SID, "TWILIO_FROM_NUMBER": FROM,
                                         "TWILIO_API_BASE_URL": f"http://127.0.0.1:{free_port()}"}])
def test_twilio_not_answering_is_a_502(bridge):
    response = dial(bridge, {"to": TO})
    assert response.status_code == 502
    assert response.json()["kind"] == "unreachable" and "unreachable" in response.json()["error"]


@pytest.mark.parametrize("server_env", [{"ADMIN_TOKEN": ADMIN, "TWILIO_ACCOUNT_SID": SID}])
def test_missing_settings_are_a_503_naming_them(bridge):
    response = dial(bridge, {"to": TO})
    assert response.status_code == 503
    assert response.json()["kind"] == "not_configured"
    assert "TWILIO_FROM_NUMBER is unset" in response.json()["error"]
    # A "from" in the body stands in for the setting.
    assert "TWILIO_FROM_NUMBER" not in dial(bridge, {"to": TO, "from": FROM}).json().get("error", "")


# --- run.py dial: the command line, against a real server process ---


def run_dial(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {"PATH": "/usr/bin:/bin", **env}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), "dial", *args], cwd=tmp_path, env=environ,
                          capture_output=True, text=True, timeout=60)


def test_run_dial_prints_the_call_sid_and_the_call_runs_through_a_server_process(tmp_path, twilio_rest):
    shared = {"TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_ACCOUNT_SID": SID, "TWILIO_FROM_NUMBER": FROM,
              "TWILIO_API_BASE_URL": twilio_rest.base_url}
    twilio_rest.config = dataclasses.replace(twilio_rest.config, auth_token=TOKEN)
    process, base = start_server(tmp_path, ADMIN_TOKEN=ADMIN, LOG_FORMAT="json", DRAIN_TIMEOUT_S="1", **shared)
    try:
        # The server's PUBLIC_URL is its default, http://127.0.0.1:<its port>: dial builds the same Url.
        result = run_dial(tmp_path, TO, PUBLIC_URL=base, **shared)
        assert result.returncode == 0, result.stderr
        call_sid = result.stdout.strip()
        assert call_sid.startswith("CA") and len(call_sid) == 34 and call_sid in twilio_rest.calls
        (created,) = twilio_rest.requests
        assert created.form["Url"] == f"{base}/voice/incoming" and created.password == TOKEN
        call = twilio_rest.calls[call_sid]
        assert call.done.wait(30)
        assert call.report is not None and call.report.ok, call.report
        assert call.report.turns

        def finished() -> bool:
            kept = requests.get(f"{base}/admin/calls/{call_sid}", headers={"Authorization": f"Bearer {ADMIN}"},
                                timeout=5)
            return kept.status_code == 200 and kept.json()["live"] is False
        assert wait_until(finished, timeout=10)
    finally:
        stop_server(process)
    log = (tmp_path / "server.log").read_text()
    assert call_sid in log and TOKEN not in log
    assert TOKEN not in result.stdout + result.stderr


def dial_env(twilio_rest, **extra: str) -> dict[str, str]:
    return {"TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_ACCOUNT_SID": SID, "TWILIO_FROM_NUMBER": FROM,
            "TWILIO_API_BASE_URL": twilio_rest.base_url, **extra}


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


@pytest.mark.parametrize("unset", ["TWILIO_FROM_NUMBER", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"])
def test_run_dial_without_a_setting_names_it_and_exits_2(tmp_path, twilio_rest, unset):
    result = run_dial(tmp_path, TO, **{**dial_env(twilio_rest), unset: ""})
    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith("dial failed: outbound calls are not configured:") and f"{unset} is unset" in line
    assert twilio_rest.requests == []


def test_run_dial_with_a_bad_number_exits_2_without_asking_twilio(tmp_path, twilio_rest):
    result = run_dial(tmp_path, "555-1234", **dial_env(twilio_rest))
    assert result.returncode == 2
    assert "E.164" in one_line(result)
    assert twilio_rest.requests == []


def test_run_dial_with_a_bad_from_setting_is_a_configuration_error(tmp_path, twilio_rest):
    result = run_dial(tmp_path, TO, **dial_env(twilio_rest, TWILIO_FROM_NUMBER="555-0100"))
    assert result.returncode == 2
    assert one_line(result).startswith("configuration error: TWILIO_FROM_NUMBER='555-0100' is not valid")


def test_run_dial_refused_by_twilio_exits_1_without_the_token(tmp_path, twilio_rest):
    wrong = "a-wrong-token-that-must-not-be-printed"
    result = run_dial(tmp_path, TO, **dial_env(twilio_rest, TWILIO_AUTH_TOKEN=wrong))
    assert result.returncode == 1
    line = one_line(result)
    assert "HTTP 401, error 20003" in line and wrong not in line
    assert twilio_rest.calls == {}


def test_run_dial_to_a_real_twilio_with_a_loopback_public_url_is_refused(tmp_path):
    env = {"TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_ACCOUNT_SID": SID, "TWILIO_FROM_NUMBER": FROM}
    result = run_dial(tmp_path, TO, **env)  # the default API base: api.twilio.com, never reached
    assert result.returncode == 2
    assert "PUBLIC_URL http://127.0.0.1:3000 is a loopback" in one_line(result)
