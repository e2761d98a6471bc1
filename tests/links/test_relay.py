"""The relay's byte pump over real socket pairs: bytes pass unchanged both ways, one side's end
ends both, and a peer that stops reading ends only its own relay, in bounded time."""

from __future__ import annotations

import socket
import time

import gevent
import pytest

import links.relay
from links.relay import Relay


def relay_between() -> tuple[Relay, socket.socket, socket.socket]:
    """A relay, VAPI's end of its VAPI socket, and the stream node's end of its peer socket."""
    vapi_far, vapi_near = socket.socketpair()
    peer_near, peer_far = socket.socketpair()
    return Relay(vapi_near, peer_near), vapi_far, peer_far


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    with gevent.Timeout(5):
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            assert chunk, "closed early"
            data += chunk
    return data


def test_bytes_pass_unchanged_both_ways_and_vapis_close_closes_the_peer():
    relay, vapi, peer = relay_between()
    running = gevent.spawn(relay.run)
    greeting = bytes(range(256)) * 40  # what VAPI had sent before anyone read: waiting in the buffer
    vapi.sendall(greeting)
    assert read_exactly(peer, len(greeting)) == greeting
    frame = b"\x82\xfe\x01\x40" + b"\x11\x22\x33\x44" + b"\x7f" * 320  # a masked client frame, as B sends
    for _ in range(50):
        peer.sendall(frame)
    assert read_exactly(vapi, 50 * len(frame)) == frame * 50
    vapi.close()  # VAPI ends the call
    with gevent.Timeout(5):
        assert peer.recv(10) == b""  # the stream's node sees its socket close
        ended = running.get()
    assert ended.reason == "vapi_closed"
    assert (ended.to_peer, ended.to_vapi) == (len(greeting), 50 * len(frame))
    peer.close()


def test_the_peers_close_closes_the_vapi_socket():
    relay, vapi, peer = relay_between()
    running = gevent.spawn(relay.run)
    peer.close()
    with gevent.Timeout(5):
        assert vapi.recv(10) == b""
        assert running.get().reason == "peer_closed"
    vapi.close()


def test_a_peer_that_stops_reading_ends_its_relay_in_bounded_time_and_stalls_no_other(monkeypatch):
    monkeypatch.setattr(links.relay, "SEND_TIMEOUT_S", 0.3)
    stalled, stalled_vapi, stalled_peer = relay_between()
    healthy, healthy_vapi, healthy_peer = relay_between()
    runs = [gevent.spawn(stalled.run), gevent.spawn(healthy.run)]
    flood = gevent.spawn(lambda: [stalled_vapi.sendall(b"\x00" * 65536) for _ in range(200)])  # 12.5 MiB, unread
    started = time.monotonic()
    try:
        for _ in range(20):  # meanwhile the other call's audio flows
            healthy_vapi.sendall(b"a" * 160)
            assert read_exactly(healthy_peer, 160) == b"a" * 160
            gevent.sleep(0.02)
        with gevent.Timeout(5):
            ended = runs[0].get()
        assert ended.reason == "peer_stalled"
        assert time.monotonic() - started < 3
        assert not runs[1].ready()  # the healthy relay goes on
        healthy_vapi.sendall(b"b" * 160)
        assert read_exactly(healthy_peer, 160) == b"b" * 160
    finally:
        flood.kill()
        healthy.stop()
        with gevent.Timeout(5):
            assert runs[1].get().reason == "stopped"
        for sock in (stalled_vapi, stalled_peer, healthy_vapi, healthy_peer):
            sock.close()


@pytest.mark.parametrize("side", ["vapi", "peer"])
def test_stop_ends_a_quiet_relay_at_once(side):
    relay, vapi, peer = relay_between()
    running = gevent.spawn(relay.run)
    gevent.sleep(0.05)
    relay.stop()
    with gevent.Timeout(2):
        assert running.get().reason == "stopped"
        assert (vapi if side == "vapi" else peer).recv(10) == b""
    vapi.close()
    peer.close()
