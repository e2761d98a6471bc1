"""Test and demo signals, and the measurements used to check them.

Used by the simulators (a caller that speaks, an assistant that answers) and by tests
that check a tone survives the bridge. Pure numpy, no I/O.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "FULL_SCALE",
    "dominant_frequency_hz",
    "level_dbfs",
    "pink_noise",
    "silence",
    "speech_like",
    "tone",
    "tone_level_dbfs",
    "white_noise",
]

FULL_SCALE = 32767.0
_FULL_SCALE_DB = 20.0 * math.log10(FULL_SCALE)
# Below this an RMS is reported as this floor instead of -inf, so levels stay comparable.
_FLOOR_DBFS = -120.0

# typeshed types `float ** float` as Any, and numpy its ufuncs on scalars: the locals
# annotated below (amplitude, scaled, level, rms) say what those values are.


def tone(
    freq_hz: float, ms: float, rate_hz: int, dbfs: float = -12.0, phase: float = 0.0
) -> NDArray[np.int16]:
    """A sine of `ms` milliseconds at `dbfs` RMS, as int16 samples."""
    n = round(rate_hz * ms / 1000.0)
    amplitude: float = FULL_SCALE * np.sqrt(2.0) * 10.0 ** (dbfs / 20.0)
    t = np.arange(n, dtype=np.float64) / rate_hz
    return np.round(amplitude * np.sin(2.0 * np.pi * freq_hz * t + phase)).astype(np.int16)


def silence(ms: float, rate_hz: int) -> NDArray[np.int16]:
    """`ms` milliseconds of digital silence as int16 samples."""
    return np.zeros(round(rate_hz * ms / 1000.0), dtype=np.int16)


def speech_like(ms: float, rate_hz: int, dbfs: float = -18.0, seed: int = 1) -> NDArray[np.int16]:
    """A voiced, syllable-rate-modulated signal that energy VADs treat as speech.

    A 120 Hz glottal pulse train with harmonics up to 3.4 kHz, shaped by a 4 Hz
    syllable envelope that never drops to silence inside the utterance.
    """
    n = round(rate_hz * ms / 1000.0)
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64) / rate_hz
    f0 = 120.0 * (1.0 + 0.05 * np.sin(2.0 * np.pi * 0.7 * t))
    phase = 2.0 * np.pi * np.cumsum(f0) / rate_hz
    voiced = np.zeros(n)
    for k in range(1, 3400 // 120 + 1):
        voiced += np.sin(k * phase) / k
    envelope = 0.55 + 0.45 * np.sin(2.0 * np.pi * 4.0 * t - np.pi / 2.0) ** 2
    signal = voiced * envelope + 0.02 * rng.standard_normal(n)
    rms = float(np.sqrt(np.mean(signal**2))) or 1.0
    scaled: NDArray[np.float64] = signal / rms * FULL_SCALE * 10.0 ** (dbfs / 20.0)
    return np.clip(np.round(scaled), -32768, 32767).astype(np.int16)


def white_noise(ms: float, rate_hz: int, dbfs: float = -40.0, seed: int = 0) -> NDArray[np.int16]:
    """Gaussian white noise of `ms` milliseconds at `dbfs` RMS, as int16 samples."""
    n = round(rate_hz * ms / 1000.0)
    return _scaled(np.random.default_rng(seed).standard_normal(n), dbfs)


def pink_noise(
    ms: float, rate_hz: int, dbfs: float = -40.0, seed: int = 0, low_hz: float = 20.0
) -> NDArray[np.int16]:
    """Noise with a 1/f power spectrum from `low_hz` up, at `dbfs` RMS, as int16 samples.

    Nothing below `low_hz`: true 1/f noise wanders without bound at the lowest
    frequencies, which no microphone or phone line passes.
    """
    n = round(rate_hz * ms / 1000.0)
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / rate_hz)
    shaped = np.zeros_like(spectrum)
    passed = freqs >= low_hz
    shaped[passed] = spectrum[passed] / np.sqrt(freqs[passed])
    return _scaled(np.fft.irfft(shaped, n), dbfs)


def _scaled(signal: NDArray[np.float64], dbfs: float) -> NDArray[np.int16]:
    rms = float(np.sqrt(np.mean(signal**2))) or 1.0
    scaled: NDArray[np.float64] = signal / rms * FULL_SCALE * 10.0 ** (dbfs / 20.0)
    return np.clip(np.round(scaled), -32768, 32767).astype(np.int16)


def level_dbfs(pcm: NDArray[np.number]) -> float:
    """RMS level of int16 samples relative to a full-scale sine's peak (0 dBFS = 32767 RMS)."""
    n = pcm.size
    if n == 0:
        return _FLOOR_DBFS
    # One dot product and math.log10: a quarter of the cost of numpy's mean, sqrt and
    # log10 on scalars, for a level taken of every frame the assistant sends.
    samples = pcm.astype(np.float64)
    power = float(samples.dot(samples)) / n
    if power <= 0.0:
        return _FLOOR_DBFS
    return max(_FLOOR_DBFS, 10.0 * math.log10(power) - _FULL_SCALE_DB)


def dominant_frequency_hz(pcm: NDArray[np.number], rate_hz: int) -> float:
    """Frequency of the strongest spectral peak (Hann window, parabolic interpolation)."""
    x = pcm.astype(np.float64)
    if x.size < 16:
        return 0.0
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    spectrum[0] = 0.0
    k = int(np.argmax(spectrum))
    if 0 < k < spectrum.size - 1:
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
        k = k + 0.5 * (a - c) / (a - 2.0 * b + c)
    return float(k * rate_hz / x.size)


def tone_level_dbfs(pcm: NDArray[np.number], freq_hz: float, rate_hz: int) -> float:
    """Level of one frequency component in dBFS, by correlation with a sine and cosine."""
    x = pcm.astype(np.float64)
    if x.size == 0:
        return _FLOOR_DBFS
    t = np.arange(x.size) / rate_hz
    c = np.dot(x, np.cos(2.0 * np.pi * freq_hz * t))
    s = np.dot(x, np.sin(2.0 * np.pi * freq_hz * t))
    amplitude = 2.0 * np.hypot(c, s) / x.size
    rms: float = amplitude / np.sqrt(2.0)
    if rms <= 0.0:
        return _FLOOR_DBFS
    level: float = 20.0 * np.log10(rms / FULL_SCALE)
    return max(_FLOOR_DBFS, level)
