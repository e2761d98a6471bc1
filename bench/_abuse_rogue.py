"""A rogue host for the redirect attack: what the server leaks if it follows VAPI's redirect.

It listens on loopback and records every request: its method, path, and whether it
carried the server's VAPI API key. It answers any `/call` with a created call whose
`websocketCallUrl` points back here, accepts that socket and counts the caller audio
(binary frames) the server streams to it, answering pings so the link stays up.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import time
import uuid
from dataclasses import dataclass, field

import gevent
from gevent.server import StreamServer

from bench._abuse_wire import LOOPBACK, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, server_frame_header

__all__ = ["RogueHost"]

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_READ_TIMEOUT_S = 0.5
_MAX_FRAME = 1 << 20


@dataclass
class RogueRequest:
    method: str
    path: str
    authorization: str


@dataclass
class RogueHost:
    api_key: str
    requests: list[RogueRequest] = field(default_factory=list)
    audio_bytes: int = 0
    sockets_opened: int = 0
    _server: StreamServer | None = None

    def start(self) -> None:
        self._server = StreamServer((LOOPBACK, 0), self._handle)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=1.0)
            self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.address[1])

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def key_leaked(self) -> bool:
        return any(self.api_key in r.authorization for r in self.requests)

    def _handle(self, sock: socket.socket, _address: object) -> None:
        sock.settimeout(_READ_TIMEOUT_S)
        with sock:
            head = _read_request(sock)
            if head is None:
                return
            method, path, headers, rest = head
            self.requests.append(RogueRequest(method, path, headers.get("authorization", "")))
            if headers.get("upgrade", "").lower() == "websocket":
                self._serve_socket(sock, headers, rest)
                return
            if "/call" in path:
                call_id = str(uuid.uuid4())
                body = json.dumps({
                    "id": call_id, "type": "vapi.websocketCall", "status": "queued",
                    "transport": {"provider": "vapi.websocket",
                                  "websocketCallUrl": f"ws://{LOOPBACK}:{self.port}/{call_id}/transport"},
                }).encode()
                sock.sendall(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nConnection: close\r\n"
                             + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            else:
                sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    def _serve_socket(self, sock: socket.socket, headers: dict[str, str], rest: bytes) -> None:
        key = headers.get("sec-websocket-key", "") + _GUID
        accept = base64.b64encode(hashlib.sha1(key.encode()).digest())  # noqa: S324 - RFC 6455 says SHA-1
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        self.sockets_opened += 1
        buf = bytearray(rest)
        while True:
            frame = _read_client_frame(sock, buf)
            if frame is None:
                return
            opcode, payload, length = frame
            if opcode == OP_BINARY:
                self.audio_bytes += length
            elif opcode == OP_PING:
                sock.sendall(server_frame_header(OP_PONG, len(payload)) + payload)
            elif opcode == OP_CLOSE:
                sock.sendall(server_frame_header(OP_CLOSE, 2) + struct.pack("!H", 1000))
                return


def _read_request(sock: socket.socket) -> tuple[str, str, dict[str, str], bytes] | None:
    """Method, path, headers (lower-case names) and what followed the head; None if none came in 5 s."""
    deadline = time.monotonic() + 5.0
    data = bytearray()
    while b"\r\n\r\n" not in data and len(data) < 65536 and time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:  # socket.timeout is TimeoutError
            continue
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    head, sep, rest = bytes(data).partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) < 2:
        return None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], headers, rest


def _read_client_frame(sock: socket.socket, buf: bytearray) -> tuple[int, bytes, int] | None:
    """(opcode, payload if small, payload length); None at EOF or after 30 s of silence."""
    deadline = time.monotonic() + 30.0

    def fill(need: int) -> bool:
        while len(buf) < need:
            if time.monotonic() > deadline:
                return False
            try:
                chunk = sock.recv(65536)
            except TimeoutError:  # socket.timeout is TimeoutError
                gevent.sleep(0)
                continue
            except OSError:
                return False
            if not chunk:
                return False
            buf.extend(chunk)
        return True

    if not fill(2):
        return None
    opcode, length, offset = buf[0] & 0x0F, buf[1] & 0x7F, 2
    if length == 126:
        if not fill(4):
            return None
        length, offset = struct.unpack_from("!H", buf, 2)[0], 4
    elif length == 127:
        if not fill(10):
            return None
        length, offset = struct.unpack_from("!Q", buf, 2)[0], 10
    masked = bool(buf[1] & 0x80)
    key_at, offset = offset, offset + (4 if masked else 0)
    if length > _MAX_FRAME or not fill(offset + length):
        return None
    payload = bytes(buf[offset : offset + length])
    if masked:
        key = bytes(buf[key_at : key_at + 4])
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if length <= 125 else b""
    del buf[: offset + length]
    return opcode, payload, length
