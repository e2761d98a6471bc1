"""The gevent WSGI server: one gate for every WebSocket upgrade, and deadlines on every read.

gevent-websocket completes the 101 upgrade before Flask sees the request, so whatever
must refuse a socket has to do it here, before the 101:
- only the media route upgrades, and only on its canonical path: `/media/<CallSid>`
  exactly as it was sent (no doubled slashes, no percent-encoding, no query), so the
  path whose signature is checked is the path the router routes;
- the handshake is well formed (GET, HTTP/1.1, version 13, a 16-byte key);
- Twilio's signature over the stream URL is valid;
- the call was admitted by a webhook we answered, is live, and has no media socket yet.
The one other route that upgrades is the VAPI relay, `/relay/vapi/<CallSid>` (another
node of the fleet, not Twilio: docs/vapi-relay.md), on the same canonical-path and
handshake checks, with the fleet's relay token for that call instead of Twilio's
signature, and only while a VAPI socket is parked here for it.
Anything else that asks to upgrade gets a 4xx and no socket.

The handler also puts a deadline on each read a client controls: the request line and
headers, the wait for the next request on a keep-alive connection, and (in
web/limits.py) the body. The server runs at most `max_connections` handlers at once.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import socket
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import gevent
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer
from geventwebsocket.handler import WebSocketHandler

from observability.logging import Logger
from protocols.forwarded import client_address
from protocols.signature import SignatureValidator
from protocols.ticket import RELAY_PATH_PREFIX
from protocols.twiml import CALL_SID_PATTERN, media_stream_url
from web.admission import NEXT_NODE_HEADER

__all__ = ["MEDIA_PATH", "make_server"]

_MEDIA_PREFIX = "/media/"
_ANY_CALL_SID = "CA" + "0" * 32
_CALL_SID_IN_PATH = re.compile(r"CA[0-9a-fA-F]{32}")
_NEXT_NODE_ENVIRON = "HTTP_" + NEXT_NODE_HEADER.upper().replace("-", "_")
MEDIA_PATH = _MEDIA_PREFIX + "<call_sid>"
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class _ReadTimeout(socket.timeout):
    """A client took too long to send its request (a socket error: pywsgi drops the connection)."""


def make_server(
    listener: socket.socket | tuple[str, int],
    app: WSGIApplication,
    *,
    public_url: str,
    validator: SignatureValidator,
    admit: Callable[[str], str | None],
    on_rejected: Callable[[str, str, str], None] | None = None,
    relay: Callable[[str, str], str | None] | None = None,
    relay_only: bool = False,
    busy: Callable[[str], str | None] | None = None,
    header_timeout_s: float = 10.0,
    idle_timeout_s: float = 15.0,
    max_connections: int = 1000,
    trusted_proxies: int = 0,
    error_log: logging.Logger | None = None,
    access_log: Logger | None = None,
) -> WSGIServer:
    """A WSGIServer that upgrades only signed media sockets of admitted calls.

    `admit(call_sid)` returns None when the call may take a media socket, else why not.
    `on_rejected(kind, client_address, detail)` is told of every refused upgrade.
    `relay(call_sid, authorization)` returns None when a relay handshake may have the
    call's parked VAPI socket, else why not; without it the relay route does not upgrade.
    `trusted_proxies`: how many proxies in front append to X-Forwarded-For; the client
    address every later part sees (REMOTE_ADDR, refusals, access lines) is the one the
    outermost of them saw (protocols/forwarded.py).
    `relay_only`: a worker's own relay port (WORKERS > 1), which upgrades relay handshakes
    and answers everything else 404: media sockets, the webhook and the rest come through
    the port the workers share.
    `busy(call_sid)`: why this process is too busy for the call's media socket, or None;
    asked only when a proxy says it can pass the socket on (NEXT_NODE_HEADER), which it is
    then told with a 503.
    """
    # What Twilio was told to dial, less "/media/<sid>": wss://host[:port][/prefix].
    wss_base = media_stream_url(public_url, _ANY_CALL_SID)[: -len(_MEDIA_PREFIX + _ANY_CALL_SID)]

    # gevent-websocket ships no types, so its handler (and all it inherits from gevent's
    # typed WSGIHandler) is Any to mypy.
    class GatedHandler(WebSocketHandler):  # type: ignore[misc]
        _requests_served = 0

        def read_requestline(self) -> str:
            # The first request gets the header deadline; later ones on a kept-alive
            # connection get the idle deadline to start.
            wait_s = idle_timeout_s if self._requests_served else header_timeout_s
            with gevent.Timeout(wait_s, _ReadTimeout("request line")):
                line: str = super().read_requestline()
            return line

        def read_request(self, raw_requestline: str) -> bool:
            self._requests_served += 1
            with gevent.Timeout(header_timeout_s, _ReadTimeout("headers")):
                parsed: bool = super().read_request(raw_requestline)  # True, or it raised
            return parsed

        def get_environ(self) -> dict[str, Any]:
            environ: dict[str, Any] = super().get_environ()
            if trusted_proxies:
                environ["REMOTE_ADDR"] = client_address(
                    str(environ.get("REMOTE_ADDR", "")), environ.get("HTTP_X_FORWARDED_FOR"), trusted_proxies)
            return environ

        def _peer(self) -> str:
            address = self.client_address
            return str(address[0] if isinstance(address, tuple) else address or "?")

        def _client(self) -> str:
            # The request's client (get_environ: behind proxies, the one they vouch for). Only
            # for a request whose headers are in: on a kept-alive connection, self.environ is
            # otherwise the previous request's, which a proxy may have made for another client.
            return str(self.environ.get("REMOTE_ADDR") or self._peer())

        def _handle_client_error(self, ex: BaseException) -> tuple[str, bytes]:
            # pywsgi would print each one (with a traceback for some): a client could
            # write our log as fast as it sends garbage. Counted and rate-limited instead.
            timed_out = isinstance(ex, _ReadTimeout)
            if on_rejected is not None:
                on_rejected("http_timeout" if timed_out else "bad_request", self._peer(), str(ex)[:100])
            return ("408", _REQUEST_TIMEOUT) if timed_out else ("400", _BAD_REQUEST)

        def log_request(self) -> None:
            # Refused requests are counted and logged at a bounded rate where they are
            # refused; an access line each would let a flood write the log. Upgraded
            # sockets log their own lines (media_socket_closed).
            status = self.status
            if isinstance(status, bytes):
                status = status.decode("latin-1")
            status = str(status or "")
            if status.startswith(("4", "101")):
                return
            if access_log is None:
                super().log_request()
                return
            path = str(self.path or "").partition("?")[0][:200]
            call = _CALL_SID_IN_PATH.search(path)
            duration_s = (self.time_finish or self.time_start) - self.time_start
            access_log.info(
                "http_request",
                method=str(self.command or ""),
                path=path,
                status=int(status[:3]) if status[:3].isdigit() else status,
                bytes=int(self.response_length or 0),
                duration_ms=round(duration_s * 1000, 3),
                client=self._client(),
                # A call's URLs (/admin/calls/<sid>) belong to that call's log.
                **({"call_sid": call.group(0)} if call else {}),
            )

        def _refuse(self, status: str, kind: str, detail: str = "") -> list[bytes]:
            if on_rejected is not None:
                on_rejected(kind, self._client(), detail)
            self.start_response(status, [("Content-Type", "text/plain"), ("Connection", "close")])
            self.close_connection = True
            return [f"{status[4:].lower()}: {kind}\n".encode()]

        def upgrade_websocket(self) -> list[bytes] | list[str] | None:
            environ = self.environ
            if environ.get("HTTP_UPGRADE", "").lower() != "websocket":
                return None  # an ordinary request
            raw_path = self.path.partition("?")[0] if isinstance(self.path, str) else ""
            path = environ.get("PATH_INFO", "")
            relaying = relay is not None and path.startswith(RELAY_PATH_PREFIX)
            if relay_only and not relaying:
                return self._refuse("404 Not Found", "not_an_upgrade_route", path[:100])
            prefix = RELAY_PATH_PREFIX if relaying else _MEDIA_PREFIX
            call_sid = path[len(prefix):]
            if (
                raw_path != path
                or not path.startswith(prefix)
                or CALL_SID_PATTERN.fullmatch(call_sid) is None
                or environ.get("QUERY_STRING")
            ):
                return self._refuse("404 Not Found", "not_an_upgrade_route", path[:100])
            if environ.get("REQUEST_METHOD") != "GET" or self.request_version != "HTTP/1.1":
                return self._refuse("400 Bad Request", "bad_handshake", "method or HTTP version")
            if environ.get("HTTP_SEC_WEBSOCKET_VERSION", "") != "13":
                self.start_response("426 Upgrade Required", [("Sec-WebSocket-Version", "13")])
                self.close_connection = True
                return [b"WebSocket version 13 required\n"]
            if not _is_websocket_key(environ.get("HTTP_SEC_WEBSOCKET_KEY", "")):
                return self._refuse("400 Bad Request", "bad_handshake", "Sec-WebSocket-Key")
            if relay is not None and relaying:
                refused = relay(call_sid, environ.get("HTTP_AUTHORIZATION", ""))
                if refused is not None:
                    return self._refuse("403 Forbidden", refused, call_sid)
                relayed: list[str] | None = self.upgrade_connection()
                return relayed
            # Twilio signs the wss:// URL exactly as the TwiML gave it, without a query.
            if not validator.validate_websocket(wss_base + path, environ.get("HTTP_X_TWILIO_SIGNATURE")):
                return self._refuse("403 Forbidden", "bad_signature", call_sid)
            refusal = admit(call_sid)
            if refusal is not None:
                return self._refuse("403 Forbidden", "not_admitted", refusal)
            if busy is not None and environ.get(_NEXT_NODE_ENVIRON) == "1" and busy(call_sid) is not None:
                self.start_response("503 Service Unavailable",
                                    [("Content-Type", "text/plain"), ("Connection", "close")])
                self.close_connection = True
                return [b"too busy for another call\n"]
            # None once upgraded; else gevent-websocket's own refusal, as text.
            answer: list[str] | None = self.upgrade_connection()
            return answer

    def relay_route_only(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("wsgi.websocket") is not None and environ.get("PATH_INFO", "").startswith(RELAY_PATH_PREFIX):
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Connection", "close")])
        return [b"not found: this port only relays VAPI sockets between workers\n"]

    return WSGIServer(
        listener,
        relay_route_only if relay_only else app,
        handler_class=GatedHandler,
        spawn=Pool(max_connections),
        log=None,
        error_log=error_log,
    )


def _is_websocket_key(key: str) -> bool:
    """RFC 6455 §4.1: the base64 encoding of 16 bytes (24 characters)."""
    key = key.strip()
    if len(key) != 24:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False
