"""Twilio's webhooks over real HTTP against a running server."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

import requests

from protocols.signature import SignatureValidator
from protocols.ticket import ticket_from_parameters
from tests.integration.conftest import AUTH_TOKEN

CALL_SID = "CA" + "0123456789abcdef" * 2


def post(bridge, path, params, signature="auto", sign_url=None, headers=None):
    url = sign_url or bridge.settings.public_url + path
    headers = dict(headers or {})
    if signature == "auto":
        headers["X-Twilio-Signature"] = SignatureValidator(AUTH_TOKEN).sign(url, params)
    elif signature is not None:
        headers["X-Twilio-Signature"] = signature
    return requests.post(f"http://127.0.0.1:{bridge.port}{path}", data=params, headers=headers, timeout=5)


def test_incoming_answers_connect_stream_twiml_built_from_public_url(bridge, vapi_sim):
    response = post(bridge, "/voice/incoming", {"CallSid": CALL_SID, "From": "+14155550100"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/xml")
    root = ET.fromstring(response.text)  # noqa: S314 - our own TwiML
    connect = root.find("Connect")
    assert connect.get("action") == bridge.settings.public_url + "/voice/after-stream"
    stream = connect.find("Stream")
    host = bridge.settings.public_url.split("://")[1]
    assert stream.get("url") == f"wss://{host}/media/{CALL_SID}"
    parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    # The call's ticket, which the media socket must present in `start`: sealed, so
    # nothing of the VAPI call it carries is readable in the TwiML.
    ticket = ticket_from_parameters(parameters)
    assert parameters["callSid"] == CALL_SID and len(ticket) > 200
    assert vapi_sim.calls[0].call_id not in response.text and "ws://" not in response.text
    opened = bridge.calls._tickets.open(ticket, call_sid=CALL_SID, now=time.time())
    assert opened.vapi_call_id == vapi_sim.calls[0].call_id and opened.node_id == bridge.calls.node_id
    # The VAPI call was created while we answered (and, one process, its socket opened at
    # once); no actor runs until the stream comes.
    assert len(vapi_sim.calls) == 1 and vapi_sim.calls[0].connected.wait(5)
    assert bridge.calls.live() == []


def test_a_signature_over_the_url_without_its_port_is_accepted_as_twilio_computes_it(bridge):
    without_port = bridge.settings.public_url.rsplit(":", 1)[0] + "/voice/incoming"
    response = post(bridge, "/voice/incoming", {"CallSid": CALL_SID}, sign_url=without_port)
    assert response.status_code == 200 and "<Stream" in response.text


def test_a_missing_or_wrong_signature_is_refused_with_403(bridge):
    assert post(bridge, "/voice/incoming", {"CallSid": CALL_SID}, signature=None).status_code == 403
    assert post(bridge, "/voice/incoming", {"CallSid": CALL_SID}, signature="AAAA").status_code == 403
    # Signed for other parameters than the ones sent.
    forged = SignatureValidator(AUTH_TOKEN).sign(bridge.settings.public_url + "/voice/incoming", {"CallSid": "x"})
    assert post(bridge, "/voice/incoming", {"CallSid": CALL_SID}, signature=forged).status_code == 403
    assert bridge.calls.get(CALL_SID) is None


def test_the_host_header_cannot_change_the_signed_url(bridge):
    url = "https://evil.example/voice/incoming"
    params = {"CallSid": CALL_SID}
    headers = {"X-Twilio-Signature": SignatureValidator(AUTH_TOKEN).sign(url, params), "Host": "evil.example"}
    response = requests.post(f"http://127.0.0.1:{bridge.port}/voice/incoming", data=params, headers=headers, timeout=5)
    assert response.status_code == 403


def test_a_missing_or_malformed_call_sid_is_a_400(bridge):
    assert post(bridge, "/voice/incoming", {"From": "+1"}).status_code == 400
    assert post(bridge, "/voice/incoming", {"CallSid": "CA123"}).status_code == 400
    assert post(bridge, "/voice/incoming", {"CallSid": "CA" + "g" * 32}).status_code == 400


def test_after_stream_is_signed_too(bridge):
    assert post(bridge, "/voice/after-stream", {"CallSid": CALL_SID}, signature=None).status_code == 403


def test_after_stream_for_a_call_we_know_nothing_of_plays_the_fallback(bridge):
    response = post(bridge, "/voice/after-stream", {"CallSid": CALL_SID})
    assert response.status_code == 200
    root = ET.fromstring(response.text)  # noqa: S314 - our own TwiML
    assert root.find("Say").text == bridge.settings.fallback.say
    assert root.find("Hangup") is None
