"""Twilio's voice webhooks: the TwiML that connects a call to us, and what follows it.

Every request is checked against Twilio's signature over the URL built from
PUBLIC_URL (never from the Host header, which a client controls).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, abort, current_app, request

from protocols.twiml import connect_stream_twiml, fallback_twiml, hangup_twiml, is_call_sid, media_stream_url

__all__ = ["bp"]

bp = Blueprint("voice", __name__)

# Outcomes after which the caller should simply be hung up on: the conversation ended.
_HANG_UP_OUTCOMES = frozenset({"assistant-ended", "completed"})


def _context() -> Any:
    return current_app.extensions["bridge"]


def _twiml(body: str) -> Response:
    return Response(body, status=200, mimetype="text/xml")


def _check_signature() -> None:
    ctx = _context()
    url = ctx.public_url + request.full_path.rstrip("?") if request.query_string else ctx.public_url + request.path
    params = request.form if request.method == "POST" else {}
    if not ctx.validator.validate_webhook(url, params, request.headers.get("X-Twilio-Signature")):
        ctx.metrics.malformed.labels(source="webhook", kind="bad_signature").inc()
        ctx.log.warning("webhook_signature_rejected", path=request.path)
        abort(403)


def _call_sid() -> str:
    call_sid = request.values.get("CallSid")
    if not is_call_sid(call_sid):
        _context().metrics.malformed.labels(source="webhook", kind="bad_call_sid").inc()
        abort(400, description="CallSid missing or not a call SID")
    return str(call_sid)


@bp.post("/voice/incoming")
def incoming() -> Response:
    """A call arrived: start its actors (so VAPI is dialling already) and connect the stream."""
    _check_signature()
    call_sid = _call_sid()
    ctx = _context()
    refusal = ctx.admission.refusal() if ctx.admission is not None else None
    if refusal is not None:
        # The caller hears an apology (or is put through) rather than ringing forever.
        ctx.log.warning("call_refused", call_sid=call_sid, reason=refusal)
        ctx.metrics.calls.labels(outcome="refused").inc()
        return _twiml(fallback_twiml(say=ctx.fallback.say, dial=ctx.fallback.dial))
    ctx.calls.start_call(call_sid)
    twiml = connect_stream_twiml(
        action_url=f"{ctx.public_url}/voice/after-stream",
        stream_url=media_stream_url(ctx.public_url, call_sid),
        parameters={"callSid": call_sid},
    )
    ctx.log.info("call_answered", call_sid=call_sid)
    return _twiml(twiml)


@bp.post("/voice/after-stream")
def after_stream() -> Response:
    """The stream ended: hang up if the conversation ended, else play the fallback."""
    _check_signature()
    call_sid = _call_sid()
    ctx = _context()
    outcome = ctx.calls.outcome(call_sid)
    if outcome in _HANG_UP_OUTCOMES:
        return _twiml(hangup_twiml())
    ctx.log.info("fallback_served", call_sid=call_sid, outcome=outcome or "unknown")
    return _twiml(fallback_twiml(say=ctx.fallback.say, dial=ctx.fallback.dial))
