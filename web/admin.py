"""The admin API: live calls, their actor trees, chaos on demand, and outbound calls.

Any node answers for the whole fleet: live calls are this node's (fresh) and the other
nodes' (as their last heartbeat published them), each with its `node`; a chaos request
for a call held by another node is queued for that node, which applies it.

Off (404) unless ADMIN_TOKEN is set; then every request needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterator

import gevent
from flask import Blueprint, Response, abort, jsonify, request, stream_with_context
from flask.typing import ResponseReturnValue

from chaos.faults import check_fault
from links.twilio_rest import OutboundCallError
from observability.process import process_stats
from protocols.twiml import is_call_sid
from records import RecordsError
from web import context

__all__ = ["bp"]

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.before_request
def _authorize() -> None:
    token = context().admin_token
    if not token:
        abort(404)
    given = request.headers.get("Authorization", "")
    if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())):
        abort(401)


@bp.get("/calls")
def calls() -> ResponseReturnValue:
    """Every live call of the fleet with its actor tree and its node."""
    ctx = context()
    return jsonify({"node": ctx.calls.node_id, "calls": ctx.calls.fleet_snapshots()})


_DIAL_USAGE = 'body must be JSON like {"to": "+15551234567"}, with an optional "from" (default TWILIO_FROM_NUMBER)'


@bp.post("/calls")
def place_call() -> ResponseReturnValue:
    """Place an outbound call through Twilio; when answered it connects here like an inbound call.

    202 with the new CallSid (Twilio has queued the call); 400 for a bad body or number, 503
    when a setting outbound calls need is missing, 502 when Twilio refused or did not answer.
    """
    ctx = context()
    body = request.get_json(silent=True)
    to = body.get("to") if isinstance(body, dict) else None
    from_ = body.get("from") if isinstance(body, dict) else None
    if not isinstance(to, str) or not (from_ is None or isinstance(from_, str)):
        return jsonify({"error": _DIAL_USAGE, "kind": "invalid"}), 400
    if ctx.dialer is None:
        return jsonify({"error": "outbound calls are not available in this server", "kind": "not_configured"}), 503
    try:
        placed = ctx.dialer.place(to, from_)
    except OutboundCallError as exc:
        ctx.log.warning("outbound_call_failed", actor="admin", kind=exc.kind.value, error=str(exc),
                        twilio_status=exc.twilio_status, twilio_code=exc.twilio_code)
        return jsonify(exc.to_json()), exc.kind.http_status
    ctx.log.info("outbound_call_placed", call_sid=placed.call_sid, actor="admin", status=placed.status)
    return jsonify(placed.to_json()), 202, {"Location": f"/admin/calls/{placed.call_sid}"}


@bp.get("/calls/<call_sid>")
def call(call_sid: str) -> ResponseReturnValue:
    """One call: live, or finished (from the call records)."""
    ctx = context()
    live = ctx.calls.get(call_sid)
    if live is not None:
        return jsonify({"live": True, **live.snapshot(), "node": ctx.calls.node_id})
    elsewhere = next((c for c in ctx.calls.fleet_snapshots() if c.get("call_sid") == call_sid), None)
    if elsewhere is not None:
        return jsonify({**elsewhere, "live": True})
    try:
        record = ctx.records.get(call_sid) if ctx.records is not None else None
    except RecordsError:
        return jsonify({"error": "call records are unavailable"}), 503
    if record is None:
        abort(404)
    return jsonify({"live": False, **record.to_json()})


@bp.get("/history")
def history() -> ResponseReturnValue:
    """The latest finished calls, newest first."""
    ctx = context()
    limit = request.args.get("limit", default=50, type=int)
    try:
        records = ctx.records.latest(limit if limit is not None else 50) if ctx.records is not None else []
    except RecordsError:
        return jsonify({"error": "call records are unavailable"}), 503
    return jsonify({"calls": [record.to_json() for record in records]})


@bp.get("/process")
def process() -> ResponseReturnValue:
    """What a soak run watches for leaks: memory, greenlets, actors, live calls."""
    return jsonify(process_stats(context().calls))


@bp.post("/calls/<call_sid>/chaos")
def chaos(call_sid: str) -> ResponseReturnValue:
    """Inject one fault into one actor of a live call, on whichever node holds it."""
    ctx = context()
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return jsonify({"error": 'body must be JSON like {"actor": "vapi", "fault": "raise"}'}), 400
    actor, fault = body.get("actor"), body.get("fault")
    problem = check_fault(actor, fault)
    if problem is not None:
        return jsonify({"error": problem}), 400
    node = ctx.calls.inject_anywhere(call_sid, str(actor), str(fault)) if is_call_sid(call_sid) else None
    if node is None:
        return jsonify({"error": "no such live call (or that actor is restarting)"}), 404
    ctx.log.info("chaos_injected", call_sid=call_sid, actor="admin", target=actor, fault=fault, node=node)
    return jsonify({"call_sid": call_sid, "actor": actor, "fault": fault, "node": node}), 202


# How often the dashboard's stream sends a fresh picture: live enough to watch a
# restart happen, cheap enough for 200 calls (one JSON document per tick per viewer).
_STREAM_PERIOD_S = 0.5
_STREAM_FINISHED = 20


@bp.get("/stream")
def stream() -> ResponseReturnValue:
    """Server-sent events: a snapshot of live and recently finished calls every half second."""
    ctx = context()
    records = ctx.records

    def events() -> Iterator[str]:
        while True:
            try:
                finished = [r.to_json() for r in records.latest(_STREAM_FINISHED)] if records is not None else []
            except RecordsError:
                finished = []
            payload = {"node": ctx.calls.node_id, "calls": ctx.calls.fleet_snapshots(), "finished": finished}
            yield f"event: snapshot\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"
            gevent.sleep(_STREAM_PERIOD_S)

    return Response(
        stream_with_context(events()),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
