"""The VAPI relay's byte pump: a VAPI call's socket spliced, unparsed, to another node's link.

The node that answered a call's webhook opens the VAPI call's socket at once and parks it
(VAPI takes one socket per call). When the call's stream lands on another node, that
node's VapiLink connects here instead of to VAPI, and from then on this module only moves
bytes: the other node's frames are client frames, masked by it, which VAPI accepts as
they are; VAPI's are unmasked server frames, which the other node accepts as they are;
pings, pongs and close frames pass through like the rest. Nothing is parsed, buffered
beyond one read, or logged per read (docs/vapi-relay.md).

Each direction is one greenlet doing one recv and one send per chunk. A side that
closes or fails ends the relay, and both sockets are closed: the peer of a dead side
learns it from its own socket, as it would from a direct connection. A peer that stops
reading stalls only its own relay: a send that cannot finish within SEND_TIMEOUT_S ends
the relay (gevent sockets wait cooperatively, so no other call waits meanwhile).
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass
from typing import Final

import gevent

__all__ = ["SEND_TIMEOUT_S", "Relay", "RelayEnd"]

# What one recv takes at most: VAPI's audio chunks and our 20 ms frames are far smaller,
# so a chunk is normally one frame or a burst of them, passed on in one send.
_CHUNK: Final = 65536
# A side that takes none of a chunk for this long is stalled: the relay ends.
SEND_TIMEOUT_S: Final = 2.0
# The other direction's greenlet, once one side ended: its socket is shut down, so it
# returns at once; this only bounds a wedged one.
_JOIN_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class RelayEnd:
    """How a relay ended: bytes passed each way, which side ended it and why, how long it lasted."""

    to_peer: int  # bytes from VAPI to the stream's node
    to_vapi: int
    reason: str  # "vapi_closed", "peer_closed", "vapi_failed", "peer_failed", "vapi_stalled", "peer_stalled", "stopped"
    seconds: float


class Relay:
    """Splices `vapi` (the parked VAPI call socket) and `peer` (the stream's node) until one side ends."""

    def __init__(self, vapi: socket.socket, peer: socket.socket) -> None:
        self._vapi = vapi
        self._peer = peer
        self._sent = {"peer": 0, "vapi": 0}
        self._reason = ""  # the first end seen: the one that ended the relay

    def run(self) -> RelayEnd:
        """Pass bytes both ways until one side ends; both sockets are closed when it returns."""
        started = time.monotonic()
        for sock in (self._vapi, self._peer):
            # Bounds each send (and wakes an idle read now and then, which just reads again).
            sock.settimeout(SEND_TIMEOUT_S)
        upstream = gevent.spawn(self._pump, self._peer, self._vapi, "vapi")
        try:
            self._pump(self._vapi, self._peer, "peer")
        finally:
            self._shutdown()
            upstream.join(_JOIN_S)
            upstream.kill(block=False)
            for sock in (self._vapi, self._peer):
                with contextlib.suppress(OSError):
                    sock.close()
        return RelayEnd(self._sent["peer"], self._sent["vapi"], self._reason, time.monotonic() - started)

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

    def _pump(self, source: socket.socket, sink: socket.socket, to: str) -> None:
        """Copy `source` to `sink` until either ends, then end the other direction too."""
        side = "peer" if to == "vapi" else "vapi"
        recv, send = source.recv, sink.sendall
        total = 0
        try:
            while True:
                try:
                    data = recv(_CHUNK)
                except TimeoutError:
                    continue  # silence: the keepalive of the link at the far end decides liveness
                except OSError:
                    self._end(f"{side}_failed")
                    return
                if not data:
                    self._end(f"{side}_closed")
                    return
                try:
                    send(data)
                except TimeoutError:
                    self._end(f"{to}_stalled")
                    return
                except OSError:
                    self._end(f"{to}_failed")
                    return
                total += len(data)
        finally:
            self._sent[to] = total
            self._shutdown()
