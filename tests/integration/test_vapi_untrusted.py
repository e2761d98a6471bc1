"""VAPI as an untrusted peer, end to end: what it sends wrong is counted, bounded in the log,
and at worst costs one link, never the call."""

from __future__ import annotations

from tests.integration.conftest import wait_until
from tests.integration.test_call_flow import sim_call_for, speak_and_wait_for_answer, start_call

MIB = 1024 * 1024


def test_an_oversize_message_from_vapi_costs_the_link_not_the_call(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    first = sim_call_for(vapi_sim)
    assert speak_and_wait_for_answer(caller)
    # The simulator has no fault for this; its own send path puts the frame on the wire.
    first._send(b"\0" * (2 * MIB), binary=True)
    m = bridge.metrics
    assert wait_until(lambda: m.value("bridge_malformed_inputs_total", source="vapi", kind="oversize") == 1, 3)
    second = sim_call_for(vapi_sim, index=1, timeout=5)
    assert second.first_message_mode == "assistant-waits-for-user"
    assert m.value("bridge_actor_restarts_total", actor="vapi", reason="failed") >= 1
    assert not caller.closed.is_set()
    assert speak_and_wait_for_answer(caller)
    assert caller.errors == []


def test_a_flood_of_malformed_vapi_events_is_counted_in_full_and_logged_a_few_times(
    bridge, vapi_sim, make_caller, capsys
):
    caller = start_call(make_caller)
    sim = sim_call_for(vapi_sim)
    capsys.readouterr()
    for _ in range(500):
        sim._send("{not json", binary=False)
    m = bridge.metrics
    assert wait_until(lambda: m.value("bridge_malformed_inputs_total", source="vapi", kind="bad_json") == 500, 5)
    assert capsys.readouterr().out.count("vapi_event_malformed") <= 5
    assert speak_and_wait_for_answer(caller)
    assert m.value("bridge_actor_restarts_total", actor="vapi", reason="failed") == 0
