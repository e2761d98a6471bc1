"""Raw-socket tools for the abuse bench: handshakes, hand-built frames, a frame reader.

Everything here talks to 127.0.0.1 only and bounds every wait. Client frames are built
by hand (masked or not, fragmented, oversize, bad close codes), so nothing a library
would refuse to send is out of reach; building is cheap, so a flood costs the bench
little next to what it costs the server.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LOOPBACK",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Frame",
    "FrameReader",
    "HttpHead",
    "client_frame",
    "connect",
    "read_head",
    "server_frame_header",
    "twilio_connected",
    "twilio_media",
    "twilio_start",
    "twilio_stop",
    "upgrade_request",
    "ws_key",
]

LOOPBACK = "127.0.0.1"
OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_HEAD_LIMIT = 64 * 1024
_RECV_CHUNK = 65536


def connect(port: int, *, timeout_s: float = 5.0, rcvbuf: int | None = None) -> socket.socket:
    """A TCP connection to the server on loopback; `rcvbuf` shrinks our receive buffer first."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout_s)
    try:
        sock.connect((LOOPBACK, port))
    except OSError:
        sock.close()
        raise
    return sock


def ws_key() -> str:
    return base64.b64encode(os.urandom(16)).decode("ascii")


def upgrade_request(
    path: str, host: str, *, key: str | None = None, signature: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> bytes:
    """A WebSocket upgrade request as Twilio sends it (its User-Agent, no Origin)."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key if key is not None else ws_key()}",
        "Sec-WebSocket-Version: 13",
        "User-Agent: Twilio.TmeWs/1.0",
    ]
    if signature is not None:
        lines.append(f"X-Twilio-Signature: {signature}")
    lines += [f"{name}: {value}" for name, value in (extra_headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass
class HttpHead:
    """A response's status line and headers; `rest` is what arrived after them."""

    status: int | None  # None: no (parsable) head before EOF or the timeout
    reason: str
    headers: dict[str, str]
    rest: bytes
    eof: bool = False


def read_head(sock: socket.socket, timeout_s: float, buffered: bytes = b"") -> HttpHead:
    """Read one HTTP response head; never waits past `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    data = bytearray(buffered)
    eof = False
    while b"\r\n\r\n" not in data and len(data) < _HEAD_LIMIT:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(_RECV_CHUNK)
        except TimeoutError:  # socket.timeout is TimeoutError
            break
        except OSError:
            eof = True
            break
        if not chunk:
            eof = True
            break
        data += chunk
    head, sep, rest = bytes(data).partition(b"\r\n\r\n")
    if not sep:
        return HttpHead(None, "", {}, b"", eof=eof)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        return HttpHead(None, lines[0][:80], {}, rest, eof=eof)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return HttpHead(status, parts[2] if len(parts) > 2 else "", headers, rest, eof=eof)


def _mask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return b""
    if len(payload) <= 16:
        return bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    data = np.frombuffer(payload, dtype=np.uint8)
    return (data ^ np.resize(np.frombuffer(key, dtype=np.uint8), data.size)).tobytes()


def _length_bytes(first: int, length: int, masked: bool) -> bytes:
    mask_bit = 0x80 if masked else 0
    if length < 126:
        return struct.pack("!BB", first, mask_bit | length)
    if length < 1 << 16:
        return struct.pack("!BBH", first, mask_bit | 126, length)
    return struct.pack("!BBQ", first, mask_bit | 127, length)


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    """One client-to-server frame; masked as RFC 6455 requires unless `mask` is False."""
    first = (0x80 if fin else 0) | (rsv & 0x7) << 4 | opcode
    if not mask:
        return _length_bytes(first, len(payload), False) + payload
    key = os.urandom(4)
    return _length_bytes(first, len(payload), True) + key + _mask(payload, key)


def server_frame_header(opcode: int, length: int, *, fin: bool = True) -> bytes:
    """The header of a server-to-client (unmasked) frame of `length` payload bytes."""
    return _length_bytes((0x80 if fin else 0) | opcode, length, False)


@dataclass(frozen=True)
class Frame:
    opcode: int
    fin: bool
    payload: bytes


class FrameReader:
    """Reads server-to-client frames from a raw socket (payloads larger than `max_payload` are skipped).

    Give the socket a short timeout (a fraction of a second): reads retry on it.
    """

    def __init__(self, sock: socket.socket, buffered: bytes = b"", max_payload: int = 1 << 20) -> None:
        self._sock = sock
        self._buf = bytearray(buffered)
        self._max = max_payload

    def _fill(self, need: int, deadline: float) -> bool:
        # The socket keeps the timeout it was given (a sender may share it): short
        # timeouts are retried until `deadline`.
        while len(self._buf) < need:
            if time.monotonic() >= deadline:
                raise TimeoutError("frame read timed out")
            try:
                chunk = self._sock.recv(_RECV_CHUNK)
            except TimeoutError:  # socket.timeout is TimeoutError
                continue
            if not chunk:
                return False
            self._buf += chunk
        return True

    def next(self, timeout_s: float) -> Frame | None:
        """The next frame; None at EOF. Raises TimeoutError (nothing complete in time) or OSError."""
        deadline = time.monotonic() + timeout_s
        if not self._fill(2, deadline):
            return None
        first, second = self._buf[0], self._buf[1]
        length, offset = second & 0x7F, 2
        if length == 126:
            if not self._fill(4, deadline):
                return None
            length, offset = struct.unpack_from("!H", self._buf, 2)[0], 4
        elif length == 127:
            if not self._fill(10, deadline):
                return None
            length, offset = struct.unpack_from("!Q", self._buf, 2)[0], 10
        if second & 0x80:
            offset += 4  # servers do not mask; tolerate it anyway
        if length > self._max:
            # Skip it without keeping it.
            if not self._fill(offset, deadline):
                return None
            del self._buf[:offset]
            remaining = length
            while remaining:
                if not self._buf and not self._fill(1, deadline):
                    return None
                take = min(remaining, len(self._buf))
                del self._buf[:take]
                remaining -= take
            return Frame(first & 0x0F, bool(first & 0x80), b"")
        if not self._fill(offset + length, deadline):
            return None
        payload = bytes(self._buf[offset : offset + length])
        del self._buf[: offset + length]
        return Frame(first & 0x0F, bool(first & 0x80), payload)


# ---- Twilio Media Streams messages (docs/twilio-media-streams.md) -------------------------


def _json(message: dict[str, object]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


def twilio_connected() -> bytes:
    return _json({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def twilio_start(call_sid: str, stream_sid: str, parameters: Mapping[str, str], account_sid: str) -> bytes:
    return _json(
        {
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": account_sid,
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": dict(parameters),
            },
            "streamSid": stream_sid,
        }
    )


def twilio_media(stream_sid: str, seq: int, chunk: int, timestamp_ms: int, ulaw: bytes) -> bytes:
    return _json(
        {
            "event": "media",
            "sequenceNumber": str(seq),
            "media": {
                "track": "inbound",
                "chunk": str(chunk),
                "timestamp": str(timestamp_ms),
                "payload": base64.b64encode(ulaw).decode("ascii"),
            },
            "streamSid": stream_sid,
        }
    )


def twilio_stop(call_sid: str, stream_sid: str, seq: int, account_sid: str) -> bytes:
    return _json(
        {
            "event": "stop",
            "sequenceNumber": str(seq),
            "stop": {"accountSid": account_sid, "callSid": call_sid},
            "streamSid": stream_sid,
        }
    )
