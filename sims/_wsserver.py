"""gevent-websocket 0.10.1 fixed up for the simulators: one send lock, real close codes.

Three defects of 0.10.1 matter here: pongs are written from
inside `receive()` without any lock, `close(code)` drops the code, and every close is
answered with a code-less frame, even one we started.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from typing import Any

import gevent.lock
from geventwebsocket.exceptions import WebSocketError
from geventwebsocket.handler import WebSocketHandler
from geventwebsocket.websocket import WebSocket

__all__ = ["GuardedWebSocket", "SimHandler", "send_close_frame"]

log = logging.getLogger(__name__)


# gevent-websocket ships no types, so its classes are Any to mypy.
class GuardedWebSocket(WebSocket):  # type: ignore[misc]
    """gevent-websocket's socket with the handler's send lock around every frame it writes."""

    __slots__ = ()

    def send_frame(self, message: Any, opcode: int) -> None:
        with self.handler.send_lock:
            super().send_frame(message, opcode)

    def handle_close(self, header: Any, payload: bytes) -> None:
        # Echo the peer's code, and only when the close was the peer's idea.
        handler = self.handler
        handler.peer_close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        with handler.send_lock:
            if not handler.close_sent:
                handler.close_sent = True
                with contextlib.suppress(WebSocketError):
                    super().send_frame(bytes(payload[:2]), self.OPCODE_CLOSE)
        # `closed` is one of the base class's __slots__, which mypy cannot see through the Any base.
        self.closed = True  # type: ignore[misc]


class SimHandler(WebSocketHandler):  # type: ignore[misc]  # untyped base, as above
    """Upgrades to `GuardedWebSocket` and keeps the per-connection send state."""

    close_sent = False
    peer_close_code: int | None = None

    def upgrade_connection(self) -> Any:
        result = super().upgrade_connection()
        websocket = getattr(self, "websocket", None)
        if websocket is not None:
            self.send_lock = gevent.lock.RLock()
            # WebSocket has __slots__, so the fix-up is a subclass with the same layout.
            websocket.__class__ = GuardedWebSocket
        return result

    def log_request(self) -> None:
        # The base class logs every HTTP request at INFO on a logger of its own.
        log.debug("sim_http_request %s", self.requestline)


def send_close_frame(ws: WebSocket, code: int, reason: str = "") -> bool:
    """Send a close frame with `code` (once per socket); False if one was already sent."""
    handler = ws.handler
    with handler.send_lock:
        if handler.close_sent or ws.closed:
            return False
        handler.close_sent = True
        ws.send_frame(struct.pack("!H", code) + reason.encode(), WebSocket.OPCODE_CLOSE)
    return True
