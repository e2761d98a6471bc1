"""The Twilio REST stand-in: what api.twilio.com answers to `POST .../Calls.json`, then the answered call's webhook."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from urllib.parse import parse_qsl

import gevent.pool
import pytest
import requests
from flask import Flask, Response, request
from gevent.pywsgi import WSGIServer
from twilio.request_validator import RequestValidator

from links.twilio_rest import OutboundCallError, OutboundErrorKind, TwilioDialer
from sims.twilio_rest import TwilioRestConfig, TwilioRestSimulator

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "stand-in-auth-token-0123456789ab"
TO, FROM = "+15551234567", "+15557654321"


@pytest.fixture
def stand_in() -> Iterator[TwilioRestSimulator]:
    sim = TwilioRestSimulator(TwilioRestConfig(account_sid=SID, auth_token=TOKEN, answer_calls=False))
    sim.start()
    yield sim
    sim.stop()


def calls_url(sim: TwilioRestSimulator, account: str = SID) -> str:
    return f"{sim.base_url}/2010-04-01/Accounts/{account}/Calls.json"


def post(sim, form, auth=(SID, TOKEN), account=SID):
    return requests.post(calls_url(sim, account), data=form, auth=auth, timeout=5)


GOOD = {"To": TO, "From": FROM, "Url": "https://bridge.example.com/voice/incoming"}


def test_a_call_is_created_with_twilios_answer_and_the_request_is_kept(stand_in):
    response = post(stand_in, GOOD)
    assert response.status_code == 201
    body = response.json()
    assert body["sid"].startswith("CA") and len(body["sid"]) == 34
    assert body["status"] == "queued" and body["direction"] == "outbound-api"
    assert (body["to"], body["from"], body["account_sid"]) == (TO, FROM, SID)
    assert body["uri"] == f"/2010-04-01/Accounts/{SID}/Calls/{body['sid']}.json"
    (kept,) = stand_in.requests
    assert (kept.username, kept.password, kept.path_account_sid) == (SID, TOKEN, SID)
    assert kept.form == GOOD and kept.status == 201 and kept.call_sid == body["sid"]
    assert body["sid"] in stand_in.calls


@pytest.mark.parametrize(
    "auth, account",
    [(None, SID), ((SID, "wrong-token"), SID), (("AC" + "f" * 32, TOKEN), SID), ((SID, TOKEN), "AC" + "f" * 32)],
)
def test_without_the_accounts_basic_auth_the_answer_is_401_20003(stand_in, auth, account):
    response = post(stand_in, GOOD, auth=auth, account=account)
    assert response.status_code == 401
    assert response.json() == {"code": 20003, "message": "Authenticate", "status": 401,
                               "more_info": "https://www.twilio.com/docs/errors/20003"}
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert stand_in.calls == {}


@pytest.mark.parametrize(
    "change, code",
    [({"To": ""}, 21201), ({"From": ""}, 21213), ({"To": "5551234567"}, 21211), ({"To": "+0123"}, 21211),
     ({"From": "+1 555 765"}, 21212), ({"Url": ""}, 21205), ({"Url": "/voice/incoming"}, 21205),
     ({"Method": "GET"}, 21200)],
)
def test_bad_fields_are_refused_with_twilios_error_codes(stand_in, change, code):
    response = post(stand_in, {**GOOD, **change})
    assert response.status_code == 400
    assert response.json()["code"] == code and response.json()["status"] == 400
    assert stand_in.calls == {}


def test_the_twilio_library_through_the_dialer_creates_a_call_here(stand_in):
    dialer = TwilioDialer(account_sid=SID, auth_token=TOKEN, from_number=FROM,
                          public_url="https://bridge.example.com", api_base_url=stand_in.base_url)
    placed = dialer.place(TO)
    assert placed.status == "queued" and placed.call_sid in stand_in.calls
    (kept,) = stand_in.requests
    assert kept.form["Url"] == "https://bridge.example.com/voice/incoming"
    assert (kept.username, kept.password) == (SID, TOKEN)


def test_an_injected_failure_answers_the_next_valid_request_only(stand_in):
    stand_in.fail_next_create(503, 20500, "Internal Server Error")
    dialer = TwilioDialer(account_sid=SID, auth_token=TOKEN, from_number=FROM,
                          public_url="https://bridge.example.com", api_base_url=stand_in.base_url)
    with pytest.raises(OutboundCallError) as info:
        dialer.place(TO)
    assert info.value.kind is OutboundErrorKind.REJECTED
    assert (info.value.twilio_status, info.value.twilio_code) == (503, 20500)
    assert TOKEN not in str(info.value)
    assert dialer.place(TO).call_sid in stand_in.calls


# --- the answered call: the signed webhook for the new CallSid ---


class WebhookCatcher:
    """Takes the voice webhook, checks its signature, and answers TwiML without a stream."""

    def __init__(self) -> None:
        self.forms: list[dict[str, str]] = []
        self.signature_ok: list[bool] = []
        self.signatures: list[str] = []
        self.hosts: list[str] = []
        self._handlers = gevent.pool.Pool()
        app = Flask(__name__)
        app.add_url_rule("/voice/incoming", "incoming", self._incoming, methods=["POST"])
        self.server = WSGIServer(("127.0.0.1", 0), app, spawn=self._handlers, log=None)

    def _incoming(self) -> Response:
        form = dict(parse_qsl(request.get_data(as_text=True), keep_blank_values=True))
        url = f"http://127.0.0.1:{self.server.server_port}{request.full_path.rstrip('?')}"
        signature = request.headers.get("X-Twilio-Signature", "")
        self.forms.append(form)
        self.signatures.append(signature)
        self.signature_ok.append(RequestValidator(TOKEN).validate(url, form, signature))
        self.hosts.append(request.host)
        return Response("<Response><Hangup/></Response>", mimetype="text/xml")


@pytest.fixture
def catcher() -> Iterator[WebhookCatcher]:
    catcher = WebhookCatcher()
    catcher.server.start()
    yield catcher
    catcher.server.stop(timeout=1)


def test_the_answered_call_posts_the_signed_outbound_api_webhook_for_its_call_sid(catcher):
    sim = TwilioRestSimulator(TwilioRestConfig(account_sid=SID, auth_token=TOKEN, answer_delay_s=0.0))
    sim.start()
    try:
        url = f"http://127.0.0.1:{catcher.server.server_port}/voice/incoming?leg=1"
        response = post(sim, {**GOOD, "Url": url})
        assert response.status_code == 201
        call = sim.calls[response.json()["sid"]]
        assert call.done.wait(10)
    finally:
        sim.stop()
    (form,) = catcher.forms
    assert catcher.signature_ok == [True]
    assert form["CallSid"] == call.call_sid and form["AccountSid"] == SID
    assert form["Direction"] == "outbound-api" and form["CallStatus"] == "in-progress"
    assert (form["From"], form["To"], form["Caller"], form["Called"]) == (FROM, TO, FROM, TO)
    assert form["ApiVersion"] == "2010-04-01"
    # No <Connect><Stream> in that TwiML: the callee's side reports the call as failed.
    assert call.report is not None and not call.report.ok
    assert "Stream" in (call.report.failure or "")


def test_server_url_sends_the_webhook_elsewhere_but_signs_the_calls_url(catcher):
    sim = TwilioRestSimulator(TwilioRestConfig(
        account_sid=SID, auth_token=TOKEN, answer_delay_s=0.0,
        server_url=f"http://127.0.0.1:{catcher.server.server_port}",
    ))
    sim.start()
    try:
        response = post(sim, {**GOOD, "Url": "https://bridge.example.com/voice/incoming"})
        assert sim.calls[response.json()["sid"]].done.wait(10)
    finally:
        sim.stop()
    assert catcher.hosts == ["bridge.example.com"]
    # Signed as Twilio signs it: for the call's Url as given, not for where it was delivered.
    (form,) = catcher.forms
    expected = RequestValidator(TOKEN).compute_signature("https://bridge.example.com/voice/incoming", form)
    assert catcher.signatures == [expected]


def test_basic_auth_is_the_account_sid_and_token_in_the_header(stand_in):
    header = "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
    response = requests.post(calls_url(stand_in), data=GOOD, headers={"Authorization": header}, timeout=5)
    assert response.status_code == 201
