"""Twilio's media WebSocket, owned by the call (not by TwilioActor, so it survives the actor's restarts).

Wraps gevent-websocket's server socket to fix what the call needs:
- a frame larger than any Twilio sends is skipped while reading, before it is buffered
  or decoded, so one bad frame costs neither memory nor other calls;
- one writer at a time (gevent raises ConcurrentObjectUseError otherwise);
- `close` sends a real close code (gevent-websocket 0.10.1 drops it) and cannot leave
  the reader blocked forever on a peer that never answers the close.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import gevent
import gevent.lock
from geventwebsocket.exceptions import WebSocketError
from geventwebsocket.websocket import Header

__all__ = ["FrameTooLarge", "TwilioSocket"]

_OP_CONTINUATION, _OP_TEXT, _OP_BINARY = 0x0, 0x1, 0x2
_OP_CLOSE, _OP_PING, _OP_PONG = 0x8, 0x9, 0xA
_DRAIN_CHUNK = 65536
# After our close frame, how long the peer gets to answer before we cut the TCP connection.
_CLOSE_GRACE_S = 2.0


class FrameTooLarge(Exception):
    """A message over the size limit arrived and was skipped unread."""

    def __init__(self, size: int) -> None:
        super().__init__(f"message of {size} bytes skipped")
        self.size = size


class TwilioSocket:
    """The call's Twilio media socket: size-capped reads, locked writes, a close that ends."""

    def __init__(self, ws: Any, max_message_bytes: int) -> None:
        self._ws = ws
        self._max = max_message_bytes
        self._write_lock = gevent.lock.Semaphore()
        self._closer: gevent.Greenlet | None = None
        self.closed = False
        self.close_code: int | None = None

    # Reading (the socket's own greenlet only) ---------------------------------------

    def receive(self) -> str | bytes | None:
        """The next text (str) or binary (bytes) message; None once the socket is closed.

        Raises FrameTooLarge for an oversize message, after skipping it; the socket
        stays usable.
        """
        ws = self._ws
        if ws.closed or self.closed and self._closer is None:
            return None
        opcode: int | None = None
        parts: list[bytes] = []
        size = 0
        oversize = False
        try:
            while True:
                header = Header.decode_header(ws.stream)
                if header.flags:
                    return self._fail(1002)
                op = header.opcode
                if op in (_OP_PING, _OP_PONG, _OP_CLOSE):
                    if header.length > 125:
                        return self._fail(1002)
                    payload = self._read_payload(header)
                    if op == _OP_PING:
                        self._send_frame(payload, _OP_PONG)
                        continue
                    if op == _OP_PONG:
                        continue
                    return self._on_peer_close(payload)
                if op in (_OP_TEXT, _OP_BINARY):
                    if opcode is not None:
                        return self._fail(1002)
                    opcode = op
                elif op != _OP_CONTINUATION or opcode is None:
                    return self._fail(1002)
                size += header.length
                if size > self._max or oversize:
                    oversize = True
                    parts.clear()
                    self._drain(header.length)
                else:
                    parts.append(self._read_payload(header))
                if header.fin:
                    break
        except (OSError, WebSocketError, AttributeError):
            # AttributeError: gevent-websocket drops its stream once closed.
            self.closed = True
            return None
        if oversize:
            raise FrameTooLarge(size)
        message = b"".join(parts)
        if opcode == _OP_TEXT:
            try:
                return message.decode("utf-8")
            except UnicodeDecodeError:
                # Not a protocol-level close: Twilio only sends JSON, so hand it on as
                # bytes and let the protocol layer count it.
                return message
        return message

    def _read_payload(self, header: Any) -> bytes:
        if not header.length:
            return b""
        payload = self._ws.raw_read(header.length)
        if payload is None or len(payload) != header.length:
            raise WebSocketError("unexpected EOF reading frame payload")
        if header.mask:
            payload = header.unmask_payload(payload)
        return bytes(payload)

    def _drain(self, length: int) -> None:
        remaining = length
        while remaining > 0:
            chunk = self._ws.raw_read(min(remaining, _DRAIN_CHUNK))
            if not chunk:
                raise WebSocketError("unexpected EOF skipping an oversize frame")
            remaining -= len(chunk)

    def _on_peer_close(self, payload: bytes) -> None:
        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        self.close_code = code
        if not self.closed:
            self._close_now(1000 if code in (1005, 1006) else code)
        self._finish()
        return None

    def _fail(self, code: int) -> None:
        self._close_now(code)
        self._finish()
        return None

    # Writing (any greenlet) ----------------------------------------------------------

    def send_text(self, text: str) -> bool:
        """Send one text message; False when the socket is already closed or broken."""
        if self.closed:
            return False
        try:
            self._send_frame(text.encode("utf-8"), _OP_TEXT)
            return True
        except (OSError, WebSocketError, AttributeError):
            self.closed = True
            return False

    def _send_frame(self, payload: bytes, opcode: int) -> None:
        frame = bytes(Header.encode_header(True, opcode, b"", len(payload), 0)) + payload
        with self._write_lock:
            self._ws.raw_write(frame)

    def close(self, code: int = 1000) -> None:
        """Send a close frame with `code`; cut the connection if the peer does not answer."""
        if self.closed:
            return
        self._close_now(code)
        self._closer = gevent.spawn_later(_CLOSE_GRACE_S, self._abort)

    def _close_now(self, code: int) -> None:
        self.closed = True
        try:
            self._send_frame(struct.pack("!H", code), _OP_CLOSE)
        except (OSError, WebSocketError, AttributeError):
            pass

    def _abort(self) -> None:
        raw = getattr(getattr(self._ws, "handler", None), "socket", None)
        if raw is not None:
            try:
                raw.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _finish(self) -> None:
        """The reader is done: mark gevent-websocket's socket closed so it adds no frame."""
        if self._closer is not None:
            self._closer.kill(block=False)
            self._closer = None
        self._ws.closed = True

    def release(self) -> None:
        """Called by the reader when it stops reading for good."""
        self.closed = True
        self._finish()
