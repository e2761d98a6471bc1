"""The assistant's echo in the caller's audio: found, tracked and removed, frame by frame.

A caller on a speakerphone (or a handset with poor isolation, or a line with a hybrid)
sends back what the bridge sent, some tens to hundreds of milliseconds later, quieter
and band-limited. The bridge has the exact audio it sent and knows when it was due to
play (`FarEndTrack`, written by the Twilio side on the inbound stream's clock), so it
can subtract the echo before the VAD judges the caller (`EchoCanceller`):

1. **Delay**: generalised cross-correlation with phase transform (GCC-PHAT, Knapp and
   Carter 1976) between the last half second of caller audio and the far end, over lags
   0..max_delay_ms, every 100 ms while the assistant is audible. PHAT whitening makes
   the peak sharp whatever the spectra of the two voices, and is restricted to the
   telephone band so mu-law noise outside it does not count. A peak must stand well
   above the correlation's spread to be believed; a new delay must be seen twice.
2. **Path**: a short filter placed at that delay, 6 ms wide, for the gain and the band of
   the echo path: solved by least squares over the search window when placed (and again
   over the next few windows), which a caller talking over the echo does not mislead (their
   voice does not correlate with the far end), then followed by normalised LMS (Widrow and
   Hoff; as in G.168-style line echo cancellers) on frames that look like echo alone. Each
   search also bounds the echo left by what of the residual still correlates with the far
   end near the delay, so the prediction below comes down while the caller talks.
3. **What is left**: the residual echo is predicted per frame as a tracked ratio times
   the loudest far-end frame around the delay; while no delay is known, lag by lag over
   the whole delay range: at lags the searches have seen enough far end at, the
   least-squares gain found there; at the others (the start of a turn, which may be coming
   back at any delay), the part of the frame the far end there explains. A frame must
   stand RESIDUAL_MARGIN_DB above that prediction to be judged
   by the VAD at all. The ratio starts at -12 dB (a speakerphone's echo is -10 to -20 dB,
   and the loudest frame of a 400 ms window is several dB over the average) and is learnt
   from frames of echo alone: down quickly, up slowly, never above -6 dB (the smallest
   echo return loss G.168 allows). While no delay is known it is learnt only once the
   assistant has been audible for the whole delay range, so an echo still on its way
   cannot teach it that there is none.

Pure numpy, no I/O; one instance per call, fed every caller frame in order.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from audio.mulaw import ulaw_to_pcm16

__all__ = ["MAX_DELAY_MS", "RESIDUAL_MARGIN_DB", "EchoCanceller", "EchoEstimate", "FarEndTrack", "track_keep_ms"]

# Echo comes back 40-300 ms after the audio was due to play (network both ways, Twilio's
# and the handset's jitter buffers, the room); the search covers that with room to spare.
MAX_DELAY_MS = 400
# The shortest way back: the bridge's audio must cross the network to Twilio, the phone
# network to the handset, and all of that back (plus a jitter buffer each way) before its
# echo is in the caller's stream; the 40-300 ms the echo takes (docs/barge-in.md) starts here.
_MIN_DELAY_MS = 40

# How far over the predicted residual echo a frame must be to count as the caller. The
# prediction is already the loudest far-end frame near the delay times the mean ratio.
RESIDUAL_MARGIN_DB = 6.0

_RATE = 8000
# A frame must be this much over the predicted echo (RESIDUAL_MARGIN_DB, as power) to count.
_MARGIN_POWER = 10.0 ** (RESIDUAL_MARGIN_DB / 10.0)
# How far off the filter's delay a slipped echo is looked for: the play clock of real-time
# audio jumps after each gap in delivery, and a delay found on voiced speech can be a pitch
# period off. 25 ms (two pitch periods) missed slips over sockets once the filter, solved by
# least squares, cancelled 30-40 dB and the ratio had learnt that: the slipped echo passed
# whole for the caller. 60 ms halved those false barge-ins; 100 ms cut a few more but let a
# caller's voice match the assistant's by chance often enough to add 60 ms to the p95.
_SLIP_MS = 60
# What is left of the echo after cancelling is looked for within this of the delay (the
# filter's own span and the play clock's jitter): a wider span only adds chance matches of
# the caller's voice to the bound, and slips are the slipped-echo check's to find.
_LEFT_SPAN_MS = 25
# Real-time audio plays a few ms early or late after each gap in delivery, on the bridge's
# clock and on the phone's, so the echo path's delay steps by a few ms at a time; even a
# quarter of a millisecond undoes the cancelling at 2 kHz. A frame cancelled worse than
# the ratio predicts by _REALIGN_OVER (3 dB) is tried with the filter's echo up to
# _JITTER_MS early or late, and a move that cancels _REALIGN_GAIN (1 dB) better is taken.
_JITTER_MS = 20
_REALIGN_OVER = 2.0
_REALIGN_GAIN = 10.0 ** (1.0 / 10.0)
# On a frame of echo alone, a move of up to this is taken for good (the filter follows it).
# Between turns both play clocks start again, so the path can step by several ms at a
# turn's start; moved 2 ms at a time, the filter cancelled a few dB where the ratio had
# learnt 30, and the echo passed for the caller 250-700 ms into the turn
# (bench.bargein_offline, steps of up to 8 ms at each new turn). Moves of up to 20 ms
# matched a pitch period now and then and let more echo through within turns.
_STEP_MS = 10
# A frame that would still pass for the caller has the filter solved again over the last
# _REFIT_MS, and the new one is kept if it leaves less than _REFIT_LEFT of them: a caller's
# voice does not correlate with the far end, so it cannot be cancelled that well. Tried at
# most every _REFIT_EVERY_FRAMES frames (~100 µs each); every fourth let a few more through.
_REFIT_MS = 100
_REFIT_LEFT = 0.2
_REFIT_GAIN = 4.0
_REFIT_EVERY_FRAMES = 2
# ... and counts when it is most of the frame: a caller's voiced frame can match some lag of
# the assistant's by chance (two voices' harmonics), but by much less than its own echo.
_SLIPPED_SHARE = 0.5
_FULL_SCALE_POWER = 32767.0 * 32767.0
# The far end kept beyond what the delay search reads behind the frame being judged and
# what the Twilio side writes ahead of it: the caller's audio can arrive this much later
# than the stream clock the far end is written on (network jitter, a stalled socket).
_LATE_ARRIVAL_MS = 500
# Delay search: the last half second of audio (2-3 syllables, enough for a sharp peak;
# much shorter windows give false peaks on vowels, which are nearly periodic), every
# 100 ms while no delay is known, every 200 ms to track it once found. Its FFTs (8192
# points) are most of the canceller's cost, so they run only while the far end is active.
_SEARCH_WINDOW_MS = 512
_SEARCH_EVERY_FRAMES = 5
_TRACK_EVERY_FRAMES = 10
# Once three searches in a row have confirmed the delay, every 500 ms is enough to follow it.
_SETTLED_EVERY_FRAMES = 25
_SETTLED_AFTER = 3
# A line with no echo would pay for a full search every 100 ms while the assistant talks,
# for the whole call. After searches in a row that find nothing, search less often (every
# 200 ms after 4, every 400 ms after 8); the first that finds a path starts afresh.
_QUIET_AFTER = 4
_QUIET_EVERY_FRAMES = (10, 20)
# The far end must have been active for this much of the window before a search.
_SEARCH_MIN_ACTIVE_MS = 200
# PHAT weighting over the telephone band only (G.712: 300-3400 Hz); outside it is
# mu-law quantisation noise and the band filters' edges.
_BAND_LOW_HZ, _BAND_HIGH_HZ = 250.0, 3500.0
# A correlation peak counts when it is this many times the RMS of the correlation over
# the searched lags: the largest of 3,000 uncorrelated lags is about 3.7 times it.
_PEAK_OVER_RMS = 7.0
# A peak is followed only if the far end at that delay explains this much of the caller's
# side's energy over the window (-13 dB: an echo 10 dB down under a caller as loud as the
# assistant still qualifies).
_MIN_EXPLAINED = 0.05
# While no delay is known, a search also bounds the echo lag by lag (the least-squares gain
# of the far end at each lag, times this for the estimate's spread), where the far end at
# that lag was active for at least _BOUND_EVIDENCE samples of the window (100 ms); the
# bound is kept in blocks of _BOUND_BLOCK lags (5 ms).
_BOUND_FACTOR = 2.0
# Bounding the ratio by what of the residual correlates costs two FFTs a search; below
# -25 dB the frame-by-frame learning has it in hand.
_BOUND_LEFT_ABOVE = 10.0 ** (-25.0 / 10.0)
# The filter is solved again over the window of this many searches after it was placed.
_RESOLVE_SEARCHES = 4
# Only frames above -50 dBFS are worth the lag-by-lag or the slipped-echo check (the VAD
# ignores anything under -45 dBFS).
_MIN_ACTIVE_NEAR = _FULL_SCALE_POWER * 1e-5
_BOUND_EVIDENCE = 800
_BOUND_BLOCK = 40
# Two estimates agree within this; a changed delay must be seen twice before the filter moves.
_DELAY_AGREE_SAMPLES = 4
# NLMS filter: 16 taps before the estimated delay (the delay is found to a sample or two,
# but the play clock of real-time audio wanders by a few ms) and 32 after (the band
# filter's response). Step size 0.5 is the usual compromise between speed and misadjustment.
_PRE_TAPS = 16
_TAPS = 48
_NLMS_STEP = 0.5
# The block update is normalised by the block's energy times this, not times the taps
# (the textbook NLMS bound): one block of 160 samples averages the gradient, so a step
# 3x bolder converges in about a second on speech; a third of that diverged in tests.
_STEP_SPREAD = 16
# Residual echo ratio before anything is learnt, and its ceiling (G.168's minimum echo
# return loss, 6 dB).
_INITIAL_RATIO = 10.0 ** (-16.0 / 10.0)
_MAX_RATIO = 0.25
# How the ratio follows frames of echo alone: down within ~0.2 s (within 0.1 s when a
# frame is 10 dB under it: no echo at all), up as fast from frames within 6 dB over it
# (they do not pass as the caller either, so they can only be echo as far as the VAD goes).
_RATIO_DOWN = 0.1
_RATIO_DROP = 0.5
_RATIO_UP = 0.1
# A frame is taken for echo alone when it is no more than 6 dB over the prediction.
_ECHO_ALONE_FACTOR = 4.0
# The ratio never goes below this (the canceller is never trusted beyond 40 dB).
_MIN_RATIO = 1e-4
# The loudest far-end frame within this of the delay is what may echo now (jitter of
# the play clock, reverberation tail).
_SPREAD_MS = 20
# Far-end frames quieter than this (-60 dBFS) carry nothing worth cancelling.
_ACTIVE_POWER = _FULL_SCALE_POWER * 1e-6


def _gram_indices() -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]:
    """Where each entry of a filter solve's Gram matrix is read from (see EchoCanceller._solve)."""
    taps = np.arange(_TAPS)
    later = np.maximum.outer(taps, taps)
    lag = later - np.minimum.outer(taps, taps)
    return lag.ravel(), (lag * _TAPS + _TAPS - 1 - later).ravel(), np.add.outer(taps, taps[:-1])


# Shared by every call (54 KB): the lag of each entry, its place among the edge sums, and
# [d, n] = n + d for the edge products.
_GRAM_LAG, _GRAM_EDGE, _EDGE_AHEAD = _gram_indices()


class _History:
    """A linear buffer of float32 samples on an absolute sample clock, zeros where unwritten.

    Positions only grow (old samples fall off the front); reading returns views, valid
    until the next write.
    """

    __slots__ = ("_base", "_buf", "_end", "_keep")

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._buf = np.zeros(keep + keep // 2, dtype=np.float32)  # shifts every keep/2 samples written
        self._base = 0  # absolute position of _buf[0]
        self._end = 0  # absolute position up to which _buf holds data (zeros included)

    @property
    def end(self) -> int:
        return self._end

    def _reach(self, upto: int) -> None:
        """Make the buffer hold [.., upto), zero-filling anything new."""
        if upto <= self._end:
            return
        buf = self._buf
        if upto - self._base > len(buf):
            new_base = upto - self._keep
            keep_from = max(new_base, self._base)
            if keep_from < self._end:
                n = self._end - keep_from
                buf[:n] = buf[keep_from - self._base : self._end - self._base]
                buf[n:] = 0.0
            else:
                buf[:] = 0.0
            self._base = new_base
            self._end = max(self._end, new_base)
        buf[self._end - self._base : upto - self._base] = 0.0
        self._end = upto

    def write(self, at: int, samples: NDArray[np.floating] | NDArray[np.integer]) -> None:
        if at < self._base:
            return  # too old to matter
        stop = at + len(samples)
        self._reach(stop)
        self._buf[at - self._base : stop - self._base] = samples

    def zero_from(self, at: int) -> None:
        """Forget everything from `at` on (it will never be played)."""
        if at < self._end:
            self.zero(at, self._end)
            self._end = max(at, self._base)

    def zero(self, start: int, stop: int) -> None:
        """Forget [start, stop) (it was written at the wrong place)."""
        start, stop = max(start, self._base), min(stop, self._end)
        if start < stop:
            self._buf[start - self._base : stop - self._base] = 0.0

    def read(self, start: int, n: int) -> NDArray[np.float32]:
        """Samples [start, start+n); zeros before the kept history or after the end."""
        self._reach(start + n)
        if start < self._base:
            out = np.zeros(n, dtype=np.float32)
            have = start + n - self._base
            if have > 0:
                out[n - have :] = self._buf[:have]
            return out
        return self._buf[start - self._base : start - self._base + n]


def track_keep_ms(max_delay_ms: int = MAX_DELAY_MS, lead_ms: int = 200) -> int:
    """How much far end a call's track keeps for a canceller searching up to `max_delay_ms`,
    when the Twilio side writes up to `lead_ms` ahead of the caller's audio (its playback lead)."""
    return _SEARCH_WINDOW_MS + max_delay_ms + 2 * _SPREAD_MS + 20 + lead_ms + _LATE_ARRIVAL_MS


class FarEndTrack:
    """The assistant's audio as the caller hears it, on the inbound stream's clock.

    The Twilio side writes each frame it sends at the stream time it is due to play
    (`write`), and forgets what a `clear` dropped (`cut`). Times are in milliseconds of
    the inbound stream; the track holds the last few seconds.
    """

    __slots__ = ("_active_until", "_history")

    def __init__(self, keep_ms: int | None = None) -> None:
        keep = track_keep_ms() if keep_ms is None else keep_ms
        self._history = _History(keep * _RATE // 1000)
        self._active_until = -(10**9)  # sample position after the last audible far-end frame

    def write(self, at_ms: float, ulaw: bytes) -> None:
        at = round(at_ms * _RATE / 1000)
        pcm = ulaw_to_pcm16(ulaw)
        self._history.write(at, pcm)
        if len(pcm) and int(np.abs(pcm).max()) > 32:  # above -60 dBFS: worth cancelling
            self._active_until = max(self._active_until, at + len(pcm))

    def cut(self, at_ms: float) -> None:
        """Audio due from `at_ms` on was dropped (Twilio's buffer was cleared)."""
        at = round(at_ms * _RATE / 1000)
        self._history.zero_from(at)
        self._active_until = min(self._active_until, at)

    def erase(self, start_ms: float, stop_ms: float) -> None:
        """Forget what was written from `start_ms` to `stop_ms`: it was timed by a wrong clock
        and is written again where it plays (media/playback.py)."""
        self._history.zero(round(start_ms * _RATE / 1000), round(stop_ms * _RATE / 1000))

    @property
    def active_until(self) -> int:
        """Sample position just after the last audible frame written."""
        return self._active_until

    def read(self, start: int, n: int) -> NDArray[np.float32]:
        return self._history.read(start, n)


class EchoEstimate:
    """What EchoCanceller.process found about one frame (one object, reused)."""

    __slots__ = ("echo_dbfs", "floor_dbfs", "residual")

    def __init__(self, frame_samples: int) -> None:
        self.residual = np.zeros(frame_samples, dtype=np.float32)
        # Predicted level of the echo left in `residual`, dBFS; None: no echo possible now.
        self.echo_dbfs: float | None = None
        # The level `residual` must reach to be more than echo: echo_dbfs + RESIDUAL_MARGIN_DB.
        self.floor_dbfs: float | None = None


class EchoCanceller:
    """Removes the far end's echo from caller frames; see the module docstring."""

    def __init__(self, far: FarEndTrack, *, max_delay_ms: int = MAX_DELAY_MS, frame_ms: int = 20) -> None:
        self._far = far
        self._frame = _RATE * frame_ms // 1000
        self._max_lag = max_delay_ms * _RATE // 1000
        self._min_lag = _MIN_DELAY_MS * _RATE // 1000
        self._slip = _SLIP_MS * _RATE // 1000
        self._left_span = _LEFT_SPAN_MS * _RATE // 1000
        self._jitter = _JITTER_MS * _RATE // 1000
        self._step = _STEP_MS * _RATE // 1000
        self._refit_len = _REFIT_MS * _RATE // 1000
        self._window = _SEARCH_WINDOW_MS * _RATE // 1000
        self._near = _History(self._window + self._frame)
        self._left = _History(self._window + self._frame)  # what cancelling left of the caller's side
        self._fft_n = 1 << math.ceil(math.log2(self._window + self._max_lag))
        freqs = np.fft.rfftfreq(self._fft_n, 1.0 / _RATE)
        self._band = ((freqs >= _BAND_LOW_HZ) & (freqs <= _BAND_HIGH_HZ)).astype(np.float32)
        self._spread = _SPREAD_MS * _RATE // 1000
        self._out = EchoEstimate(self._frame)
        self._db_offset = 10.0 * math.log10(self._frame * _FULL_SCALE_POWER)
        self.reset()

    def reset(self) -> None:
        self._weights = np.zeros(_TAPS, dtype=np.float32)
        self.delay: int | None = None  # samples; None until found
        self._candidate: int | None = None
        self._ratio = _INITIAL_RATIO
        self._frames = 0
        self._far_frames = 0  # frames in a row with the far end possibly echoing
        self._confirmed = 0  # searches in a row that found the current delay again
        self._searches = 0
        self._misses = 0  # searches in a row that found no echo path
        self._next_refit = 0  # frame count from which the filter may be re-solved again
        # Per lag: the most echo the searches' evidence allows (inf: nothing known yet).
        self._bound = np.full(self._max_lag + 1, np.inf, dtype=np.float32)

    @property
    def delay_ms(self) -> float | None:
        return None if self.delay is None else self.delay * 1000.0 / _RATE

    @property
    def residual_ratio_db(self) -> float:
        """Echo left after cancelling, relative to the loudest far end around the delay."""
        return 10.0 * math.log10(self._ratio)

    def process(self, near: NDArray[np.int16], t_ms: int, *, caller_speaking: bool = False,
                speech_from_dbfs: float | None = None) -> EchoEstimate:
        """Take one caller frame starting at stream time `t_ms`; return the residual and its echo.

        `speech_from_dbfs`: the VAD counts nothing quieter as speech now (its noise floor
        and background), so a residual under it is not worth a closer look.
        """
        frame = self._frame
        t = t_ms * _RATE // 1000
        out = self._out
        residual = out.residual
        residual[:] = near
        self._near.write(t, residual)
        self._frames += 1
        far = self._far
        if far.active_until <= t - self._max_lag - self._spread:
            out.echo_dbfs = out.floor_dbfs = None  # nothing played recently enough to echo now
            self._far_frames = 0
            return out
        self._far_frames += 1
        audible = _MIN_ACTIVE_NEAR * frame
        if speech_from_dbfs is not None:
            audible = max(audible, 10.0 ** ((speech_from_dbfs + self._db_offset) / 10.0))
        if self.delay is None:
            misses = self._misses
            every = (_SEARCH_EVERY_FRAMES if misses < _QUIET_AFTER
                     else _QUIET_EVERY_FRAMES[0] if misses < 2 * _QUIET_AFTER else _QUIET_EVERY_FRAMES[1])
        else:
            every = _SETTLED_EVERY_FRAMES if self._confirmed >= _SETTLED_AFTER else _TRACK_EVERY_FRAMES
        if self._frames % every == 0:
            self._search(t + frame)
        delay = self.delay
        if delay is None:
            # Anything played over the whole delay range may be echoing now.
            # Echo needs at least a round trip to come back: audio due to play less than
            # _MIN_DELAY_MS before the frame ends cannot be in it yet.
            window = far.read(t - self._max_lag - self._spread, self._max_lag + frame + self._spread - self._min_lag)
            far_power = _max_frame_power(window, frame)
            echo_power = self._ratio * far_power
            near_power = float(residual.dot(residual))
            # Only where it can change the verdict: a loud frame the coarse prediction holds back.
            if audible < near_power <= _MARGIN_POWER * echo_power:
                echo_power = min(echo_power, self._bounded_echo(t, residual))
            residual_power = placed_power = near_power
        else:
            start = t - delay + _PRE_TAPS - (_TAPS - 1)
            seg = far.read(start, frame + _TAPS - 1)
            # estimate[n] = sum_k w[k] * far(t + n - delay + PRE - k)
            near_power = float(residual.dot(residual))
            estimate = np.convolve(seg, self._weights, "valid")
            residual -= estimate
            around = far.read(t - delay - self._spread, frame + 2 * self._spread)
            far_power = _max_frame_power(around, frame)
            echo_power = self._ratio * far_power
            residual_power = placed_power = float(residual.dot(residual))
            seg_power = float(seg.dot(seg))
            echo_alone = not caller_speaking and near_power <= _ECHO_ALONE_FACTOR * max(far_power, 1.0)
            # Adapt on echo alone: neither the caller (VAD) nor a frame far above the echo predicted.
            if echo_alone and seg_power > _ACTIVE_POWER * frame:
                err = residual
                step = _NLMS_STEP / (seg_power * _STEP_SPREAD / len(seg) * frame + 1.0)
                self._weights += step * np.correlate(seg, err, "valid")[::-1]
            # Only a frame the filter's echo is a fair part of (no more than 6 dB under it) can
            # be its echo slipped or reshaped; a caller or a TV well over it is not worth this.
            if (residual_power > _REALIGN_OVER * echo_power and residual_power > audible
                    and far_power > _ACTIVE_POWER * frame
                    and _ECHO_ALONE_FACTOR * float(estimate.dot(estimate)) >= near_power):
                # Cancelling left more than it should: the play clocks may have stepped.
                residual_power, shift = self._realign(residual, residual_power, t, delay)
                if shift and abs(shift) <= self._step and echo_alone:
                    # Echo alone, better cancelled a little early or late: the path moved,
                    # and the filter follows it whole (tap by tap it takes seconds).
                    self.delay = min(self._max_lag, max(self._min_lag, delay + shift))
                if (residual_power > _MARGIN_POWER * echo_power and not caller_speaking
                        and self._frames >= self._next_refit):
                    residual_power = self._refit(residual, residual_power, t, delay)
        if delay is not None and residual_power > 2.0 * near_power + self._frame:
            # The filter adds more than it removes (the path changed under it): start it afresh.
            self._weights[:] = 0.0
            residual[:] = near
            residual_power = placed_power = near_power
        settled = delay is not None or self._far_frames * frame > self._max_lag + self._spread
        if far_power > _ACTIVE_POWER * frame and not caller_speaking and settled:
            # What the filter as placed leaves: a frame rescued by moving its echo says
            # nothing good about the filter.
            inst = placed_power / far_power
            ratio = self._ratio
            if inst * 10.0 < ratio:
                ratio += (inst - ratio) * _RATIO_DROP
            elif inst < ratio:
                ratio += (inst - ratio) * _RATIO_DOWN
            elif inst <= ratio * _ECHO_ALONE_FACTOR:
                ratio += (inst - ratio) * _RATIO_UP
            self._ratio = min(_MAX_RATIO, max(_MIN_RATIO, ratio))
        if (delay is not None and residual_power > _MARGIN_POWER * echo_power and far_power > _ACTIVE_POWER * frame
                and residual_power > audible):
            # Loud enough to count as the caller, even with the filter's echo moved: unless
            # the filter has lost the path, and the far end at some lag near the delay
            # still explains the frame.
            slipped = self._slipped_echo(residual, t, delay)
            if slipped >= _SLIPPED_SHARE * residual_power:
                echo_power = max(echo_power, slipped)
        self._left.write(t, residual)
        if echo_power > 0.0:
            out.echo_dbfs = 10.0 * math.log10(echo_power) - self._db_offset
            out.floor_dbfs = out.echo_dbfs + RESIDUAL_MARGIN_DB
        else:
            out.echo_dbfs = out.floor_dbfs = None
        return out

    def _bounded_echo(self, t: int, residual: NDArray[np.float32]) -> float:
        """The most echo the frame at `t` can hold, lag by lag, given what the searches found.

        At lags the searches have evidence for, the least-squares bound. At the others (the
        far end there is the start of a turn, which may be coming back now at any delay), the
        part of the frame that the far end at any of those lags explains.
        """
        frame, lags, low = self._frame, self._max_lag, self._min_lag
        seg = self._far.read(t - lags, lags - low + frame)
        per_lag = _sliding_energy(seg, frame)  # [j]: the far end at delay lags - j
        coef = self._bound[low : lags + 1][::-1]
        known = np.isfinite(coef)
        echo = float((per_lag[known] * coef[known]).max()) if known.any() else 0.0
        unknown = np.flatnonzero(~known & (per_lag > _ACTIVE_POWER * frame))
        if unknown.size:
            first, last = int(unknown[0]), int(unknown[-1])
            cross = np.correlate(seg[first : last + frame], residual, "valid")
            explained = cross * cross / np.maximum(per_lag[first : last + 1], 1.0)
            echo = max(echo, float(explained.max()))
        return echo

    def _realign(self, residual: NDArray[np.float32], residual_power: float, t: int, delay: int) -> tuple[float, int]:
        """Cancel with the filter's echo moved up to _JITTER_MS early or late, where that leaves less.

        The echo's shape (the filter) is kept and only its timing moves, at unit gain: a
        caller's voice can match a shifted copy of the assistant's only by chance, and
        without a free gain that removes little of it. Returns the residual's power and
        the move (samples added to the delay; 0 if none helped by _REALIGN_GAIN).
        """
        frame, jitter = self._frame, self._jitter
        near = self._near.read(t, frame)
        seg = self._far.read(t - delay + _PRE_TAPS - (_TAPS - 1) - jitter, frame + _TAPS - 1 + 2 * jitter)
        echo = np.convolve(seg, self._weights, "valid")  # [k : k + frame]: the echo `jitter - k` late
        # |near - echo_k|^2 = |near|^2 - 2 near.echo_k + |echo_k|^2, for every shift k at once
        left = _sliding_energy(echo, frame) - 2.0 * np.correlate(echo, near, "valid")
        best = int(left.argmin())
        power = float(near.dot(near)) + float(left[best])
        if power * _REALIGN_GAIN >= residual_power:
            return residual_power, 0
        np.subtract(near, echo[best : best + frame], out=residual)
        return power, jitter - best

    def _refit(self, residual: NDArray[np.float32], residual_power: float, t: int, delay: int) -> float:
        """A frame would pass for the caller: is it the echo through a path the filter has not learnt?

        The filter is solved again over the last _REFIT_MS (a step in the play clock while
        it was being solved leaves it fitting neither side of the step). It is taken if it
        leaves less than _REFIT_LEFT of those ms, and cancels this frame _REFIT_GAIN better:
        a caller's voice does not correlate with the far end, so neither can hold while they
        talk (a caller just starting is a small part of the window, not of the frame).
        Returns the residual's power.
        """
        length, frame, now = self._refit_len, self._frame, t + self._frame
        self._next_refit = self._frames + _REFIT_EVERY_FRAMES
        near = self._near.read(now - length, length)
        far = self._far.read(now - length - self._max_lag, length + self._max_lag)
        weights, reference = self._solve(delay, near, far)
        echo = np.convolve(reference, weights, "valid")
        left = near - echo
        if float(left.dot(left)) > _REFIT_LEFT * float(near.dot(near)):
            return residual_power
        now_left = left[length - frame :]
        power = float(now_left.dot(now_left))
        if power * _REFIT_GAIN > residual_power:
            return residual_power
        self._weights[:] = weights
        residual[:] = now_left
        return power

    def _slipped_echo(self, residual: NDArray[np.float32], t: int, delay: int) -> float:
        """Energy of the part of `residual` that is the far end at some lag within _SLIP_MS of the delay."""
        frame, slip = self._frame, self._slip
        seg = self._far.read(t - delay - slip, frame + 2 * slip)
        cross = np.correlate(seg, residual, "valid")  # cross[k]: residual against seg[k : k + frame]
        explained = cross * cross / np.maximum(_sliding_energy(seg, frame), 1.0)
        return float(explained.max())

    def _search(self, now: int) -> None:
        """GCC-PHAT over the last second: move the filter to a new delay seen twice."""
        window, lags, n = self._window, self._max_lag, self._fft_n
        far = self._far.read(now - window - lags, window + lags)
        active = np.count_nonzero(np.abs(far[lags:]) > 32.0)
        if active < (_BOUND_EVIDENCE if self.delay is None else _SEARCH_MIN_ACTIVE_MS * _RATE // 1000):
            return
        near = self._near.read(now - window, window)
        far_spec = np.fft.rfft(far, n)
        spec = np.conj(np.fft.rfft(near, n)) * far_spec
        if self.delay is None:
            self._update_bound(near, far, spec)
            if active < _SEARCH_MIN_ACTIVE_MS * _RATE // 1000:
                return
        elif self._ratio > _BOUND_LEFT_ABOVE:
            self._bound_left(self._left.read(now - window, window), far, far_spec, self.delay)
        spec *= self._band / (np.abs(spec) + 1e-9)
        corr = np.fft.irfft(spec, n)[: lags + 1]
        self._searches += 1
        peak = int(np.argmax(corr))
        rms = float(np.sqrt(np.mean(corr * corr)))
        if rms <= 0.0 or corr[peak] < _PEAK_OVER_RMS * rms:
            if self.delay is None:
                self._misses += 1
                self._no_echo_found(near, far, peak)
            return
        delay = lags - peak
        aligned = far[peak : peak + window]
        power = float(aligned.dot(aligned))
        near_power = float(near.dot(near))
        gain = float(near.dot(aligned)) / power if power > 0.0 else 0.0
        if gain * gain * power < _MIN_EXPLAINED * near_power:
            # A peak, but the far end at that delay explains next to nothing of the caller's
            # side (tones and buzzes correlate at many lags): no echo path worth following.
            if self.delay is None:
                self._misses += 1
                self._no_echo_found(near, far, peak)
            return
        self._misses = 0
        current = self.delay
        if current is not None and abs(delay - current) <= _DELAY_AGREE_SAMPLES:
            self._candidate = None
            self._confirmed += 1
            if self._confirmed <= _RESOLVE_SEARCHES:
                # The first windows after the delay was found hold more echo each time.
                self._resolve(current, near, far)
            return
        self._confirmed = 0
        if current is not None and (self._candidate is None or abs(delay - self._candidate) > _DELAY_AGREE_SAMPLES):
            self._candidate = delay  # a new delay must be seen twice
            return
        self._move_to(delay, gain, near, far, far_spec)

    def _bound_left(self, left: NDArray[np.float32], far: NDArray[np.float32], far_spec: NDArray[np.complex128],
                    delay: int) -> None:
        """Bound the ratio by what of the residual still correlates with the far end near the delay.

        Learning the ratio frame by frame needs frames of echo alone; a caller talking over
        the assistant from its first word gives none. Their voice does not correlate with
        the far end, so the least-squares gain of the far end in what cancelling left says
        how much echo is left, whoever talks.
        """
        window, lags, n = self._window, self._max_lag, self._fft_n
        cross = np.fft.irfft(np.conj(np.fft.rfft(left, n)) * far_spec, n)
        lo = max(0, lags - delay - self._left_span)
        hi = min(lags, lags - delay + self._left_span)
        power = _sliding_energy(far, window)[lo : hi + 1]
        gain2 = cross[lo : hi + 1] ** 2 / np.maximum(power, 1.0) ** 2
        bound = max(_MIN_RATIO, _ECHO_ALONE_FACTOR * float(gain2.max()))
        if bound < self._ratio:
            self._ratio = bound

    def _update_bound(self, near: NDArray[np.float32], far: NDArray[np.float32], spec: NDArray[np.complex128]) -> None:
        """Per lag, the most echo the window allows: the least-squares gain of the far end at that lag.

        Where the far end at a lag was active long enough to be evidence, the caller's side
        holds at most that gain of it (the caller's own voice does not correlate); elsewhere
        nothing is known (inf: the tracked ratio decides).
        """
        window, lags, n = self._window, self._max_lag, self._fft_n
        cross = np.fft.irfft(spec, n)[: lags + 1]  # [i]: near against far[i : i + window]
        power = _sliding_energy(far, window)  # [i]: far[i : i + window], as cross
        active = _sliding_sums(np.abs(far) > 32.0, window)
        coef = np.where(active >= _BOUND_EVIDENCE, _BOUND_FACTOR * cross * cross / np.maximum(power, 1.0) ** 2, np.inf)
        # The play clock wanders by a few ms: each lag answers for its neighbours within _SPREAD_MS.
        block = _BOUND_BLOCK
        blocks = -(-len(coef) // block)
        padded = np.full(blocks * block, np.inf)
        padded[: len(coef)] = coef
        peak = padded.reshape(blocks, block).max(axis=1)
        spread = peak.copy()
        for step in range(1, self._spread // block + 2):
            np.maximum(spread[step:], peak[:-step], out=spread[step:])
            np.maximum(spread[:-step], peak[step:], out=spread[:-step])
        self._bound = np.repeat(spread, block)[: len(coef)][::-1].astype(np.float32)  # by delay

    def _no_echo_found(self, near: NDArray[np.float32], far: NDArray[np.float32], lag: int) -> None:
        """No delay stands out: bound the echo by what of the caller's side correlates with the far end.

        Only far-end audio old enough to have come back within the window counts (it must
        have played more than the whole delay range ago), so an echo still on its way does
        not pass for no echo. The least-squares gain at the best lag measures the part of
        the caller's audio that is the far end's; the caller's own voice does not
        correlate, so a caller talking over the assistant cannot raise the bound.
        """
        window, lags = self._window, self._max_lag
        echoable = np.count_nonzero(np.abs(far[lags:window]) > 32.0) if window > lags else 0
        if echoable < _SEARCH_MIN_ACTIVE_MS * _RATE // 1000 // 2:
            return
        aligned = far[lag : lag + window]
        power = float(aligned.dot(aligned))
        if power <= 0.0:
            return
        gain = float(near.dot(aligned)) / power
        # The ratio is against the loudest far-end frame, the gain against the mean power.
        bound = max(_MIN_RATIO, _ECHO_ALONE_FACTOR * gain * gain)
        if bound < self._ratio:
            self._ratio = bound

    def _move_to(self, delay: int, gain: float, near: NDArray[np.float32], far: NDArray[np.float32],
                 far_spec: NDArray[np.complex128]) -> None:
        """Place the filter at `delay`, solved by least squares over the search window.

        The whole filter, not only its main tap: the echo path is band-limited (no energy
        under 300 Hz, where a voice's fundamental is), so one tap cancels only a few dB, and
        a caller talking from the first word leaves the adaptive filter no frames of echo
        alone to learn the rest from. Least squares over half a second is not misled by the
        caller's voice, which does not correlate with the far end.
        """
        self.delay = delay
        self._candidate = None
        weights, reference = self._solve(delay, near, far)
        self._weights[:] = weights
        # What is left is measured against the far end around the delay from now on, not
        # over the whole range: start from the echo's own level (the ratio is against the
        # loudest far-end frame, so gain^2 is about the echo's loudest frame), lowered at
        # once to what of the solved filter's residual still correlates with the far end.
        self._ratio = min(_MAX_RATIO, max(_MIN_RATIO, gain * gain))
        self._bound_left(near - np.convolve(reference, weights, "valid").astype(np.float32), far, far_spec, delay)

    def _solve(self, delay: int, near: NDArray[np.float32], far: NDArray[np.float32]) -> tuple[
            NDArray[np.float64], NDArray[np.float64]]:
        """The filter at `delay` that best explains `near` (least squares), and the far end it reads.

        `far` is the far end from the whole delay range before `near` to its end. The
        filter's output over `near` is np.convolve(reference, weights, "valid").
        """
        length, taps = len(near), _TAPS
        # reference[m + TAPS - 1 - k] is what tap k multiplies at sample m of `near`.
        start = self._max_lag - delay + _PRE_TAPS - (taps - 1)
        reference = np.zeros(length + 2 * taps - 1, dtype=np.float64)  # zeros after: see below
        lo, hi = max(0, start), min(len(far), start + length + taps - 1)
        if hi > lo:
            reference[lo - start : hi - start] = far[lo:hi]
        # The normal equations without the length x taps regressor matrix (its product alone
        # took most of a refit). Entry (i, j) of its Gram matrix sums reference[n] *
        # reference[n + |i - j|] over `length` samples from n = TAPS - 1 - max(i, j): the sum
        # from n = TAPS - 1 (one correlation), plus the products before that start, less
        # those it drops at the end (a few thousand products, summed from the back).
        used = reference[taps - 1 : length + taps - 1]
        base = np.correlate(reference[taps - 1 : length + 2 * taps - 2], used, "valid")
        ahead = _EDGE_AHEAD
        head, tail = reference[: taps - 1], reference[length : length + taps - 1]
        edges = head * reference[ahead] - tail * reference[ahead + length]
        suffix = np.zeros((taps, taps))
        suffix[:, : taps - 1] = np.cumsum(edges[:, ::-1], axis=1)[:, ::-1]
        gram = (np.take(base, _GRAM_LAG) + np.take(suffix, _GRAM_EDGE)).reshape(taps, taps)
        gram[np.diag_indices(taps)] += 1e-3 * float(np.trace(gram)) / taps + 1.0
        cross = np.correlate(reference[: length + taps - 1], near.astype(np.float64), "valid")[::-1]
        weights = np.linalg.solve(gram, cross).astype(np.float64)
        return weights, reference[: length + taps - 1]

    def _resolve(self, delay: int, near: NDArray[np.float32], far: NDArray[np.float32]) -> None:
        """Solve the filter again over the latest window; keep whichever leaves less of it."""
        weights, reference = self._solve(delay, near, far)
        near64 = near.astype(np.float64)
        solved = near64 - np.convolve(reference, weights, "valid")
        current = near64 - np.convolve(reference, self._weights.astype(np.float64), "valid")
        if float(solved.dot(solved)) < float(current.dot(current)):
            self._weights[:] = weights


def _sliding_sums(values: NDArray[np.generic], width: int) -> NDArray[np.float64]:
    """The sum of every `width`-long run of `values`: [k] is that of values[k : k + width]."""
    sums = np.concatenate(([0.0], np.cumsum(values, dtype=np.float64)))
    runs: NDArray[np.float64] = sums[width:] - sums[: len(sums) - width]
    return runs


def _sliding_energy(samples: NDArray[np.floating], width: int) -> NDArray[np.float64]:
    """The energy of every `width`-long run of `samples`."""
    return _sliding_sums(np.square(samples, dtype=np.float64), width)


def _max_frame_power(samples: NDArray[np.float32], frame: int) -> float:
    """Energy of the loudest `frame`-long block of `samples` (blocks from the end back)."""
    n = len(samples) // frame * frame
    if n == 0:
        return float(samples.dot(samples))
    blocks = samples[len(samples) - n :].reshape(-1, frame)
    return float(np.einsum("ij,ij->i", blocks, blocks).max())
