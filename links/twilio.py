"""Twilio's media WebSocket, owned by the call (not by TwilioActor, so it survives the actor's restarts).

gevent-websocket performs the handshake; after it, this class reads and writes the raw
socket itself with protocols.websocket, because the call needs what gevent-websocket's
reader cannot give it against an untrusted peer:
- every frame masked, control frames and close codes checked (RFC 6455);
- a message over the size limit skipped as it arrives, never buffered;
- a budget of frames and bytes per second: Twilio sends about 50 small frames a second,
  a socket sending far more is closed, so one client cannot take the server's CPU;
- a deadline for data: a socket that goes silent is closed and its call ends (checked
  from a timer a few times per deadline, so a read waits with no timer of its own);
- writes that cannot block: a peer that does not read makes a send fail within
  SEND_TIMEOUT_S (below the actors' handler deadline), and the connection is cut;
- one writer at a time (gevent raises ConcurrentObjectUseError otherwise);
- the reader yields whenever more input is buffered, and at least every few messages,
  so a flood cannot starve other calls.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from dataclasses import dataclass
from typing import Protocol

import gevent
import gevent.lock

from links.recv import SocketReader
from media.budget import TokenBucket
from protocols.websocket import (
    OP_CLOSE,
    OP_PONG,
    OP_TEXT,
    Closed,
    FrameReader,
    Message,
    Oversize,
    Ping,
    Pong,
    WebSocketProtocolError,
    encode_frame,
)

__all__ = ["SEND_TIMEOUT_S", "FrameTooLarge", "SocketLimits", "TwilioSocket"]

# A send that cannot complete in this long means the peer stopped reading (the kernel's
# send buffer holds many seconds of a call's audio). Below the actors' 1 s handler
# deadline, so a stuck peer fails the send rather than getting the actor killed.
SEND_TIMEOUT_S = 0.5
# After our close frame, how long the peer gets to answer before we cut the TCP connection.
_CLOSE_GRACE_S = 2.0
# Twilio's frames are ~300 bytes: 16 KiB holds a burst of them and keeps a call's
# memory small (every call has one); a larger message is simply read in several turns.
_RECV_BYTES = 16384
# Messages the reader may return without yielding to other greenlets, when nothing more
# is buffered (each of them came from a read that may well have waited, and yielded).
_YIELD_EVERY = 8
# The idle deadline is checked this many times per deadline (at most once a second): a
# silent socket is closed between 1 and 1 + 1/_IDLE_CHECKS deadlines after its last data.
_IDLE_CHECKS = 4


class FrameTooLarge(Exception):
    """A message over the size limit arrived and was skipped unread."""

    def __init__(self, size: int) -> None:
        super().__init__(f"message of {size} bytes skipped")
        self.size = size


class _BufferedReader(Protocol):
    """The handshake's buffered reader (an io.BufferedReader over the socket)."""

    def read1(self, size: int = ..., /) -> bytes: ...


class _UpgradeHandler(Protocol):
    """What TwilioSocket reads of gevent-websocket's handler: the raw socket and its buffered reader."""

    @property
    def socket(self) -> socket.socket: ...

    @property
    def rfile(self) -> _BufferedReader: ...


class _UpgradedWebSocket(Protocol):
    """What TwilioSocket takes of gevent-websocket's WebSocket (untyped): its handler, and `closed`."""

    @property
    def handler(self) -> _UpgradeHandler: ...

    closed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SocketLimits:
    """What one media socket may cost; see settings.py for the defaults' reasoning."""

    max_message_bytes: int
    idle_timeout_s: float
    frames_per_s: float
    bytes_per_s: float
    burst_s: float = 4.0  # a network stall of a few seconds is delivered at once afterwards


class TwilioSocket:
    """The call's Twilio media socket: checked reads, bounded writes, a close that ends.

    `end_reason` says why reading stopped: "closed" (the peer's close frame), "eof",
    "protocol" (the peer broke RFC 6455), "budget" (too many frames or bytes), "idle"
    (no data message within the idle timeout), "send_failed", or "local" (we closed it).
    """

    def __init__(self, ws: _UpgradedWebSocket, limits: SocketLimits) -> None:
        self._ws = ws
        handler = ws.handler
        self._sock = handler.socket
        self._limits = limits
        self._reader = FrameReader(limits.max_message_bytes)
        self._write_lock = gevent.lock.Semaphore()
        self._closer: gevent.Greenlet[[], None] | None = None
        self._buffer = bytearray(_RECV_BYTES)
        self._view = memoryview(self._buffer)
        self._recv = SocketReader(self._sock)
        self._drained = False  # the last read left the socket empty (as far as we know)
        self._idle = False  # set by the idle check, read by the reader
        self.received_ns = time.monotonic_ns()  # when the last bytes arrived
        now = self.received_ns / 1e9
        self._frames = TokenBucket(limits.frames_per_s, limits.frames_per_s * limits.burst_s, now)
        self._bytes = TokenBucket(limits.bytes_per_s, limits.bytes_per_s * limits.burst_s, now)
        self._last_data_ns = self.received_ns  # the arrival of the last data message (or the open)
        self._counted_frames = 0
        self._unyielded = 0
        self.closed = False
        self.close_code: int | None = None
        self.end_reason: str | None = None
        self.protocol_error: str | None = None
        # Bytes the handshake's reader may already hold (a client that did not wait for
        # the 101), then the socket alone from here on.
        self._reader.feed(_take_buffered(handler.rfile, self._sock))
        # For writes; reads wait with no timeout (links/recv.py) and the idle deadline is
        # checked from a timer instead of at every read's timeout.
        self._sock.settimeout(SEND_TIMEOUT_S)
        interval = min(1.0, limits.idle_timeout_s / _IDLE_CHECKS)
        self._idle_timer = gevent.get_hub().loop.timer(interval, interval, ref=False)
        self._idle_timer.start(self._check_idle)
        # 20 ms frames go out as they are written, not held back for Nagle's algorithm
        # until the peer acknowledges the previous ones.
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # Reading (the socket's own greenlet only) ---------------------------------------

    def receive(self) -> str | bytes | None:
        """The next text (str) or binary (bytes) message; None once reading has ended.

        Raises FrameTooLarge for an oversize message, after skipping it; the socket
        stays usable. Yields to other greenlets before returning a message.
        """
        reader = self._reader
        while not self.closed or self._closer is not None:
            try:
                event = reader.next_event()
            except WebSocketProtocolError as exc:
                self.protocol_error = exc.reason
                self._end("protocol", exc.code)
                return None
            # Fragments and control frames count as much as messages do.
            if reader.frames != self._counted_frames and not self._within_budget():
                self._end("budget", 1008)
                return None
            if event is None:
                if not self._fill():
                    return None
                continue
            if type(event) is Message:
                # The read's own timestamp: no second clock read per message.
                self._last_data_ns = self.received_ns
                # Yield when more is already buffered (a burst, or a flood), and at least every
                # few messages; otherwise the next read waits on the socket, which yields anyway,
                # and a switch through the hub per message is a cost the hot path need not pay.
                self._unyielded += 1
                if reader.buffered or self._unyielded >= _YIELD_EVERY:
                    self._unyielded = 0
                    gevent.sleep(0)
                if event.text:
                    try:
                        return event.payload.decode("utf-8")
                    except UnicodeDecodeError:
                        # Twilio only sends JSON: hand it on as bytes for the protocol
                        # layer to count, rather than dropping the call over one frame.
                        return event.payload
                return event.payload
            if type(event) is Ping:
                self._send_frame(event.payload, OP_PONG)
            elif type(event) is Oversize:
                gevent.sleep(0)
                raise FrameTooLarge(event.size)
            elif type(event) is Closed:
                self._on_peer_close(event)
                return None
            elif type(event) is not Pong:
                raise AssertionError(event)
        return None

    def _fill(self) -> bool:
        """Read what the socket has; False once reading has ended."""
        view = self._view
        while True:
            try:
                n = self._recv.recv_into(view, self._drained)
            except TimeoutError:  # only a socket gevent reads for us has a read timeout
                if self._idle:
                    break
                continue
            except OSError:
                if self._idle:
                    break
                self._end("eof", None)
                return False
            if self._idle:
                break
            if not n:
                self._end("eof", None)
                return False
            # Less than a full buffer: the socket is empty now, so the next read waits first.
            self._drained = n < len(view)
            self.received_ns = time.monotonic_ns()
            if not self._bytes.take(n, self.received_ns / 1e9):
                self._end("budget", 1008)
                return False
            self._reader.feed(view[:n])
            return True
        self._end("idle", 1008)
        return False

    def _check_idle(self) -> None:
        """In the hub, from the timer: past the idle deadline, wake the reader to end it.

        Shutting the socket's reading side makes a waiting read return (a read that is not
        waiting sees the flag at its next turn); the close frame can still be sent.
        """
        if self.closed:
            # Its job is done (and a socket whose reader died without release() is not
            # kept alive by it).
            self._idle_timer.stop()
            return
        if time.monotonic_ns() - self._last_data_ns >= self._limits.idle_timeout_s * 1e9:
            self._idle = True
            self._idle_timer.stop()
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RD)

    def _within_budget(self) -> bool:
        frames = self._reader.frames - self._counted_frames
        self._counted_frames = self._reader.frames
        return self._frames.take(frames, self.received_ns / 1e9)

    def _on_peer_close(self, event: Closed) -> None:
        self.close_code = event.code
        if not self.closed:
            self._send_close(1000 if event.code == 1005 else event.code)
        self.end_reason = self.end_reason or "closed"
        self._finish()

    def _end(self, reason: str, code: int | None) -> None:
        self.end_reason = self.end_reason or reason
        if code is not None and not self.closed:
            self._send_close(code)
        self._abort()
        self._finish()

    # Writing (any greenlet) ----------------------------------------------------------

    def send_text(self, text: str) -> bool:
        """Send one text message; False when the socket is already closed or broken."""
        if self.closed:
            return False
        return self._send_frame(text.encode("utf-8"), OP_TEXT)

    def send_utf8(self, data: bytes) -> bool:
        """Send one text message already encoded as UTF-8 (the media path's JSON); as send_text."""
        if self.closed:
            return False
        return self._send_frame(data, OP_TEXT)

    def _send_frame(self, payload: bytes, opcode: int) -> bool:
        frame = encode_frame(payload, opcode)
        try:
            with self._write_lock:
                # One send() takes the whole frame unless the kernel's buffer is full;
                # gevent's sendall with a timeout costs clock reads and a buffer-size
                # query even then, so it only finishes what send() could not.
                sent = self._sock.send(frame)
                if sent < len(frame):
                    self._sock.sendall(frame[sent:])
            return True
        except OSError:
            # A timed-out sendall may have sent part of the frame: the stream is broken.
            self.closed = True
            self.end_reason = self.end_reason or "send_failed"
            self._abort()
            return False

    def close(self, code: int = 1000) -> None:
        """Send a close frame with `code`; cut the connection if the peer does not answer."""
        if self.closed:
            return
        self.end_reason = self.end_reason or "local"
        self._send_close(code)
        self._closer = gevent.spawn_later(_CLOSE_GRACE_S, self._abort_and_stop)

    def _send_close(self, code: int) -> None:
        self.closed = True
        if self._sock is None:
            return
        frame = encode_frame(struct.pack("!H", code), OP_CLOSE)
        with contextlib.suppress(OSError), self._write_lock:
            self._sock.sendall(frame)

    def _abort_and_stop(self) -> None:
        self._closer = None
        self._abort()

    def _abort(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def _finish(self) -> None:
        """The reader is done: mark gevent-websocket's socket closed so it adds no frame."""
        self._idle_timer.close()
        if self._closer is not None:
            self._closer.kill(block=False)
            self._closer = None
        self._ws.closed = True

    def release(self) -> None:
        """Called by the reader when it stops reading for good."""
        self.closed = True
        self._finish()


def _take_buffered(rfile: _BufferedReader, sock: socket.socket) -> bytes:
    """What the handshake's buffered reader already holds, without waiting for more."""
    sock.settimeout(0.0)
    try:
        data = rfile.read1(_RECV_BYTES)
    except (OSError, ValueError):
        data = b""
    return data or b""
