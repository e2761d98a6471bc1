"""The load generator's own RFC 6455 and HTTP/1.1, kept to what it needs and cheap.

The load process plays both ends of thousands of frames a second, so it does no more
work per frame than the wire requires: frames it sends are built from pre-built parts,
client frames are masked in C (wsaccel) with a random key per socket, and frames it
receives are only parsed as far as the measurement needs (a binary payload is counted,
never unmasked).
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket

from wsaccel.xormask import XorMaskerSimple  # type: ignore[import-untyped]

from protocols.websocket import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, encode_frame, encode_masked_frame

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "WireError",
    "accept_key",
    "client_frame",
    "read_http_head",
    "server_frame",
    "unmask",
]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEAD = 16384


class WireError(Exception):
    """The peer answered something the load generator cannot go on with."""


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())  # noqa: S324 - RFC 6455 says SHA-1


# The bridge's own encoders: the same frames, built one way.
server_frame = encode_frame
client_frame = encode_masked_frame


def unmask(payload: bytes, key: bytes) -> bytes:
    return bytes(XorMaskerSimple(key).process(payload))


def new_mask_key() -> bytes:
    return os.urandom(4)


def read_http_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """An HTTP message head (up to the blank line) and whatever bytes followed it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise WireError("connection closed before the HTTP head ended")
        data += chunk
        if len(data) > _MAX_HEAD:
            raise WireError("HTTP head too long")
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def headers_of(head: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """The start line and the header fields (names lower-cased) of an HTTP head."""
    lines = head.split(b"\r\n")
    fields: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    return lines[0], fields
