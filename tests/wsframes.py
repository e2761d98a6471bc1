"""WebSocket frames as a client would send them, well formed or not, for tests that attack the server."""

from __future__ import annotations

import struct

__all__ = ["client_frame"]


def client_frame(payload: bytes, opcode: int, *, fin: bool = True, mask: bytes | None = b"\x01\x02\x03\x04",
                 rsv: int = 0) -> bytes:
    """One frame (masked unless `mask` is None), written byte by byte from RFC 6455 §5.2."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if mask is not None else 0
    if n < 126:
        header = struct.pack("!BB", b0, mask_bit | n)
    elif n < 65536:
        header = struct.pack("!BBH", b0, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", b0, mask_bit | 127, n)
    if mask is None:
        return header + payload
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked
