"""Reading a gevent socket without gevent's cost per wait: no timer, no EWOULDBLOCK raised and caught.

A gevent socket's `recv_into` first tries the read (which fails with EWOULDBLOCK when the
socket is empty, raised and caught), then waits for the socket with its timeout (a timer
started and stopped per wait), then reads again. A media socket's reader drains the
socket at every wake-up, so its next read is nearly always one that would block: 50 times
a second a call, per direction, that paid for an exception, a timer and a system call for
nothing. `SocketReader.recv_into` waits first when it has been told the socket is drained,
with no timeout, on the socket's own read watcher (so a `close()` of the socket in another
greenlet still wakes it with an error, as gevent's read does), then reads once.

Deadlines for silence are the owner's to enforce another way (links/twilio.py checks its
idle deadline from a timer once in a while; VAPI's keepalive pings). The socket keeps its
timeout for writes. A socket this does not know how to read raw (TLS, for one) is read
through gevent as before, with its timeout: `recv_into` then raises TimeoutError.
"""

from __future__ import annotations

import _socket
import socket
from typing import Any

import gevent
import gevent.socket

__all__ = ["SocketReader"]


class SocketReader:
    """Reads one gevent socket from one greenlet (the socket's reader)."""

    __slots__ = ("_raw_recv_into", "_sock", "_wait", "raw")

    def __init__(self, sock: socket.socket) -> None:
        self._sock: Any = sock
        # gevent's socket wraps a non-blocking socket of the standard library (`_sock`)
        # and waits on `_read_event`, an I/O watcher of its hub (gevent/_socket3.py). Only
        # that exact class is read raw: a subclass (gevent's SSLSocket) must decrypt.
        inner = getattr(sock, "_sock", None)
        self.raw = (
            type(sock) is gevent.socket.socket
            and isinstance(inner, _socket.socket)
            and getattr(sock, "_read_event", None) is not None
        )
        self._raw_recv_into = inner.recv_into if self.raw else None  # type: ignore[union-attr]
        self._wait = gevent.get_hub().wait if self.raw else None

    def recv_into(self, view: memoryview, drained: bool) -> int:
        """Read what the socket has into `view`, waiting for it first when `drained`.

        Returns the byte count (0 at the end of the stream). Raises OSError when the socket
        failed or was closed, and TimeoutError only for a socket read through gevent.
        """
        if not self.raw:
            return int(self._sock.recv_into(view))
        if drained:
            self._wait_readable()
        recv_into = self._raw_recv_into
        while True:
            try:
                return int(recv_into(view))  # type: ignore[misc]
            except BlockingIOError:
                self._wait_readable()

    def _wait_readable(self) -> None:
        event = self._sock._read_event  # noqa: SLF001 - see __init__; None once closed
        if event is None:  # closed by another greenlet
            raise OSError("socket closed")
        self._wait(event)  # type: ignore[misc]
