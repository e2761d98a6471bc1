"""The sound a caller hears while the assistant is unreachable, instead of dead air.

A built-in default (two soft chimes every two seconds), or an operator's WAV file.
Returned as 8 kHz mu-law, ready to queue for Twilio.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from audio.mulaw import pcm16_to_ulaw
from audio.resample import Downsampler
from audio.signals import tone

__all__ = ["default_hold_ulaw", "load_hold_wav"]

# Quiet enough not to startle, loud enough to say "still connected" over a phone line.
_CHIME_DBFS = -24.0
_CHIME_MS = 180
_FADE_MS = 15  # no clicks at the chime's edges
# Longer than an hour of hold is a misconfiguration, and it would all sit in memory.
_MAX_WAV_S = 600


def default_hold_ulaw() -> bytes:
    """Two seconds: a rising two-note chime, then quiet."""
    rate = 8000
    fade = np.linspace(0.0, 1.0, rate * _FADE_MS // 1000)
    parts: list[NDArray[np.float64]] = []
    for freq_hz in (523.25, 659.25):  # C5, E5
        chime = tone(freq_hz, _CHIME_MS, rate, _CHIME_DBFS).astype(np.float64)
        chime[: fade.size] *= fade
        chime[-fade.size :] *= fade[::-1]
        parts.append(chime)
        parts.append(np.zeros(rate * 60 // 1000))
    used = sum(p.size for p in parts)
    parts.append(np.zeros(2 * rate - used))
    return pcm16_to_ulaw(np.round(np.concatenate(parts)).astype(np.int16))


def load_hold_wav(path: str | Path) -> bytes:
    """A mono 16-bit WAV at 8 or 16 kHz, as 8 kHz mu-law. ValueError says what is wrong."""
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, rate, frames = wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getnframes()
            if channels != 1 or width != 2 or rate not in (8000, 16000):
                raise ValueError(f"{path}: need mono 16-bit PCM at 8000 or 16000 Hz, got {channels} ch, "
                                 f"{8 * width}-bit, {rate} Hz")
            if frames > _MAX_WAV_S * rate:
                raise ValueError(f"{path}: longer than {_MAX_WAV_S} s")
            pcm = np.frombuffer(wav.readframes(frames), dtype="<i2").astype(np.int16)
    except (OSError, EOFError, wave.Error) as exc:
        raise ValueError(f"{path}: not a readable WAV file ({exc})") from exc
    if pcm.size == 0:
        raise ValueError(f"{path}: no audio")
    if rate == 16000:
        pcm = Downsampler().process(pcm)
    return pcm16_to_ulaw(pcm)
