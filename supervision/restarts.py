"""The pure arithmetic of restarting: how many restarts are too many, and how long to wait.

Both take the clock and the random source from the caller, so tests need no greenlets.
"""

from __future__ import annotations

import random
from collections import deque

from supervision.spec import Backoff

__all__ = ["RestartWindow", "backoff_delay_s"]


class RestartWindow:
    """OTP's add_restart: restart times inside the last `period_s`, and whether they exceed `intensity`."""

    def __init__(self, intensity: int, period_s: float) -> None:
        self._intensity = intensity
        self._period_s = period_s
        self._times: deque[float] = deque()

    def add(self, now: float) -> bool:
        """Record a restart at `now`; True while the count stays within the intensity."""
        threshold = now - self._period_s
        while self._times and self._times[0] < threshold:
            self._times.popleft()
        self._times.append(now)
        return len(self._times) <= self._intensity

    @property
    def count(self) -> int:
        return len(self._times)


def backoff_delay_s(backoff: Backoff, attempt: int, rng: random.Random) -> float:
    """Delay before restart number `attempt` (0 for the first), jittered around its nominal value."""
    # 2**attempt overflows a float long after it passes any sane max_s; cap the exponent.
    nominal = min(backoff.max_s, backoff.min_s * (2.0 ** min(attempt, 62)))
    spread = backoff.jitter * nominal
    return max(0.0, nominal - spread / 2.0 + rng.random() * spread)
