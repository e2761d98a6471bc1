"""What one media socket may do to the server: deadlines, budgets and RFC 6455, over real sockets."""

from __future__ import annotations

import contextlib
import json
import struct
import time

import gevent
import pytest
import requests

from protocols.websocket import OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT
from tests.integration.conftest import wait_until
from tests.wsframes import client_frame


@pytest.fixture
def server_env():
    return {"MEDIA_START_TIMEOUT_S": "1", "MEDIA_IDLE_TIMEOUT_S": "1"}


def streaming_call(bridge, make_caller):
    caller = make_caller()
    assert caller.post_webhook()[0] == 200
    caller.connect()
    caller.start_stream()
    assert wait_until(lambda: bridge.calls.get(caller.call_sid) is not None)  # its actors start at `start`
    return caller, bridge.calls.get(caller.call_sid)


def raw(caller, data: bytes) -> None:
    caller._ws.sock.sendall(data)


def healthy(bridge) -> bool:
    return requests.get(f"http://127.0.0.1:{bridge.port}/healthz", timeout=2).status_code == 200


def test_a_socket_that_never_sends_start_is_closed_at_the_deadline_and_starts_nothing(bridge, make_caller):
    caller = make_caller()
    caller.post_webhook()
    caller.connect()
    caller._ws.settimeout(5)
    began = time.monotonic()
    frame = caller._ws.recv_frame()  # the server's close frame
    assert frame.opcode == OP_CLOSE and struct.unpack("!H", frame.data[:2])[0] == 1008
    assert 0.9 <= time.monotonic() - began < 4
    assert bridge.calls.get(caller.call_sid) is None  # nothing started
    assert bridge.calls.media_refusal(caller.call_sid) is None  # Twilio's own socket may still come
    assert bridge.metrics.value("bridge_malformed_inputs_total", source="media", kind="start_timeout") == 1


def test_a_socket_that_goes_silent_after_start_ends_its_call_and_its_vapi_call(bridge, vapi_sim, make_caller):
    caller, call = streaming_call(bridge, make_caller)
    assert wait_until(lambda: len(vapi_sim.calls) == 1)
    began = time.monotonic()
    assert caller.closed.wait(5)
    assert caller.close_code == 1008
    assert 0.9 <= time.monotonic() - began < 4
    assert wait_until(lambda: call.ended.is_set())
    assert "idle" in call.state.outcome_detail
    assert wait_until(lambda: bridge.metrics.value("bridge_malformed_inputs_total", source="media", kind="idle") == 1)
    assert wait_until(lambda: all(c.ended.is_set() for c in vapi_sim.calls))


def test_an_unmasked_frame_is_a_protocol_error_not_a_message(bridge, make_caller):
    caller, call = streaming_call(bridge, make_caller)
    stop = json.dumps({"event": "stop", "sequenceNumber": "9", "streamSid": caller.stream_sid,
                       "stop": {"accountSid": "AC" + "0" * 32, "callSid": caller.call_sid}}).encode()
    raw(caller, client_frame(stop, OP_TEXT, mask=None))
    assert caller.closed.wait(5)
    assert caller.close_code == 1002
    assert wait_until(lambda: call.ended.is_set())
    assert call.state.outcome_detail != "caller hung up"
    assert wait_until(
        lambda: bridge.metrics.value("bridge_malformed_inputs_total", source="media", kind="protocol") == 1
    )


@pytest.mark.parametrize("code", [0, 999, 1005, 1006, 2000, 5000])
def test_a_close_code_a_peer_may_not_send_is_answered_with_1002(bridge, make_caller, code):
    caller, call = streaming_call(bridge, make_caller)
    raw(caller, client_frame(struct.pack("!H", code), OP_CLOSE))
    assert caller.closed.wait(5)
    assert caller.close_code == 1002
    assert wait_until(lambda: call.ended.is_set())


def test_a_flood_of_one_byte_fragments_is_cut_off_by_the_frame_budget(bridge, make_caller):
    caller, call = streaming_call(bridge, make_caller)
    fragments = client_frame(b"{", OP_TEXT, fin=False) + client_frame(b" ", 0, fin=False) * 5000
    began = time.monotonic()
    with contextlib.suppress(OSError):  # the server may cut the connection while we still send
        raw(caller, fragments)
    assert caller.closed.wait(5)
    assert time.monotonic() - began < 5
    assert wait_until(lambda: bridge.metrics.value("bridge_malformed_inputs_total", source="media", kind="budget") == 1)
    assert wait_until(lambda: call.ended.is_set())
    assert healthy(bridge)


def test_a_ping_flood_from_a_peer_that_never_reads_cannot_stall_the_server(bridge, make_caller):
    caller, call = streaming_call(bridge, make_caller)
    caller._group.kill()  # stop reading: our pongs pile up on the peer's side
    ping = client_frame(b"p" * 125, OP_PING)
    sent = 0
    with gevent.Timeout(10, False):
        try:
            while sent < 20_000:
                raw(caller, ping * 100)
                sent += 100
                gevent.sleep(0)
        except OSError:
            pass
    assert wait_until(lambda: call.ended.is_set(), timeout=5)
    assert wait_until(lambda: bridge.metrics.value("bridge_malformed_inputs_total", source="media", kind="budget") == 1)
    assert healthy(bridge)


def test_large_frames_are_skipped_then_the_byte_budget_closes_the_socket(bridge, make_caller):
    caller, call = streaming_call(bridge, make_caller)
    big = client_frame(b"x" * 70_000, OP_BINARY)
    with gevent.Timeout(10, False):
        try:
            for _ in range(200):
                raw(caller, big)
                gevent.sleep(0)
        except OSError:
            pass
    assert wait_until(lambda: call.ended.is_set(), timeout=5)
    assert bridge.metrics.value("bridge_malformed_inputs_total", source="twilio", kind="oversize") >= 1
    assert wait_until(lambda: bridge.metrics.value("bridge_malformed_inputs_total", source="media", kind="budget") == 1)
    assert healthy(bridge)
