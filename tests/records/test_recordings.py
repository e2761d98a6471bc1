"""Recordings on disk: appended WAVs, a writer that never harms a call, retention."""

from __future__ import annotations

import os
import time
import wave
from collections.abc import Iterator

import gevent
import gevent.monkey
import numpy as np
import pytest

from audio.mulaw import pcm16_to_ulaw
from audio.signals import tone
from media.recording import Chunk
from records.recordings import (
    FLUSH_S,
    CallRecorder,
    RecordingWriter,
    append_chunk,
    delete_older_than,
    prepare_directory,
)
from tests.records.helpers import RecordingLog, live_greenlets, wait_until

SID = "CA" + "ab" * 16
real_sleep = gevent.monkey.get_original("time", "sleep")


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    gevent.sleep(0)
    before = live_greenlets()
    yield
    assert wait_until(lambda: live_greenlets() <= before), (live_greenlets(), before)


@pytest.fixture
def log() -> RecordingLog:
    return RecordingLog()


def read_wav(path: str) -> np.ndarray:
    with wave.open(path, "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 8000)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)


def ulaw_tone(hz: float, ms: int) -> bytes:
    return pcm16_to_ulaw(tone(hz, ms, 8000, dbfs=-12.0))


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if pcm.size else 0.0


# -- the file -------------------------------------------------------------------------


def test_chunks_append_to_a_wav_that_is_valid_after_each_and_a_missing_one_is_silence(tmp_path):
    path = str(tmp_path / f"{SID}.wav")
    loud = ulaw_tone(400.0, 100)  # 800 samples
    append_chunk(path, Chunk(0, loud, b"\xff" * 800))
    assert read_wav(path).shape == (800, 2)
    # Samples 800..1599 never arrived (a dropped chunk): the next one still lands at 1600.
    append_chunk(path, Chunk(1600, b"\xff" * 800, loud))
    pcm = read_wav(path)
    assert pcm.shape == (2400, 2)
    assert rms(pcm[:800, 0]) > 1000 and rms(pcm[:800, 1]) == 0
    assert rms(pcm[800:1600]) == 0
    assert rms(pcm[1600:, 0]) == 0 and rms(pcm[1600:, 1]) > 1000


def test_prepare_directory_makes_a_missing_one_and_refuses_a_file(tmp_path):
    made = tmp_path / "a" / "b"
    prepare_directory(str(made))
    assert made.is_dir()
    afile = tmp_path / "file"
    afile.write_text("not a directory")
    with pytest.raises(ValueError, match="a directory"):
        prepare_directory(str(afile))


# -- the writer -----------------------------------------------------------------------


def make_writer(tmp_path, log, **kw) -> RecordingWriter:
    kw.setdefault("max_seconds", 3600)
    kw.setdefault("retention_days", 30)
    writer = RecordingWriter(str(tmp_path), log=log, **kw)
    writer.start()
    return writer


def test_a_call_is_written_in_chunks_while_it_goes_on_and_whole_at_its_end(tmp_path, log):
    writer = make_writer(tmp_path, log)
    try:
        recorder = writer.open(SID)
        assert recorder.path == str(tmp_path / f"{SID}.wav")
        frame = ulaw_tone(300.0, 20)
        for _ in range(int(FLUSH_S * 50) + 10):  # a little over one flush period of caller audio
            recorder.caller(frame)
        assert writer.flush(5)
        assert writer.chunks_written == 1 and read_wav(recorder.path).shape[0] == FLUSH_S * 8000
        recorder.assistant(ulaw_tone(700.0, 200))
        recorder.close()
        recorder.caller(frame)  # after the end: ignored
        assert writer.flush(5)
        pcm = read_wav(recorder.path)
        assert pcm.shape[0] == (int(FLUSH_S * 50) + 10) * 160 + 1600
        assert rms(pcm[-1600:, 1]) > 1000 and rms(pcm[-1600:, 0]) == 0
        assert not recorder.failed and writer.write_errors == 0
    finally:
        writer.stop()


def test_a_writer_that_raises_is_counted_and_warned_about_at_a_limited_rate(tmp_path, log):
    def broken(path: str, chunk: Chunk) -> None:
        raise OSError(28, "No space left on device")

    writer = make_writer(tmp_path, log, write=broken)
    try:
        recorders = [writer.open("CA" + f"{n:032x}") for n in range(20)]
        for recorder in recorders:
            recorder.caller(b"\xff" * 160)
            recorder.close()  # never raises
        assert writer.flush(5)
        assert writer.write_errors == 20 and writer.chunks_written == 0
        assert all(recorder.failed for recorder in recorders)
        warned = log.fields("recording_write_failed")
        assert 1 <= len(warned) <= 5  # rate-limited
        assert warned[0]["kind"] == "OSError" and "No space left" in warned[0]["error"]
        assert warned[-1]["write_errors"] == len(warned)  # each line carries the running count
    finally:
        writer.stop()


def test_a_slow_disk_stalls_a_worker_thread_never_the_hub(tmp_path, log):
    def slow(path: str, chunk: Chunk) -> None:
        real_sleep(0.5)  # blocks its OS thread, as a stuck disk would

    writer = make_writer(tmp_path, log, write=slow)
    try:
        recorder = writer.open(SID)
        recorder.caller(b"\xff" * 160)
        recorder.close()
        gevent.sleep(0.01)  # the writer has handed the chunk to a thread
        started = time.monotonic()
        longest = 0.0
        while time.monotonic() - started < 0.4:
            before = time.monotonic()
            gevent.sleep(0.01)
            longest = max(longest, time.monotonic() - before)
        assert longest < 0.1, longest  # the hub kept running other greenlets
        assert writer.flush(5) and writer.chunks_written == 1
    finally:
        writer.stop()


def test_a_full_queue_drops_the_chunk_without_blocking_and_counts_it(tmp_path, log):
    def waits(path: str, chunk: Chunk) -> None:
        real_sleep(0.2)

    writer = make_writer(tmp_path, log, write=waits, queue_bytes=1000)
    try:
        recorder = writer.open(SID)
        recorder.caller(b"\xff" * 400)
        writer.submit(recorder, Chunk(0, b"\xff" * 400, b"\xff" * 400))  # 800 bytes queued
        started = time.monotonic()
        writer.submit(recorder, Chunk(400, b"\xff" * 400, b"\xff" * 400))  # would exceed 1000
        assert time.monotonic() - started < 0.05
        assert writer.chunks_dropped == 1
        assert log.fields("recording_chunk_dropped")[0]["kind"] == "queue_full"
    finally:
        writer.stop()


def test_a_recording_at_its_limit_stops_growing_and_says_so_once(tmp_path, log):
    writer = make_writer(tmp_path, log, max_seconds=1)
    try:
        recorder = writer.open(SID)
        for _ in range(100):  # two seconds
            recorder.caller(b"\x80" * 160)
        recorder.close()
        assert writer.flush(5)
        assert read_wav(recorder.path).shape[0] == 8000
        assert len(log.fields("recording_limit_reached")) == 1 and recorder.limited
    finally:
        writer.stop()


def test_a_recorder_that_hits_a_bug_disables_itself_and_never_raises(tmp_path, log):
    writer = make_writer(tmp_path, log)
    try:
        recorder = writer.open(SID)

        class Broken:
            def caller(self, ulaw: bytes) -> bool:
                raise RuntimeError("bug")

        recorder._tracks = Broken()  # type: ignore[assignment]
        recorder.caller(b"\xff" * 160)  # no exception reaches the actor
        assert recorder.closed and recorder.failed
        recorder.assistant(b"\xff" * 160)
        recorder.close()
        assert "recording_failed" in log.events("error")
    finally:
        writer.stop()


def test_a_file_name_is_always_a_plain_name_in_the_directory(tmp_path, log):
    writer = RecordingWriter(str(tmp_path), max_seconds=10, retention_days=0, log=log)
    recorder = writer.open("../../etc/passwd")
    assert isinstance(recorder, CallRecorder)
    assert os.path.dirname(recorder.path) == str(tmp_path)
    writer.stop()


# -- retention ------------------------------------------------------------------------


def aged(path, days: float) -> None:
    path.write_bytes(b"RIFF")
    then = time.time() - days * 86400
    os.utime(path, (then, then))


def test_retention_deletes_old_recordings_at_start_and_then_on_its_period(tmp_path, log):
    old, new = tmp_path / f"CA{'1' * 32}.wav", tmp_path / f"CA{'2' * 32}.wav"
    other = tmp_path / "notes.wav"  # not a recording of ours: never touched
    aged(old, 31)
    aged(new, 29)
    aged(other, 400)
    writer = make_writer(tmp_path, log, retention_days=30, retention_every_s=0.05)
    try:
        assert wait_until(lambda: not old.exists(), timeout=5)
        assert new.exists() and other.exists()
        later = tmp_path / f"CA{'3' * 32}.wav"
        aged(later, 45)  # grows old while the process runs: the next round takes it
        assert wait_until(lambda: not later.exists(), timeout=5)
        # The files go in a worker thread; the round counts them once it is back.
        assert wait_until(lambda: writer.files_deleted == 2, timeout=5), writer.files_deleted
        assert log.fields("recordings_deleted")
    finally:
        writer.stop()


def test_retention_0_keeps_recordings_forever(tmp_path, log):
    old = tmp_path / f"CA{'1' * 32}.wav"
    aged(old, 3650)
    writer = make_writer(tmp_path, log, retention_days=0, retention_every_s=0.01)
    try:
        gevent.sleep(0.1)
        assert old.exists()
    finally:
        writer.stop()


def test_delete_older_than_touches_only_recordings(tmp_path):
    (tmp_path / "sub").mkdir()
    aged(tmp_path / f"CA{'a' * 32}.wav", 10)
    aged(tmp_path / "CAshort.wav", 10)
    assert delete_older_than(str(tmp_path), time.time()) == [f"CA{'a' * 32}.wav"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CAshort.wav", "sub"]
