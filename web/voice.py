"""Twilio's voice webhooks: the TwiML that connects a call to us, and what follows it.

Every request is checked against Twilio's signature over the URL built from
PUBLIC_URL (never from the Host header, which a client controls). A request without a
signature is refused before its body is read; one with a signature has its body, already
bounded in size and time by web/limits.py, parsed with a cap on the number of fields.

A call starts only from here: the TwiML carries the call's sealed ticket
(protocols/ticket.py) that the media socket must present in Twilio's `start`
(web/media.py), on whichever node it lands; a ticket takes one stream at most, and a
CallSid that already ended (on any node) is never started again, so a replayed webhook,
handshake or ticket starts nothing.
"""

from __future__ import annotations

from typing import NoReturn
from urllib.parse import parse_qsl

from flask import Blueprint, Response, abort, request
from werkzeug.datastructures import MultiDict

from calls.outcome import Outcome
from protocols.ticket import ticket_parameters
from protocols.twiml import (
    connect_stream_twiml,
    fallback_twiml,
    hangup_twiml,
    is_call_sid,
    media_stream_url,
)
from web import context
from web.admission import NEXT_NODE_HEADER, refusal_kind

__all__ = ["bp"]

# Twilio's voice webhooks carry about 30 fields; a form with more is not Twilio's.
_MAX_FIELDS = 200
_FORM_TYPE = "application/x-www-form-urlencoded"

bp = Blueprint("voice", __name__)


def _twiml(body: str) -> Response:
    return Response(body, status=200, mimetype="text/xml")


def _refuse(status: int, kind: str) -> NoReturn:
    ctx = context()
    ctx.metrics.malformed.labels(source="webhook", kind=kind).inc()
    ctx.log_limiter.warning("webhook_rejected", source=request.remote_addr or "?", kind=kind, path=request.path[:100])
    abort(status)


def _signed_params() -> MultiDict[str, str]:
    """The request's form fields, once its Twilio signature has been checked; else abort."""
    ctx = context()
    signature = request.headers.get("X-Twilio-Signature")
    if not signature:
        _refuse(403, "bad_signature")  # nothing of the body is read
    params: MultiDict[str, str] = MultiDict()
    if request.method == "POST" and request.content_length:
        if request.mimetype != _FORM_TYPE:
            _refuse(415, "bad_content_type")
        try:
            body = request.get_data(cache=False).decode("utf-8")
            params = MultiDict(parse_qsl(body, keep_blank_values=True, max_num_fields=_MAX_FIELDS))
        except (UnicodeDecodeError, ValueError):
            _refuse(400, "bad_form")
    url = ctx.public_url + request.full_path.rstrip("?") if request.query_string else ctx.public_url + request.path
    if not ctx.validator.validate_webhook(url, params, signature):
        _refuse(403, "bad_signature")
    return params


def _call_sid(params: MultiDict[str, str]) -> str:
    call_sid = params.get("CallSid")
    if not is_call_sid(call_sid):
        _refuse(400, "bad_call_sid")
    return str(call_sid)


@bp.post("/voice/incoming")
def incoming() -> Response:
    """A call arrived: create its VAPI call, and connect the stream with the call's ticket."""
    call_sid = _call_sid(_signed_params())
    ctx = context()
    if ctx.calls.ended_before(call_sid):
        # Twilio never asks again for a call that ended: this is a replay.
        ctx.metrics.malformed.labels(source="webhook", kind="replay").inc()
        ctx.log_limiter.warning("webhook_replay_refused", source=request.remote_addr or "?", kind="replay",
                                call_sid=call_sid)
        return _twiml(hangup_twiml())
    refusal = ctx.admission.refusal() if ctx.admission is not None else None
    passable = request.headers.get(NEXT_NODE_HEADER) == "1"
    if refusal == "draining" and ctx.calls.peers_take_calls() and not passable:
        # The stream may land on any node, and this one is about to close its listener: a
        # webhook that reached it still starts the call rather than costing it the fallback.
        # (A proxy that can pass it on had better: the VAPI socket this node would park for
        # the call is better opened by a node that stays.)
        refusal = None
    if refusal is not None and passable:
        ctx.log.info("call_passed_on", call_sid=call_sid, actor="webhook", reason=refusal)
        ctx.metrics.passed_on.labels(request="webhook", reason=refusal_kind(refusal)).inc()
        return Response("too busy for another call\n", status=503, mimetype="text/plain")
    if refusal is not None:
        # The caller hears an apology (or is put through) rather than ringing forever.
        ctx.log.warning("call_refused", call_sid=call_sid, actor="webhook", reason=refusal)
        ctx.metrics.calls.labels(outcome=Outcome.REFUSED.value).inc()
        return _twiml(fallback_twiml(say=ctx.fallback.say, dial=ctx.fallback.dial))
    ticket = ctx.calls.admit(call_sid)
    ctx.log.info("call_answered", call_sid=call_sid, actor="webhook")
    return _connect(call_sid, ticket)


def _connect(call_sid: str, ticket: str) -> Response:
    return _twiml(connect_stream_twiml(
        action_url=f"{context().public_url}/voice/after-stream",
        stream_url=media_stream_url(context().public_url, call_sid),
        parameters={"callSid": call_sid, **ticket_parameters(ticket)},
    ))


@bp.post("/voice/after-stream")
def after_stream() -> Response:
    """The stream ended: hang up if the conversation ended, resume a live call, else play the fallback.

    A live call whose stream ended without an outcome (its node handed it off, died, or
    lost Twilio's socket) gets a new `<Connect><Stream>` with a fresh ticket, on whichever
    node takes it (docs/twilio-handoff.md).
    """
    call_sid = _call_sid(_signed_params())
    ctx = context()
    decision = ctx.calls.after_stream(call_sid)
    outcome = decision.outcome
    if outcome is not None and outcome.hangs_up:
        return _twiml(hangup_twiml())
    if decision.resume is not None:
        ctx.log.info("call_resuming", call_sid=call_sid, actor="webhook", reason=decision.resume.reason,
                     from_node=decision.resume.from_node, resumes=decision.resume.resumes)
        return _connect(call_sid, ctx.calls.admit(call_sid, resume=True))
    ctx.log.info("fallback_served", call_sid=call_sid, actor="webhook", outcome=outcome.value if outcome else "unknown")
    return _twiml(fallback_twiml(say=ctx.fallback.say, dial=ctx.fallback.dial))
