"""Tests of the generic supervision library; `wait_until` is their one way to wait."""

import time

import gevent


def wait_until(predicate, timeout=3.0):
    """Poll `predicate` in gevent's time until it holds (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        gevent.sleep(0.005)
    return False
