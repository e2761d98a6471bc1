"""Caller audio on its way to VAPI, kept long enough to replay after a dead link.

The buffer belongs to the call, not to the VapiActor, so it survives the actor's
restart. The link marks the moment it last showed life (a pong or a frame); whatever
was sent after that may have been swallowed, and is what the next link sends first.
"""

from __future__ import annotations

from collections import deque

__all__ = ["UplinkBuffer"]


class UplinkBuffer:
    """A bounded sequence of uplink frames with a 'last known delivered' mark."""

    def __init__(self, capacity_frames: int) -> None:
        self._frames: deque[tuple[int, bytes]] = deque(maxlen=max(1, capacity_frames))
        self._capacity = capacity_frames
        self.last_seq = 0
        self.alive_seq = 0  # frames up to this one reached a link that was still alive
        self.sent_seq = 0  # the last frame handed to a link

    def append(self, data: bytes) -> int:
        """Store a frame; returns its sequence number (from 1)."""
        self.last_seq += 1
        if self._capacity > 0:
            self._frames.append((self.last_seq, data))
        return self.last_seq

    def mark_sent(self, seq: int) -> None:
        if seq > self.sent_seq:
            self.sent_seq = seq

    def mark_alive(self, seq: int | None = None) -> None:
        """The link answered: everything it was sent up to `seq` (default: all) got there."""
        seq = self.sent_seq if seq is None else seq
        if seq > self.alive_seq:
            self.alive_seq = seq

    def pending_replay(self) -> list[tuple[int, bytes]]:
        """Frames after the last sign of life, oldest first, at most the capacity."""
        if self._capacity <= 0:
            return []
        return [(seq, data) for seq, data in self._frames if seq > self.alive_seq]
