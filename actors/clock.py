"""The time a call's actors read and wait on: the real one, or a test's.

Actors never call time.monotonic or gevent.sleep directly for what they measure or wait
for; they use their call's clock, so tests drive timers (retries, keepalive, marks)
without real sleeps.
"""

from __future__ import annotations

import time
from typing import Protocol

import gevent

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


class Clock(Protocol):
    def monotonic_ns(self) -> int: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """time.monotonic_ns, and gevent.sleep (which yields to other greenlets)."""

    monotonic_ns = staticmethod(time.monotonic_ns)
    sleep = staticmethod(gevent.sleep)


SYSTEM_CLOCK: Clock = SystemClock()
