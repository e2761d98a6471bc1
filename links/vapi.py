"""Creating a VAPI call over REST and opening its WebSocket (vapi.websocket transport).

Blocking calls, meant for a greenlet of the VapiActor's own: under gevent's monkey
patching they yield while waiting, and every one of them has a timeout.
"""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request

import websocket

from links.errors import ErrorKind, VapiUnavailable
from protocols.errors import ProtocolError
from protocols.vapi import AudioFormat, CreatedCall, create_call_body, parse_create_response

__all__ = ["USER_AGENT", "VapiConnector"]

# Cloudflare in front of api.vapi.ai answers 403 "error code: 1010" without a User-Agent.
USER_AGENT = "twilio-vapi-bridge/1.0"
# Large enough for any audio frame VAPI sends; a peer that sends more is misbehaving.
_MAX_RESPONSE_BYTES = 1 << 20


class VapiConnector:
    """Creates VAPI calls and connects their sockets. Holds the API key; never logs it."""

    def __init__(self, *, base_url: str, api_key: str, assistant_id: str, timeout_s: float) -> None:
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._assistant_id = assistant_id
        self._timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"VapiConnector(base_url={self._base_url!r}, api_key=***)"

    def create_call(self, audio_format: AudioFormat, first_message_mode: str | None) -> CreatedCall:
        body = create_call_body(
            assistant_id=self._assistant_id,
            audio_format=audio_format,
            first_message_mode=first_message_mode,
        )
        request = urllib.request.Request(
            f"{self._base_url}/call",
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {self._api_key}",
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:  # noqa: S310 - URL from config
                raw = response.read(_MAX_RESPONSE_BYTES)
        except urllib.error.HTTPError as exc:
            raise VapiUnavailable(_kind_for_status(exc.code), f"POST /call answered {exc.code}") from exc
        except (TimeoutError, socket.timeout) as exc:
            raise VapiUnavailable(ErrorKind.TIMEOUT, "POST /call timed out") from exc
        except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
            raise VapiUnavailable(ErrorKind.CONNECTIVITY, f"POST /call failed: {type(exc).__name__}") from exc
        try:
            return parse_create_response(raw)
        except ProtocolError as exc:
            raise VapiUnavailable(ErrorKind.PROTOCOL, f"POST /call answer unreadable: {exc.kind}") from exc

    def connect(self, websocket_url: str) -> websocket.WebSocket:
        """Open the call's socket; the URL is a secret (it alone joins the call)."""
        try:
            ws = websocket.create_connection(
                websocket_url,
                timeout=self._timeout_s,
                header=[f"Authorization: Bearer {self._api_key}"],
                enable_multithread=True,
                skip_utf8_validation=True,
            )
        except websocket.WebSocketTimeoutException as exc:
            raise VapiUnavailable(ErrorKind.TIMEOUT, "call socket did not open in time") from exc
        except websocket.WebSocketBadStatusException as exc:
            raise VapiUnavailable(_kind_for_status(exc.status_code), f"call socket refused: {exc.status_code}") from exc
        except (websocket.WebSocketException, OSError) as exc:
            raise VapiUnavailable(ErrorKind.CONNECTIVITY, f"call socket failed: {type(exc).__name__}") from exc
        # The timeout was for opening; reads wait for as long as the call lasts, and
        # the keepalive (not a read timeout) decides when the link is dead.
        ws.settimeout(None)
        return ws


def _kind_for_status(status: int) -> ErrorKind:
    if status in (401, 403):
        return ErrorKind.AUTHENTICATION
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if 500 <= status:
        return ErrorKind.SERVER
    return ErrorKind.BAD_REQUEST
