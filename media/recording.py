"""A call's stereo recording as the caller heard it: the two tracks, their mixing, the WAV header.

Pure logic, no I/O: the writer (records/recordings.py) appends what `StereoTracks.take`
hands out to a file, mixed by `stereo_pcm` behind a `wav_header`.

Both tracks are 8 kHz mu-law on one axis, *stream time*: the caller's audio in the order
the bridge admitted it (a gap Twilio left is filled with silence, as the uplink does), so
sample n is n / 8 ms into the stream. "Now" is the end of the caller audio received so far.

The assistant's audio is placed where the caller heard it, which is how Twilio plays
what a server sends: each frame plays once everything sent before it has played, and not
before it was sent (now). A `clear` makes Twilio drop what it holds unplayed: every
assistant sample placed at or after now is taken back (`clear`), so the recording has
silence there, never the discarded words. What lies before now can no longer change, so
it is final and may be handed out (`take`) while the call goes on.

A recording holds at most `max_samples` per track; past that it stops growing and says so
(`limited`). Everywhere nothing was said, a track holds silence.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from audio.mulaw import ULAW_SILENCE, ulaw_to_pcm16

__all__ = [
    "CHANNELS",
    "SAMPLE_RATE",
    "SAMPLE_WIDTH",
    "WAV_HEADER_BYTES",
    "Chunk",
    "StereoTracks",
    "stereo_pcm",
    "wav_header",
]

SAMPLE_RATE = 8000
CHANNELS = 2  # left: the caller; right: the assistant as the caller heard it
SAMPLE_WIDTH = 2  # 16-bit linear PCM in the file
WAV_HEADER_BYTES = 44
_FRAME_BYTES = CHANNELS * SAMPLE_WIDTH  # one stereo sample in the file
# RIFF sizes are 32-bit: a data chunk can hold at most this much (about 37 hours of stereo).
_MAX_DATA_BYTES = 0xFFFFFFFF - (WAV_HEADER_BYTES - 8)
_SILENCE = bytes([ULAW_SILENCE])


@dataclass(frozen=True, slots=True)
class Chunk:
    """A final stretch of both tracks: mu-law, equally long, from sample `start` of the stream."""

    start: int
    left: bytes  # the caller
    right: bytes  # the assistant, as heard

    @property
    def samples(self) -> int:
        return len(self.left)


class StereoTracks:
    """The two tracks of one call, kept from the last `take` on; see the module docstring."""

    def __init__(self, max_samples: int) -> None:
        if max_samples < 1:
            raise ValueError(f"max_samples={max_samples!r} is not valid: expected an integer >= 1")
        self._max = max_samples
        self._base = 0  # stream sample of the first sample still held
        self._left = bytearray()  # caller audio from _base to min(_now, _max)
        self._right = bytearray()  # assistant audio from _base; silence-padded, never past _max
        self._now = 0  # caller samples received: the stream's "now"
        self._play = 0  # where the next assistant sample will play
        self._done = False
        self.limited = False  # something was left out: the recording reached max_samples

    @property
    def now(self) -> int:
        return self._now

    @property
    def pending(self) -> int:
        """Samples of final audio held (from the last take to now)."""
        return max(0, min(self._now, self._max) - self._base)

    def caller(self, ulaw: bytes) -> bool:
        """Append the caller's next audio; True the first time the limit cut something off."""
        if self._done:
            return False
        start = self._now
        self._now += len(ulaw)
        room = self._max - start
        if room < len(ulaw):
            if room > 0:
                self._left += ulaw[:room]
            return self._limit()
        self._left += ulaw
        return False

    def assistant(self, ulaw: bytes) -> bool:
        """Audio sent to the caller: it plays after what was sent before it, not before now.

        True the first time the limit cut something off.
        """
        if self._done:
            return False
        at = max(self._now, self._play)
        self._play = at + len(ulaw)
        room = self._max - at
        if room <= 0:
            return self._limit()
        right = self._right
        offset = at - self._base
        if len(right) < offset:
            right += _SILENCE * (offset - len(right))
        del right[offset:]  # never anything there (see clear); kept exact regardless
        right += ulaw[:room]
        return self._limit() if room < len(ulaw) else False

    def clear(self) -> int:
        """Twilio dropped its unplayed audio: take back what was placed from now on; returns samples."""
        now = self._now
        taken = max(0, self._play - now)
        self._play = min(self._play, now)
        keep = max(0, now - self._base)
        del self._right[keep:]
        return taken

    def take(self, *, final: bool = False) -> Chunk | None:
        """The final audio held, from the last take up to now, or None when there is none.

        `final`: the call ended; everything goes, the assistant's last words included
        (an empty chunk if there is nothing), and the tracks take no more audio.
        """
        if self._done:
            return None
        end = min(max(self._now, self._play) if final else self._now, self._max)
        count = end - self._base
        if count <= 0 and not final:
            return None
        count = max(0, count)
        left = _exactly(self._left, count)
        right = _exactly(self._right, count)
        del self._left[:count]
        del self._right[:count]
        chunk = Chunk(self._base, left, right)
        self._base += count
        self._done = final
        return chunk

    def _limit(self) -> bool:
        first = not self.limited
        self.limited = True
        return first


def _exactly(track: bytearray, count: int) -> bytes:
    """The first `count` samples of `track`, silence where it is shorter."""
    head = bytes(track[:count])
    return head + _SILENCE * (count - len(head))


def stereo_pcm(left: bytes, right: bytes) -> bytes:
    """Two mu-law tracks as interleaved 16-bit little-endian stereo; the shorter is padded with silence."""
    samples = max(len(left), len(right))
    out = np.zeros((samples, CHANNELS), dtype="<i2")
    out[: len(left), 0] = ulaw_to_pcm16(left)
    out[: len(right), 1] = ulaw_to_pcm16(right)
    return out.tobytes()


def wav_header(data_bytes: int) -> bytes:
    """The 44-byte header of a stereo 8 kHz 16-bit PCM WAV file whose data is `data_bytes` long."""
    data_bytes = max(0, min(data_bytes, _MAX_DATA_BYTES))
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        WAV_HEADER_BYTES - 8 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,  # the size of this PCM fmt chunk
        1,  # PCM
        CHANNELS,
        SAMPLE_RATE,
        SAMPLE_RATE * _FRAME_BYTES,  # bytes per second
        _FRAME_BYTES,  # block align
        SAMPLE_WIDTH * 8,
        b"data",
        data_bytes,
    )
