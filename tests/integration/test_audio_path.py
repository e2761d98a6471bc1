"""What the caller hears and what VAPI hears, over real sockets: barge-in, echo, gaps, DTMF."""

from __future__ import annotations

import time

import numpy as np
import pytest

from audio.mulaw import ULAW_SILENCE, pcm16_to_ulaw
from audio.signals import pink_noise, silence, speech_like, tone
from sims.vapi import VapiSimConfig
from tests.integration.conftest import API_KEY, wait_until
from tests.integration.test_call_flow import sim_call_for, start_call

# The assistant talks on over the caller (no user-interrupted): only the bridge's own
# VAD can stop what the caller hears.
STUBBORN = VapiSimConfig(api_key=API_KEY, greeting_ms=4000, reply_ms=4000, reply_delay_ms=200, interruptible=False)
STUBBORN_REALTIME = VapiSimConfig(
    api_key=API_KEY, greeting_ms=4000, reply_ms=4000, reply_delay_ms=200, interruptible=False, send_realtime=True
)


@pytest.fixture
def server_env():
    # These tests speak in synthetic signals (audio.signals.speech_like), which Silero
    # rightly does not take for a voice: they run the energy engine, with the echo
    # canceller. test_bargein.py speaks to the default engine with espeak-ng.
    return {"VAD_ENGINE": "energy"}


def wait_for_assistant_audio(caller, min_bytes=800, timeout=3.0):
    """Keep the line alive (Twilio streams continuously) until assistant audio arrives."""
    deadline = time.monotonic() + timeout
    while len(caller.received_ulaw) < min_bytes and time.monotonic() < deadline:
        caller.send_audio(silence(20, 8000))
    return len(caller.received_ulaw) >= min_bytes


@pytest.mark.parametrize("sim_config", [STUBBORN, STUBBORN_REALTIME], ids=["burst", "realtime"])
def test_caller_speech_over_the_assistant_clears_twilio_within_150ms_and_a_turn_vapi_talks_on_in_goes_on(
    bridge, vapi_sim, make_caller, sim_config
):
    caller = start_call(make_caller)
    sim_call_for(vapi_sim)
    caller.send_audio(silence(400, 8000))  # a moment of line noise floor first
    assert wait_for_assistant_audio(caller)
    onset = time.monotonic()
    caller.send_audio(speech_like(400, 8000, dbfs=-20.0))
    assert caller.clears, "no clear was sent"
    latency_ms = (caller.clears[0] - onset) * 1000
    print("BARGE_IN_LATENCY_MS", round(latency_ms, 1))
    assert latency_ms < 150, latency_ms
    heard_at_clear = len(caller.received_ulaw)
    # The VAD says the caller stopped a hangover (400 ms) after their last sound; VAPI then
    # has BARGE_IN_RESUME_MS more to say it was an interruption. Until then nothing plays.
    caller.send_audio(silence(400, 8000))
    assert len(caller.received_ulaw) == heard_at_clear
    # This VAPI talks on over the caller and never says so: the greeting goes on.
    caller.send_audio(silence(1000, 8000))
    assert len(caller.received_ulaw) > heard_at_clear + 8000 * 0.3  # at least 300 ms of it
    assert bridge.metrics.value("bridge_barge_ins_total") == 1
    assert bridge.metrics.value("bridge_barge_ins_resumed_total") == 1
    # Nothing of the turn was dropped: what Twilio had not played, and what came meanwhile, waited.
    assert bridge.metrics.value("bridge_frames_dropped_total", reason="barge_in") == 0
    assert bridge.metrics.value("bridge_frames_dropped_total", reason="interrupted_turn") == 0
    # Marks echoed after the clear are counted as cancelled, not played (counts reach
    # Prometheus in batches; the call's end flushes them).
    caller.send_stop()
    assert wait_until(lambda: bridge.calls.live() == [])
    assert bridge.metrics.value("bridge_marks_total", result="cancelled") >= 1
    assert bridge.metrics.value("bridge_marks_total", result="played") >= 1


@pytest.mark.parametrize(
    "sim_config", [VapiSimConfig(api_key=API_KEY, greeting_ms=4000, reply_ms=600, reply_delay_ms=200)]
)
def test_a_turn_vapi_says_the_caller_interrupted_is_dropped_and_the_answer_plays(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    sim = sim_call_for(vapi_sim)
    caller.send_audio(silence(400, 8000))
    assert wait_for_assistant_audio(caller)
    caller.send_audio(speech_like(400, 8000, dbfs=-20.0))
    assert caller.clears, "no clear was sent"
    heard_at_clear = len(caller.received_ulaw)
    caller.send_audio(silence(1500, 8000))  # the answer comes 600 ms after the caller's utterance
    assert sim.interruptions_sent == 1
    assert bridge.metrics.value("bridge_barge_ins_resumed_total") == 0
    # What the caller had not heard of the greeting went with the interruption...
    assert bridge.metrics.value("bridge_frames_dropped_total", reason="barge_in") > 0
    # ...and what they hear next is the answer, all 600 ms of it.
    assert wait_for_assistant_audio(caller, min_bytes=heard_at_clear + 8 * 600)
    caller.send_stop()


@pytest.mark.parametrize("sim_config", [STUBBORN])
def test_stationary_noise_never_barges_in(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    sim_call_for(vapi_sim)
    caller.send_audio(pink_noise(3500, 8000, dbfs=-35.0, seed=3))
    assert len(caller.received_ulaw) > 8000  # the assistant was audible throughout
    assert caller.clears == []
    assert bridge.metrics.value("bridge_barge_ins_total") == 0


@pytest.mark.parametrize("sim_config", [STUBBORN])
def test_the_assistants_own_echo_20db_down_never_barges_in(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    sim_call_for(vapi_sim)
    assert wait_for_assistant_audio(caller)
    # What a speakerphone sends back: the assistant's 440 Hz, 20 dB below how it was sent.
    caller.send_audio(tone(440.0, 3000, 8000, dbfs=STUBBORN.reply_dbfs - 20.0))
    assert caller.clears == []
    assert bridge.metrics.value("bridge_barge_ins_total") == 0


@pytest.mark.parametrize("sim_config", [STUBBORN])
def test_clicks_and_breaths_never_barge_in(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    sim_call_for(vapi_sim)
    assert wait_for_assistant_audio(caller)
    rng = np.random.default_rng(5)
    for _ in range(5):
        click = np.zeros(4000, dtype=np.int16)  # 500 ms with a 10 ms full-scale click
        click[:80] = 32000
        caller.send_audio(click)
        breath = (rng.standard_normal(480) * 32767 * 10 ** (-30 / 20)).astype(np.int16)  # 60 ms at -30 dBFS
        caller.send_audio(np.concatenate([breath, np.zeros(3520, dtype=np.int16)]))
    assert caller.clears == []


@pytest.mark.parametrize("server_env", [{"VAPI_AUDIO_FORMAT": "mulaw"}])
def test_a_gap_in_twilios_audio_reaches_vapi_as_silence_of_its_length(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    sim = sim_call_for(vapi_sim)
    first, second = tone(500.0, 400, 8000, -18.0), tone(900.0, 400, 8000, -18.0)
    caller.send_audio(first)
    caller.skip_ms(200)  # Twilio dropped 10 frames under congestion
    caller.send_audio(second)
    expected = pcm16_to_ulaw(first) + bytes([ULAW_SILENCE]) * 1600 + pcm16_to_ulaw(second)
    assert wait_until(lambda: expected in bytes(sim.received_audio), timeout=3)
    assert bridge.metrics.value("bridge_gap_frames_filled_total") == 10


def test_a_duplicate_or_stale_frame_is_dropped_and_counted(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    sim_call_for(vapi_sim)
    caller.send_audio(silence(100, 8000))
    payload = "/" * 212 + "=="
    stale = (
        f'{{"event":"media","sequenceNumber":"99","streamSid":"{caller.stream_sid}","media":{{"track":"inbound",'
        f'"chunk":"1","timestamp":"52","payload":"{payload}"}}}}'
    )
    caller.send_raw(stale)
    assert wait_until(lambda: bridge.metrics.value("bridge_frames_dropped_total", reason="stale") == 1)


def test_dtmf_from_the_caller_reaches_vapi_as_a_message(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    sim = sim_call_for(vapi_sim)
    caller.send_audio(silence(100, 8000))
    caller.send_dtmf("7")
    assert wait_until(lambda: any(m.get("type") == "add-message" for m in sim.received_text), timeout=3)
    message = next(m for m in sim.received_text if m.get("type") == "add-message")
    assert message["message"]["role"] == "user" and "7" in message["message"]["content"]
    assert bridge.metrics.value("bridge_dtmf_digits_total") == 1


@pytest.mark.parametrize(
    "sim_config", [VapiSimConfig(api_key=API_KEY, greeting_ms=1000, reply_ms=600, reply_delay_ms=100)]
)
def test_if_twilio_stops_echoing_marks_the_assistant_is_not_held_back_forever(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    caller.playback._echo_mark = lambda name: None  # a Twilio that never echoes a mark
    sim_call_for(vapi_sim)
    caller.send_audio(silence(1000, 8000))
    held = len(caller.received_ulaw)
    assert held <= 1600 + 400  # only the 200 ms lead went out: pacing waits for marks
    caller.send_audio(silence(4000, 8000))
    # After 3 s without an echo the bridge stops waiting and the rest of the greeting plays.
    assert len(caller.received_ulaw) >= 8000
    assert bridge.metrics.value("bridge_malformed_inputs_total", source="twilio", kind="marks_overdue") >= 1
