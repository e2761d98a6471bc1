"""The recording's tracks on stream time: placement as Twilio plays, truncation on clear, limit, WAV."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from audio.mulaw import ULAW_SILENCE, pcm16_to_ulaw, ulaw_to_pcm16
from media.recording import WAV_HEADER_BYTES, StereoTracks, stereo_pcm, wav_header

SILENT = bytes([ULAW_SILENCE])
FRAME = 160


def frame(code: int) -> bytes:
    """A 20 ms frame of one mu-law code, so where each frame landed is visible."""
    return bytes([code]) * FRAME


def test_the_assistant_plays_from_now_and_queues_after_what_was_sent_before():
    tracks = StereoTracks(max_samples=10_000)
    tracks.caller(frame(0x10) * 2)  # now = 320
    tracks.assistant(frame(0x20))  # plays at once: 320..480
    tracks.assistant(frame(0x21))  # after it: 480..640
    tracks.caller(frame(0x11) * 5)  # now = 1120: both have played
    tracks.assistant(frame(0x22))  # nothing queued: plays from now
    chunk = tracks.take(final=True)
    assert chunk is not None and chunk.start == 0
    assert chunk.left == frame(0x10) * 2 + frame(0x11) * 5 + SILENT * FRAME
    assert chunk.right == SILENT * 320 + frame(0x20) + frame(0x21) + SILENT * 480 + frame(0x22)


def test_a_clear_takes_back_only_what_had_not_played_yet():
    tracks = StereoTracks(max_samples=10_000)
    tracks.caller(frame(0x10))  # now = 160
    for code in (0x20, 0x21, 0x22, 0x23):
        tracks.assistant(frame(code))  # 160..800: Twilio's buffer runs ahead of now
    tracks.caller(frame(0x11))  # now = 320: the first assistant frame has played
    assert tracks.clear() == 480
    tracks.caller(frame(0x12))  # now = 480
    tracks.assistant(frame(0x24))  # a new turn plays from now, not after the dropped audio
    chunk = tracks.take(final=True)
    assert chunk is not None
    assert chunk.right == SILENT * FRAME + frame(0x20) + SILENT * FRAME + frame(0x24)
    assert frame(0x21)[:1] not in chunk.right and frame(0x22)[:1] not in chunk.right


def test_take_hands_out_only_final_audio_and_keeps_the_axis():
    tracks = StereoTracks(max_samples=10_000)
    tracks.caller(frame(0x10) * 2)
    for code in (0x20, 0x21, 0x22):
        tracks.assistant(frame(code))  # 320..800, ahead of now
    first = tracks.take()
    assert first is not None and (first.start, first.samples) == (0, 320)
    assert first.right == SILENT * 320
    assert tracks.take() is None  # nothing new is final
    tracks.caller(frame(0x11))  # now = 480
    assert tracks.clear() == 320  # the 0x21 and 0x22 frames were still in Twilio's buffer
    second = tracks.take(final=True)
    assert second is not None and (second.start, second.samples) == (320, 160)
    assert second.right == frame(0x20) and second.left == frame(0x11)
    assert tracks.take(final=True) is None  # done: nothing more
    tracks.caller(frame(0x12))
    assert tracks.take() is None


def test_the_recording_stops_growing_at_its_limit_and_says_so_once():
    tracks = StereoTracks(max_samples=400)
    assert tracks.caller(frame(0x10) * 2) is False
    assert tracks.caller(frame(0x11) * 2) is True  # cut at 400
    assert tracks.caller(frame(0x12)) is False  # said once
    assert tracks.assistant(frame(0x20)) is False  # plays from now (800), past the limit: left out
    assert tracks.limited
    chunk = tracks.take(final=True)
    assert chunk is not None and chunk.samples == 400
    assert chunk.left == frame(0x10) * 2 + frame(0x11)[:80]


def test_an_empty_final_take_is_an_empty_chunk():
    chunk = StereoTracks(max_samples=100).take(final=True)
    assert chunk is not None and chunk.samples == 0


def test_stereo_pcm_interleaves_caller_left_and_assistant_right():
    left = pcm16_to_ulaw(np.full(4, 1000, dtype=np.int16))
    right = pcm16_to_ulaw(np.full(2, -2000, dtype=np.int16))
    pcm = np.frombuffer(stereo_pcm(left, right), dtype="<i2").reshape(-1, 2)
    assert pcm.shape == (4, 2)
    assert list(pcm[:, 0]) == list(ulaw_to_pcm16(left))
    assert list(pcm[:2, 1]) == list(ulaw_to_pcm16(right)) and list(pcm[2:, 1]) == [0, 0]


@pytest.mark.parametrize("samples", [0, 1, 8000])
def test_the_header_describes_stereo_8khz_16bit_and_the_wave_module_reads_it(samples):
    data = bytes(range(256)) * (samples * 4 // 256) + bytes(samples * 4 % 256)
    blob = wav_header(len(data)) + data
    assert len(wav_header(0)) == WAV_HEADER_BYTES
    with wave.open(io.BytesIO(blob), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 8000)
        assert wav.getnframes() == samples
        assert wav.readframes(samples) == data
