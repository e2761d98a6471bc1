"""RECORDINGS_DIR over real sockets: what the caller said and heard, a failing disk, retention."""

from __future__ import annotations

import os
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from audio.signals import dominant_frequency_hz, level_dbfs, silence, tone
from records.recordings import RecordingWriter
from sims.vapi import VapiSimConfig
from tests.integration.conftest import API_KEY, wait_until
from tests.integration.test_call_flow import sim_call_for, speak_and_wait_for_answer, start_call

# The greeting is long and sent in one burst: most of it waits in the bridge and in
# Twilio's buffer when the caller barges in. The assistant talks on over the caller
# (no user-interrupted), so only the bridge's own barge-in stops what the caller hears,
# and the greeting goes on once the caller has stopped (BARGE_IN_RESUME_MS).
GREETING = VapiSimConfig(api_key=API_KEY, greeting_ms=4000, reply_ms=600, reply_delay_ms=200, interruptible=False)
RATE = 8000
FIRST_TIMESTAMP_MS = 52  # the simulated caller's first media timestamp: sample 0 of the recording


@pytest.fixture
def recordings_dir(tmp_path) -> Path:
    return tmp_path / "recordings"


@pytest.fixture
def server_env(recordings_dir) -> dict[str, str]:
    return {"RECORDINGS_DIR": str(recordings_dir)}


def read_stereo(path: str | Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, RATE)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)


def position(caller) -> int:
    """The caller's stream position now, as a sample index of the bridge's recording."""
    return (caller._stream_ms - FIRST_TIMESTAMP_MS) * RATE // 1000


def window(track: np.ndarray, start: int, end: int) -> np.ndarray:
    assert 0 <= start < end <= track.size, (start, end, track.size)
    return track[start:end]


@pytest.mark.parametrize("sim_config", [GREETING])
def test_the_recording_has_the_caller_left_and_what_the_caller_heard_right_cut_at_the_barge_in_until_it_goes_on(
    bridge, vapi_sim, make_caller, recordings_dir
):
    caller = start_call(make_caller)
    sim_call_for(vapi_sim)
    caller.send_audio(silence(400, RATE))
    deadline = time.monotonic() + 5
    while not caller.received_ulaw and time.monotonic() < deadline:
        caller.send_audio(silence(20, RATE))
    assert caller.received_ulaw, "no greeting"
    caller.send_audio(silence(1000, RATE))  # the caller hears a second of the greeting
    tone_start, talking_at = position(caller), time.monotonic()
    caller.send_audio(tone(1000.0, 600, RATE, -20.0))  # and talks over it
    tone_end = position(caller)
    assert caller.clears, "no barge-in"
    assert caller.cleared_bytes > 0  # Twilio dropped audio it had not played
    caller.send_audio(silence(2500, RATE))
    stopped = position(caller)
    caller.send_stop()
    assert wait_until(lambda: bridge.calls.live() == [], timeout=5)
    assert bridge.recordings is not None and bridge.recordings.flush(5)

    path = recordings_dir / f"{caller.call_sid}.wav"
    pcm = read_stereo(path)
    left, right = pcm[:, 0], pcm[:, 1]
    # Stream time, one sample per caller sample; the assistant's side may run on by the lead
    # Twilio held unplayed when the caller hung up (PLAYBACK_LEAD_MS, 200 ms).
    assert -2 * 160 <= left.size - stopped <= 200 * 8 + 2 * 160
    # Left: the caller's tone where it said it, and nothing before.
    said = window(left, tone_start, tone_end)
    assert abs(dominant_frequency_hz(said, RATE) - 1000.0) < 20 and level_dbfs(said) > -25
    assert level_dbfs(window(left, 0, tone_start - 160)) < -60
    # Right: the greeting, 440 Hz, where the caller heard it: up to the clear (~100 ms into the tone).
    cleared_at = tone_start + round((caller.clears[0] - talking_at) * RATE)
    assert tone_start < cleared_at < tone_end
    heard = window(right, tone_start - 6400, cleared_at - 320)
    assert abs(dominant_frequency_hz(heard, RATE) - 440.0) < 20 and level_dbfs(heard) > -22
    # From the clear on: silence, not the greeting that was sent but dropped unplayed (the
    # 200 ms lead in Twilio's buffer), nor the rest the bridge never sent.
    after = window(right, cleared_at + 320, tone_end + 300 * 8)
    assert level_dbfs(after) < -60, level_dbfs(after)
    # The caller stopped and VAPI talked on: the greeting went on, about 700 ms after the tone.
    went_on = window(right, tone_end + 1500 * 8, stopped - 160)
    assert abs(dominant_frequency_hz(went_on, RATE) - 440.0) < 20 and level_dbfs(went_on) > -22
    # The call record links the file.
    assert bridge.records is not None and bridge.records.flush(5)
    record = bridge.records.get(caller.call_sid)
    assert record is not None and record.recording_path == str(path)
    assert bridge.recordings.write_errors == 0


def broken_writer(path: str, chunk) -> None:
    raise OSError(5, "Input/output error")


@pytest.mark.parametrize("failure", ["directory replaced by a file", "writer raises"])
def test_a_failing_disk_never_harms_the_call(bridge, vapi_sim, make_caller, recordings_dir, failure):
    writer = bridge.recordings
    assert isinstance(writer, RecordingWriter)
    if failure == "writer raises":
        writer._write = broken_writer
    else:
        os.rmdir(recordings_dir)
        recordings_dir.write_text("the disk went away and a file took the directory's place")
    caller = start_call(make_caller)
    sim_call_for(vapi_sim)
    caller.send_audio(silence(300, RATE))
    assert speak_and_wait_for_answer(caller)
    assert speak_and_wait_for_answer(caller, freq_hz=700.0)
    caller.send_stop()
    assert wait_until(lambda: bridge.calls.live() == [], timeout=5)
    assert writer.flush(5)
    assert writer.write_errors >= 1 and writer.chunks_written == 0
    assert bridge.records is not None and bridge.records.flush(5)
    record = bridge.records.get(caller.call_sid)
    assert record is not None and record.outcome == "completed" and record.turns >= 2
    assert caller.errors == [] and not caller.closed_early


@pytest.fixture
def old_recording(recordings_dir) -> Path:
    recordings_dir.mkdir()
    old = recordings_dir / ("CA" + "0" * 32 + ".wav")
    old.write_bytes(b"RIFF")
    then = time.time() - 31 * 86400
    os.utime(old, (then, then))
    return old


def test_retention_deletes_an_old_recording_at_start_up(old_recording, bridge, recordings_dir):
    young = recordings_dir / ("CA" + "1" * 32 + ".wav")
    young.write_bytes(b"RIFF")
    assert wait_until(lambda: not old_recording.exists(), timeout=5)
    assert young.exists()


def test_a_recordings_dir_that_cannot_be_a_directory_stops_start_up_naming_it(tmp_path, vapi_sim):
    from service import BridgeService
    from settings import ConfigError
    from tests.integration.conftest import make_settings

    taken = tmp_path / "recordings"
    taken.write_text("a file where the directory should be")
    service = BridgeService(make_settings(0, vapi_sim, RECORDINGS_DIR=str(taken), HOST="127.0.0.1"))
    with pytest.raises(ConfigError) as info:
        service.start()
    assert info.value.name == "RECORDINGS_DIR" and "a directory" in str(info.value)
