"""A scripted peer on a loopback port, written out byte by byte (RFC 6455 server side).

What is under test is the bridge's side, so the peer uses no WebSocket library: it can
send what no honest library would (a 50 MiB frame header and nothing else, masked or
fragmented control frames) and record exactly what arrived.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

import gevent
import gevent.event
import gevent.pool

__all__ = ["Peer", "Request", "accept_websocket", "http_response", "server_frame"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_REQUEST_BYTES = 64 * 1024


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


def read_request(conn: socket.socket) -> Request:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk or len(data) > _MAX_REQUEST_BYTES:
            raise ConnectionError("no complete request")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = conn.recv(4096)
        if not chunk:
            break
        body += chunk
    return Request(method, path, headers, body)


def http_response(conn: socket.socket, status: str, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def accept_websocket(conn: socket.socket, request: Request) -> None:
    key = request.headers["sec-websocket-key"].encode()
    accept = base64.b64encode(hashlib.sha1(key + _GUID, usedforsecurity=False).digest()).decode()
    conn.sendall(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
        ).encode()
    )


def server_frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, length: int | None = None, masked: bool = False,
    rsv: int = 0,
) -> bytes:
    """One frame as a server sends it; `length` declares a size other than the payload's."""
    declared = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if masked else 0
    if declared < 126:
        head = struct.pack("!BB", first, mask_bit | declared)
    elif declared < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, declared)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, declared)
    if masked:
        head += b"\0\0\0\0"  # a zero mask leaves the payload as it is
    return head + payload


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def read_client_frame(conn: socket.socket) -> tuple[int, bytes]:
    """(opcode, unmasked payload) of the next frame the client sends."""
    first, second = _recv_exact(conn, 2)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack("!H", _recv_exact(conn, 2))[0]
    elif length == 127:
        length = struct.unpack("!Q", _recv_exact(conn, 8))[0]
    mask = _recv_exact(conn, 4) if second & 0x80 else b"\0\0\0\0"
    payload = _recv_exact(conn, length)
    return first & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Peer:
    """Listens on 127.0.0.1; each connection's request is recorded, then `serve` scripts the rest."""

    def __init__(self, serve: Callable[[Peer, socket.socket, Request], None], *, rcvbuf: int | None = None) -> None:
        self._serve = serve
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before listen(), so accepted sockets advertise a small window from the start.
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port: int = self._listener.getsockname()[1]
        self.connections = 0
        self.requests: list[Request] = []
        self.frames: list[tuple[int, bytes]] = []  # what the client sent after the handshake
        self.client_closed = gevent.event.Event()  # a close frame arrived, or the socket ended
        self._conns: list[socket.socket] = []
        self._group = gevent.pool.Group()
        self._group.spawn(self._accept)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, path: str = "/call-1/transport") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def close_code(self) -> int | None:
        for opcode, payload in self.frames:
            if opcode == 0x8 and len(payload) >= 2:
                return int(struct.unpack("!H", payload[:2])[0])
        return None

    def read_frames(self, conn: socket.socket) -> None:
        """Record the client's frames in a greenlet of the peer's own, until its close frame."""
        self._group.spawn(self._read_frames, conn)

    def close(self) -> None:
        self._group.kill(timeout=1.0)
        for conn in self._conns:
            conn.close()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            conn, _ = self._listener.accept()
            self.connections += 1
            self._conns.append(conn)
            self._group.spawn(self._handle, conn)

    def _handle(self, conn: socket.socket) -> None:
        try:
            request = read_request(conn)
            self.requests.append(request)
            self._serve(self, conn, request)
        except OSError:
            pass

    def _read_frames(self, conn: socket.socket) -> None:
        try:
            while True:
                opcode, payload = read_client_frame(conn)
                self.frames.append((opcode, payload))
                if opcode == 0x8:
                    return
        except OSError:
            pass
        finally:
            self.client_closed.set()
