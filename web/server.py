"""The gevent WSGI server with WebSocket support, and the handshake's signature check.

gevent-websocket completes the 101 upgrade before Flask sees the request, so a bad
signature could only be answered by closing an open socket. The handler below checks
Twilio's signature on `/media/...` first and answers 403 without upgrading.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gevent.pywsgi import WSGIServer
from geventwebsocket.handler import WebSocketHandler

from protocols.signature import SignatureValidator
from protocols.twiml import media_stream_url

__all__ = ["make_server"]

_MEDIA_PREFIX = "/media/"
_ANY_CALL_SID = "CA" + "0" * 32


def make_server(
    listener: tuple[str, int] | Any,
    app: Any,
    *,
    public_url: str,
    validator: SignatureValidator,
    on_rejected: Callable[[str], None] | None = None,
    error_log: Any = None,
) -> WSGIServer:
    """A WSGIServer whose WebSocket upgrades on /media/ need a valid Twilio signature."""
    # What Twilio was told to dial, less "/media/<sid>": wss://host[:port][/prefix].
    wss_base = media_stream_url(public_url, _ANY_CALL_SID)[: -len(_MEDIA_PREFIX + _ANY_CALL_SID)]

    class SignedWebSocketHandler(WebSocketHandler):
        def upgrade_websocket(self) -> Any:
            path = self.environ.get("PATH_INFO", "")
            if path.startswith(_MEDIA_PREFIX):
                # Twilio signs the wss:// URL exactly as the TwiML gave it, without a query.
                signature = self.environ.get("HTTP_X_TWILIO_SIGNATURE")
                if not validator.validate_websocket(wss_base + path, signature):
                    if on_rejected is not None:
                        on_rejected(path)
                    self.start_response("403 Forbidden", [("Content-Type", "text/plain")])
                    return [b"invalid Twilio signature\n"]
            return super().upgrade_websocket()

    return WSGIServer(listener, app, handler_class=SignedWebSocketHandler, log=None, error_log=error_log)
