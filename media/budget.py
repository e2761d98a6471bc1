"""A token bucket: how much of something a peer may send per second, with a burst.

Used to bound what one media socket may cost the server (frames and bytes per second)
and how much silence the gap filler may insert, so no input is amplified or unbounded.
The caller passes the time in, so the hot path reads the clock once per read, not per
check, and tests need no sleeps.
"""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; starts full."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._last = now

    def take(self, amount: float, now: float) -> bool:
        """Spend `amount` if the bucket holds it; False (spending nothing) if it does not."""
        tokens = self._tokens
        elapsed = now - self._last
        if elapsed > 0:
            tokens = min(self._burst, tokens + elapsed * self._rate)
            self._last = now
        if tokens < amount:
            self._tokens = tokens
            return False
        self._tokens = tokens - amount
        return True

    def take_up_to(self, amount: int, now: float) -> int:
        """Spend as many whole tokens as are there, up to `amount`; how many were spent."""
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._last = now
        spent = min(amount, int(self._tokens))
        self._tokens -= spent
        return max(0, spent)
