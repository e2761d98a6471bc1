"""What the simulated caller says: scripts of utterances and pauses, built-in or from a WAV file.

A script renders to 8 kHz int16 audio in whole 20 ms frames, and knows the stream time
at which each utterance ends, so the caller can measure turn latency against it.
"""

from __future__ import annotations

import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audio.signals import level_dbfs, silence, speech_like, tone

__all__ = ["FRAME_MS", "RATE_HZ", "CallerScript", "Clip", "Pause", "Say", "Segment", "is_utterance"]

RATE_HZ = 8000  # Twilio Media Streams carry 8 kHz mu-law, so scripts render at 8 kHz.
FRAME_MS = 20
_FRAME_SAMPLES = RATE_HZ * FRAME_MS // 1000

# Utterance split for WAV files: a frame above this level is speech, and this much
# quiet ends an utterance. Same order as the VAPI simulator's endpointing, so the
# turns we measure are the turns it answers.
_WAV_SPEECH_DBFS = -40.0
_WAV_END_OF_UTTERANCE_MS = 400


@dataclass(frozen=True, kw_only=True)
class Say:
    """The caller speaks for `ms`: a tone at `tone_hz`, or speech-like audio when None."""

    ms: int
    tone_hz: float | None = None
    dbfs: float = -20.0


@dataclass(frozen=True, kw_only=True)
class Pause:
    """The caller is quiet for `ms`; Twilio still sends (silent) frames all along."""

    ms: int


@dataclass(frozen=True, kw_only=True)
class Clip:
    """Recorded audio (int16 little-endian at 8 kHz); `utterance` marks it as a turn."""

    pcm: bytes
    utterance: bool


Segment = Say | Pause | Clip


def _frames_ms(ms: float) -> int:
    # Every segment is rounded up to whole frames, so stream time stays frame-exact.
    return max(0, -(-round(ms) // FRAME_MS) * FRAME_MS)


def _pad_to_frames(pcm: np.ndarray) -> np.ndarray:
    short = (-pcm.size) % _FRAME_SAMPLES
    if short:
        pcm = np.concatenate([pcm, np.zeros(short, dtype=np.int16)])
    return pcm


@dataclass(frozen=True)
class CallerScript:
    """An ordered sequence of segments; `render()` turns it into audio."""

    segments: tuple[Segment, ...]

    @classmethod
    def default(cls) -> CallerScript:
        """Three speech-like utterances of 1.2 s, 2.5 s apart, after listening to a greeting."""
        return cls(
            (
                Pause(ms=1500),
                Say(ms=1200),
                Pause(ms=2500),
                Say(ms=1200),
                Pause(ms=2500),
                Say(ms=1200),
            )
        )

    @classmethod
    def from_wav(cls, path: str | Path) -> CallerScript:
        """Load a mono 16-bit WAV (8 or 16 kHz) and split it into utterances by level."""
        with wave.open(str(path), "rb") as wav:
            channels, width = wav.getnchannels(), wav.getsampwidth()
            if channels != 1 or width != 2:
                raise ValueError(f"{path}: need mono 16-bit PCM, got {channels} channel(s) of {width * 8} bit")
            rate = wav.getframerate()
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)
        if rate == 16000:
            # Pairwise mean: a crude low-pass before dropping every other sample. Good
            # enough for a demo voice; not a resampler anyone should measure.
            pcm = ((pcm[: pcm.size // 2 * 2].astype(np.int32).reshape(-1, 2).sum(axis=1)) // 2).astype(np.int16)
        elif rate != RATE_HZ:
            raise ValueError(f"{path}: sample rate {rate} Hz, need 8000 or 16000")
        return cls(tuple(_split_utterances(_pad_to_frames(pcm))))

    def render(self) -> Iterator[tuple[Segment, np.ndarray]]:
        """Each segment with its 8 kHz int16 audio, a whole number of 20 ms frames."""
        for index, segment in enumerate(self.segments):
            match segment:
                case Say(ms=ms, tone_hz=None, dbfs=dbfs):
                    # A different seed per segment so consecutive utterances differ.
                    pcm = speech_like(_frames_ms(ms), RATE_HZ, dbfs=dbfs, seed=index + 1)
                case Say(ms=ms, tone_hz=hz, dbfs=dbfs) if hz is not None:
                    pcm = tone(hz, _frames_ms(ms), RATE_HZ, dbfs=dbfs)
                case Pause(ms=ms):
                    pcm = silence(_frames_ms(ms), RATE_HZ)
                case Clip(pcm=raw):
                    pcm = np.frombuffer(raw, dtype="<i2").astype(np.int16)
            yield segment, _pad_to_frames(pcm)

    @property
    def duration_ms(self) -> int:
        """Stream time the script takes, in ms."""
        return sum(self._segment_ms(segment) for segment in self.segments)

    @property
    def utterance_ends_ms(self) -> tuple[int, ...]:
        """Stream time (ms from the script's first frame) at which each utterance ends."""
        ends: list[int] = []
        at = 0
        for segment in self.segments:
            at += self._segment_ms(segment)
            if is_utterance(segment):
                ends.append(at)
        return tuple(ends)

    @staticmethod
    def _segment_ms(segment: Segment) -> int:
        if isinstance(segment, Clip):
            return _frames_ms(len(segment.pcm) // 2 * 1000 / RATE_HZ)
        return _frames_ms(segment.ms)


def is_utterance(segment: Segment) -> bool:
    """True for segments the assistant is expected to answer."""
    return isinstance(segment, Say) or (isinstance(segment, Clip) and segment.utterance)


def _split_utterances(pcm: np.ndarray) -> Iterator[Clip]:
    frames = pcm.reshape(-1, _FRAME_SAMPLES)
    speech = [level_dbfs(frame) > _WAV_SPEECH_DBFS for frame in frames]
    end_frames = _WAV_END_OF_UTTERANCE_MS // FRAME_MS
    start = 0
    in_utterance = False
    quiet = 0
    for i, is_speech in enumerate(speech):
        if is_speech and not in_utterance:
            if i > start:
                yield Clip(pcm=frames[start:i].tobytes(), utterance=False)
            start, in_utterance, quiet = i, True, 0
        elif in_utterance:
            quiet = 0 if is_speech else quiet + 1
            if quiet >= end_frames:
                # The utterance ended where the quiet began, as an endpointer hears it.
                end = i - quiet + 1
                yield Clip(pcm=frames[start:end].tobytes(), utterance=True)
                start, in_utterance = end, False
    if in_utterance:
        # A file that stops mid-pause: the utterance ended where the quiet began.
        end = len(speech) - quiet
        yield Clip(pcm=frames[start:end].tobytes(), utterance=True)
        start = end
    if start < len(speech):
        yield Clip(pcm=frames[start:].tobytes(), utterance=False)
