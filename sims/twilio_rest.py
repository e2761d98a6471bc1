"""A loopback stand-in for Twilio's REST API: `POST .../Calls.json`, and then the call itself.

It answers the way api.twilio.com does (docs/twilio-outbound-calls.md): HTTP basic auth
with the account SID and auth token; the form fields `To`, `From` and `Url`; a 201 with
the Call resource's JSON (`status` queued, `direction` outbound-api); Twilio's error JSON
(`code`, `message`, `more_info`, `status`) otherwise. Then it plays Twilio's part of the
call: once "answered", a `SimulatedCaller` posts the signed voice webhook for the new
CallSid to `Url` with `Direction=outbound-api`, follows the TwiML, opens the signed media
stream and runs its script: the callee talking to the assistant, through the bridge.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

import gevent
import gevent.event
import gevent.pool
from flask import Flask, Response, jsonify, request
from gevent.pywsgi import WSGIServer

from sims.caller import CallerConfig, SimulatedCaller
from sims.report import CallReport
from sims.script import CallerScript, Pause, Say

__all__ = ["CallRequest", "OutboundSimCall", "TwilioRestConfig", "TwilioRestSimulator"]

log = logging.getLogger(__name__)

_API_VERSION = "2010-04-01"
# How long stop() lets handlers (idle keep-alive connections) finish before killing them.
_STOP_GRACE_S = 1.0
_MAX_FIELDS = 100
_E164_DIGITS = range(2, 16)  # "+" then a country code, at most 15 digits in all


def _short_script() -> CallerScript:
    """The callee says one thing after hearing the greeting, then listens to the answer."""
    return CallerScript((Pause(ms=600), Say(ms=800), Pause(ms=300)))


@dataclass(frozen=True, kw_only=True)
class TwilioRestConfig:
    """The account the stand-in accepts, and how its calls go once answered."""

    account_sid: str
    auth_token: str
    # Where the webhook and the media stream are sent; None: the host of the call's `Url`.
    # Tests whose PUBLIC_URL names no real host (https://bridge.test:port) set the bridge's
    # loopback address here; the webhook and stream are still signed with `Url`'s host.
    server_url: str | None = None
    script: CallerScript = field(default_factory=_short_script)
    answer_delay_s: float = 0.05  # between the 201 and the callee answering (the webhook)
    call_timeout_s: float = 30.0
    answer_calls: bool = True  # False: only answer the REST request (the call never connects)


@dataclass(frozen=True, kw_only=True)
class CallRequest:
    """One `POST .../Calls.json` as received, and what it was answered."""

    path_account_sid: str
    username: str | None
    password: str | None = field(repr=False)
    form: Mapping[str, str]
    status: int
    call_sid: str | None  # when a call was created


@dataclass(kw_only=True)
class OutboundSimCall:
    """A call the stand-in created, and how its simulated callee fared."""

    call_sid: str
    to: str
    from_: str
    url: str
    caller: SimulatedCaller | None = None
    report: CallReport | None = None
    done: gevent.event.Event = field(default_factory=gevent.event.Event)


class _AnsweringCaller(SimulatedCaller):
    """A SimulatedCaller whose webhook is the outbound call's: its path and its form fields."""

    def __init__(self, config: CallerConfig, *, path: str, params: Mapping[str, str]) -> None:
        super().__init__(config)
        self._path = path
        self._params = dict(params)

    def post_webhook(
        self,
        path: str | None = None,
        extra_params: Mapping[str, str] | None = None,
        signature: str | None = "auto",
    ) -> tuple[int, str]:
        return super().post_webhook(path or self._path, {**self._params, **(extra_params or {})}, signature)


def _twilio_error(status: int, code: int, message: str) -> tuple[Response, int]:
    # The shape api.twilio.com answers errors with.
    body = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status}
    return jsonify(body), status


def _is_e164(number: str) -> bool:
    return number.startswith("+") and number[1:].isdigit() and number[1:2] != "0" and len(number) - 1 in _E164_DIGITS


class TwilioRestSimulator:
    """A fake api.twilio.com for outbound calls, on one loopback port."""

    def __init__(self, config: TwilioRestConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        self._host = host
        self._port = port
        self.requests: list[CallRequest] = []
        self.calls: dict[str, OutboundSimCall] = {}
        self._fail_next: list[tuple[int, int, str]] = []
        self._group = gevent.pool.Group()  # the server and the calls' greenlets
        self._handlers = gevent.pool.Pool()  # the server's connection handlers
        self._server: WSGIServer | None = None
        self._app = Flask(__name__)
        self._app.add_url_rule(
            f"/{_API_VERSION}/Accounts/<account_sid>/Calls.json", "create_call", self._create_call, methods=["POST"]
        )

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Listen (port 0 picks a free one); `base_url` is valid once this returns."""
        if self._server is not None:
            raise RuntimeError("TwilioRestSimulator already started")
        self._server = WSGIServer((self._host, self._port), self._app, spawn=self._handlers, log=None)
        self._server.start()
        port = self._server.server_port
        if port is None:
            raise RuntimeError("TwilioRestSimulator is not bound to a TCP port")
        self._port = port
        log.info("twilio_rest_sim_started url=%s", self.base_url)

    def stop(self) -> None:
        """Hang up every call, stop the server, and leave no greenlet or socket behind."""
        server = self._server
        if server is None:
            return
        for call in self.calls.values():
            if call.caller is not None:
                call.caller.close()
        self._group.kill(timeout=2.0)
        server.stop(timeout=_STOP_GRACE_S)
        self._server = None
        log.info("twilio_rest_sim_stopped")

    def __enter__(self) -> TwilioRestSimulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}"

    # ---- what tests use ----------------------------------------------------------------

    def fail_next_create(self, status: int, code: int, message: str) -> None:
        """The next valid `POST .../Calls.json` is answered with this Twilio error instead."""
        self._fail_next.append((status, code, message))

    def wait_for_call(self, timeout_s: float) -> OutboundSimCall | None:
        """The first call created within `timeout_s`, or None."""
        deadline = time.monotonic() + timeout_s
        while not self.calls and time.monotonic() < deadline:
            gevent.sleep(0.01)
        return next(iter(self.calls.values()), None)

    # ---- the view (handler greenlets) ------------------------------------------------

    def _create_call(self, account_sid: str) -> tuple[Response, int]:
        auth = request.authorization
        username = auth.username if auth is not None and auth.type == "basic" else None
        password = auth.password if auth is not None and auth.type == "basic" else None
        form = {key: value for key, value in list(request.form.items(multi=False))[:_MAX_FIELDS]}
        answer, call_sid = self._answer(account_sid, username, password, form)
        self.requests.append(CallRequest(path_account_sid=account_sid, username=username, password=password,
                                         form=form, status=answer[1], call_sid=call_sid))
        return answer

    def _answer(
        self, account_sid: str, username: str | None, password: str | None, form: dict[str, str]
    ) -> tuple[tuple[Response, int], str | None]:
        config = self.config
        if not (username == config.account_sid and password == config.auth_token and account_sid == username):
            response, status = _twilio_error(401, 20003, "Authenticate")
            response.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
            return (response, status), None
        to, from_, url = form.get("To", ""), form.get("From", ""), form.get("Url", "")
        if not to:
            return _twilio_error(400, 21201, "No 'To' number is specified"), None
        if not from_:
            return _twilio_error(400, 21213, "No 'From' number is specified"), None
        if not _is_e164(to):
            return _twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number."), None
        if not _is_e164(from_):
            return _twilio_error(400, 21212, f"The 'From' number {from_} is not a valid phone number."), None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # Twiml and ApplicationSid are Twilio's other ways; the bridge uses Url, and so does this stand-in.
            return _twilio_error(400, 21205, f"Url is not a valid URL: {url}"), None
        if form.get("Method", "POST").upper() != "POST":
            return _twilio_error(400, 21200, "this stand-in follows Url with POST only"), None
        if self._fail_next:
            return _twilio_error(*self._fail_next.pop(0)), None
        call_sid = "CA" + secrets.token_hex(16)
        call = OutboundSimCall(call_sid=call_sid, to=to, from_=from_, url=url)
        self.calls[call_sid] = call
        if config.answer_calls:
            self._group.spawn(self._run_call, call)
        else:
            call.done.set()
        return (jsonify(self._resource(call)), 201), call_sid

    def _resource(self, call: OutboundSimCall) -> dict[str, Any]:
        """The Call resource as api.twilio.com returns it on creation (the fields that matter, and a few more)."""
        account = self.config.account_sid
        now = formatdate(usegmt=True).replace("GMT", "+0000")
        uri = f"/{_API_VERSION}/Accounts/{account}/Calls/{call.call_sid}"
        return {
            "account_sid": account, "annotation": None, "answered_by": None, "api_version": _API_VERSION,
            "caller_name": None, "date_created": now, "date_updated": now, "direction": "outbound-api",
            "duration": None, "end_time": None, "forwarded_from": None, "from": call.from_,
            "from_formatted": call.from_, "group_sid": None, "parent_call_sid": None, "phone_number_sid": None,
            "price": None, "price_unit": "USD", "queue_time": "0", "sid": call.call_sid, "start_time": None,
            "status": "queued", "to": call.to, "to_formatted": call.to, "trunk_sid": None, "uri": f"{uri}.json",
            "subresource_uris": {
                "notifications": f"{uri}/Notifications.json", "recordings": f"{uri}/Recordings.json",
                "payments": f"{uri}/Payments.json", "events": f"{uri}/Events.json",
                "siprec": f"{uri}/Siprec.json", "streams": f"{uri}/Streams.json",
                "user_defined_message_subscriptions": f"{uri}/UserDefinedMessageSubscriptions.json",
                "user_defined_messages": f"{uri}/UserDefinedMessages.json",
            },
        }

    # ---- the call (its own greenlet) ---------------------------------------------------

    def _run_call(self, call: OutboundSimCall) -> None:
        """Answer: the signed webhook for this CallSid, the TwiML's stream, the script."""
        try:
            gevent.sleep(self.config.answer_delay_s)
            parts = urlsplit(call.url)
            public_url = f"{parts.scheme}://{parts.netloc}"
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            params = {
                "Direction": "outbound-api",
                "CallStatus": "in-progress",  # Twilio asks for the TwiML once the callee answered
                "From": call.from_,
                "Caller": call.from_,
                "To": call.to,
                "Called": call.to,
            }
            caller = _AnsweringCaller(
                CallerConfig(
                    server_url=self.config.server_url or public_url,
                    public_url=public_url,
                    auth_token=self.config.auth_token,
                    account_sid=self.config.account_sid,
                    call_sid=call.call_sid,
                    script=self.config.script,
                ),
                path=path,
                params=params,
            )
            call.caller = caller
            call.report = caller.run(timeout_s=self.config.call_timeout_s)
            log.info("twilio_rest_sim_call_ended call_sid=%s ok=%s", call.call_sid, call.report.ok)
        finally:
            call.done.set()
