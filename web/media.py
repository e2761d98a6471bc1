"""Twilio's media socket: `/media/<CallSid>`.

The handshake's signature was checked before the upgrade (web/server.py). The view
hands the socket to the call and then reads it for the call's whole life, in its own
greenlet: returning would close the socket under the caller. Each frame is passed on
undecoded; a bad frame costs a log line and a counter, never the loop.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, current_app, request

from actors.messages import TwilioFrameReceived, TwilioSocketAttached, TwilioSocketClosed
from protocols.twiml import is_call_sid
from protocols.errors import ProtocolError
from protocols.twilio import MAX_FRAME_BYTES, Stop, parse_event
from web.twilio_socket import FrameTooLarge, TwilioSocket

__all__ = ["bp"]

bp = Blueprint("media", __name__)

# Only a `stop` event has this token: base64 payloads have no quotes.
_STOP_MARK = '"stop"'


@bp.route("/media/<call_sid>", websocket=True)
def media(call_sid: str) -> tuple[str, int]:
    ctx: Any = current_app.extensions["bridge"]
    ws = request.environ.get("wsgi.websocket")
    if ws is None:
        return "a WebSocket upgrade is required\n", 400
    if not is_call_sid(call_sid):
        socket = TwilioSocket(ws, MAX_FRAME_BYTES)
        socket.close(1008)
        socket.release()
        return "", 204
    call = ctx.calls.get(call_sid) or ctx.calls.start_call(call_sid)
    log = call.log.bind(actor="media_socket")
    socket = TwilioSocket(ws, MAX_FRAME_BYTES)
    if call.socket is not None:
        # Twilio allows one bidirectional stream per call; a second one is not Twilio.
        log.warning("duplicate_media_socket")
        socket.close(1008)
        socket.release()
        return "", 204
    call.socket = socket
    try:
        call.supervisor.tell(TwilioSocketAttached())
    except Exception:  # noqa: BLE001 - its supervisor is restarting; the socket is the call's anyway
        pass
    _read(socket, call, ctx)
    socket.release()
    return "", 204


def _note_hang_up(frame: str | bytes, call: Any) -> None:
    """Twilio's `stop`, recorded in the call as well as sent to TwilioActor.

    A message can die with an actor that fails before handling it (or meet no actor
    while one restarts); the call's outcome cannot, and the call supervisor ends the
    call once one is set.
    """
    try:
        event = parse_event(frame)
    except ProtocolError:
        return
    if isinstance(event, Stop):
        call.set_outcome("completed", "caller hung up")


def _read(socket: TwilioSocket, call: Any, ctx: Any) -> None:
    log = call.log.bind(actor="media_socket")
    while not call.ended.is_set():
        try:
            frame = socket.receive()
        except FrameTooLarge as exc:
            ctx.metrics.malformed.labels(source="twilio", kind="oversize").inc()
            log.warning("twilio_frame_malformed", kind="oversize", size=exc.size)
            continue
        if frame is None:
            break
        # Looked up per frame: a restarted CallSupervisor brings a new child table.
        call.children.tell("twilio", TwilioFrameReceived(frame, time.monotonic_ns()))
        if _STOP_MARK in frame if isinstance(frame, str) else _STOP_MARK.encode() in frame:
            _note_hang_up(frame, call)
    log.info("media_socket_closed", code=socket.close_code)
    # Recorded in the call before it is told: a supervisor restarting right now would
    # lose the message, but sees the outcome when it starts.
    call.set_outcome("completed", "twilio socket closed")
    if not call.ended.is_set():
        try:
            call.supervisor.tell(TwilioSocketClosed())
        except Exception:  # noqa: BLE001 - the call is already gone
            pass
