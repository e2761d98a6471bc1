"""Reads with no timer per wait: one system call per arrival, and every way a waiting read must end."""

from __future__ import annotations

import socket

import gevent
import gevent.socket
import pytest

from links.recv import SocketReader


@pytest.fixture
def pair():
    ours, theirs = gevent.socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def test_a_drained_socket_is_read_once_per_arrival(pair):
    ours, theirs = pair
    reader = SocketReader(ours)
    assert reader.raw
    calls = 0
    real = reader._raw_recv_into

    def counting(view: memoryview) -> int:
        nonlocal calls
        calls += 1
        return real(view)

    reader._raw_recv_into = counting

    def send() -> None:
        for chunk in (b"one", b"two", b"three"):
            gevent.sleep(0.02)
            theirs.sendall(chunk)

    sender = gevent.spawn(send)
    view = memoryview(bytearray(64))
    got = []
    with gevent.Timeout(2):
        for _ in range(3):
            n = reader.recv_into(view, drained=True)
            got.append(bytes(view[:n]))
    sender.join()
    assert got == [b"one", b"two", b"three"]
    # gevent's own read tries first (EWOULDBLOCK, raised and caught), waits, then reads again.
    assert calls == 3


def test_a_read_not_known_drained_takes_what_is_already_there_without_waiting(pair):
    ours, theirs = pair
    theirs.sendall(b"ready")
    reader = SocketReader(ours)
    view = memoryview(bytearray(64))
    with gevent.Timeout(1):
        n = reader.recv_into(view, drained=False)
    assert bytes(view[:n]) == b"ready"


def test_a_close_in_another_greenlet_ends_a_waiting_read_with_an_error(pair):
    ours, _ = pair
    reader = SocketReader(ours)
    gevent.spawn_later(0.05, ours.close)
    with gevent.Timeout(2), pytest.raises(OSError):
        reader.recv_into(memoryview(bytearray(64)), drained=True)


def test_shutting_the_read_side_in_another_greenlet_ends_a_waiting_read(pair):
    # How TwilioSocket's idle check and abort wake their reader: gevent's shutdown()
    # cancels the wait on the socket's watcher, which this read waits on too.
    ours, _ = pair
    reader = SocketReader(ours)
    gevent.spawn_later(0.05, ours.shutdown, socket.SHUT_RD)
    with gevent.Timeout(2), pytest.raises(OSError):
        reader.recv_into(memoryview(bytearray(64)), drained=True)


def test_the_end_of_the_stream_is_a_read_of_nothing(pair):
    ours, theirs = pair
    reader = SocketReader(ours)
    gevent.spawn_later(0.05, theirs.shutdown, socket.SHUT_WR)
    with gevent.Timeout(2):
        assert reader.recv_into(memoryview(bytearray(64)), drained=True) == 0


def test_a_socket_of_another_class_is_read_through_gevent_with_its_timeout(pair):
    ours, _ = pair

    class Wrapped(gevent.socket.socket):  # as gevent's SSLSocket is: it must decrypt
        pass

    other = Wrapped(fileno=ours.detach())
    other.settimeout(0.05)
    reader = SocketReader(other)
    assert not reader.raw
    with gevent.Timeout(2), pytest.raises(TimeoutError):
        reader.recv_into(memoryview(bytearray(64)), drained=True)
    other.close()
