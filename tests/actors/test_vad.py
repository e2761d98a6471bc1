"""VadActor alone: the echo canceller before the VAD, the engine loading beside the call."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from actors.call import CallContext
from actors.messages import CallerPcm, CallerSpeechStarted, CallerSpeechStopped
from actors.vad import VadActor
from audio.mulaw import pcm16_to_ulaw
from audio.signals import pink_noise, speech_like
from tests.actors.fakes import ProbeParent

FRAME = 160


def feed(ref, pcm: np.ndarray, start_ms: int = 0) -> None:
    for i in range(len(pcm) // FRAME):
        ref.tell(CallerPcm(pcm[i * FRAME : (i + 1) * FRAME].tobytes(), start_ms + 20 * i))


def play(call: CallContext, pcm: np.ndarray, start_ms: int = 0) -> None:
    """What the Twilio actor does for each frame it sends: write it at the time it plays."""
    ulaw = pcm16_to_ulaw(pcm)
    for i in range(len(pcm) // FRAME):
        call.far_end.write(start_ms + 20 * i, ulaw[i * FRAME : (i + 1) * FRAME])


def echo_of(pcm: np.ndarray, delay_ms: int, gain_db: float) -> np.ndarray:
    out = np.zeros_like(pcm)
    d = delay_ms * 8
    out[d:] = np.round(pcm[:-d] * 10 ** (gain_db / 20)).astype(np.int16)
    return out


@pytest.mark.parametrize("canceller", [True, False], ids=["canceller", "no-canceller"])
def test_the_caller_starts_and_stops_speaking(call: CallContext, parent: ProbeParent, canceller: bool) -> None:
    call.settings = replace(call.settings, echo_canceller=canceller)
    ref = parent.start(VadActor)
    pcm = np.concatenate([pink_noise(1000, 8000, dbfs=-50.0, seed=1),
                          speech_like(600, 8000, dbfs=-20.0), np.zeros(8000, dtype=np.int16)])
    feed(ref, pcm)
    [started] = parent.wait_for("twilio", CallerSpeechStarted)
    [stopped] = parent.wait_for("twilio", CallerSpeechStopped)
    assert 1000 <= started.stream_ms <= 1200
    assert 1600 <= stopped.stream_ms <= 2100


def test_the_assistants_echo_is_cancelled_and_the_caller_over_it_is_heard(
    call: CallContext, parent: ProbeParent
) -> None:
    call.settings = replace(call.settings, echo_canceller=True)
    ref = parent.start(VadActor)
    far = speech_like(5000, 8000, dbfs=-20.0, seed=3)
    near = echo_of(far, 120, -10.0) + pink_noise(5000, 8000, dbfs=-50.0, seed=4)
    near[3000 * 8 :] += speech_like(2000, 8000, dbfs=-26.0, seed=5)  # 6 dB under the assistant
    for at in range(0, 5000, 200):  # the Twilio side writes the far end a little ahead, as it plays
        play(call, far[at * 8 : (at + 200) * 8], start_ms=at)
        feed(ref, near[at * 8 : (at + 200) * 8], start_ms=at)
        parent.settle()
        if at < 3000:
            assert parent.of("twilio", CallerSpeechStarted) == []  # the echo alone
    [started] = parent.wait_for("twilio", CallerSpeechStarted)
    assert 3000 <= started.stream_ms <= 3300


def test_a_caller_already_talking_when_the_assistant_starts_is_reported_again(
    call: CallContext, parent: ProbeParent
) -> None:
    call.settings = replace(call.settings, echo_canceller=True)
    ref = parent.start(VadActor)
    talk = np.concatenate([pink_noise(500, 8000, dbfs=-50.0, seed=6), speech_like(1500, 8000, dbfs=-20.0)])
    feed(ref, talk[: 800 * 8])
    parent.wait_for("twilio", CallerSpeechStarted)  # no assistant yet: nothing to interrupt
    play(call, speech_like(1000, 8000, dbfs=-20.0, seed=7), start_ms=800)  # the assistant starts
    feed(ref, talk[800 * 8 :], start_ms=800)
    reports = parent.wait_for("twilio", CallerSpeechStarted, count=2)
    assert reports[1].stream_ms == 800  # at once, at the assistant's first frame
