"""Every fault kind on every actor, injected through the admin API: the call survives.

For each (actor, fault): the Twilio socket stays open, and audio flows again both ways
within 1 s of the restart (a blackholed link within keepalive + pong timeout + 1 s of
the fault, since nothing can notice it sooner).
"""

from __future__ import annotations

import time

import gevent
import pytest
import requests

from actors.messages import InjectFault
from audio.signals import silence, tone
from chaos.faults import applicable_pairs
from sims.vapi import VapiSimConfig
from tests.integration.conftest import API_KEY, wait_until
from tests.integration.test_call_flow import sim_call_for, start_call

TOKEN = "chaos-admin-token"
# A quick assistant: short endpointing and reply delay, so "audio flows again" can be
# seen within a second of a restart even when that restart is a new VAPI call.
QUICK = VapiSimConfig(
    api_key=API_KEY, greeting_ms=200, reply_ms=600, reply_delay_ms=0, end_of_utterance_ms=100
)
KEEPALIVE_S, PONG_TIMEOUT_S = 0.5, 0.3


def restarted(bridge, call, actor, before):
    if actor == "supervisor":
        return call.supervisor is not before and call.children is not None and call.children.get("twilio")
    return call.children.get(actor) not in (None, before)


@pytest.mark.parametrize("server_env", [{"ADMIN_TOKEN": TOKEN}])
@pytest.mark.parametrize("sim_config", [QUICK])
@pytest.mark.parametrize("actor, fault", applicable_pairs())
def test_every_fault_on_every_actor_recovers_with_audio_flowing_both_ways(
    bridge, vapi_sim, make_caller, actor, fault
):
    caller = start_call(make_caller)
    sim_call_for(vapi_sim)
    caller.send_audio(silence(300, 8000))
    call = bridge.calls.get(caller.call_sid)
    before = call.supervisor if actor == "supervisor" else call.children.get(actor)
    injected = time.monotonic()
    response = requests.post(
        f"http://127.0.0.1:{bridge.port}/admin/calls/{caller.call_sid}/chaos",
        json={"actor": actor, "fault": fault},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )
    assert response.status_code == 202

    if fault == "slow":
        # A slow handler is no failure: nothing restarts, and audio keeps flowing.
        caller.send_audio(silence(400, 8000))
        assert (call.supervisor if actor == "supervisor" else call.children.get(actor)) is before
        recovered = time.monotonic()
    else:
        while not restarted(bridge, call, actor, before) and time.monotonic() - injected < 6:
            caller.send_audio(silence(20, 8000))
        assert restarted(bridge, call, actor, before), "no restart"
        recovered = time.monotonic()
    assert not caller.closed.is_set()

    # Audio again, both ways: the caller speaks briefly; VAPI hears it and answers.
    sims_before = len(vapi_sim.calls)
    heard_before = len(caller.received_ulaw)
    latest = vapi_sim.calls[-1]
    uplink_from = len(latest.received_audio)
    uplink_at = downlink_at = None
    caller.send_audio(tone(800.0, 100, 8000, -20.0))
    while time.monotonic() - recovered < 3 and (uplink_at is None or downlink_at is None):
        caller.send_audio(silence(20, 8000))
        newest = vapi_sim.calls[-1]
        if (
            uplink_at is None
            and (newest is not latest or len(newest.received_audio) > uplink_from)
            and newest.connected.is_set()
            and len(newest.received_audio) > (uplink_from if newest is latest else 0)
        ):
            uplink_at = time.monotonic()
        if downlink_at is None and len(caller.received_ulaw) > heard_before:
            downlink_at = time.monotonic()
    assert uplink_at is not None and downlink_at is not None, (uplink_at, downlink_at)
    budget = 1.0
    if fault == "blackhole":
        recovered, budget = injected, KEEPALIVE_S + PONG_TIMEOUT_S + 1.0
    assert uplink_at - recovered < budget, uplink_at - recovered
    assert downlink_at - recovered < budget, downlink_at - recovered
    assert not caller.closed.is_set()
    assert bridge.calls.get(caller.call_sid) is call
    del sims_before


@pytest.mark.parametrize("server_env", [{"ADMIN_TOKEN": TOKEN}])
@pytest.mark.parametrize("sim_config", [QUICK])
def test_a_kill_in_one_call_leaves_a_concurrent_call_untouched(bridge, vapi_sim, make_caller):
    victim = start_call(make_caller)
    bystander = start_call(make_caller)
    assert wait_until(lambda: len(vapi_sim.calls) == 2)
    for sim_call in vapi_sim.calls:
        assert sim_call.connected.wait(3)
    other = bridge.calls.get(bystander.call_sid)
    untouched = {role: other.children.get(role) for role in ("twilio", "vapi", "codec", "vad")}
    supervisor = other.supervisor
    for actor in ("twilio", "vapi", "codec", "vad", "supervisor"):
        response = requests.post(
            f"http://127.0.0.1:{bridge.port}/admin/calls/{victim.call_sid}/chaos",
            json={"actor": actor, "fault": "kill"},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=5,
        )
        assert response.status_code in (202, 404)  # 404: that actor was mid-restart
        victim.send_audio(silence(100, 8000))
        bystander.send_audio(silence(100, 8000))
    assert {role: other.children.get(role) for role in untouched} == untouched
    assert other.supervisor is supervisor
    assert all(ref.is_alive() for ref in untouched.values())
    assert not bystander.closed.is_set() and not victim.closed.is_set()


def test_restarts_beyond_the_intensity_end_the_call_with_the_fallback(bridge, vapi_sim, make_caller):
    from tests.integration.test_call_flow import after_stream

    caller = start_call(make_caller)
    sim = sim_call_for(vapi_sim)
    caller.send_audio(silence(200, 8000))
    call = bridge.calls.get(caller.call_sid)
    intensity = call.flags.intensity
    for n in range(intensity + 1):
        before = call.children.get("codec")
        assert call.children.tell("codec", InjectFault("raise"))
        if n < intensity:
            assert wait_until(lambda before=before: call.children.get("codec") not in (None, before), timeout=3)
    assert caller.closed.wait(3)
    assert bridge.calls.outcome(caller.call_sid) == "gave-up"
    assert sim.ended.wait(3) and {"type": "end-call"} in sim.received_text  # VAPI was told
    response = after_stream(bridge, caller.call_sid)
    assert bridge.settings.fallback.say in response.text and "<Hangup" not in response.text


def test_a_caller_hanging_up_while_the_call_supervisor_hangs_still_ends_the_call(bridge, vapi_sim, make_caller):
    # Found by the soak: the hang-up sat in the hung supervisor's mailbox, was lost with
    # it, and its successor kept the call alive for good.
    caller = start_call(make_caller)
    sim = sim_call_for(vapi_sim)
    caller.send_audio(silence(200, 8000))
    call = bridge.calls.get(caller.call_sid)
    hung = call.supervisor
    hung.tell(InjectFault("hang"))
    gevent.sleep(0.1)
    caller.send_stop()
    caller.close()
    assert wait_until(lambda: bridge.calls.live() == [], timeout=6)
    assert call.supervisor is not hung  # it was replaced, and the successor ended the call
    assert bridge.calls.outcome(caller.call_sid) == "completed"
    assert sim.ended.wait(3)


def test_a_hang_up_arriving_while_twilio_actor_restarts_still_ends_the_call(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    sim_call_for(vapi_sim)
    caller.send_audio(silence(200, 8000))
    call = bridge.calls.get(caller.call_sid)
    call.children.tell("twilio", InjectFault("hang"))  # down for its 1 s deadline
    gevent.sleep(0.2)
    caller.send_stop()  # Twilio does not close its side at once
    assert wait_until(lambda: bridge.calls.live() == [], timeout=4)
    assert bridge.calls.outcome(caller.call_sid) == "completed"


def test_a_supervisor_restarted_after_the_end_was_decided_ends_the_call_at_once(bridge, vapi_sim, make_caller):
    from calls.outcome import Outcome

    caller = start_call(make_caller)
    sim_call_for(vapi_sim)
    call = bridge.calls.get(caller.call_sid)
    first = call.supervisor
    call.supervisor.tell(InjectFault("hang"))  # the watchdog replaces it after its 3 s deadline
    gevent.sleep(0.1)
    # Decided while the supervisor cannot read its mailbox: the message dies with it.
    call.end(Outcome.ASSISTANT_ENDED, "the assistant said goodbye")
    assert wait_until(lambda: call.supervisor is not first, timeout=6)
    replaced_at = time.monotonic()
    assert wait_until(lambda: call.ended.is_set(), timeout=2)
    assert time.monotonic() - replaced_at < 1.0  # at its start, not after some polling period
    assert call.state.outcome == Outcome.ASSISTANT_ENDED and call.state.outcome_detail == "the assistant said goodbye"
    assert bridge.calls.outcome(caller.call_sid) is Outcome.ASSISTANT_ENDED
    assert caller.closed.wait(5)  # we closed Twilio's socket: Twilio now asks for <Connect action>
