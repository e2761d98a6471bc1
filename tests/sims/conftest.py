"""Shared by the simulators' tests: nothing a test starts may outlive it."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import gevent
import gevent.socket
import pytest


def _live_greenlets() -> set[int]:
    # gevent.Greenlet only: the hub and its threadpool workers start lazily and stay.
    return {id(g) for g in gc.get_objects() if isinstance(g, gevent.Greenlet) and not g.dead}


@pytest.fixture(scope="session")
def warm_hub() -> None:
    """Start what gevent starts once per process on first use (its resolver's threadpool
    and that pool's wake-up pipe), so no_leaks does not count them against the first test."""
    gevent.socket.getaddrinfo("127.0.0.1", 80)


@pytest.fixture(autouse=True)
def no_leaks(warm_hub: None) -> Iterator[None]:
    """Everything a test starts is gone after its fixtures stop it: greenlets and sockets."""
    greenlets, fds = _live_greenlets(), len(os.listdir("/proc/self/fd"))
    yield
    gevent.sleep(0.05)
    gc.collect()
    assert _live_greenlets() - greenlets == set()
    assert len(os.listdir("/proc/self/fd")) <= fds
