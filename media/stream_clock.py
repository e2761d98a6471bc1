"""Twilio's `media.timestamp` as the clock of the caller's audio.

Twilio drops audio under congestion (error 31930) and may repeat or reorder a frame.
The uplink to VAPI must stay continuous in time, so a gap is filled with silence of
its length and a duplicate or stale frame is dropped.
"""

from __future__ import annotations

__all__ = ["FRAME_MS", "StreamClock"]

FRAME_MS = 20
# A jump longer than this is a clock reset or a stalled stream, not lost packets:
# filling it would send minutes of silence in one burst. Fill this much and move on.
MAX_FILL_MS = 1000


class StreamClock:
    """Decides, per inbound frame, how much silence goes before it, or that it is dropped."""

    def __init__(self, frame_ms: int = FRAME_MS, max_fill_ms: int = MAX_FILL_MS) -> None:
        self._frame_ms = frame_ms
        self._max_fill_frames = max_fill_ms // frame_ms
        self._expected_ms: int | None = None
        self.filled_frames = 0
        self.dropped_frames = 0

    def admit(self, timestamp_ms: int, duration_ms: int | None = None) -> int | None:
        """Silent frames to insert before this frame, or None when it must be dropped."""
        step = duration_ms or self._frame_ms
        expected = self._expected_ms
        if expected is None:
            self._expected_ms = timestamp_ms + step
            return 0
        delta = timestamp_ms - expected
        # Half a frame of slack either way: Twilio's timestamps jitter by a millisecond or two.
        if delta <= -self._frame_ms // 2:
            self.dropped_frames += 1
            return None
        self._expected_ms = timestamp_ms + step
        if delta < self._frame_ms // 2:
            return 0
        gap = min((delta + self._frame_ms // 2) // self._frame_ms, self._max_fill_frames)
        self.filled_frames += gap
        return gap
