"""The media socket's reader and writer against a peer we script byte by byte (a socket pair)."""

from __future__ import annotations

import gc
import io
import socket
import struct
import time
import weakref

import gevent
import gevent.socket

from links.twilio import SEND_TIMEOUT_S, SocketLimits, TwilioSocket
from protocols.websocket import OP_CLOSE, OP_PING, OP_TEXT
from tests.wsframes import client_frame

LIMITS = SocketLimits(max_message_bytes=65536, idle_timeout_s=1.0, frames_per_s=200, bytes_per_s=65536)


class FakeHandler:
    def __init__(self, sock: gevent.socket.socket, buffered: bytes = b"") -> None:
        self.socket = sock
        self.rfile = io.BufferedReader(io.BytesIO(buffered))


class FakeWs:
    """What TwilioSocket takes from gevent-websocket: its handler (socket, rfile) and `closed`."""

    def __init__(self, sock: gevent.socket.socket, buffered: bytes = b"") -> None:
        self.handler = FakeHandler(sock, buffered)
        self.closed = False


def pair(buffered: bytes = b"") -> tuple[TwilioSocket, gevent.socket.socket]:
    ours, theirs = gevent.socket.socketpair()
    return TwilioSocket(FakeWs(ours, buffered), LIMITS), theirs


def test_bytes_the_handshake_reader_already_held_are_not_lost():
    first = client_frame(b'{"event":"connected"}', OP_TEXT)
    ws, peer = pair(buffered=first)
    peer.sendall(client_frame(b'{"event":"start"}', OP_TEXT))
    assert ws.receive() == '{"event":"connected"}'
    assert ws.receive() == '{"event":"start"}'
    peer.close()


def test_a_ping_is_answered_with_its_payload():
    ws, peer = pair()
    peer.sendall(client_frame(b"hi", OP_PING) + client_frame(b"x", OP_TEXT))
    assert ws.receive() == "x"
    assert peer.recv(16) == bytes([0x8A, 2]) + b"hi"
    peer.close()


def test_a_peer_that_never_reads_makes_sends_fail_quickly_instead_of_blocking():
    ws, peer = pair()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    message = "x" * 8192
    began = time.monotonic()
    with gevent.Timeout(10):
        while ws.send_text(message):
            pass
    assert time.monotonic() - began < 10
    assert ws.closed and ws.end_reason == "send_failed"
    # Once broken, a send returns at once, and close() does not wait on the peer either.
    began = time.monotonic()
    assert ws.send_text(message) is False
    ws.close(1000)
    assert time.monotonic() - began < SEND_TIMEOUT_S * 2
    peer.close()


def test_close_answers_a_peer_that_does_not_answer_by_cutting_the_connection():
    ws, peer = pair()
    ws.close(1000)
    assert peer.recv(4) == bytes([0x88, 2]) + struct.pack("!H", 1000)
    began = time.monotonic()
    with gevent.Timeout(5):
        assert ws.receive() is None  # the grace ends, the connection is cut
    assert 1.5 < time.monotonic() - began < 4
    peer.close()


def test_a_peer_close_is_echoed_and_reading_ends():
    ws, peer = pair()
    peer.sendall(client_frame(struct.pack("!H", 1001), OP_CLOSE))
    assert ws.receive() is None
    assert ws.close_code == 1001 and ws.end_reason == "closed"
    assert peer.recv(4) == bytes([0x88, 2]) + struct.pack("!H", 1001)
    peer.close()


def test_silence_ends_reading_at_the_idle_deadline_even_if_pings_keep_coming():
    ws, peer = pair()

    def pinger() -> None:
        for _ in range(40):
            peer.sendall(client_frame(b"", OP_PING))
            gevent.sleep(0.05)

    keeper = gevent.spawn(pinger)
    began = time.monotonic()
    with gevent.Timeout(5):
        assert ws.receive() is None
    assert ws.end_reason == "idle"
    assert 0.9 < time.monotonic() - began < 2.5
    keeper.kill()
    peer.close()


def test_a_socket_its_reader_never_released_is_not_kept_alive_by_its_idle_check():
    # The check runs from a timer of the hub's: once the socket is past its deadline (or
    # closed) the timer must let go, or every socket whose handler died would live forever.
    ours, theirs = gevent.socket.socketpair()
    limits = SocketLimits(max_message_bytes=65536, idle_timeout_s=0.2, frames_per_s=200, bytes_per_s=65536)
    ref = weakref.ref(TwilioSocket(FakeWs(ours), limits))
    deadline = time.monotonic() + 3
    while ref() is not None and time.monotonic() < deadline:
        gevent.sleep(0.05)
        gc.collect()
    assert ref() is None
    theirs.close()
