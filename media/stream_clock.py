"""Twilio's `media.timestamp` as the clock of the caller's audio.

Twilio drops audio under congestion (error 31930) and may repeat or reorder a frame.
The uplink to VAPI must stay continuous in time, so a gap is filled with silence of
its length and a duplicate or stale frame is dropped.

Filling is bounded, since the timestamps come from the peer: a jump longer than
MAX_FILL_MS is a clock reset (nothing is filled), and the silence inserted is limited to
FILL_RATE frames per second of real time with a small burst, so a socket whose every
frame jumps ahead costs at most about twice an honest stream.
"""

from __future__ import annotations

from media.budget import TokenBucket

__all__ = ["FILL_RATE", "FRAME_MS", "MAX_FILL_MS", "StreamClock"]

FRAME_MS = 20
# A jump longer than this is a clock reset or a stalled stream, not lost packets:
# filling it would send seconds of silence in one burst.
MAX_FILL_MS = 1000
# Silent frames per second of real time, and how many may be saved up: one second of
# loss is filled at once, and steady loss of any size is at most real time.
FILL_RATE = 50.0
FILL_BURST = 100.0


class StreamClock:
    """Decides, per inbound frame, how much silence goes before it, or that it is dropped."""

    def __init__(self, frame_ms: int = FRAME_MS, max_fill_ms: int = MAX_FILL_MS) -> None:
        self._frame_ms = frame_ms
        self._max_fill_frames = max_fill_ms // frame_ms
        self._expected_ms: int | None = None
        self._fill_budget: TokenBucket | None = None
        self.filled_frames = 0
        self.dropped_frames = 0
        self.resets = 0
        self.fill_refused = 0  # silent frames a gap needed that the budget did not allow

    def admit(self, timestamp_ms: int, duration_ms: int | None = None, now_s: float = 0.0) -> int | None:
        """Silent frames to insert before this frame, or None when it must be dropped.

        `now_s` is the real time the frame arrived (any monotonic clock), for the fill budget.
        """
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
        gap = (delta + self._frame_ms // 2) // self._frame_ms
        if gap > self._max_fill_frames:
            self.resets += 1
            return 0
        budget = self._fill_budget
        if budget is None:
            budget = self._fill_budget = TokenBucket(FILL_RATE, FILL_BURST, now_s)
        allowed = budget.take_up_to(gap, now_s)
        self.fill_refused += gap - allowed
        self.filled_frames += allowed
        return allowed
