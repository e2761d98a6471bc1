"""The simulated caller's --duration and --record, and what its summary says its figures mean."""

from __future__ import annotations

import subprocess
import sys
import wave
from typing import Any

import gevent
import numpy as np
import pytest

from audio.mulaw import pcm16_to_ulaw
from audio.signals import dominant_frequency_hz, level_dbfs, silence, tone
from sims.caller import SimulatedCaller, main, write_caller_wav
from sims.report import CallReport, SimDelays, summarize
from sims.script import CallerScript, Pause, Say
from tests.sims.test_caller import (  # noqa: F401 - fixtures used by name
    PUBLIC,
    TOKEN,
    FakeBridge,
    MakeCaller,
    answer_each_utterance,
    bridge,
    eventually,
    make_caller,
    streaming,
)

RATE = 8000
SCRIPT = CallerScript((Pause(ms=200), Say(ms=300, tone_hz=300.0), Pause(ms=700)))  # 1.2 s


@pytest.fixture(scope="module", autouse=True)
def warm_hub() -> None:
    """The hub opens its resolver's descriptors on first use, for good: not a leak of any test."""
    import socket

    socket.getaddrinfo("127.0.0.1", 80)


def read_stereo(path: Any) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, RATE)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)


# ---- what the caller heard ------------------------------------------------------------


def test_played_is_what_the_caller_heard_a_clear_cuts_the_unplayed_rest(
    bridge: FakeBridge, streaming: SimulatedCaller  # noqa: F811 - the fixtures imported above
) -> None:
    first = pcm16_to_ulaw(tone(440.0, 1000, RATE))
    bridge.send_media(first)
    assert eventually(lambda: len(streaming.received_ulaw) == len(first))
    gevent.sleep(0.3)
    bridge.send({"event": "clear", "streamSid": streaming.stream_sid})
    assert eventually(lambda: len(streaming.clears) == 1)
    again = pcm16_to_ulaw(tone(600.0, 200, RATE))
    bridge.send_media(again)
    assert eventually(lambda: len(streaming.received_ulaw) == len(first) + len(again))
    played = streaming.playback.played
    assert len(played) == 2
    (start, heard), (restart, rest) = played
    cleared = streaming.clears[0]
    assert abs(len(heard) - (cleared - start) * RATE) <= 2  # heard up to the clear, not after
    assert 0.25 * RATE < len(heard) < 0.45 * RATE
    assert rest == again and restart >= cleared


def test_write_caller_wav_puts_each_sound_where_it_was_said_or_heard(tmp_path: Any) -> None:
    said = pcm16_to_ulaw(tone(300.0, 40, RATE))
    heard = pcm16_to_ulaw(tone(700.0, 100, RATE))
    path = tmp_path / "call.wav"
    write_caller_wav(str(path), 10.0, [(10.5, said[:160]), (10.52, said[160:])], [(11.0, heard)])
    pcm = read_stereo(path)
    assert pcm.shape == (int(1.1 * RATE), 2)
    left, right = pcm[:, 0], pcm[:, 1]
    assert level_dbfs(left[:4000]) < -80 and level_dbfs(left[4000:4320]) > -30 and level_dbfs(left[4320:]) < -80
    assert level_dbfs(right[:8000]) < -80 and abs(dominant_frequency_hz(right[8000:], RATE) - 700) < 20


# ---- --duration and --record against the fake bridge ----------------------------------


def test_duration_repeats_the_script_then_hangs_up(
    bridge: FakeBridge, make_caller: MakeCaller  # noqa: F811 - the fixtures imported above
) -> None:
    bridge.on_message = answer_each_utterance()
    caller = make_caller(script=SCRIPT, duration_s=3.0)
    report = caller.run(timeout_s=15)
    assert report.ok, report
    media = bridge.events("media")
    sent_s = len(media) * 0.020
    assert 3.0 <= sent_s < 3.0 + 1.0, sent_s  # the duration, plus listening for the last answer
    # Two rounds of 1.2 s, then the third's pause and utterance fit (2.9 s); its last pause
    # did not, and 100 ms of silence took its place.
    assert len(report.turns) == 3
    assert bridge.events("stop")


def test_record_writes_what_the_caller_said_left_and_heard_right_on_its_clock(
    bridge: FakeBridge, make_caller: MakeCaller, tmp_path: Any  # noqa: F811 - the fixtures imported above
) -> None:
    bridge.on_message = answer_each_utterance(delay_s=0.2)
    path = tmp_path / "out.wav"
    caller = make_caller(script=SCRIPT, duration_s=1.6, record_path=str(path))
    report = caller.run(timeout_s=15)
    assert report.ok, report
    pcm = read_stereo(path)
    left, right = pcm[:, 0], pcm[:, 1]
    # Said: 200 ms pause, then the 300 Hz tone for 300 ms.
    assert level_dbfs(left[: int(0.18 * RATE)]) < -80
    said = left[int(0.22 * RATE) : int(0.48 * RATE)]
    assert abs(dominant_frequency_hz(said, RATE) - 300.0) < 20
    # Heard: the stand-in answers 3 quiet frames + 200 ms after the utterance, 300 ms of 440 Hz.
    arrival = caller.playback.played[0][0] - caller.stream_started_at
    start = round(arrival * RATE)
    assert 0.5 + 0.2 < arrival < 0.5 + 0.5
    assert level_dbfs(right[: start - 80]) < -80
    assert abs(dominant_frequency_hz(right[start : start + int(0.3 * RATE)], RATE) - 440.0) < 20


def test_main_writes_one_recording_per_call_and_explains_its_summary(
    bridge: FakeBridge, tmp_path: Any, capsys: Any  # noqa: F811 - the fixture imported above
) -> None:
    quiet = tmp_path / "quiet.wav"  # a script with nothing to answer: the fake bridge answers one stream
    with wave.open(str(quiet), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(silence(400, RATE).astype("<i2").tobytes())
    argv = ["--server", bridge.url, "--public-url", PUBLIC, "--calls", "2", "--duration", "1.2",
            "--record", str(tmp_path / "call.wav"), "--auth-token", TOKEN, "--wav", str(quiet)]
    assert main(argv, env={}) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "call-1.wav").exists() and (tmp_path / "call-2.wav").exists()
    assert "recorded to " + str(tmp_path / "call-1.wav") in out
    assert "clears: Twilio `clear` messages received" in out
    assert "marks echoed: marks the simulated Twilio sent back" in out
    assert "end of each caller utterance" in out


# ---- the summary ------------------------------------------------------------------------


def report(turns: tuple[float, ...], clears: int = 0, marks: int = 0) -> CallReport:
    return CallReport(call_sid="CA1", ok=True, outcome="completed", failure=None, turns=turns,
                      audio_ms_received=1000.0, clears=clears, marks_echoed=marks, duration_s=5.0,
                      protocol_errors=())


def test_the_summary_splits_turn_latency_into_the_simulators_share_and_the_rest() -> None:
    lines = summarize([report((800.0, 760.0, 900.0), clears=1, marks=12)],
                      SimDelays(endpointing_ms=400, reply_delay_ms=300))
    text = "\n".join(lines)
    assert "turn latency   p50 800 ms" in text
    assert "waits 400 ms of silence" in text and "reply delay of 300 ms (700 ms a turn)" in text
    assert "the bridge's and the network's share: p50 100 ms" in text
    assert "clears 1" in text and "one per barge-in" in text
    assert "marks echoed 12" in text and "finished playing" in text


def test_without_known_simulator_delays_the_summary_does_not_guess() -> None:
    text = "\n".join(summarize([report((800.0,))], SimDelays()))
    assert "simulator" not in text and "share" not in text
    assert "end of each caller utterance" in text


# ---- `run.py call --record` against a real server process --------------------------------


@pytest.mark.timeout(90)
def test_run_py_call_records_the_answer_where_the_caller_heard_it(tmp_path: Any) -> None:
    from tests.test_run import ROOT, start_server, stop_server
    from tests.test_run import TOKEN as SERVER_TOKEN

    bridge_dir = tmp_path / "bridge-recordings"
    process, base = start_server(tmp_path, RECORDINGS_DIR=str(bridge_dir), LOG_FORMAT="json")
    try:
        out = tmp_path / "caller.wav"
        result = subprocess.run(
            [sys.executable, str(ROOT / "run.py"), "call", "--server", base, "--auth-token", SERVER_TOKEN,
             "--duration", "6", "--record", str(out)],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )
    finally:
        stop_server(process)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "recorded to" in result.stdout and "VAPI simulator's own" in result.stdout
    pcm = read_stereo(out)
    left, right = pcm[:, 0].astype(np.float64), pcm[:, 1].astype(np.float64)
    assert 6.0 * RATE <= left.size < 8.0 * RATE
    # The default script: a greeting to listen to, then speech at 1.5 s for 1.2 s; the
    # built-in simulator answers with 440 Hz once it has heard 400 ms of silence + 300 ms.
    def loud(track: np.ndarray) -> list[bool]:  # per 20 ms frame
        return [level_dbfs(frame) > -40 for frame in track[: track.size // 160 * 160].reshape(-1, 160)]

    # The default script: quiet for 1.5 s (the built-in simulator's greeting plays), then
    # speech for 1.2 s; the simulator answers that with 440 Hz.
    said = loud(left)
    assert abs(said.index(True) * 0.020 - 1.5) < 0.06
    # Frames: 1.2 s of speech from where it started (under load the caller's first send
    # may slip by a frame, so the end is found from the start, not fixed at 2.7 s).
    said_end = said.index(True) + 60
    assert not any(said[said_end + 2 : said_end + 60])  # quiet while waiting for the answer
    heard = loud(right)
    assert any(heard[:50]) and not any(heard[75:said_end])  # the greeting, where it was heard
    answered = said_end + heard[said_end:].index(True)
    turn_ms = (answered - said_end) * 20.0
    tone_heard = right[answered * 160 : answered * 160 + 4000]
    assert abs(dominant_frequency_hz(tone_heard, RATE) - 440.0) < 20
    # Where the recording has the answer is the caller's own measure of its turn latency.
    printed = [float(line.split(": ")[1].split(" ms")[0]) for line in result.stdout.splitlines()
               if " turn 1: " in line]
    assert len(printed) == 1 and abs(printed[0] - turn_ms) <= 60, (printed, turn_ms)
    assert 600 < turn_ms < 1500  # 700 ms of the simulator's own, plus the bridge's share
    # The bridge recorded the same call on its side.
    recordings = list(bridge_dir.glob("CA*.wav"))
    assert len(recordings) == 1 and read_stereo(recordings[0]).shape[0] > 5 * RATE
