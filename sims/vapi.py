"""VAPI simulator: `POST /call` and the `vapi.websocket` transport, over real loopback sockets.

It speaks VAPI's wire protocol (docs/vapi-websocket-transport.md) with its own small JSON handling, so a
bug in our `protocols/` package cannot hide behind a mirrored simulator. This module is
the HTTP side and the server; each call's assistant is a `SimCall` (`sims/vapi_call.py`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import gevent.pool
from flask import Flask, Response, jsonify, request
from gevent.pywsgi import WSGIServer

from sims._wsserver import SimHandler, send_close_frame
from sims.vapi_call import CLOSE_POLICY, SimCall

__all__ = ["SimCall", "VapiSimConfig", "VapiSimulator"]

# Ended calls a recording simulator remembers, so even a long test run stays bounded.
_KEPT_WHEN_RECORDING = 1000

log = logging.getLogger(__name__)

_FIRST_MESSAGE_MODES = frozenset(
    {"assistant-speaks-first", "assistant-speaks-first-with-model-generated-message", "assistant-waits-for-user"}
)
# openapi: "Defaults to 16KHz raw pcm_s16le".
_DEFAULT_AUDIO_FORMAT = {"format": "pcm_s16le", "container": "raw", "sampleRate": 16000}
# How long stop() lets handlers (idle keep-alive HTTP connections) finish before killing them.
_STOP_GRACE_S = 1.0


@dataclass(frozen=True, kw_only=True)
class VapiSimConfig:
    """How the simulated assistant behaves; one config for every call of a simulator."""

    api_key: str | None = None
    reply_delay_ms: int = 300
    reply_ms: int = 1200
    reply_tone_hz: float | None = 440.0
    reply_dbfs: float = -16.0
    greeting_ms: int = 800
    end_after_turns: int | None = None
    send_realtime: bool = False
    speech_threshold_dbfs: float = -40.0
    end_of_utterance_ms: int = 400
    # False: the assistant talks on when the caller speaks over it and never sends
    # `user-interrupted`, so only the bridge's own barge-in can stop what the caller hears.
    interruptible: bool = True
    # False: utterances are heard (and `transcript`s sent) but never answered; benches
    # that script every assistant turn (`SimCall.turns`) use it.
    answers: bool = True
    # Keep everything each call received, for tests to inspect. Off for the simulator
    # embedded in a long-running server, where it would grow by 32 KB a second a call;
    # ended calls are then forgotten too.
    record: bool = True


def _error(status: int, message: str | list[str]) -> tuple[Response, int]:
    # The NestJS error shape api.vapi.ai answers with.
    return jsonify({"message": message, "error": HTTPStatus(status).phrase, "statusCode": status}), status


def _audio_problem(audio: Any) -> str | None:
    if not isinstance(audio, dict):
        return "transport.audioFormat must be an object"
    audio_format, rate = audio.get("format"), audio.get("sampleRate")
    if audio_format not in ("pcm_s16le", "mulaw"):
        return "transport.audioFormat.format must be one of the following values: pcm_s16le, mulaw"
    if audio.get("container", "raw") != "raw":
        return "transport.audioFormat.container must be one of the following values: raw"
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or rate != int(rate):
        return "transport.audioFormat.sampleRate must be a number"
    if audio_format == "mulaw" and rate != 8000:
        return "transport.audioFormat.sampleRate must be 8000 for mulaw"
    if audio_format == "pcm_s16le" and not 8000 <= rate <= 48000:
        return "transport.audioFormat.sampleRate must be between 8000 and 48000"
    return None


def _validate_create(body: Any) -> tuple[list[str], dict[str, Any]]:
    """Problems with a `POST /call` body, and the settings of the call it asks for."""
    if not isinstance(body, dict):
        return ["body must be a JSON object"], {}
    problems: list[str] = []
    assistant_id = body.get("assistantId")
    if not (isinstance(assistant_id, str) and assistant_id) and not isinstance(body.get("assistant"), dict):
        problems.append("assistantId must be a string")
    if "phoneNumber" in body or "phoneNumberId" in body:
        problems.append("phoneNumber and phoneNumberId are not permitted with the vapi.websocket transport")
    transport = body.get("transport")
    if not isinstance(transport, dict) or transport.get("provider") != "vapi.websocket":
        problems.append("transport.provider must be one of the following values: vapi.websocket")
        transport = {}
    audio = transport.get("audioFormat", _DEFAULT_AUDIO_FORMAT)
    if problem := _audio_problem(audio):
        problems.append(problem)
    overrides = body.get("assistantOverrides", {})
    mode = overrides.get("firstMessageMode") if isinstance(overrides, dict) else None
    if not isinstance(overrides, dict):
        problems.append("assistantOverrides must be an object")
    elif mode is not None and mode not in _FIRST_MESSAGE_MODES:
        allowed = ", ".join(sorted(_FIRST_MESSAGE_MODES))
        problems.append(f"assistantOverrides.firstMessageMode must be one of the following values: {allowed}")
    if problems:
        return problems, {}
    return [], {
        "assistant_id": assistant_id if isinstance(assistant_id, str) else "transient",
        "audio_format": audio["format"],
        "sample_rate": int(audio["sampleRate"]),
        "first_message_mode": mode,
    }


class VapiSimulator:
    """A fake api.vapi.ai: `POST /call` plus each call's websocket, on one loopback port."""

    def __init__(self, config: VapiSimConfig = VapiSimConfig(), host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        self._host = host
        self._port = port
        self._calls: dict[str, SimCall] = {}
        self._fail_next = 0
        self._fail_status = 503
        self._refuse = False
        self._redirect: tuple[str, int] | None = None
        # Opt-in hook (benches): called with each SimCall as it is created, before its
        # socket opens, e.g. to set its `on_audio`. None: nothing is called.
        self.on_call: Callable[[SimCall], None] | None = None
        self._group = gevent.pool.Group()
        # The server spawns its connection handlers here, so stop() can join and kill them.
        self._handlers = gevent.pool.Pool()
        self.create_attempts: list[float] = []  # monotonic time of every POST /call
        self._server: WSGIServer | None = None
        self._app = Flask(__name__)
        self._app.add_url_rule("/call", "create_call", self._create_call, methods=["POST"])
        self._app.add_url_rule("/<call_id>/transport", "transport", self._transport, websocket=True)

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Listen (port 0 picks a free one) and serve from this simulator's greenlet group."""
        if self._server is not None:
            raise RuntimeError("VapiSimulator already started")
        self._server = WSGIServer(
            (self._host, self._port), self._app, handler_class=SimHandler, spawn=self._handlers, log=None
        )
        self._server.start()  # binds now, so base_url is valid when start() returns
        port = self._server.server_port
        if port is None:  # None only for a server on a non-TCP (e.g. Unix) socket
            raise RuntimeError("VapiSimulator is not bound to a TCP port")
        self._port = port
        self._group.spawn(self._server.serve_forever)
        log.info("vapi_sim_started url=%s", self.base_url)

    def stop(self) -> None:
        """Close every call, stop the server, and leave no greenlet or socket behind."""
        server = self._server
        if server is None:
            return
        for call in self.calls:
            call._shutdown()  # noqa: SLF001 - SimCall is this simulator's own, one module over
        server.stop(timeout=_STOP_GRACE_S)
        self._group.join(timeout=1.0)
        self._group.kill(timeout=1.0)
        self._server = None
        log.info("vapi_sim_stopped")

    def __enter__(self) -> VapiSimulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- what tests read -------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self._public_host}:{self._port}"

    @property
    def calls(self) -> list[SimCall]:
        """Every call created, in creation order."""
        return list(self._calls.values())

    def call(self, call_id: str) -> SimCall:
        """The call with this id (KeyError if there is none)."""
        return self._calls[call_id]

    # ---- faults ----------------------------------------------------------------------

    def _forget_ended(self) -> None:
        """Without recording, drop calls that ended; with it, keep a bounded history."""
        keep = _KEPT_WHEN_RECORDING if self.config.record else 0
        ended = [call_id for call_id, call in self._calls.items() if call.ended.is_set()]
        for call_id in ended[: max(0, len(ended) - keep)]:
            del self._calls[call_id]

    def fail_next_creates(self, count: int, status: int = 503) -> None:
        """The next `count` `POST /call` requests answer `status`."""
        self._fail_next = count
        self._fail_status = status

    def refuse_creates(self, refuse: bool) -> None:
        """While True, every `POST /call` answers 503."""
        self._refuse = refuse

    def redirect_creates(self, location: str | None, status: int = 302) -> None:
        """While `location` is set, every `POST /call` answers `status` with that Location (abuse benches)."""
        self._redirect = (location, status) if location is not None else None

    # ---- views (handler greenlets) ---------------------------------------------------

    @property
    def _public_host(self) -> str:
        return "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host  # noqa: S104 - a comparison, not a bind

    def _create_call(self) -> tuple[Response, int]:
        self.create_attempts.append(time.monotonic())
        # Cloudflare sits in front of api.vapi.ai and rejects an empty User-Agent first.
        if not request.headers.get("User-Agent", "").strip():
            return Response("error code: 1010", mimetype="text/plain"), 403
        if self._refuse:
            return _error(503, "Service Unavailable")
        if self._redirect is not None:
            location, status = self._redirect
            return Response("", status=status, headers={"Location": location}), status
        if self._fail_next > 0:
            self._fail_next -= 1
            return _error(self._fail_status, "Simulated failure")
        key = self.config.api_key
        if key is not None and request.headers.get("Authorization", "") != f"Bearer {key}":
            return _error(401, "Invalid Key. Hot tip, you may be using the private key instead of the public key.")
        body = request.get_json(silent=True)
        problems, settings = _validate_create(body)
        if problems or not isinstance(body, dict):  # a body that is not an object is always a problem
            return _error(400, problems)
        call_id = str(uuid.uuid4())
        call = SimCall(call_id=call_id, config=self.config, **settings)
        self._forget_ended()
        self._calls[call_id] = call
        if self.on_call is not None:
            self.on_call(call)
        log.info("vapi_sim_call_created call_id=%s format=%s", call_id, call.audio_format)
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        created = {
            "id": call_id,
            "assistantId": body.get("assistantId"),
            "type": "vapi.websocketCall",
            "createdAt": now,
            "updatedAt": now,
            "orgId": "00000000-0000-4000-8000-000000000000",
            "cost": 0,
            "status": "queued",
            "transport": {
                "provider": "vapi.websocket",
                "websocketCallUrl": f"ws://{self._public_host}:{self._port}/{call_id}/transport",
            },
        }
        return jsonify(created), 201

    def _transport(self, call_id: str) -> str:
        ws = request.environ.get("wsgi.websocket")
        if ws is None:
            return ""
        call = self._calls.get(call_id)
        if call is None or call.connected.is_set() or self._server is None:
            # Unknown, or a second connection: reconnecting to a websocketCallUrl is not
            # something VAPI documents (docs/vapi-websocket-transport.md), so the sim refuses it.
            send_close_frame(ws, CLOSE_POLICY, "unknown call")
            ws.closed = True
            return ""
        call._serve(ws)  # noqa: SLF001 - blocks for the socket's life: returning would close it
        return ""
