"""Caller audio on its way to VAPI, kept long enough to replay after a dead link.

The buffer belongs to the call, not to the VapiActor, so it survives the actor's
restart. The next link is a new VAPI call, which has heard nothing of the old one: it
must first hear what the old call had not answered. So the mark is set when VAPI
speaks (its audio vouches for everything sent before it), not on mere signs of life:
a pong or an event proves only delivery, and audio VAPI heard but never answered (its
call died first) is lost to the conversation unless it is replayed.
"""

from __future__ import annotations

from collections import deque

__all__ = ["UplinkBuffer"]


class UplinkBuffer:
    """A bounded sequence of uplink frames with a 'last answered by VAPI' mark."""

    def __init__(self, capacity_frames: int) -> None:
        self._frames: deque[tuple[int, bytes]] = deque(maxlen=max(1, capacity_frames))
        self._capacity = capacity_frames
        self.last_seq = 0
        self.answered_seq = 0  # frames up to this one were sent before VAPI last spoke
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

    def mark_answered(self) -> None:
        """VAPI spoke: everything sent so far was taken into its conversation, none needs a replay."""
        self.answered_seq = self.sent_seq

    def pending_replay(self) -> list[tuple[int, bytes]]:
        """Frames sent after VAPI last spoke (or never sent), oldest first, at most the capacity."""
        if self._capacity <= 0:
            return []
        return [(seq, data) for seq, data in self._frames if seq > self.answered_seq]
