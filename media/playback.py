"""What the caller hears of the assistant: Twilio's marks and the bridge's own send clock.

Assistant audio arrives from VAPI in a burst or paced in real time. It waits here, and
only a shallow lead (about 200 ms) goes to Twilio ahead of what Twilio has played, so a
barge-in can drop the rest at once. After every few frames a mark goes out; Twilio
echoes it when the audio before it has played. A mark echoed after a `clear` means that
audio was cancelled, not played, so every mark name carries the clear epoch it was sent in.

Marks alone cannot say the assistant is audible when audio arrives in real time: each
frame is played almost as soon as it is sent, so almost nothing is ever in flight. The
send clock can: Twilio plays what it is sent back to back, from when it arrives, so a
frame sent at stream time `now` plays from max(now, end of the previous frame). The
assistant is audible while Twilio holds unplayed audio (marks), while frames wait here,
or until `hangover_ms` after the last frame sent was due to end (the send clock).
Frames sent are written, at the stream time they are due to play, to the call's
far-end track, the echo canceller's reference (audio/echo.py).

A barge-in may pause the assistant's turn instead of dropping it (`clear(..., pause=True)`):
Twilio drops what it holds all the same, but what the caller had not yet heard, by the
send clock, is kept here with what arrives meanwhile, to go on from where the caller
stopped hearing it (`resume`) or be dropped (`drop_paused`). Why: actors/twilio.py.

The stream's clock is a guess until its first media frame (the `start` message's
arrival, or an actor's restart): frames sent before then, a greeting waiting for the
stream, say, are moved once it is known. Left where the guess put them, a burst's whole
first turn was timed by it (each frame plays from the end of the one before), the next
turn by the real clock, and the echo's delay seemed to step between them by the guess's
error (70 ms over sockets in bench.bargein), where the canceller took it for the caller.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from audio.echo import FarEndTrack

__all__ = ["FRAME_BYTES", "HANGOVER_MS", "RESUME_AFTER_MS", "MarkResult", "Playback"]

FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
FRAME_MS = 20
# A mark every 2 frames keeps Twilio's buffer between lead-40 ms and lead: fine enough
# that it never runs dry waiting for an echo, coarse enough to add only 25 small
# messages a second.
MARK_EVERY_FRAMES = 2
# After the last assistant audio was due to have played, the assistant still counts as
# audible this long (PLAYBACK_HANGOVER_MS): real-time delivery leaves 20-60 ms gaps
# between frames, and a caller who talks over the last word still means to interrupt.
HANGOVER_MS = 300
# A turn a barge-in paused goes on this long after the caller stopped speaking, if VAPI has
# not said it was interrupted (BARGE_IN_RESUME_MS; why: actors/twilio.py). VAPI decides on
# the caller's speech as it hears it, and on words once they are transcribed, which may
# come a few hundred ms after the speech; the VAD says the caller stopped after its
# hangover, 400 ms after the last sound, so the caller hears about 0.7 s of silence.
RESUME_AFTER_MS = 300
# Frames remembered while the clock is a guess: Twilio's first media frame comes within
# tens of ms of `start`; two seconds' worth is more than the lead will ever send before it.
_GUESSED_MAX = 100


class MarkResult:
    PLAYED = "played"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"


class Playback:
    """Outbound queue, pacing by lead, and mark bookkeeping for one stream."""

    def __init__(
        self, *, lead_ms: int, max_frames: int, hangover_ms: int = HANGOVER_MS, far_end: FarEndTrack | None = None
    ) -> None:
        self._lead_ms = lead_ms
        self._max_frames = max_frames
        self._hangover_ms = hangover_ms
        self._far_end = far_end
        self.play_end_ms = -float(hangover_ms) - 1.0  # stream time the last frame sent is due to end
        self._queue: deque[tuple[bytes, float, int]] = deque()  # (frame, level, received_ns)
        self._epoch = 0
        self.sent_ms = 0  # stream of assistant audio handed to Twilio, this epoch
        self.played_ms = 0  # of that, what Twilio's marks say has played
        self._since_mark = 0
        # Sent, not yet played by the marks: (end ms, level, frame, stream ms it was due to start, received ns).
        self._in_flight: deque[tuple[int, float, bytes, float, int]] = deque()
        # A paused turn: what the caller had not heard at the barge-in, and what came after. None: not paused.
        self._paused: deque[tuple[bytes, float, int]] | None = None
        self.dropped_overflow = 0
        self.marks_played = 0
        self.marks_cancelled = 0
        # Frames sent while the stream's clock was a guess (before its first media frame):
        # (stream ms they were timed at, frame), to move once the clock is known. None: known.
        self._guessed: list[tuple[float, bytes]] | None = []

    # Filling -----------------------------------------------------------------------

    def enqueue(self, ulaw: bytes, level_dbfs: float, received_ns: int = 0) -> int:
        """Queue assistant audio in 20 ms frames (kept aside while paused); returns how many
        old frames overflowed."""
        queue = self._queue if self._paused is None else self._paused
        dropped = 0
        for start in range(0, len(ulaw), FRAME_BYTES):
            queue.append((ulaw[start : start + FRAME_BYTES], level_dbfs, received_ns))
        # The bound only protects memory from a peer that never stops sending; a normal
        # reply (tens of seconds) fits. Drop the oldest: the newest is closest to now.
        while len(queue) > self._max_frames:
            queue.popleft()
            dropped += 1
        self.dropped_overflow += dropped
        return dropped

    def pump(
        self, send_media: Callable[[bytes, int], None], send_mark: Callable[[str], None], now_ms: float = 0.0
    ) -> int:
        """Send queued frames while Twilio holds less than the lead; returns frames sent.

        `send_media(frame, received_ns)` gets when the frame's audio arrived from VAPI.
        `now_ms` is the inbound stream's time now: what the send clock starts from.
        """
        sent = 0
        far_end = self._far_end
        while self._queue and self.sent_ms - self.played_ms < self._lead_ms:
            frame, level, received_ns = self._queue.popleft()
            starts = max(self.play_end_ms, now_ms)
            self.play_end_ms = starts + len(frame) * FRAME_MS / FRAME_BYTES
            if far_end is not None:
                far_end.write(starts, frame)
            if self._guessed is not None and len(self._guessed) < _GUESSED_MAX:
                self._guessed.append((starts, frame))
            send_media(frame, received_ns)
            self.sent_ms += len(frame) * FRAME_MS // FRAME_BYTES
            self._in_flight.append((self.sent_ms, level, frame, starts, received_ns))
            self._since_mark += 1
            sent += 1
            if self._since_mark >= MARK_EVERY_FRAMES or not self._queue:
                send_mark(f"{self._epoch}:{self.sent_ms}")
                self._since_mark = 0
        return sent

    def clock_guessed(self) -> None:
        """A new stream: its clock is a guess until `clock_known`."""
        self._guessed = []

    def clock_known(self, moved_ms: float) -> None:
        """The stream's clock is known (its first media frame said when the stream began): the
        frames sent before were timed by a guess `moved_ms` early. Move them, on the far-end
        track too, and the play-out end, so a later turn is timed as this one was."""
        guessed, self._guessed = self._guessed, None
        if not guessed or not moved_ms:
            return
        self.play_end_ms += moved_ms
        if self._far_end is not None:
            # Only what this guess wrote: after an actor's restart the track holds the audio
            # its previous incarnation sent, timed right, still echoing.
            last_ms, last = guessed[-1]
            self._far_end.erase(guessed[0][0], last_ms + len(last) * FRAME_MS / FRAME_BYTES)
            for at_ms, frame in guessed:
                self._far_end.write(at_ms + moved_ms, frame)

    # Marks and clearing --------------------------------------------------------------

    def on_mark(self, name: str) -> str:
        """Account for an echoed mark: played, cancelled by a clear, or not ours."""
        epoch_text, _, ms_text = name.partition(":")
        try:
            epoch, ms = int(epoch_text), int(ms_text)
        except ValueError:
            return MarkResult.UNKNOWN
        if epoch != self._epoch:
            self.marks_cancelled += 1
            return MarkResult.CANCELLED
        if ms > self.played_ms:
            self.played_ms = min(ms, self.sent_ms)
        while self._in_flight and self._in_flight[0][0] <= self.played_ms:
            self._in_flight.popleft()
        self.marks_played += 1
        return MarkResult.PLAYED

    def advance(self, ms: int) -> None:
        """Twilio stopped echoing marks: count `ms` more as played, by the clock instead."""
        self.played_ms = min(self.sent_ms, self.played_ms + ms)
        while self._in_flight and self._in_flight[0][0] <= self.played_ms:
            self._in_flight.popleft()

    def clear(self, now_ms: float | None = None, *, pause: bool = False) -> int:
        """Drop everything queued and start a new epoch; returns the frames dropped.

        `now_ms`: the stream time of the `clear`; what was due to play after it never will.
        `pause`: keep instead what the caller had not heard by `now_ms` (a frame cut part-way
        is kept whole), and from now on what is queued, until `resume` or `drop_paused`.
        """
        dropped = len(self._queue)
        if pause and now_ms is not None:
            kept = self._paused if self._paused is not None else deque()
            kept.extend((frame, level, received_ns) for _, level, frame, starts, received_ns in self._in_flight
                        if starts + len(frame) * FRAME_MS / FRAME_BYTES > now_ms)
            kept.extend(self._queue)
            self._paused = kept
            dropped = 0
        if now_ms is not None and self.play_end_ms > now_ms:
            self.play_end_ms = now_ms
            if self._far_end is not None:
                self._far_end.cut(now_ms)
            if self._guessed:
                self._guessed = [(at_ms, frame) for at_ms, frame in self._guessed if at_ms < now_ms]
        self._queue.clear()
        self._in_flight.clear()
        self._epoch += 1
        self.sent_ms = 0
        self.played_ms = 0
        self._since_mark = 0
        return dropped

    def resume(self) -> int:
        """Go on with the paused turn from where the caller stopped hearing it; returns its frames."""
        paused, self._paused = self._paused, None
        if not paused:
            return 0
        paused.extend(self._queue)
        self._queue = paused
        return len(paused)

    def drop_paused(self) -> int:
        """Drop the paused turn (VAPI says it was interrupted, or another began); returns its frames."""
        paused, self._paused = self._paused, None
        return len(paused) if paused is not None else 0

    # State ---------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused is not None

    @property
    def paused_frames(self) -> int:
        return len(self._paused) if self._paused is not None else 0

    @property
    def audible(self) -> bool:
        """Twilio still has, or we still hold, assistant audio for the caller (marks only)."""
        return bool(self._queue) or self.sent_ms > self.played_ms

    def audible_at(self, now_ms: float) -> bool:
        """`audible`, or the send clock says the caller heard the assistant within the hangover."""
        return bool(self._queue) or self.sent_ms > self.played_ms or now_ms < self.play_end_ms + self._hangover_ms

    @property
    def queued_frames(self) -> int:
        return len(self._queue)

    @property
    def far_end_dbfs(self) -> float | None:
        """Loudest level among frames sent but not yet played: what may echo back now."""
        if not self._in_flight:
            return None
        return max(entry[1] for entry in self._in_flight)
