"""A VAPI outage: the caller hears the hold sound, creation is retried with growing gaps,
and the call either recovers or ends gracefully with the fallback."""

from __future__ import annotations

import time

import numpy as np
import pytest

from audio.hold import default_hold_ulaw
from audio.signals import silence
from sims.caller import CallerError
from tests.integration.conftest import wait_until
from tests.integration.test_call_flow import after_stream, sim_call_for, speak_and_wait_for_answer, start_call


def keep_talking(caller, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            caller.send_audio(silence(100, 8000))
        except CallerError:
            return  # the server closed the stream


@pytest.mark.parametrize("server_env", [{"VAPI_RETRY_BUDGET_S": "4"}])
def test_an_outage_plays_the_hold_sound_retries_with_growing_gaps_and_gives_up_cleanly(
    bridge, vapi_sim, make_caller
):
    vapi_sim.refuse_creates(True)
    caller = start_call(make_caller)
    started = time.monotonic()
    keep_talking(caller, 1.0)
    # Not dead air: the built-in hold chime is playing.
    hold = default_hold_ulaw()
    assert len(caller.received_ulaw) >= 4000
    assert bytes(caller.received_ulaw[:1600]) == hold[:1600]
    keep_talking(caller, 6.0)
    assert caller.closed.wait(3)
    gave_up_after = time.monotonic() - started
    # It stops when the next jittered gap (up to 2 s + 25 %) would overrun the 4 s budget:
    # never before budget - 2.5 s, never long after the budget.
    assert 4.0 - 2.5 < gave_up_after < 6.5
    # The webhook tried once (the ticket then carried no VAPI call); the stream's VAPI actor retried.
    attempts = vapi_sim.create_attempts[1:]
    gaps = np.diff(attempts)
    assert len(attempts) >= 4
    # About 0.25 s, doubling to 2 s, jitter never below half the nominal gap.
    nominal = [min(2.0, 0.25 * 2**n) for n in range(len(gaps))]
    assert all(g >= 0.5 * n for g, n in zip(gaps, nominal, strict=True)), gaps
    assert gaps[-1] > gaps[0]
    assert bridge.calls.outcome(caller.call_sid) == "gave-up"
    assert bridge.records is not None
    response = after_stream(bridge, caller.call_sid)
    assert bridge.settings.fallback.say in response.text


@pytest.mark.parametrize("server_env", [{"VAPI_RETRY_BUDGET_S": "10"}])
def test_when_vapi_comes_back_the_hold_sound_stops_and_the_call_goes_on(bridge, vapi_sim, make_caller):
    vapi_sim.fail_next_creates(3)
    caller = start_call(make_caller)
    keep_talking(caller, 0.5)
    assert len(caller.received_ulaw) > 0  # hold sound
    sim = sim_call_for(vapi_sim, timeout=5)
    assert wait_until(lambda: caller.clears, timeout=3)  # the hold sound is cut when VAPI is back
    assert sim.greeted or sim.first_message_mode is None
    caller.send_audio(silence(300, 8000))
    assert speak_and_wait_for_answer(caller)
    assert not caller.closed.is_set()
    assert len(vapi_sim.create_attempts) == 4
