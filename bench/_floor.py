"""The floor: the least a Twilio-to-VAPI bridge on this stack can do, for bench/load.py.

    PORT=... VAPI_BASE_URL=... VAPI_API_KEY=... python -m bench._floor

Same libraries as the bridge (gevent's WSGI server, gevent-websocket for Twilio's socket,
websocket-client for VAPI's), used plainly: the voice webhook answers TwiML with a
`<Connect><Stream>`; on Twilio's `start` it creates a VAPI call asking for mu-law 8 kHz
and opens its socket; each media frame's payload is base64-decoded and sent to VAPI as
is, and VAPI's audio is base64-encoded into media frames for Twilio. No actors, no
transcoding, no VAD, no marks or playback pacing, no signature checks, no metrics: what
the bridge costs beyond this is the cost of its design.
"""

from __future__ import annotations

if __name__ == "__main__":  # patch before anything imports sockets
    from gevent import monkey

    monkey.patch_all()

import base64
import contextlib
import json
import os
import signal
import socket
import sys
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import gevent.event
import websocket
from gevent.pywsgi import WSGIServer
from geventwebsocket.handler import WebSocketHandler

_TWIML = (
    '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
    '<Stream url="ws://{host}/media/{sid}"/></Connect></Response>'
)


def _create_vapi_call(base_url: str, api_key: str) -> str:
    body = json.dumps({
        "assistantId": "floor",
        "transport": {"provider": "vapi.websocket",
                      "audioFormat": {"format": "mulaw", "container": "raw", "sampleRate": 8000}},
    }).encode()
    request = urllib.request.Request(  # noqa: S310 - the bench's own loopback URL
        base_url + "/call", data=body, method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        url: str = json.loads(response.read())["transport"]["websocketCallUrl"]
        return url


def _bridge(twilio: Any, base_url: str, api_key: str) -> None:
    vapi: websocket.WebSocket | None = None
    stream_sid = ""
    try:
        while True:
            text = twilio.receive()
            if text is None:
                return
            event = json.loads(text)
            kind = event.get("event")
            if kind == "media":
                if vapi is not None:
                    vapi.send_bytes(base64.b64decode(event["media"]["payload"]))
            elif kind == "start":
                stream_sid = event["start"]["streamSid"]
                vapi = websocket.create_connection(_create_vapi_call(base_url, api_key), timeout=10)
                gevent.spawn(_downlink, vapi, twilio, stream_sid)
            elif kind == "stop":
                return
    except Exception:  # noqa: BLE001 - the floor's call ends, the process goes on
        return
    finally:
        if vapi is not None:
            with contextlib.suppress(Exception):
                vapi.close()


def _downlink(vapi: websocket.WebSocket, twilio: Any, stream_sid: str) -> None:
    try:
        while True:
            data = vapi.recv()
            if not data or not isinstance(data, bytes):
                return
            payload = base64.b64encode(data).decode()
            twilio.send(json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}},
                                   separators=(",", ":")))
    except Exception:  # noqa: BLE001 - the socket closed: the call is over
        return


def app_for(base_url: str, api_key: str, host: str) -> Callable[[dict[str, Any], Any], Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/voice/incoming":
            size = int(environ.get("CONTENT_LENGTH") or 0)
            form = dict(pair.split("=", 1) for pair in environ["wsgi.input"].read(size).decode().split("&"))
            start_response("200 OK", [("Content-Type", "text/xml")])
            return [_TWIML.format(host=host, sid=form.get("CallSid", "")).encode()]
        twilio = environ.get("wsgi.websocket")
        if path.startswith("/media/") and twilio is not None:
            # As the bridge does for its media sockets: 20 ms frames must not wait for Nagle.
            twilio.handler.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _bridge(twilio, base_url, api_key)
            return []
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    return app


def main() -> int:
    port = int(os.environ["PORT"])
    base_url = os.environ["VAPI_BASE_URL"].rstrip("/")
    server = WSGIServer(("127.0.0.1", port), app_for(base_url, os.environ["VAPI_API_KEY"], f"127.0.0.1:{port}"),
                        handler_class=WebSocketHandler, log=None)
    server.start()
    stopping = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stopping.set)
    gevent.signal_handler(signal.SIGINT, stopping.set)
    stopping.wait()
    server.stop(timeout=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
