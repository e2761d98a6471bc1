"""Health, readiness and Prometheus metrics over real HTTP."""

from __future__ import annotations

import gevent
import gevent.event
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from audio.signals import silence
from tests.integration.conftest import wait_until
from tests.integration.test_call_flow import sim_call_for, speak_and_wait_for_answer, start_call
from tests.observability.test_overload import _hog
from tests.records.helpers import make_record
from tests.web.test_voice import CALL_SID, post


def get(bridge, path, **kw):
    return requests.get(f"http://127.0.0.1:{bridge.port}{path}", timeout=5, **kw)


def samples(bridge, **kw):
    text = get(bridge, "/metrics", **kw).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_healthz_and_readyz_answer_when_idle(bridge):
    assert get(bridge, "/healthz").status_code == 200
    assert get(bridge, "/readyz").status_code == 200


def test_metrics_parse_and_move_as_a_call_runs(bridge, vapi_sim, make_caller):
    before = samples(bridge)
    assert before[("bridge_live_calls", ())] == 0
    caller = start_call(make_caller)
    sim_call_for(vapi_sim)
    caller.send_audio(silence(300, 8000))
    assert speak_and_wait_for_answer(caller)
    during = samples(bridge)
    assert during[("bridge_live_calls", ())] == 1
    assert during[("bridge_frames_total", (("direction", "inbound"),))] >= 50  # counted in batches of 50
    assert during[("bridge_latency_inbound_seconds_count", ())] >= 5  # one frame in ten is timed
    assert during[("bridge_turn_latency_sent_seconds_count", ())] >= 1
    assert during[("bridge_vapi_links_total", (("event", "created"),))] == 1
    caller.send_stop()
    assert wait_until(lambda: samples(bridge)[("bridge_live_calls", ())] == 0)
    assert bridge.records.flush(5)
    after = samples(bridge)
    assert after[("bridge_calls_total", (("outcome", "completed"),))] == 1
    call_in, call_out = bridge.records.get(caller.call_sid).frames_in, bridge.records.get(caller.call_sid).frames_out
    # The last partial batch is flushed when the call ends: totals are exact.
    assert after[("bridge_frames_total", (("direction", "inbound"),))] == call_in
    assert after[("bridge_frames_total", (("direction", "outbound"),))] == call_out
    assert after[("bridge_latency_outbound_seconds_count", ())] >= call_out // 10 - 1
    assert after[("bridge_turn_latency_heard_seconds_count", ())] >= 1
    assert after[("bridge_call_records_total", (("result", "written"),))] == 1
    assert after[("bridge_call_records_healthy", ())] == 1


def test_a_call_records_database_that_cannot_be_written_shows_on_metrics_until_it_can(bridge):
    store = bridge.records
    assert samples(bridge)[("bridge_call_records_healthy", ())] == 1
    store._database._db.execute("PRAGMA query_only = ON")  # a read-only disk (root ignores file modes)
    try:
        store.submit(make_record("CA" + "1" * 32))
        assert store.flush(10)  # three tries, then given up
        broken = samples(bridge)
        assert broken[("bridge_call_records_healthy", ())] == 0
        assert broken[("bridge_call_record_write_errors_total", ())] == 3
        assert broken[("bridge_call_records_total", (("result", "dropped"),))] == 1
    finally:
        store._database._db.execute("PRAGMA query_only = OFF")
    store.submit(make_record("CA" + "2" * 32))
    assert store.flush(5)
    mended = samples(bridge)
    assert mended[("bridge_call_records_healthy", ())] == 1
    assert mended[("bridge_call_records_total", (("result", "written"),))] == 1


def test_metrics_content_type_names_its_charset_once(bridge):
    from prometheus_client import CONTENT_TYPE_LATEST

    content_type = get(bridge, "/metrics").headers["Content-Type"]
    # Exactly prometheus_client's type (text/plain; version=...; charset=utf-8), nothing appended.
    assert content_type == CONTENT_TYPE_LATEST
    assert content_type.startswith("text/plain; version=")
    assert content_type.lower().count("charset") == 1


@pytest.mark.parametrize("server_env", [{"METRICS_TOKEN": "scrape-me"}])
def test_metrics_can_sit_behind_a_token(bridge):
    assert get(bridge, "/metrics").status_code == 401
    assert get(bridge, "/metrics", headers={"Authorization": "Bearer scrape-me"}).status_code == 200


@pytest.mark.parametrize("server_env", [{"MAX_CALLS": "1"}])
def test_when_full_readyz_fails_and_new_calls_hear_the_fallback(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    sim_call_for(vapi_sim)
    assert get(bridge, "/readyz").status_code == 503
    response = post(bridge, "/voice/incoming", {"CallSid": CALL_SID})
    assert response.status_code == 200
    assert "<Say>" in response.text and "<Connect" not in response.text
    assert bridge.calls.get(CALL_SID) is None
    caller.send_stop()
    assert wait_until(lambda: get(bridge, "/readyz").status_code == 200)


@pytest.mark.parametrize("server_env", [{"MAX_CALLS": "1"}])
def test_when_full_a_webhook_a_proxy_can_pass_on_is_answered_503(bridge, vapi_sim, make_caller):
    # deploy/nginx.conf sends the webhook on to another node on a 503: the caller hears the
    # fallback only if no node has room.
    caller = start_call(make_caller)
    sim_call_for(vapi_sim)
    response = post(bridge, "/voice/incoming", {"CallSid": CALL_SID}, headers={"X-Bridge-Pass-On": "1"})
    assert response.status_code == 503
    assert "<Connect" not in response.text and "<Say>" not in response.text
    assert bridge.calls.get(CALL_SID) is None
    assert samples(bridge)[("bridge_passed_on_total", (("reason", "full"), ("request", "webhook")))] == 1
    assert ("bridge_calls_total", (("outcome", "refused"),)) not in samples(bridge)  # no caller lost
    caller.send_stop()
    assert wait_until(lambda: get(bridge, "/readyz").status_code == 200)
    # With room again, the same request starts the call.
    taken = post(bridge, "/voice/incoming", {"CallSid": CALL_SID}, headers={"X-Bridge-Pass-On": "1"})
    assert taken.status_code == 200 and "<Connect" in taken.text


def test_draining_refuses_new_calls_lets_live_ones_run_then_ends_them(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    sim = sim_call_for(vapi_sim)
    drain = gevent.spawn(bridge.drain, 1.0)
    assert wait_until(lambda: get(bridge, "/readyz").status_code == 503)
    assert "<Connect" not in post(bridge, "/voice/incoming", {"CallSid": CALL_SID}).text
    caller.send_audio(silence(500, 8000))
    assert not caller.closed.is_set()  # still within the drain timeout
    assert drain.get(timeout=15) == 1  # one call had to be ended
    assert caller.closed.wait(3)
    assert sim.ended.wait(3) and {"type": "end-call"} in sim.received_text
    assert bridge.calls.outcome(caller.call_sid) == "drained"


@pytest.mark.parametrize("server_env", [{"OVERLOAD_CPU_PCT": "90"}])
def test_a_process_out_of_cpu_refuses_new_calls_and_takes_them_again_once_it_has_some(bridge):
    assert get(bridge, "/readyz").status_code == 200
    stop = gevent.event.Event()
    hog = gevent.spawn(_hog, stop)
    try:
        assert wait_until(lambda: bridge.admission.refusal() is not None, timeout=10)
        assert get(bridge, "/readyz").status_code == 503
        refused = post(bridge, "/voice/incoming", {"CallSid": CALL_SID})
        assert "<Say>" in refused.text and "<Connect" not in refused.text
        assert bridge.metrics.value("bridge_overloaded") == 1
        assert bridge.metrics.value("bridge_core_demand_ratio") >= 0.9
    finally:
        stop.set()
        hog.join(timeout=5)
    assert wait_until(lambda: get(bridge, "/readyz").status_code == 200, timeout=10)
    taken = post(bridge, "/voice/incoming", {"CallSid": "CA" + "7" * 32})
    assert "<Connect" in taken.text
    assert bridge.metrics.value("bridge_overloaded") == 0
    assert bridge.metrics.value("bridge_event_loop_lag_seconds_count") > 10  # probed all along


@pytest.mark.parametrize("server_env", [{"OVERLOAD_CPU_PCT": "0"}])
def test_with_overload_cpu_pct_0_a_busy_process_still_takes_calls(bridge):
    stop = gevent.event.Event()
    hog = gevent.spawn(_hog, stop)
    try:
        gevent.sleep(2.5)  # more than the window the guard would have needed
        assert get(bridge, "/readyz").status_code == 200
        assert "<Connect" in post(bridge, "/voice/incoming", {"CallSid": CALL_SID}).text
    finally:
        stop.set()
        hog.join(timeout=5)
