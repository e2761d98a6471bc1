"""The web views with Flask's test client: what needs no socket, tested without one.

The calls registry is a small stand-in that records what the views ask of it; the rest
(signatures, TwiML, admission, tokens) is the real code.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog

from actors.registry import AfterStream
from calls.handoff import Handoff
from calls.outcome import Outcome
from links.twilio import SocketLimits
from observability.metrics import Metrics
from observability.ratelimit import LogLimiter
from protocols.signature import SignatureValidator
from settings import FallbackSettings
from web import WebContext, create_app
from web.admission import Admission

TOKEN = "views-test-auth-token"
PUBLIC = "https://bridge.example.com"
CALL_SID = "CA" + "ab" * 16


@dataclass
class FakeCalls:
    started: list[str] = field(default_factory=list)
    ended: dict[str, Outcome] = field(default_factory=dict)
    moving: dict[str, Handoff] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)
    peers: bool = False

    def peers_take_calls(self) -> bool:
        return self.peers

    def ended_before(self, call_sid: str) -> bool:
        return call_sid in self.ended

    def admit(self, call_sid: str, *, resume: bool = False) -> str:
        (self.resumed if resume else self.started).append(call_sid)
        return "sealed-ticket-" + "x" * 600  # longer than one <Parameter> may carry

    def outcome(self, call_sid: str) -> Outcome | None:
        return self.ended.get(call_sid)

    def after_stream(self, call_sid: str) -> AfterStream:
        return AfterStream(outcome=self.ended.get(call_sid), resume=self.moving.get(call_sid))

    def live(self) -> list[Any]:
        return [object()] * len(self.started)


def make_client(**overrides: Any) -> tuple[Any, FakeCalls, Metrics]:
    calls, metrics = FakeCalls(), Metrics()
    log = structlog.get_logger("views-test")
    values: dict[str, Any] = {
        "public_url": PUBLIC,
        "validator": SignatureValidator(TOKEN),
        "calls": calls,
        "metrics": metrics,
        "fallback": FallbackSettings(say="Sorry.", dial=None),
        "log": log,
        "log_limiter": LogLimiter(log),
        "socket_limits": SocketLimits(max_message_bytes=65536, idle_timeout_s=5, frames_per_s=200, bytes_per_s=65536),
        "media_start_timeout_s": 5.0,
        "admission": Admission(lambda: len(calls.started), max_calls=None),
    }
    values.update(overrides)
    app = create_app(WebContext(**values))
    return app.test_client(), calls, metrics


def signed_post(client: Any, path: str, params: dict[str, str]) -> Any:
    signature = SignatureValidator(TOKEN).sign(PUBLIC + path, params)
    return client.post(path, data=params, headers={"X-Twilio-Signature": signature})


def test_a_signed_incoming_webhook_admits_the_call_and_answers_connect_stream_with_its_ticket():
    client, calls, _ = make_client()
    response = signed_post(client, "/voice/incoming", {"CallSid": CALL_SID, "From": "+14155550100"})
    assert response.status_code == 200 and response.mimetype == "text/xml"
    stream = ET.fromstring(response.data).find("Connect/Stream")  # noqa: S314 - our own TwiML
    assert stream is not None and stream.get("url") == f"wss://bridge.example.com/media/{CALL_SID}"
    parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert list(parameters) == ["callSid", "ticket", "ticket1"]
    assert parameters["ticket"] + parameters["ticket1"] == "sealed-ticket-" + "x" * 600
    assert calls.started == [CALL_SID]


def test_an_unsigned_webhook_is_refused_and_counted_without_starting_anything():
    client, calls, metrics = make_client()
    assert client.post("/voice/incoming", data={"CallSid": CALL_SID}).status_code == 403
    assert calls.started == []
    assert metrics.value("bridge_malformed_inputs_total", source="webhook", kind="bad_signature") == 1


def test_a_webhook_for_a_call_that_ended_is_a_replay_and_hangs_up():
    client, calls, metrics = make_client()
    calls.ended[CALL_SID] = Outcome.COMPLETED
    response = signed_post(client, "/voice/incoming", {"CallSid": CALL_SID})
    assert response.status_code == 200 and b"<Hangup" in response.data and b"<Stream" not in response.data
    assert calls.started == []
    assert metrics.value("bridge_malformed_inputs_total", source="webhook", kind="replay") == 1


def test_a_full_server_answers_the_fallback_and_is_not_ready():
    client, calls, metrics = make_client(admission=Admission(lambda: 1, max_calls=1))
    response = signed_post(client, "/voice/incoming", {"CallSid": CALL_SID})
    assert b"<Say>Sorry.</Say>" in response.data and calls.started == []
    assert client.get("/readyz").status_code == 503
    assert metrics.value("bridge_calls_total", outcome="refused") == 1


@pytest.mark.parametrize("peers", [True, False], ids=["fleet", "alone"])
def test_a_draining_node_still_starts_a_call_when_another_node_can_take_its_stream(peers):
    admission = Admission(lambda: 0, max_calls=None)
    admission.draining = True
    client, calls, _ = make_client(admission=admission)
    calls.peers = peers
    response = signed_post(client, "/voice/incoming", {"CallSid": CALL_SID})
    assert (b"<Stream" in response.data) is peers
    assert (b"<Say>Sorry.</Say>" in response.data) is not peers
    assert calls.started == ([CALL_SID] if peers else [])
    assert client.get("/readyz").status_code == 503  # the load balancer still sends it nothing new


def test_a_draining_node_passes_a_new_call_on_where_its_proxy_can():
    admission = Admission(lambda: 0, max_calls=None)
    admission.draining = True
    client, calls, metrics = make_client(admission=admission)
    calls.peers = True
    params = {"CallSid": CALL_SID}
    signature = SignatureValidator(TOKEN).sign(PUBLIC + "/voice/incoming", params)
    response = client.post("/voice/incoming", data=params,
                           headers={"X-Twilio-Signature": signature, "X-Bridge-Pass-On": "1"})
    assert response.status_code == 503 and calls.started == []
    assert metrics.value("bridge_passed_on_total", request="webhook", reason="draining") == 1


@pytest.mark.parametrize(
    ("outcome", "hangs_up"),
    [(Outcome.COMPLETED, True), (Outcome.ASSISTANT_ENDED, True), (Outcome.GAVE_UP, False), (None, False)],
)
def test_after_stream_hangs_up_only_when_the_conversation_ended(outcome, hangs_up):
    client, calls, _ = make_client()
    if outcome is not None:
        calls.ended[CALL_SID] = outcome
    response = signed_post(client, "/voice/after-stream", {"CallSid": CALL_SID})
    assert (b"<Hangup" in response.data) is hangs_up
    assert (b"<Say>" in response.data) is not hangs_up


def test_after_stream_of_a_moving_call_connects_a_new_stream_for_it_with_a_resume_ticket():
    client, calls, _ = make_client()
    calls.moving[CALL_SID] = Handoff(call_sid=CALL_SID, from_node="node-a")
    response = signed_post(client, "/voice/after-stream", {"CallSid": CALL_SID})
    stream = ET.fromstring(response.data).find("Connect/Stream")  # noqa: S314 - our own TwiML
    assert stream is not None and stream.get("url") == f"wss://bridge.example.com/media/{CALL_SID}"
    assert ET.fromstring(response.data).find("Connect").get("action") == PUBLIC + "/voice/after-stream"  # noqa: S314
    assert calls.resumed == [CALL_SID] and calls.started == []
    assert b"<Hangup" not in response.data and b"<Say>" not in response.data


def test_a_webhook_body_that_is_not_a_form_is_refused():
    client, _, _ = make_client()
    response = client.post("/voice/incoming", data=b'{"CallSid": "x"}', content_type="application/json",
                           headers={"X-Twilio-Signature": "x"})
    assert response.status_code == 415


def test_the_media_route_without_an_upgrade_is_a_400():
    client, _, _ = make_client()
    assert client.get(f"/media/{CALL_SID}").status_code == 400
    assert client.get(f"//media/{CALL_SID}").status_code == 404  # no slash merging


def test_admin_and_dashboard_are_absent_without_a_token_and_need_it_with_one():
    client, _, _ = make_client()
    assert client.get("/admin/calls").status_code == 404
    assert client.get("/dashboard").status_code == 404
    client, _, _ = make_client(admin_token="sesame")
    assert client.get("/admin/calls").status_code == 401
    assert client.get("/admin/calls", headers={"Authorization": "Bearer wrong"}).status_code == 401
    page = client.get("/dashboard")
    assert page.status_code == 200 and "default-src 'none'" in page.headers["Content-Security-Policy"]


def test_metrics_behind_a_token_refuse_without_it():
    client, _, _ = make_client(metrics_token="scrape")
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape"}).status_code == 200
