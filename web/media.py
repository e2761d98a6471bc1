"""Twilio's media socket: `/media/<CallSid>`.

The upgrade was allowed by the gate in web/server.py: canonical path, valid signature, a
call a webhook of the fleet admitted, with no socket yet. Before the socket takes the
call, Twilio's `start` must arrive within MEDIA_START_TIMEOUT_S and present the call's
ticket (`<Parameter>`s of the TwiML, which only Twilio saw): sealed by the fleet, for this
CallSid, unexpired, and not used by another socket (the registry claims the call in the
fleet's directory; the first claim wins). Only then does the call start on this node,
whichever node answered the webhook. The view then reads the socket for the call's whole
life, in its own greenlet: returning would close the socket under the caller. Each frame
is passed on undecoded; a bad frame costs a counter and a rate-limited log line.
"""

from __future__ import annotations

import contextlib

import gevent
from flask import Blueprint, request

from actors.call import CallContext
from actors.messages import TwilioFrameReceived, TwilioSocketAttached
from actors.registry import StreamRefused
from calls.handoff import STREAM_BROKEN
from calls.outcome import Outcome
from links.twilio import FrameTooLarge, TwilioSocket
from protocols.errors import ProtocolError
from protocols.twilio import Start, Stop, parse_event
from web import WebContext, context

__all__ = ["bp"]

bp = Blueprint("media", __name__)

# Only a `stop` event has this token (base64 payloads have no quotes): the reader, not
# TwilioActor, reports the caller's hang-up, so it is not lost with a mailbox when the
# actor is restarting.
_STOP_MARK = '"stop"'

# Twilio sends `connected` and then `start`; a few more frames of slack, no more.
_FRAMES_BEFORE_START = 4
# Frames waiting in TwilioActor's mailbox beyond this are dropped and counted: ten
# seconds of audio means the actor is stuck, and the mailbox must not grow without bound.
_MAILBOX_LIMIT = 500
# Socket ends that mean the peer misbehaved (counted), as opposed to hanging up.
_ABUSIVE_ENDS = frozenset({"protocol", "budget", "idle", "send_failed"})
# Socket ends with no `stop` and no close handshake: the stream broke under the call, and
# Twilio asks the action URL next (docs/twilio-handoff.md), so in a fleet the call moves on.
_BROKEN_ENDS = frozenset({"eof", "send_failed"})


class _Refused(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@bp.route("/media/<call_sid>", websocket=True)
def media(call_sid: str) -> tuple[str, int]:
    ctx = context()
    ws = request.environ.get("wsgi.websocket")
    if ws is None:
        return "a WebSocket upgrade is required\n", 400
    socket = TwilioSocket(ws, ctx.socket_limits)
    try:
        early, start = _await_start(socket, call_sid, ctx)
        call = _claim(socket, call_sid, ctx, start)
    except _Refused as refused:
        ctx.metrics.malformed.labels(source="media", kind=refused.kind).inc()
        ctx.log_limiter.warning(
            "media_socket_refused", source=request.remote_addr or "?", kind=refused.kind,
            call_sid=call_sid, end_reason=socket.end_reason,
        )
        socket.close(1008)
        _drain_until_closed(socket)
        socket.release()
        return "", 204
    supervisor = call.supervisor
    if supervisor is not None:
        # Broad on purpose: its supervisor may be restarting; the socket is the call's anyway.
        with contextlib.suppress(Exception):
            supervisor.tell(TwilioSocketAttached())
    for frame in early:  # `connected` and `start`, for TwilioActor as for any frame
        children = call.children
        if children is not None:
            children.tell_bounded("twilio", TwilioFrameReceived(frame, socket.received_ns), _MAILBOX_LIMIT)
    _read(socket, call, ctx)
    socket.release()
    return "", 204


def _await_start(socket: TwilioSocket, call_sid: str, ctx: WebContext) -> tuple[list[str | bytes], Start]:
    """The frames up to and including a `start` for this call, and that `start`; raises _Refused otherwise."""
    frames: list[str | bytes] = []
    deadline = gevent.Timeout(ctx.media_start_timeout_s)
    deadline.start()
    try:
        while len(frames) <= _FRAMES_BEFORE_START:
            try:
                frame = socket.receive()
            except FrameTooLarge:
                raise _Refused("oversize_before_start") from None
            if frame is None:
                raise _Refused("closed_before_start")
            frames.append(frame)
            try:
                event = parse_event(frame)
            except ProtocolError:
                raise _Refused("malformed_before_start") from None
            if isinstance(event, Start):
                if event.call_sid != call_sid:
                    raise _Refused("start_for_another_call")
                return frames, event
            if isinstance(event, Stop):
                raise _Refused("stop_before_start")
        raise _Refused("no_start")
    except gevent.Timeout as exc:
        if exc is not deadline:
            raise
        raise _Refused("start_timeout") from None
    finally:
        deadline.close()


def _claim(socket: TwilioSocket, call_sid: str, ctx: WebContext, start: Start) -> CallContext:
    """Start the call here around this socket if `start` presented the call's ticket."""
    try:
        return ctx.calls.take_stream(call_sid, dict(start.custom_parameters), socket)
    except StreamRefused as refused:
        # Twilio allows one bidirectional stream per call: a second one is not Twilio.
        raise _Refused(refused.kind) from None


def _drain_until_closed(socket: TwilioSocket) -> None:
    """Read (and drop) until the peer answers our close frame or the grace runs out."""
    while True:
        try:
            if socket.receive() is None:
                return
        except FrameTooLarge:
            continue


def _is_stop(frame: str | bytes) -> bool:
    try:
        return isinstance(parse_event(frame), Stop)
    except ProtocolError:
        return False


def _read(socket: TwilioSocket, call: CallContext, ctx: WebContext) -> None:
    """Read until the call ends; the reader reports the Twilio side's end (stop, or close) once."""
    log = call.log.bind(actor="media_socket")
    stop_mark = _STOP_MARK.encode()
    stopped = False
    while not call.ended.is_set():
        try:
            frame = socket.receive()
        except FrameTooLarge as exc:
            ctx.metrics.malformed.labels(source="twilio", kind="oversize").inc()
            ctx.log_limiter.warning("twilio_frame_malformed", source=call.call_sid, kind="oversize",
                                    call_sid=call.call_sid, size=exc.size)
            continue
        if frame is None:
            break
        # Looked up per frame: a restarted CallSupervisor brings a new child table.
        children = call.children
        if children is None or not children.tell_bounded(
            "twilio", TwilioFrameReceived(frame, socket.received_ns), _MAILBOX_LIMIT
        ):
            ctx.metrics.dropped.labels(reason="undelivered").inc()
        if (_STOP_MARK in frame if type(frame) is str else stop_mark in frame) and _is_stop(frame):
            stopped = True
            call.end(Outcome.COMPLETED, "caller hung up")
    reason = socket.end_reason or "closed"
    if reason in _ABUSIVE_ENDS:
        ctx.metrics.malformed.labels(source="media", kind=reason).inc()
        log.warning("media_socket_closed", code=socket.close_code, reason=reason, detail=socket.protocol_error)
    else:
        log.info("media_socket_closed", code=socket.close_code, reason=reason)
    if not stopped and reason in _BROKEN_ENDS and ctx.calls.hand_off(call, STREAM_BROKEN):
        return
    # The call's end, unless something (the caller's `stop`, usually) ended it first.
    call.end(Outcome.COMPLETED, "twilio socket closed" if reason in ("closed", "eof", "local") else
             f"twilio socket closed: {reason}")
