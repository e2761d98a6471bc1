"""The VAPI relay's byte pump: a VAPI call's socket spliced, unparsed, to another node's link.

The node that answered a call's webhook opens the VAPI call's socket at once and parks it
(VAPI takes one socket per call). When the call's stream lands on another node, that
node's VapiLink connects here instead of to VAPI, and from then on this module only moves
bytes: the other node's frames are client frames, masked by it, which VAPI accepts as
they are; VAPI's are unmasked server frames, which the other node accepts as they are;
pings, pongs and close frames pass through like the rest. Nothing is parsed, buffered
beyond one read, or logged per read (docs/vapi-relay.md).

Each direction is one greenlet doing one read and one send per chunk, through one
buffer of its own (links/recv.py's reader: no timer and no exception per wait). A side that
closes or fails ends the relay, and both sockets are closed: the peer of a dead side
learns it from its own socket, as it would from a direct connection. A peer that stops
reading stalls only its own relay: a send that cannot finish within SEND_TIMEOUT_S ends
the relay (gevent sockets wait cooperatively, so no other call waits meanwhile). That
deadline is kept by a watchdog greenlet that looks twice a second, not by socket
timeouts, which would arm and cancel a timer on every read that waits (about 3 µs a
chunk, measured; docs/vapi-relay.md, Cost).
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass
from typing import Final

import gevent

from links.recv import SocketReader

__all__ = ["SEND_TIMEOUT_S", "Relay", "RelayEnd"]

# What one recv takes at most: VAPI's audio chunks and our 20 ms frames are far smaller,
# so a chunk is normally one frame or a burst of them, passed on in one send.
_CHUNK: Final = 65536
# A side that takes none of a chunk for this long is stalled: the relay ends.
SEND_TIMEOUT_S: Final = 2.0
# How often the watchdog looks at the sends in progress.
_WATCH_S: Final = 0.5
# The other direction's greenlet, once one side ended: its socket is shut down, so it
# returns at once; this only bounds a wedged one.
_JOIN_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class RelayEnd:
    """How a relay ended: bytes passed each way, which side ended it and why, how long it lasted."""

    to_peer: int  # bytes from VAPI to the stream's node
    to_vapi: int
    chunks_to_peer: int  # reads passed on (each one recv and one send)
    chunks_to_vapi: int
    reason: str  # "vapi_closed", "peer_closed", "vapi_failed", "peer_failed", "vapi_stalled", "peer_stalled", "stopped"
    seconds: float


class Relay:
    """Splices `vapi` (the parked VAPI call socket) and `peer` (the stream's node) until one side ends."""

    def __init__(self, vapi: socket.socket, peer: socket.socket) -> None:
        self._vapi = vapi
        self._peer = peer
        self._sent = {"peer": 0, "vapi": 0}
        self._chunks = {"peer": 0, "vapi": 0}
        # When the send in progress towards each side began (monotonic s); 0.0: none is.
        self._sending = {"peer": 0.0, "vapi": 0.0}
        self._reason = ""  # the first end seen: the one that ended the relay

    def run(self) -> RelayEnd:
        """Pass bytes both ways until one side ends; both sockets are closed when it returns."""
        started = time.monotonic()
        for sock in (self._vapi, self._peer):
            sock.settimeout(None)  # reads wait as long as the line is quiet; the watchdog bounds sends
        upstream = gevent.spawn(self._pump, self._peer, self._vapi, "vapi")
        watchdog = gevent.spawn(self._watch)
        try:
            self._pump(self._vapi, self._peer, "peer")
        finally:
            self._shutdown()
            upstream.join(_JOIN_S)
            gevent.killall([upstream, watchdog], block=False)
            for sock in (self._vapi, self._peer):
                with contextlib.suppress(OSError):
                    sock.close()
        return RelayEnd(self._sent["peer"], self._sent["vapi"], self._chunks["peer"], self._chunks["vapi"],
                        self._reason, time.monotonic() - started)

    def stop(self) -> None:
        """End the relay now (this node is stopping): both directions return at once."""
        self._end("stopped")
        self._shutdown()

    def _shutdown(self) -> None:
        for sock in (self._vapi, self._peer):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _end(self, reason: str) -> None:
        if not self._reason:
            self._reason = reason

    def _watch(self) -> None:
        """End the relay when a send has waited past SEND_TIMEOUT_S (its peer stopped reading)."""
        sending = self._sending
        while True:
            gevent.sleep(_WATCH_S)
            now = time.monotonic()
            for to, since in sending.items():
                if since and now - since > SEND_TIMEOUT_S:
                    self._end(f"{to}_stalled")
                    self._shutdown()  # the stuck send fails at once
                    return

    def _pump(self, source: socket.socket, sink: socket.socket, to: str) -> None:
        """Copy `source` to `sink` until either ends, then end the other direction too."""
        side = "peer" if to == "vapi" else "vapi"
        recv_into, send, clock, sending = SocketReader(source).recv_into, sink.sendall, time.monotonic, self._sending
        view = memoryview(bytearray(_CHUNK))
        total = chunks = 0
        drained = False  # the last read left the socket empty: wait before reading
        try:
            while True:
                try:
                    size = recv_into(view, drained)
                except OSError:  # TimeoutError cannot happen: the socket has no timeout
                    self._end(f"{side}_failed")
                    return
                if not size:
                    self._end(f"{side}_closed")
                    return
                drained = size < _CHUNK
                sending[to] = clock()
                try:
                    send(view[:size])  # sent whole before the buffer is read into again
                except OSError:
                    self._end(f"{to}_failed")
                    return
                sending[to] = 0.0
                total += size
                chunks += 1
        finally:
            self._sent[to] = total
            self._chunks[to] = chunks
            self._shutdown()
