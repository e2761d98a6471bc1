"""The VAPI relay: `/relay/vapi/<CallSid>`, where another node of the fleet reaches a VAPI call
whose socket this node opened at the call's webhook (docs/vapi-relay.md).

The gate in web/server.py let the upgrade through only with the fleet's relay token for
this CallSid and a VAPI socket parked here for it; gevent-websocket has answered 101 (no
extension, no subprotocol). From here on the connection is not a WebSocket this node
speaks: the registry splices its bytes to the VAPI socket's, unparsed, until either side
closes. A client sends nothing before the 101 (RFC 6455 §4.1), so the handshake's reader
holds none of its bytes and the socket alone carries them.
"""

from __future__ import annotations

from flask import Blueprint, request

from protocols.ticket import RELAY_PATH_PREFIX
from web import context

__all__ = ["bp"]

bp = Blueprint("relay", __name__)


@bp.route(RELAY_PATH_PREFIX + "<call_sid>", websocket=True)
def relay(call_sid: str) -> tuple[str, int]:
    ctx = context()
    ws = request.environ.get("wsgi.websocket")
    if ws is None:
        return "a WebSocket upgrade is required\n", 400
    # Its bytes are VAPI's and the other node's now: gevent-websocket must not add a close frame.
    ws.closed = True
    ended = ctx.calls.relay(call_sid, ws.handler.socket)
    if ended is None:
        # Another handshake took the socket a moment ago, or it expired: the other node
        # sees its link close at once and makes a new VAPI call.
        ctx.metrics.malformed.labels(source="media_handshake", kind="relay_taken").inc()
        ws.handler.socket.close()
        return "", 204
    ctx.log.info("vapi_relay_ended", call_sid=call_sid, actor="relay", reason=ended.reason,
                 to_peer_bytes=ended.to_peer, to_vapi_bytes=ended.to_vapi, to_peer_chunks=ended.chunks_to_peer,
                 to_vapi_chunks=ended.chunks_to_vapi, seconds=round(ended.seconds, 1))
    return "", 204
