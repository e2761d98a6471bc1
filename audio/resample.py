"""Streaming 2x resamplers between 8 kHz telephony PCM and 16 kHz PCM (int16, mono).

Both directions use one 51-tap linear-phase half-band FIR (cut-off 4 kHz at 16 kHz) in
polyphase form. In a half-band filter every other tap is zero and the centre tap is 1/2,
so only 26 taps do any work:

* 8k -> 16k: each input sample gives two output samples. One is the 26-tap FIR of the
  input; the other is the input itself, delayed by 12 samples (the centre tap).
* 16k -> 8k: each input pair gives one output sample. It is the 26-tap FIR of the odd
  samples plus the even sample 24 samples back, both halved.

Filter: equiripple (Parks-McClellan), passband 0-3.4 kHz, stopband 4.6-8 kHz (the image
of 3.4 kHz). Measured response: passband within +-0.004 dB, stopband >= 67.9 dB down.
Designed offline with scipy; the coefficients below are pasted, so numpy is the only
run-time dependency. To reproduce them::

    f = scipy.signal.remez(26, [0, 2 * 3400 / 16000], [1], fs=1, maxiter=500)
    # half-band h[2k] = f[k] / 2, h[25] = 1/2, all other h = 0 (Vaidyanathan & Nguyen)

State is a float64 history ring per instance, so audio split into chunks of any size
gives the same samples as audio processed in one piece. Every frame in gives one full
frame out at once; nothing is held back beyond the filter delay (the downsampler only
carries an odd sample until its pair arrives). A 20 ms frame costs six numpy
calls and about 5 us; bench/audio.py compares that with soxr and audioop.
"""

from __future__ import annotations

from typing import Literal, Protocol, cast

import numpy as np
from numpy.typing import NDArray

__all__ = ["HALFBAND_TAPS", "Downsampler", "Upsampler"]

# Non-zero polyphase taps f[k] of the half-band filter, symmetric (f[25 - k] == f[k]).
# The full 51-tap filter is h[2k] = f[k] / 2, h[25] = 1/2. DC gain 1.0004 (+0.003 dB),
# the equiripple passband error; left as designed rather than renormalised.
_HALF_TAPS = (
    0.0010477049554788091,
    -0.0020097190792662794,
    0.0038192540968015358,
    -0.006583080080593035,
    0.010613022297077133,
    -0.016311359756551274,
    0.024240746014303337,
    -0.03528051560019521,
    0.051012643020861476,
    -0.0747821914266305,
    0.11531372225898784,
    -0.20480710431354887,
    0.6341202234929009,
)
_TAPS = np.array(_HALF_TAPS + _HALF_TAPS[::-1], dtype=np.float64)
_TAPS.flags.writeable = False
_NTAPS = _TAPS.size  # 26

# The whole 51-tap half-band filter at 16 kHz, for tests and reference implementations.
HALFBAND_TAPS = np.zeros(2 * _NTAPS - 1, dtype=np.float64)
HALFBAND_TAPS[0::2] = _TAPS / 2.0
HALFBAND_TAPS[_NTAPS - 1] = 0.5
HALFBAND_TAPS.flags.writeable = False

# Group delay of the 51-tap filter: 25 samples at 16 kHz.
_GROUP_DELAY_16K = _NTAPS - 1
_INT16_MIN = -32768.0
_INT16_MAX = 32767.0
# History ring length in samples: about 32 frames of 20 ms, so the history is copied back
# to the start of the ring once every ~0.6 s instead of on every frame.
# 2048 float64 samples (16 KiB) per instance: a rewind every six 20 ms frames copies 50
# samples, and each call holds two of these, so the ring is a call's memory, not its CPU.
_RING_SAMPLES = 2048

# Upsampler: 8 kHz input samples the FIR reads before the current one, and where the
# centre tap lands (output 2n+1 is input n - 12).
_UP_HISTORY = _NTAPS - 1
_UP_CENTRE = _NTAPS // 2 - 1
# Downsampler: 16 kHz input samples kept before the current pair (2p, 2p+1); the FIR
# reads odd samples back to 2p - 49 and the centre tap reads sample 2p - 24.
_DOWN_HISTORY = 2 * (_NTAPS - 1)
_DOWN_ODD_BACK = 2 * _NTAPS - 3
_DOWN_CENTRE_BACK = _NTAPS - 2

_add = np.add
_multiply = np.multiply


class _Clip(Protocol):
    """Saturate `a` to [lo, hi] into `out`, as the clip ufunc does."""

    def __call__(
        self, a: NDArray[np.float64], lo: float, hi: float, /, *, out: NDArray[np.float64]
    ) -> NDArray[np.float64]: ...


class _Correlate(Protocol):
    """np.correlate's "valid" mode on float64 arrays."""

    def __call__(
        self, a: NDArray[np.float64], v: NDArray[np.float64], mode: Literal["valid"], /
    ) -> NDArray[np.float64]: ...


def _clip_pair(a: NDArray[np.float64], lo: float, hi: float, out: NDArray[np.float64]) -> NDArray[np.float64]:
    np.maximum(a, lo, out=out)
    return np.minimum(out, hi, out=out)


# Per-frame budget is a few microseconds, so the hot path calls two numpy internals
# directly: the clip ufunc is one C call (~0.7 us a frame) where np.clip goes through
# three Python layers (~2.4 us) and maximum + minimum are two calls (~1.2 us); correlate2
# is what np.correlate calls after its ~0.25 us array-function dispatch. Neither is
# public API, so fall back to the public spelling if a numpy release moves them.
_clip: _Clip
_correlate: _Correlate
try:
    from numpy._core.umath import clip as _umath_clip  # type: ignore[attr-defined]  # private: not in numpy's stubs
except ImportError:  # pragma: no cover - depends on the numpy release
    _clip = _clip_pair
else:
    _clip = _umath_clip
try:
    from numpy._core.multiarray import correlate2 as _correlate2
except ImportError:  # pragma: no cover - depends on the numpy release
    _correlate = np.correlate
else:
    # numpy's stubs type correlate2 as Callable[..., object]; it returns what np.correlate does.
    _correlate = cast("_Correlate", _correlate2)


class Upsampler:
    """8 kHz -> 16 kHz, int16 in, int16 out, exactly two output samples per input sample.

    Output sample 2n+1 is input sample n-12; output sample 2n is the FIR between them.
    The output lags the input by 25 samples at 16 kHz (1.5625 ms).
    """

    __slots__ = ("_pos", "_ring")

    # 25 samples at 16 kHz: the half-band filter's group delay.
    delay_ms: float = _GROUP_DELAY_16K * 1000.0 / 16000.0

    def __init__(self) -> None:
        self._ring = np.zeros(_RING_SAMPLES, dtype=np.float64)
        self._pos = _UP_HISTORY  # where the next input sample goes

    def reset(self) -> None:
        """Forget all history, as if newly constructed."""
        self._ring[:] = 0.0
        self._pos = _UP_HISTORY

    def process(self, pcm8k: NDArray[np.int16], out: NDArray[np.int16] | None = None) -> NDArray[np.int16]:
        """Resample one chunk of 8 kHz int16 samples; returns 2 * len(pcm8k) int16 samples.

        With `out` (int16, at least 2 * len(pcm8k) long) the result is written there and
        a view of it returned, so the hot path allocates nothing per frame.
        """
        n = len(pcm8k)
        if n == 0:
            return np.empty(0, dtype=np.int16)
        pos = self._pos
        end = pos + n
        ring = self._ring
        if end > ring.size:
            ring = self._rewind(n)
            pos = _UP_HISTORY
            end = pos + n
        ring[pos:end] = pcm8k
        even = _correlate(ring[pos - _UP_HISTORY : end], _TAPS, "valid")
        # Saturate before the cast: a full-scale step overshoots by ~9 % (Gibbs), and a
        # worst-case sign pattern reaches sum(|taps|) = 2.36 times full scale.
        _clip(even, _INT16_MIN, _INT16_MAX, out=even)
        # The cast below truncates rather than rounds: an error under one LSB, far below
        # the quantisation of the mu-law audio this was decoded from (steps of 8 to
        # 1024), and one numpy call less per frame on the hot path.
        out = np.empty(2 * n, dtype=np.int16) if out is None or out.size < 2 * n else out[: 2 * n]
        out[0::2] = even
        out[1::2] = ring[pos - _UP_CENTRE : end - _UP_CENTRE]
        self._pos = end
        return out

    def _rewind(self, n: int) -> NDArray[np.float64]:
        """Move the history to the start of the ring, growing it if `n` does not fit."""
        ring = self._ring
        history = ring[self._pos - _UP_HISTORY : self._pos].copy()
        if _UP_HISTORY + n > ring.size:
            ring = self._ring = np.zeros(_UP_HISTORY + max(n, _RING_SAMPLES), dtype=np.float64)
        ring[: _UP_HISTORY] = history
        self._pos = _UP_HISTORY
        return ring


class Downsampler:
    """16 kHz -> 8 kHz, int16 in, int16 out, one output sample per input pair.

    Input of any length is accepted. An odd sample left over is carried into the next
    call, so a call returns (carried + len(pcm16k)) // 2 samples. Output sample p is
    input pair (2p, 2p+1) filtered; it lags the input by 24 samples at 16 kHz (1.5 ms),
    measured against sample 2p.
    """

    __slots__ = ("_carry", "_pos", "_ring")

    # The filter's 25-sample group delay counts from sample 2p+1, the newest sample of
    # the pair; against sample 2p, the one output sample p stands for, it is 24.
    delay_ms: float = (_GROUP_DELAY_16K - 1) * 1000.0 / 16000.0

    def __init__(self) -> None:
        # The ring holds input samples already halved: the centre tap is exactly 1/2,
        # and halving on the way in folds that multiply into the copy.
        self._ring = np.zeros(_RING_SAMPLES, dtype=np.float64)
        self._pos = _DOWN_HISTORY  # where the next input sample goes
        self._carry = 0  # 1 when the sample before _pos waits for its pair

    def reset(self) -> None:
        """Forget all history and any carried sample, as if newly constructed."""
        self._ring[:] = 0.0
        self._pos = _DOWN_HISTORY
        self._carry = 0

    def process(self, pcm16k: NDArray[np.int16]) -> NDArray[np.int16]:
        """Resample one chunk of 16 kHz int16 samples; returns (carried + len) // 2 samples."""
        n = len(pcm16k)
        pos = self._pos
        end = pos + n
        ring = self._ring
        if end > ring.size:
            ring = self._rewind(n)
            pos = self._pos
            end = pos + n
        _multiply(pcm16k, 0.5, out=ring[pos:end])
        first = pos - self._carry  # index of sample 2p for the first complete pair
        pairs = (end - first) >> 1
        self._pos = end
        self._carry = (end - first) & 1
        if pairs == 0:
            return np.empty(0, dtype=np.int16)
        stop = first + 2 * pairs
        acc = _correlate(ring[first - _DOWN_ODD_BACK : stop : 2], _TAPS, "valid")
        _add(acc, ring[first - _DOWN_CENTRE_BACK : stop - _DOWN_CENTRE_BACK : 2], out=acc)
        _clip(acc, _INT16_MIN, _INT16_MAX, out=acc)
        # Truncated, not rounded: the result is mu-law encoded next, whose steps (8 to
        # 1024) dwarf an error under one LSB.
        return acc.astype(np.int16)

    def _rewind(self, n: int) -> NDArray[np.float64]:
        """Move history (and a carried sample) to the start of the ring, growing it if needed."""
        ring = self._ring
        keep = _DOWN_HISTORY + self._carry
        history = ring[self._pos - keep : self._pos].copy()
        if keep + n > ring.size:
            ring = self._ring = np.zeros(keep + max(n, _RING_SAMPLES), dtype=np.float64)
        ring[:keep] = history
        self._pos = keep
        return ring
