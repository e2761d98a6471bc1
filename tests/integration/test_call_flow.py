"""A whole call over real loopback sockets: simulated caller → bridge → VAPI simulator and back."""

from __future__ import annotations

import time

import numpy as np
import pytest
import requests

from actors.messages import InjectFault
from audio.signals import dominant_frequency_hz, level_dbfs, silence, tone, tone_level_dbfs
from protocols.signature import SignatureValidator
from sims.caller import CallerError
from tests.integration.conftest import AUTH_TOKEN, wait_until


def start_call(make_caller, **kw):
    """Webhook, media socket and `start`; returns once the call runs on the bridge (its actors start at `start`)."""
    caller = make_caller(**kw)
    status, _ = caller.post_webhook()
    assert status == 200
    caller.connect()
    caller.start_stream()
    bridge = make_caller.bridge
    assert wait_until(lambda: bridge.calls.get(caller.call_sid) is not None or caller.closed.is_set())
    return caller


def sim_call_for(vapi_sim, index=0, timeout=5.0):
    assert wait_until(lambda: len(vapi_sim.calls) > index, timeout=timeout)
    call = vapi_sim.calls[index]
    assert call.connected.wait(timeout)
    return call


def speak_and_wait_for_answer(caller, freq_hz=1000.0, ms=600, timeout=5.0):
    """Say a tone, then keep the line alive with silence until new assistant audio arrives.

    Twilio streams continuously, so silence keeps flowing: VAPI only answers once it has
    heard the end of the utterance.
    """
    caller.send_audio(tone(freq_hz, ms, 8000, -20.0))
    before = len(caller.received_ulaw)
    for _ in range(int(timeout / 0.2)):
        caller.send_audio(silence(200, 8000))
        if len(caller.received_ulaw) - before >= 1600:
            return True
    return False


def after_stream(bridge, call_sid):
    url = bridge.settings.public_url + "/voice/after-stream"
    params = {"CallSid": call_sid, "CallStatus": "in-progress"}
    headers = {"X-Twilio-Signature": SignatureValidator(AUTH_TOKEN).sign(url, params)}
    return requests.post(f"http://127.0.0.1:{bridge.port}/voice/after-stream", data=params, headers=headers, timeout=5)


def test_caller_audio_reaches_vapi_intact_and_the_answer_reaches_the_caller(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    sim = sim_call_for(vapi_sim)
    assert sim.audio_format == "pcm_s16le" and sim.sample_rate == 16000
    assert speak_and_wait_for_answer(caller, freq_hz=1000.0, ms=1000)

    # Uplink: the 1 kHz tone at -20 dBFS arrives at 16 kHz with its pitch and level, and
    # little else (mu-law's own noise is about -38 dB; clicks at frame borders would add more).
    received = sim.received_pcm16()
    loud = np.flatnonzero(np.abs(received) > 1000)
    assert loud.size > 0.8 * 16000  # nearly all of the second arrived
    segment = received[loud[0] + 1600 : loud[0] + 1600 + 8000]
    assert abs(dominant_frequency_hz(segment, 16000) - 1000.0) < 2.0
    assert abs(level_dbfs(segment) - (-20.0)) < 1.0
    residual = segment.astype(np.float64) - tone_like(segment, 1000.0, 16000)
    assert level_dbfs(residual) - level_dbfs(segment) < -30.0

    # Downlink: the simulator answers with a 440 Hz tone, which the caller hears as such.
    heard = caller.received_pcm16()
    assert abs(dominant_frequency_hz(heard[-3200:], 8000) - 440.0) < 2.0
    assert caller.errors == []
    assert wait_until(lambda: sim.answers_sent >= 1, timeout=3)


def tone_like(segment, freq_hz, rate_hz):
    """The best-fitting sine of `freq_hz` to `segment` (least squares)."""
    t = np.arange(segment.size) / rate_hz
    basis = np.stack([np.sin(2 * np.pi * freq_hz * t), np.cos(2 * np.pi * freq_hz * t)], axis=1)
    coeffs, *_ = np.linalg.lstsq(basis, segment.astype(np.float64), rcond=None)
    return basis @ coeffs


@pytest.mark.parametrize("server_env", [{"VAPI_AUDIO_FORMAT": "mulaw"}])
def test_mulaw_pass_through_sends_the_callers_bytes_to_vapi_untouched(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    sim = sim_call_for(vapi_sim)
    assert sim.audio_format == "mulaw" and sim.sample_rate == 8000
    sent = tone(700.0, 400, 8000, -18.0)
    caller.send_audio(sent)
    caller.send_audio(silence(400, 8000))
    from audio.mulaw import pcm16_to_ulaw

    assert wait_until(lambda: pcm16_to_ulaw(sent) in bytes(sim.received_audio), timeout=3)


def test_caller_hanging_up_ends_vapi_and_leaves_nothing_behind(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    sim = sim_call_for(vapi_sim)
    caller.send_audio(silence(200, 8000))
    caller.send_stop()
    assert sim.ended.wait(3)
    assert {"type": "end-call"} in sim.received_text
    assert wait_until(lambda: bridge.calls.outcome(caller.call_sid) == "completed", timeout=3)
    assert bridge.calls.live() == []
    assert caller.closed.wait(3)  # the server closed its side too
    # no_leaks checks that no actor and no greenlet of the call is left.


def test_caller_socket_dropping_without_stop_ends_the_call(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    sim = sim_call_for(vapi_sim)
    caller.send_audio(silence(100, 8000))
    caller.close()
    assert sim.ended.wait(3)
    assert wait_until(lambda: bridge.calls.live() == [], timeout=3)


def test_assistant_hanging_up_closes_twilio_socket_and_after_stream_hangs_up(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    sim = sim_call_for(vapi_sim)
    sim.end_call()
    assert caller.closed.wait(3)
    assert wait_until(lambda: bridge.calls.outcome(caller.call_sid) == "assistant-ended", timeout=3)
    response = after_stream(bridge, caller.call_sid)
    assert response.status_code == 200 and "<Hangup" in response.text


def test_a_vapi_link_that_stops_answering_pings_is_replaced_and_audio_flows_again(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    first = sim_call_for(vapi_sim)
    assert speak_and_wait_for_answer(caller)
    first.blackhole()
    # Keepalive 0.5 s + pong timeout 0.3 s, then backoff: speak meanwhile, as a caller would.
    caller.send_audio(tone(600.0, 400, 8000, -20.0))
    caller.send_audio(silence(600, 8000))
    second = sim_call_for(vapi_sim, index=1, timeout=5)
    assert second.first_message_mode == "assistant-waits-for-user"
    assert not second.greeted
    assert not caller.closed.is_set()
    assert speak_and_wait_for_answer(caller, freq_hz=1000.0)
    # Words spoken while the link was dying were replayed to the new link.
    replayed = second.received_pcm16()
    assert tone_level_dbfs(replayed, 600.0, 16000) > -45.0
    restarts = bridge.metrics.value("bridge_actor_restarts_total", actor="vapi", reason="failed")
    assert restarts >= 1
    assert caller.errors == []


@pytest.mark.parametrize("role", ["codec", "vad", "vapi", "twilio", "supervisor"])
@pytest.mark.parametrize("fault", ["raise", "kill"])
def test_a_crash_in_any_actor_restarts_it_without_ending_the_call(bridge, vapi_sim, make_caller, role, fault):
    caller = start_call(make_caller)
    sim_call_for(vapi_sim)
    caller.send_audio(silence(200, 8000))
    call = bridge.calls.get(caller.call_sid)
    if role == "supervisor":
        before = call.supervisor
        before.tell(InjectFault(fault))
        assert wait_until(lambda: call.supervisor is not before and call.children.get("twilio"), timeout=3)
    else:
        before = call.children.get(role)
        call.children.tell(role, InjectFault(fault))
        assert wait_until(lambda: call.children.get(role) not in (None, before), timeout=3)
    reason = "killed" if fault == "kill" else "failed"
    assert bridge.metrics.value("bridge_actor_restarts_total", actor=role, reason=reason) == 1
    assert not caller.closed.is_set()
    assert speak_and_wait_for_answer(caller)
    assert bridge.calls.get(caller.call_sid) is call


def test_malformed_frames_are_counted_and_the_call_goes_on(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    bystander = start_call(make_caller)
    sim_call_for(vapi_sim, index=1)
    stream_sid = caller.stream_sid
    caller.send_raw("{not json")
    caller.send_raw(f'{{"event": "media", "streamSid": "{stream_sid}", "media": {{"track": "inbound", "chunk": "1", '
                    '"timestamp": "1", "payload": "***not base64***"}}')
    caller.send_raw(f'{{"event": "teleport", "streamSid": "{stream_sid}"}}')
    caller.send_raw(b"\x00\x01binary")
    caller.send_raw("x" * (100 * 1024))
    caller.send_raw("[1, 2, 3]")
    m = bridge.metrics
    assert wait_until(lambda: m.value("bridge_malformed_inputs_total", source="twilio", kind="oversize") == 1)
    for kind in ("bad_json", "bad_base64", "unknown_event", "binary_frame", "not_object"):
        assert wait_until(
            lambda kind=kind: m.value("bridge_malformed_inputs_total", source="twilio", kind=kind) == 1
        ), kind
    assert not caller.closed.is_set()
    assert speak_and_wait_for_answer(caller)
    assert speak_and_wait_for_answer(bystander)
    assert bridge.metrics.value("bridge_actor_restarts_total", actor="twilio", reason="failed") == 0


@pytest.mark.parametrize("server_env", [{"VAPI_RETRY_BUDGET_S": "2"}])
def test_when_vapi_keeps_refusing_the_bridge_gives_up_and_twilio_gets_the_fallback(bridge, vapi_sim, make_caller):
    vapi_sim.refuse_creates(True)
    caller = start_call(make_caller)
    for _ in range(40):
        try:
            caller.send_audio(silence(200, 8000))
        except CallerError:
            break  # the server closed the stream: what we wait for
    assert caller.closed.wait(5)
    assert bridge.calls.outcome(caller.call_sid) == "gave-up"
    response = after_stream(bridge, caller.call_sid)
    assert "<Say>" in response.text and bridge.settings.fallback.say in response.text


@pytest.mark.parametrize("role", ["codec", "vad", "vapi", "twilio"])
def test_a_hung_actor_is_replaced_within_its_deadline_and_the_call_goes_on(bridge, vapi_sim, make_caller, role):
    caller = start_call(make_caller)
    sim_call_for(vapi_sim)
    caller.send_audio(silence(200, 8000))
    call = bridge.calls.get(caller.call_sid)
    hung = call.children.get(role)
    deadline = hung._actor_weakref().handler_deadline_s
    started = time.monotonic()
    call.children.tell(role, InjectFault("hang"))
    # Keep the caller talking meanwhile: a hung actor must not take the call with it.
    while call.children.get(role) in (None, hung) and time.monotonic() - started < deadline + 2:
        caller.send_audio(silence(100, 8000))
    assert time.monotonic() - started < deadline + 0.5
    assert bridge.metrics.value("bridge_actor_restarts_total", actor=role, reason="hung") == 1
    assert not caller.closed.is_set()
    assert speak_and_wait_for_answer(caller)


def test_a_slow_actor_is_not_mistaken_for_a_hung_one(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    sim_call_for(vapi_sim)
    call = bridge.calls.get(caller.call_sid)
    codec = call.children.get("codec")
    call.children.tell("codec", InjectFault("slow"))
    caller.send_audio(silence(600, 8000))
    assert call.children.get("codec") is codec
    assert speak_and_wait_for_answer(caller)


@pytest.mark.parametrize("server_env", [{"MEDIA_CONNECT_TIMEOUT_S": "1"}])
def test_a_call_whose_media_stream_never_comes_leaves_nothing_and_its_late_stream_is_refused(
    bridge, vapi_sim, make_caller
):
    caller = make_caller()
    status, _ = caller.post_webhook()  # Twilio asked for TwiML, then did not open the stream in time
    assert status == 200
    sim = sim_call_for(vapi_sim)  # created and joined at the webhook (one process: the stream can only come here)
    assert bridge.calls.live() == []  # no actors run for it
    assert sim.ended.wait(3)  # the ticket expired: the VAPI call it had started is ended
    with pytest.raises(CallerError) as refused:
        caller.connect()  # and the admission expired with it
    assert refused.value.status == 403
    assert bridge.calls.live() == []
