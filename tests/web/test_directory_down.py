"""A node whose shared call directory (Redis) does not answer: calls still start and end, one WARNING says so."""

from __future__ import annotations

import logging

import pytest

from bench._server import free_port
from sims.caller import CallerError
from tests.integration.conftest import wait_until
from tests.integration.test_call_flow import after_stream, sim_call_for, speak_and_wait_for_answer, start_call

DEAD_REDIS = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}


@pytest.mark.parametrize("server_env", [DEAD_REDIS])
def test_with_redis_down_a_call_still_starts_talks_ends_and_hangs_up_from_this_nodes_memory(
    bridge, vapi_sim, make_caller, caplog
):
    caplog.set_level(logging.INFO)
    caller = start_call(make_caller)
    sim = sim_call_for(vapi_sim)
    assert speak_and_wait_for_answer(caller, ms=400)
    sim.end_call()
    assert caller.closed.wait(5)
    assert wait_until(lambda: bridge.calls.outcome(caller.call_sid) == "assistant-ended")
    assert "<Hangup" in after_stream(bridge, caller.call_sid).text
    # Its ticket is refused on this node now: the node that ended the call knows it.
    replay = make_caller(call_sid=caller.call_sid)
    replay.stream_url, replay.custom_parameters = caller.stream_url, dict(caller.custom_parameters)
    with pytest.raises(CallerError):
        replay.connect()
    assert bridge.metrics.value("bridge_directory_errors_total", operation="admit") == 1
    assert bridge.metrics.value("bridge_directory_errors_total", operation="claim") == 1
    # The first failure may be the node's own heartbeat as it starts, in the fixture's setup.
    records = caplog.get_records("setup") + caplog.records
    warnings = [r.getMessage() for r in records if "directory_unavailable" in r.getMessage()]
    assert len(warnings) == 1  # once per transition, not per failure
    assert "127.0.0.1" not in warnings[0]  # the URL (it may hold a password) is never logged
