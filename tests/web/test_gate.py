"""The upgrade gate and call admission, attacked over real sockets as an outsider would.

No 101 without a valid signature on the canonical media route of a call our webhook
admitted; no VAPI call from anything but a webhook; replays start nothing.
"""

from __future__ import annotations

import base64
import os
import socket

import pytest

from protocols.signature import SignatureValidator
from sims.caller import CallerError
from tests.integration.conftest import AUTH_TOKEN, wait_until

UNKNOWN_SID = "CA" + "f" * 32


def raw_upgrade(port: int, target: str, *, signature: str | None = None, key: str | None = None,
                extra: str = "") -> str:
    """Send a WebSocket handshake for `target` as written; the status line of the answer."""
    key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {target} HTTP/1.1\r\nHost: bridge.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        + (f"X-Twilio-Signature: {signature}\r\n" if signature else "")
        + extra + "\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request.encode())
        answer = b""
        while b"\r\n" not in answer:
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0].decode()


def sign_stream(bridge, path: str) -> str:
    host = bridge.settings.public_url.split("://", 1)[1]
    return SignatureValidator(AUTH_TOKEN).sign(f"wss://{host}{path}", {})


def streaming(bridge, call_sid: str) -> bool:
    """Whether the call runs on this node around its media socket."""
    call = bridge.calls.get(call_sid)
    return call is not None and call.socket is not None


def admitted_call(make_caller):
    caller = make_caller()
    status, _ = caller.post_webhook()
    assert status == 200
    return caller


@pytest.mark.parametrize("form", ["//media/{sid}", "///media/{sid}", "/%2Fmedia/{sid}", "/media/{sid}?x=1",
                                  "/media/{sid}/", "/media/%43A{rest}"])
def test_no_path_form_but_the_canonical_one_upgrades(bridge, vapi_sim, make_caller, form):
    caller = admitted_call(make_caller)
    sid = caller.call_sid
    target = form.format(sid=sid, rest=sid[2:])
    # Signed every way an attacker could try: as sent, and as the router would see it.
    for signed_path in (target, f"/media/{sid}"):
        status = raw_upgrade(bridge.port, target, signature=sign_stream(bridge, signed_path))
        assert " 101 " not in status, (target, status)
    assert bridge.metrics.value("bridge_malformed_inputs_total", source="media_handshake",
                                kind="not_an_upgrade_route") >= 2
    # Only the webhook's own VAPI call exists, and the real stream still gets in.
    assert wait_until(lambda: len(vapi_sim.calls) == 1)
    caller.connect()
    caller.start_stream()
    assert wait_until(lambda: streaming(bridge, sid))


@pytest.mark.parametrize("path", ["/healthz", "/dashboard", "/nope", "/voice/incoming", "/metrics"])
def test_upgrades_on_other_routes_are_refused_before_101(bridge, path):
    status = raw_upgrade(bridge.port, path, signature=sign_stream(bridge, path))
    assert status.startswith("HTTP/1.1 404"), status


def test_an_unsigned_or_wrongly_signed_media_socket_is_refused_with_403(bridge, make_caller):
    caller = admitted_call(make_caller)
    path = f"/media/{caller.call_sid}"
    assert raw_upgrade(bridge.port, path).startswith("HTTP/1.1 403")
    assert raw_upgrade(bridge.port, path, signature="AAAA").startswith("HTTP/1.1 403")
    assert raw_upgrade(bridge.port, path, signature=sign_stream(bridge, f"/media/{UNKNOWN_SID}")).startswith(
        "HTTP/1.1 403"
    )
    assert bridge.calls.get(caller.call_sid) is None


def test_a_signed_socket_for_a_call_no_webhook_admitted_starts_nothing(bridge, vapi_sim):
    path = f"/media/{UNKNOWN_SID}"
    assert raw_upgrade(bridge.port, path, signature=sign_stream(bridge, path)).startswith("HTTP/1.1 403")
    assert bridge.calls.get(UNKNOWN_SID) is None
    assert vapi_sim.calls == []


@pytest.mark.parametrize("key", ["not base64!", "AAAA", base64.b64encode(b"x" * 15).decode(), ""])
def test_a_bad_websocket_key_is_a_400_not_a_500(bridge, make_caller, key):
    caller = admitted_call(make_caller)
    path = f"/media/{caller.call_sid}"
    status = raw_upgrade(bridge.port, path, signature=sign_stream(bridge, path), key=key)
    assert status.startswith("HTTP/1.1 400"), status


def test_an_old_websocket_version_is_told_to_use_13(bridge, make_caller):
    caller = admitted_call(make_caller)
    path = f"/media/{caller.call_sid}"
    status = raw_upgrade(bridge.port, path, signature=sign_stream(bridge, path),
                         extra="Sec-WebSocket-Version: 8\r\n")
    # Two version headers: pywsgi joins them, which is not "13" either.
    assert status.startswith("HTTP/1.1 426"), status


def test_a_replayed_handshake_gets_nothing_while_the_call_lives_or_after_it_ended(bridge, vapi_sim, make_caller):
    caller = admitted_call(make_caller)
    caller.connect()
    caller.start_stream()
    assert wait_until(lambda: streaming(bridge, caller.call_sid))
    path = f"/media/{caller.call_sid}"
    signature = sign_stream(bridge, path)
    for _ in range(3):
        assert raw_upgrade(bridge.port, path, signature=signature).startswith("HTTP/1.1 403")
    caller.send_stop()
    assert wait_until(lambda: bridge.calls.get(caller.call_sid) is None)
    for _ in range(3):
        assert raw_upgrade(bridge.port, path, signature=signature).startswith("HTTP/1.1 403")
    assert len(vapi_sim.calls) <= 1  # the one the webhook made (the simulator forgets ended calls)


def test_a_replayed_webhook_after_the_call_ended_starts_no_second_call(bridge, vapi_sim, make_caller):
    caller = admitted_call(make_caller)
    caller.connect()
    caller.start_stream()
    assert wait_until(lambda: streaming(bridge, caller.call_sid))
    created = bridge.metrics.value("bridge_vapi_links_total", event="created")
    caller.send_stop()
    assert wait_until(lambda: bridge.calls.get(caller.call_sid) is None)
    for _ in range(3):
        status, body = caller.post_webhook()  # the same signed request, replayed
        assert status == 200 and "<Hangup" in body and "<Stream" not in body
    assert bridge.calls.get(caller.call_sid) is None
    assert bridge.metrics.value("bridge_malformed_inputs_total", source="webhook", kind="replay") == 3
    assert bridge.metrics.value("bridge_vapi_links_total", event="created") == created


@pytest.mark.parametrize("forged", ["guessed", "missing", "another call's", "sealed with another key"])
def test_a_socket_whose_start_lacks_the_calls_ticket_does_not_take_the_call(bridge, vapi_sim, make_caller, forged):
    from protocols.ticket import TicketSealer, ticket_key, ticket_parameters

    caller = admitted_call(make_caller)
    real_parameters = dict(caller.custom_parameters)
    other = admitted_call(make_caller)
    stranger = TicketSealer(ticket_key(fleet_secret="not ours", auth_token=AUTH_TOKEN), ttl_s=30)
    caller.custom_parameters = {
        "guessed": {"callSid": caller.call_sid, "ticket": "guessed"},
        "missing": {"callSid": caller.call_sid},
        "another call's": {**other.custom_parameters, "callSid": caller.call_sid},
        "sealed with another key": {"callSid": caller.call_sid, **ticket_parameters(
            stranger.seal(call_sid=caller.call_sid, node_id="x", now=__import__("time").time()))},
    }[forged]
    caller.connect()
    caller.start_stream()
    assert caller.closed.wait(5)
    assert caller.close_code == 1008
    assert bridge.calls.get(caller.call_sid) is None and bridge.calls.live() == []
    kind = "ticket_for_another_call" if forged == "another call's" else "bad_ticket"
    assert bridge.metrics.value("bridge_malformed_inputs_total", source="media", kind=kind) == 1
    assert len(vapi_sim.calls) == 2  # the two webhooks' VAPI calls, and no other
    # Twilio's own socket, with the ticket from the TwiML, still gets the call.
    caller.close()
    twilio = make_caller(call_sid=caller.call_sid)
    twilio.stream_url, twilio.custom_parameters = caller.stream_url, real_parameters
    twilio.connect()
    twilio.start_stream()
    assert wait_until(lambda: streaming(bridge, caller.call_sid))


def test_a_replayed_ticket_after_its_stream_ended_starts_nothing(bridge, vapi_sim, make_caller):
    # A captured `start` (its ticket) replayed on a new, validly signed socket: the
    # ticket was good for one stream, and that call has ended.
    caller = admitted_call(make_caller)
    caller.connect()
    caller.start_stream()
    assert wait_until(lambda: streaming(bridge, caller.call_sid))
    caller.send_stop()
    assert wait_until(lambda: bridge.calls.outcome(caller.call_sid) == "completed")
    links = bridge.metrics.value("bridge_vapi_links_total", event="created")
    replay = make_caller(call_sid=caller.call_sid)
    replay.stream_url, replay.custom_parameters = caller.stream_url, dict(caller.custom_parameters)
    with pytest.raises(CallerError) as refused:
        replay.connect()  # the gate already knows the call ended
    assert refused.value.status == 403
    assert bridge.calls.live() == []
    assert bridge.metrics.value("bridge_vapi_links_total", event="created") == links


def test_a_handshake_for_a_call_that_already_has_its_socket_is_refused(bridge, make_caller):
    caller = admitted_call(make_caller)
    caller.connect()
    caller.start_stream()
    assert wait_until(lambda: streaming(bridge, caller.call_sid))
    second = make_caller(call_sid=caller.call_sid)
    second.stream_url, second.custom_parameters = caller.stream_url, dict(caller.custom_parameters)
    with pytest.raises(CallerError) as refused:
        second.connect()
    assert refused.value.status == 403


def test_a_flood_of_refused_upgrades_and_webhooks_writes_a_handful_of_log_lines(bridge, caplog):
    caplog.set_level("INFO")
    for _ in range(300):
        assert raw_upgrade(bridge.port, f"/media/{UNKNOWN_SID}").startswith("HTTP/1.1 403")
    for _ in range(300):
        with socket.create_connection(("127.0.0.1", bridge.port), timeout=5) as conn:
            conn.sendall(b"POST /voice/incoming HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            assert conn.recv(64).startswith(b"HTTP/1.1 403")
    lines = [r.getMessage() for r in caplog.records]
    assert len([line for line in lines if "upgrade_refused" in line]) <= 5
    assert len([line for line in lines if "webhook_rejected" in line]) <= 5
    assert len([line for line in lines if "HTTP/1.1\" 40" in line]) == 0  # no access line per refusal
    assert bridge.metrics.value("bridge_malformed_inputs_total", source="media_handshake", kind="bad_signature") == 300
    assert bridge.metrics.value("bridge_malformed_inputs_total", source="webhook", kind="bad_signature") == 300


def test_two_sockets_presenting_one_ticket_get_one_call_between_them(bridge, vapi_sim, make_caller):
    # Both pass the gate (neither has claimed the call yet); the claim at `start` decides.
    caller = admitted_call(make_caller)
    twin = make_caller(call_sid=caller.call_sid)
    twin.stream_url, twin.custom_parameters = caller.stream_url, dict(caller.custom_parameters)
    caller.connect()
    twin.connect()
    caller.start_stream()
    twin.start_stream()
    # Which of the two the server reads first is the server's business: one of them, once.
    assert wait_until(lambda: caller.closed.is_set() or twin.closed.is_set())
    loser, winner = (twin, caller) if twin.closed.is_set() else (caller, twin)
    assert loser.close_code == 1008
    assert bridge.metrics.value("bridge_malformed_inputs_total", source="media", kind="duplicate_socket") == 1
    assert wait_until(lambda: streaming(bridge, caller.call_sid)) and not winner.closed.is_set()
    assert len(bridge.calls.live()) == 1


FORWARDED = "X-Forwarded-For: 198.51.100.66, 203.0.113.7\r\n"  # what the client wrote, then what nginx saw


def _refusal_sources(caplog, event):
    return [line for line in (r.getMessage() for r in caplog.records) if event in line]


@pytest.mark.parametrize("server_env", [{"TRUSTED_PROXIES": "1"}])
def test_behind_a_trusted_proxy_refusals_name_the_client_it_saw(bridge, caplog):
    caplog.set_level("INFO")
    assert raw_upgrade(bridge.port, f"/media/{UNKNOWN_SID}", extra=FORWARDED).startswith("HTTP/1.1 403")
    with socket.create_connection(("127.0.0.1", bridge.port), timeout=5) as conn:
        conn.sendall(
            b"POST /voice/incoming HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n" + FORWARDED.encode() + b"\r\n"
        )
        assert conn.recv(64).startswith(b"HTTP/1.1 403")
    for event in ("upgrade_refused", "webhook_rejected"):
        lines = _refusal_sources(caplog, event)
        assert lines and all("203.0.113.7" in line for line in lines), (event, lines)
        assert not any("198.51.100.66" in line for line in lines)  # the client's own claim is not believed


def test_without_trusted_proxies_a_forwarded_for_header_names_nobody(bridge, caplog):
    caplog.set_level("INFO")
    assert raw_upgrade(bridge.port, f"/media/{UNKNOWN_SID}", extra=FORWARDED).startswith("HTTP/1.1 403")
    lines = _refusal_sources(caplog, "upgrade_refused")
    assert lines and all("127.0.0.1" in line and "203.0.113.7" not in line for line in lines)


@pytest.mark.parametrize("server_env", [{"MAX_CALLS": "1"}])
def test_a_full_node_turns_away_a_media_socket_a_proxy_can_pass_on_and_takes_it_otherwise(
    bridge, vapi_sim, make_caller
):
    first, second = admitted_call(make_caller), admitted_call(make_caller)
    first.connect()
    first.start_stream()
    assert wait_until(lambda: streaming(bridge, first.call_sid))  # full now
    path = f"/media/{second.call_sid}"
    status = raw_upgrade(bridge.port, path, signature=sign_stream(bridge, path), extra="X-Bridge-Pass-On: 1\r\n")
    assert status.startswith("HTTP/1.1 503"), status  # deploy/nginx.conf passes it to another node
    assert bridge.metrics.value("bridge_passed_on_total", request="stream", reason="full") == 1
    # Asked without the header (no proxy to pass it on, or its last resort), the node takes it.
    second.connect()
    second.start_stream()
    assert wait_until(lambda: streaming(bridge, second.call_sid))
