"""Real (synthesised) speech for barge-in tests: espeak-ng through sox, made at run time.

Silero is a voice detector: the buzz of audio.signals.speech_like is not a voice to it,
so tests of the default engine speak with espeak-ng (Debian package `espeak-ng`),
resampled to the telephone's 8 kHz by sox (package `sox`). Nothing is recorded or
committed. Tests that need them skip where either binary is absent; CI installs both.
"""

from __future__ import annotations

import functools
import shutil
import subprocess

import numpy as np
import pytest
from numpy.typing import NDArray

__all__ = ["active_level_dbfs", "at_level", "needs_espeak", "say"]

_FRAME = 160
_MISSING = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
needs_espeak = pytest.mark.skipif(bool(_MISSING), reason=f"needs {' and '.join(_MISSING)} (apt packages)")


@functools.lru_cache(maxsize=32)
def _synthesize(text: str, voice: str, rate_hz: int) -> bytes:
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", "165", "--stdout", text], check=True, capture_output=True, timeout=30
    ).stdout
    # -D: no dither, so a test hears the same samples in every run.
    return subprocess.run(
        ["sox", "-D", "-t", "wav", "-", "-t", "raw", "-r", str(rate_hz), "-e", "signed", "-b", "16", "-c", "1", "-"],
        input=wav, check=True, capture_output=True, timeout=30,
    ).stdout


def active_level_dbfs(pcm: NDArray[np.int16]) -> float:
    """RMS over the 20 ms frames within 30 dB of the loudest (pauses do not count), dBFS."""
    frames = pcm[: len(pcm) // _FRAME * _FRAME].astype(np.float64).reshape(-1, _FRAME)
    power = (frames**2).mean(axis=1) + 1e-9
    active = power[power >= power.max() * 1e-3]
    return float(10.0 * np.log10(active.mean() / 32767.0**2))


def at_level(pcm: NDArray[np.int16], dbfs: float) -> NDArray[np.int16]:
    gain = 10.0 ** ((dbfs - active_level_dbfs(pcm)) / 20.0)
    return np.clip(np.round(pcm.astype(np.float64) * gain), -32768, 32767).astype(np.int16)


def say(text: str, dbfs: float, voice: str = "en-us+m3", rate_hz: int = 8000) -> NDArray[np.int16]:
    """`text` spoken at an active level of `dbfs`, int16 at `rate_hz`, from its first sound
    (leading silence trimmed, so speech starts where the test puts it), in whole 20 ms frames."""
    pcm = np.frombuffer(_synthesize(text, voice, rate_hz), dtype=np.int16)
    loud = np.flatnonzero(np.abs(pcm) > 300)
    pcm = at_level(pcm[loud[0] :] if loud.size else pcm, dbfs)
    frame = rate_hz // 50
    return np.concatenate([pcm, np.zeros(-len(pcm) % frame, dtype=np.int16)])
