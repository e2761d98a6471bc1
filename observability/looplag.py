"""Overload: how late the event loop runs, and whether the process should take new calls.

Every call's frames are handled on one gevent loop per process. Past what the core can
do (about 100 calls of the bridge's default work on one 2020s server core: README,
Benchmarks, Load), the loop falls behind and every call on it suffers at once: each new
call adds delay to all the others' audio (at 140 calls the bridge's p99 was 30-40 ms, at
200 over a second, with frames dropped). The loop's lateness is the measure that
matters: a timer that should fire every PROBE_S fires that much later than asked when
the loop is busy. While it is late in most of the last seconds, the process refuses new
calls (they hear the fallback; /readyz says 503, so a balancer sends them elsewhere);
the calls it holds keep the capacity they have.

`LoopLag` is the decision, pure: a window of the last WINDOW probes, overloaded once
ENTER of them were later than the threshold, and no longer once at most LEAVE were.
A single stall (a collection, a slow disk write) is one late probe and changes nothing;
a loop that stays behind trips it within about a second. `watch_loop` is the probe.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import gevent

__all__ = ["ENTER", "LEAVE", "PROBE_S", "WINDOW", "LoopLag", "watch_loop"]

# Ten probes a second: a loop that falls behind is seen within a second, at a cost of ten
# timer wake-ups a second per process (what a single call's frames cost in 100 ms).
PROBE_S = 0.1
# Two seconds of probes; overloaded when half were late, back once at most two are.
WINDOW = 20
ENTER = 10
LEAVE = 2


class LoopLag:
    """Whether the loop is too late to take new calls, from its probes' lateness."""

    __slots__ = ("_late", "_overloaded", "_threshold_s", "_window")

    def __init__(self, threshold_s: float) -> None:
        if threshold_s <= 0.0:
            raise ValueError(f"threshold_s must be > 0, got {threshold_s!r}")
        self._threshold_s = threshold_s
        self._window: deque[float] = deque(maxlen=WINDOW)
        self._late = 0  # probes in the window later than the threshold
        self._overloaded = False

    @property
    def overloaded(self) -> bool:
        return self._overloaded

    @property
    def threshold_s(self) -> float:
        return self._threshold_s

    def add(self, lateness_s: float) -> bool:
        """Take one probe's lateness; True when it changed whether the loop is overloaded."""
        window = self._window
        if len(window) == WINDOW and window[0] > self._threshold_s:
            self._late -= 1
        window.append(lateness_s)
        if lateness_s > self._threshold_s:
            self._late += 1
        was = self._overloaded
        if not was and self._late >= ENTER:
            self._overloaded = True
        elif was and self._late <= LEAVE:
            self._overloaded = False
        return self._overloaded is not was

    def median_s(self) -> float:
        """The window's median lateness (0 before any probe)."""
        if not self._window:
            return 0.0
        ordered = sorted(self._window)
        return ordered[len(ordered) // 2]

    def refusal(self) -> str | None:
        """Why no new call is taken now, or None."""
        if not self._overloaded:
            return None
        return f"overloaded (event loop {self.median_s() * 1000:.0f} ms late)"


def watch_loop(lag: LoopLag, on_probe: Callable[[float], None], on_change: Callable[[bool], None]) -> None:
    """Probe the loop forever (run it in a greenlet of its own): sleep PROBE_S, measure how
    much later than that the loop woke us, and tell `on_probe`; `on_change` when the verdict turns."""
    clock = time.perf_counter
    while True:
        asked = clock()
        gevent.sleep(PROBE_S)
        lateness = max(0.0, clock() - asked - PROBE_S)
        on_probe(lateness)
        if lag.add(lateness):
            on_change(lag.overloaded)
