"""Barge-in with real (synthesised) speech over sockets, on the default VAD engine and echo canceller.

The assistant's audio arrives in a burst or paced in real time; the caller's phone sends
back its echo (what the caller actually heard, on its play-out clock, delayed by a delay
that differs per call, 10 dB down, telephone band) over pink noise; then the caller, 6 dB
(or 10 dB) quieter than the assistant, talks over it. Timing figures are bench.bargein's; these
tests check the behaviour: no barge-in on echo, a barge-in on the caller, soon.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from audio.mulaw import ulaw_to_pcm16
from audio.signals import pink_noise
from sims.vapi import VapiSimConfig
from sims.vapi_call import AssistantTurn
from tests.integration.conftest import API_KEY
from tests.integration.speech import needs_espeak, say
from tests.integration.test_call_flow import start_call

pytestmark = needs_espeak

ASSISTANT_LINE = (
    "Thanks for calling. I can help you book an appointment, check on an order, "
    "or answer a question about your bill."
)
CALLER_LINE = "Sorry, wait, I need to change the delivery address."
ASSISTANT_DBFS = -20.0
CALLER_DBFS = -26.0  # an ordinary phone, 6 dB under the assistant
QUIET_CALLER_DBFS = -30.0  # the quietest caller barge-in must serve promptly (issue 13)
ECHO_DB = -10.0  # a speakerphone
FRAME = 160
# Bounds on waits, never targets: a test that waits this long has failed.
_FIRST_AUDIO_FRAMES = 150
_LISTEN_FRAMES = 100  # 2 s of the caller talking


@pytest.fixture
def sim_config() -> VapiSimConfig:
    # The assistant talks on over the caller and never answers: only the bridge's own
    # barge-in can stop what the caller hears.
    return VapiSimConfig(api_key=API_KEY, interruptible=False, answers=False)


def script_assistant(vapi_sim, pace: str) -> None:
    def configure(call) -> None:
        pcm = say(ASSISTANT_LINE, ASSISTANT_DBFS, voice="en-us+f3", rate_hz=call.sample_rate)
        call.turns = [AssistantTurn(pcm=pcm)]
        call.send_realtime = pace == "realtime"

    vapi_sim.on_call = configure


class Phone:
    """What the caller's phone sends, frame by frame: the room, the echo of what it played, the caller."""

    def __init__(self, caller, *, echo_delay_ms: int | None, noise_dbfs: float = -50.0) -> None:
        self.caller = caller
        self.echo_delay_s = None if echo_delay_ms is None else echo_delay_ms / 1000.0
        self.echo_gain = 10.0 ** (ECHO_DB / 20.0)
        n = np.arange(31) - 15  # a 300-3400 Hz band-pass, 31 taps (causal: 15 samples late)
        self.taps = np.hamming(31) * (0.85 * np.sinc(0.85 * n) - 0.075 * np.sinc(0.075 * n))
        self.history = np.zeros(30)
        self.noise = pink_noise(10_000, 8000, dbfs=noise_dbfs, seed=4).astype(np.float64)
        self.sent = 0
        self.speech: np.ndarray | None = None
        self.speech_from = 0
        self.speech_due: float | None = None  # monotonic time the caller's first word began

    def speak(self, pcm: np.ndarray) -> None:
        self.speech, self.speech_from = pcm.astype(np.float64), self.sent

    def frame(self, due: float) -> np.ndarray:
        start = self.sent
        self.sent += FRAME
        out = self.noise[np.arange(start, start + FRAME) % self.noise.size].copy()
        if self.echo_delay_s is not None:
            heard = ulaw_to_pcm16(self.caller.playback.heard(due - 0.020 - self.echo_delay_s, FRAME))
            signal = np.concatenate([self.history, heard.astype(np.float64)])
            self.history = signal[-30:]
            out += self.echo_gain * np.convolve(signal, self.taps, "valid")
        if self.speech is not None:
            offset = start - self.speech_from
            if offset == 0:
                self.speech_due = due - 0.020
            piece = self.speech[offset : offset + FRAME]
            out[: piece.size] += piece
        return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def send_until(caller, phone: Phone, frames: int, done) -> None:
    for _ in range(frames):
        caller.send_live(1, phone.frame)
        if done():
            return


@pytest.mark.parametrize(
    ("pace", "echo_delay_ms", "caller_dbfs"),
    [("burst", 80, CALLER_DBFS), ("realtime", 240, QUIET_CALLER_DBFS)],
    ids=["burst-echo-80ms-caller-26dBFS", "realtime-echo-240ms-caller-30dBFS"],
)
def test_echo_never_barges_in_and_a_quieter_caller_does_at_either_pace(
    bridge, vapi_sim, make_caller, pace, echo_delay_ms, caller_dbfs
):
    script_assistant(vapi_sim, pace)
    caller = start_call(make_caller)
    phone = Phone(caller, echo_delay_ms=echo_delay_ms)
    played = caller.playback.played
    send_until(caller, phone, _FIRST_AUDIO_FRAMES, lambda: bool(played))
    assert played, "no assistant audio reached the caller"
    # 2.5 s of the assistant and its echo: the canceller finds this call's delay.
    heard_until = played[0][0] + 2.5
    send_until(caller, phone, 200, lambda: time.monotonic() >= heard_until)
    assert caller.clears == [], "the assistant's own echo was taken for the caller"

    phone.speak(say(CALLER_LINE, caller_dbfs))
    send_until(caller, phone, _LISTEN_FRAMES, lambda: bool(caller.clears))
    assert caller.clears, "the caller talked over the assistant and was not heard"
    latency_ms = (caller.clears[0] - phone.speech_due) * 1000
    print(f"BARGE_IN_LATENCY_MS pace={pace} echo_delay_ms={echo_delay_ms} {latency_ms:.0f}")
    # During the caller's first words. Timed on this process's clock, so with slack for a
    # loaded machine: the figure itself (in stream time) is bench.bargein's.
    assert 0 < latency_ms < 1000, latency_ms
    assert bridge.metrics.value("bridge_barge_ins_total") == 1
    # The rest of the turn never reaches the caller.
    heard = len(caller.received_ulaw)
    send_until(caller, phone, 25, lambda: False)
    assert len(caller.received_ulaw) == heard


def test_a_caller_talking_from_the_first_frame_stops_the_assistant_as_it_starts(bridge, vapi_sim, make_caller):
    script_assistant(vapi_sim, "realtime")
    caller = start_call(make_caller)
    phone = Phone(caller, echo_delay_ms=None)
    # From the very first frame, as loud as the assistant: until the canceller has measured
    # this call's echo (the first ~0.5 s of assistant audio) a caller must be within about
    # 10 dB of the assistant's loudest recent frame to count (docs/barge-in.md).
    phone.speak(say(CALLER_LINE + " " + CALLER_LINE, ASSISTANT_DBFS))
    send_until(caller, phone, _FIRST_AUDIO_FRAMES, lambda: bool(caller.clears))
    assert caller.media_events, "no assistant audio reached the caller"
    assert caller.clears, "the caller was talking and the assistant talked on"
    first_audio = caller.media_events[0][0]
    print(f"FIRST_FRAME_CLEAR_MS {(caller.clears[0] - first_audio) * 1000:.0f}")
    # Issue 13's target is 400 ms (bench.bargein measures it); this process's clock on a
    # loaded machine gets slack, the behaviour (cleared as the assistant starts) does not.
    assert caller.clears[0] - first_audio < 0.8
