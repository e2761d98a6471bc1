"""Overload: whether this process has the CPU for another call.

Every call's frames are handled by one process on one core (WORKERS > 1 runs one such
process per worker). Past what that core can do, about 100 calls of the bridge's
default work on the 2-vCPU box (README, Benchmarks, Load), every call on it suffers at
once: frames wait in the sockets' buffers, and each new call adds to every other call's
delay (at 140 calls the bridge's p99 reached seconds, with frames dropped). The event
loop itself keeps turning on time meanwhile (its timers fire a few ms late at most:
bench.load's "loop late" column), so how late it runs does not show this; what the
process asks of its core does: it wants it all the time. That is measured as the share
of wall time the process's main thread (where every call's work runs) was on a core or
runnable and waiting for one (Linux's /proc/self/schedstat), not its CPU time alone: on
a machine shared with other busy processes, or with more workers than cores, a process
that wants a whole core may get only half of one, and its calls suffer all the same.
While that share has been OVERLOAD_CPU_PCT of a core or more for the last second, the
process refuses new calls (they hear the fallback;
/readyz says 503, so a balancer sends them elsewhere), and the calls it holds keep the
core they have. It takes calls again once it has been LEAVE_MARGIN under that for a
second: a node that just refused is not let straight back over the edge.

`CpuLoad` is the decision, pure; `watch_loop` is the probe (ten a second: one timer, a
clock read and a 9 µs read of /proc each), which also reports how late the loop woke it,
for the metric. Where /proc/self/schedstat is missing (not Linux), CPU time stands in.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import gevent

__all__ = ["LEAVE_MARGIN", "PROBE_S", "WINDOW", "CpuLoad", "demand_s", "watch_loop"]

PROBE_S = 0.1
# One second of probes: one long pause (a collection, a burst of set-ups) moves the mean
# by a tenth of its length, a core kept busy moves it all the way.
WINDOW = 10
LEAVE_MARGIN = 0.10
_SCHEDSTAT = "/proc/self/schedstat"  # the main thread's ns on a core, ns runnable but waiting, slices


class CpuLoad:
    """Whether the process is too busy to take another call, from the share of a core it recently wanted."""

    __slots__ = ("_overloaded", "_sum", "_threshold", "_window")

    def __init__(self, threshold: float) -> None:
        """`threshold`: the share of one core (0-1] at which new calls are refused."""
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        self._threshold = threshold
        self._window: deque[float] = deque(maxlen=WINDOW)
        self._sum = 0.0
        self._overloaded = False

    @property
    def overloaded(self) -> bool:
        return self._overloaded

    @property
    def threshold(self) -> float:
        return self._threshold

    def share(self) -> float:
        """The window's mean share of a core wanted (0 before any probe)."""
        return self._sum / len(self._window) if self._window else 0.0

    def add(self, share: float) -> bool:
        """Take one probe's share of a core wanted; True when it changed whether the process is overloaded."""
        window = self._window
        if len(window) == WINDOW:
            self._sum -= window[0]
        window.append(share)
        self._sum += share
        if len(window) < WINDOW:
            return False
        mean = self.share()
        was = self._overloaded
        if not was and mean >= self._threshold:
            self._overloaded = True
        elif was and mean <= self._threshold - LEAVE_MARGIN:
            self._overloaded = False
        return self._overloaded is not was

    def refusal(self) -> str | None:
        """Why no new call is taken now, or None."""
        if not self._overloaded:
            return None
        return f"overloaded ({self.share():.0%} of a core)"


def demand_s() -> float:
    """Seconds the main thread has been on a core or waiting for one, since it started
    (CPU time where the kernel does not say)."""
    try:
        with open(_SCHEDSTAT, "rb") as stat:
            on_cpu, waiting, _slices = stat.read().split()
        return (int(on_cpu) + int(waiting)) / 1e9
    except (OSError, ValueError):
        return time.process_time()


def watch_loop(load: CpuLoad, on_probe: Callable[[float], None], on_change: Callable[[bool], None],
               demand: Callable[[], float] = demand_s) -> None:
    """Probe forever (run it in a greenlet of its own): every PROBE_S, give `load` the share of a
    core the process wanted since the last probe (`demand`: seconds wanted so far), tell
    `on_probe` how much later than asked the loop woke this greenlet, and `on_change` when the
    verdict turns."""
    wall = time.perf_counter
    while True:
        asked, used = wall(), demand()
        gevent.sleep(PROBE_S)
        woke, now_used = wall(), demand()
        elapsed = woke - asked
        share = (now_used - used) / elapsed if elapsed > 0.0 else 0.0
        changed = load.add(share)
        on_probe(max(0.0, elapsed - PROBE_S))
        if changed:
            on_change(load.overloaded)
