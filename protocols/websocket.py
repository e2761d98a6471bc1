"""RFC 6455 frames as the bridge reads and writes them: pure parsing, no sockets.

`FrameReader` takes bytes as they arrive and gives back whole messages and control
frames. It enforces what RFC 6455 asks of the peer (a client's frames all masked, a
server's never; no reserved bits; control frames short and unfragmented; valid close
codes; continuation only inside a fragmented message) and what the bridge needs of an
untrusted peer: a message larger than the limit is never buffered. It is skipped as it
arrives and reported once (Twilio's socket, which survives one bad message), or refused
from the header that crosses the limit (VAPI's, which it ends); a fragment count can be
capped too, so empty continuation frames cannot grow a message's parts without end.

Masking and unmasking are one call into C per frame (wsaccel's XOR masker, the one
websocket-client also uses), not a Python loop per byte (the largest single cost of
gevent-websocket's reader on the bridge's hot path).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from wsaccel.xormask import XorMaskerSimple  # type: ignore[import-untyped]  # ships no types

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Closed",
    "FrameReader",
    "Message",
    "Oversize",
    "Ping",
    "Pong",
    "WebSocketProtocolError",
    "encode_frame",
    "encode_masked_frame",
    "is_valid_close_code",
    "unmask",
]

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

_CONTROL_MAX: Final = 125
_HEADER = struct.Struct("!BB")
_LEN16 = struct.Struct("!H")
_LEN64 = struct.Struct("!Q")
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")
_CLOSE_CODE = struct.Struct("!H")

# Close codes a peer may send (RFC 6455 §7.4 and the IANA registry): 1004-1006 and 1015
# are reserved for reporting and must never appear on the wire.
_WIRE_CLOSE_CODES: Final = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


class WebSocketProtocolError(Exception):
    """The peer broke RFC 6455; `code` is the close code to answer with (1002 or 1007)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Message:
    """A whole data message: `text` is True for an opcode-1 message (payload not yet decoded)."""

    payload: bytes
    text: bool


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Closed:
    """The peer's close frame: its code (1005 when it gave none) and reason."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Oversize:
    """A message over the limit was skipped unread; `size` is what it had reached."""

    size: int


Event = Message | Ping | Pong | Closed | Oversize


def is_valid_close_code(code: int) -> bool:
    """A code a peer may put in a close frame: the registered ones, or 3000-4999."""
    return code in _WIRE_CLOSE_CODES or 3000 <= code <= 4999


def unmask(payload: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """XOR `payload` with the 4-byte `mask` repeated (masking and unmasking are the same)."""
    masked: bytes = XorMaskerSimple(mask).process(payload)
    return masked


def _header(opcode: int, n: int, mask_bit: int) -> bytes:
    if n < 126:
        return _HEADER.pack(0x80 | opcode, mask_bit | n)
    if n < 65536:
        return _HEADER_16.pack(0x80 | opcode, mask_bit | 126, n)
    return _HEADER_64.pack(0x80 | opcode, mask_bit | 127, n)


def encode_frame(payload: bytes, opcode: int) -> bytes:
    """One unmasked, final frame, as a server sends it."""
    return _header(opcode, len(payload), 0) + payload


def encode_masked_frame(payload: bytes, opcode: int, key: bytes) -> bytes:
    """One masked, final frame, as a client sends it; `key`: 4 unpredictable bytes for this frame."""
    return b"".join((_header(opcode, len(payload), 0x80), key, XorMaskerSimple(key).process(payload)))


class FrameReader:
    """Incremental reader of a peer's frames: a client's (`masked`, the default) or a server's.

    `feed(data)` appends what the socket gave; `next_event()` returns the next complete
    event or None when more bytes are needed, and raises WebSocketProtocolError when the
    peer broke the protocol (the connection must then be closed with `exc.code`).
    `frames` and `bytes` count everything read, for per-socket budgets.

    A message over `max_message_bytes` is skipped and reported as `Oversize`, or, without
    `skip_oversize`, refused with code 1009 as soon as a frame header shows it; so is a
    message in more than `max_fragments` frames (when given).
    """

    def __init__(self, max_message_bytes: int, *, masked: bool = True, skip_oversize: bool = True,
                 max_fragments: int | None = None) -> None:
        self._max = max_message_bytes
        self._masked = masked
        self._skip_oversize = skip_oversize
        self._max_fragments = max_fragments
        # The mask bit every frame's second byte must have.
        self._mask_bit = 0x80 if masked else 0
        self._buffer = bytearray()
        self._pos = 0
        # The data message being assembled from fragments.
        self._opcode: int | None = None
        self._parts: list[bytes] = []
        self._size = 0
        self._oversize = False
        # Bytes of an oversize frame's payload still to be skipped as they arrive.
        self._skip = 0
        self.frames = 0
        self.bytes = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self.bytes += len(data)
        if self._skip:
            skipped = min(self._skip, len(data))
            self._skip -= skipped
            data = data[skipped:]
            if not data:
                return
        if self._pos and self._pos == len(self._buffer):
            self._buffer.clear()
            self._pos = 0
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed."""
        return len(self._buffer) - self._pos

    @property
    def skipping(self) -> bool:
        return self._skip > 0

    def next_event(self) -> Event | None:
        while True:
            if self._skip:
                return None
            buffer, pos = self._buffer, self._pos
            available = len(buffer) - pos
            if available < 2:
                return None
            # The hot path (Twilio's media frames, VAPI's audio): a whole, final, unfragmented
            # data frame under 126 bytes or with a 16-bit length, outside a fragmented message.
            b0, b1 = buffer[pos], buffer[pos + 1]
            if (b0 == 0x81 or b0 == 0x82) and (b1 & 0x80) == self._mask_bit and self._opcode is None:
                length = b1 & 0x7F
                if length < 126:
                    start = pos + 2
                elif length == 126 and available >= 4:
                    length = (buffer[pos + 2] << 8) | buffer[pos + 3]
                    start = pos + 4
                else:
                    start = -1
                if start >= 0 and length <= self._max:
                    if self._masked:
                        start += 4
                    end = start + length
                    if end <= len(buffer):
                        payload: bytes = (
                            XorMaskerSimple(buffer[start - 4 : start]).process(buffer[start:end])
                            if self._masked else bytes(buffer[start:end])
                        )
                        self._consume(end)
                        return Message(payload, b0 == 0x81)
            header = self._read_header()
            if header is None:
                return None
            fin, opcode, masked, length, header_len = header
            if opcode >= OP_CLOSE:
                event = self._control(fin, opcode, masked, length, header_len)
                if event is not None:
                    return event
                return None
            result = self._data(fin, opcode, masked, length, header_len)
            if result is not _MORE:
                return result  # type: ignore[return-value]

    # Frame layout ------------------------------------------------------------------------

    def _read_header(self) -> tuple[bool, int, bool, int, int] | None:
        buffer, pos = self._buffer, self._pos
        available = len(buffer) - pos
        if available < 2:
            return None
        b0, b1 = buffer[pos], buffer[pos + 1]
        if b0 & 0x70:
            raise WebSocketProtocolError(1002, "reserved bits set")
        opcode = b0 & 0x0F
        if opcode not in (OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
            raise WebSocketProtocolError(1002, f"reserved opcode {opcode:#x}")
        masked = bool(b1 & 0x80)
        if masked != self._masked:
            raise WebSocketProtocolError(1002, "client frame not masked" if self._masked else "server frame masked")
        length = b1 & 0x7F
        header_len = 2
        if length == 126:
            if available < 4:
                return None
            length = _LEN16.unpack_from(buffer, pos + 2)[0]
            header_len = 4
        elif length == 127:
            if available < 10:
                return None
            length = _LEN64.unpack_from(buffer, pos + 2)[0]
            if length >> 63:
                raise WebSocketProtocolError(1002, "frame length has its top bit set")
            header_len = 10
        if masked:
            header_len += 4
            if available < header_len:
                return None
        return bool(b0 & 0x80), opcode, masked, length, header_len

    def _payload(self, masked: bool, length: int, header_len: int) -> bytes | None:
        """The frame's unmasked payload, consuming the frame; None while incomplete."""
        start = self._pos + header_len
        end = start + length
        buffer = self._buffer
        if len(buffer) < end:
            return None
        # Masked (every client frame): unmask straight from the buffer's slice, one copy.
        payload = unmask(buffer[start:end], bytes(buffer[start - 4 : start])) if masked else bytes(buffer[start:end])
        self._consume(end)
        return payload

    def _consume(self, end: int) -> None:
        self.frames += 1
        if end >= len(self._buffer):
            self._buffer.clear()
            self._pos = 0
        else:
            self._pos = end
            if end > 65536:  # keep the buffer from growing with a long-lived socket
                del self._buffer[:end]
                self._pos = 0

    # Control frames ------------------------------------------------------------------------

    def _control(self, fin: bool, opcode: int, masked: bool, length: int, header_len: int) -> Event | None:
        if not fin:
            raise WebSocketProtocolError(1002, "fragmented control frame")
        if length > _CONTROL_MAX:
            raise WebSocketProtocolError(1002, "control frame over 125 bytes")
        payload = self._payload(masked, length, header_len)
        if payload is None:
            return None
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        if not payload:
            return Closed(1005, "")
        if len(payload) == 1:
            raise WebSocketProtocolError(1002, "close frame with a one-byte payload")
        code = _CLOSE_CODE.unpack_from(payload)[0]
        if not is_valid_close_code(code):
            raise WebSocketProtocolError(1002, f"invalid close code {code}")
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            raise WebSocketProtocolError(1007, "close reason is not UTF-8") from None
        return Closed(code, reason)

    # Data frames ---------------------------------------------------------------------------

    def _data(self, fin: bool, opcode: int, masked: bool, length: int, header_len: int) -> Event | object:
        if opcode == OP_CONTINUATION:
            if self._opcode is None:
                raise WebSocketProtocolError(1002, "continuation frame outside a message")
        elif self._opcode is not None:
            raise WebSocketProtocolError(1002, "new message inside a fragmented one")
        size = self._size + length
        if self._max_fragments is not None and len(self._parts) >= self._max_fragments:
            raise WebSocketProtocolError(1009, f"message in over {self._max_fragments} fragments")
        if size > self._max and not self._skip_oversize:
            raise WebSocketProtocolError(1009, f"message over {self._max} bytes")
        if self._oversize or size > self._max:
            # Skip this frame's payload as it arrives: it is never buffered whole.
            self._oversize = True
            self._parts.clear()
            start = self._pos + header_len
            in_buffer = len(self._buffer) - start
            if in_buffer >= length:
                self._consume(start + length)
            else:
                self._skip = length - max(0, in_buffer)
                self._consume(len(self._buffer))
            self._size = size
            if opcode != OP_CONTINUATION:
                self._opcode = opcode
            if fin:
                return self._finish_oversize()
            return _MORE
        payload = self._payload(masked, length, header_len)
        if payload is None:
            return None
        if fin and opcode != OP_CONTINUATION:
            return Message(payload, opcode == OP_TEXT)
        if opcode != OP_CONTINUATION:
            self._opcode = opcode
        self._parts.append(payload)
        self._size = size
        if not fin:
            return _MORE
        message = Message(b"".join(self._parts), self._opcode == OP_TEXT)
        self._opcode, self._size = None, 0
        self._parts.clear()
        return message

    def _finish_oversize(self) -> Oversize:
        size = self._size
        self._opcode, self._size, self._oversize = None, 0, False
        return Oversize(size)


_MORE = object()
