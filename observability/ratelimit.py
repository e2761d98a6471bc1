"""Logs an attacker cannot flood: at most a few lines per source and kind per window.

A hostile peer can make the server reject or drop input as fast as it can send it. The
counter (Prometheus) sees every one; the log sees the first few of each (source, kind)
in a window, then one summary line saying how many were suppressed. Keys are bounded
too, so a flood from many sources cannot grow the table without limit.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from observability.logging import Logger

__all__ = ["LogLimiter"]

# Enough lines to diagnose a problem; few enough that 100,000 bad frames cost ~nothing.
_PER_WINDOW = 5
_WINDOW_S = 10.0
# Distinct (source, kind) keys remembered; the oldest is forgotten first.
_MAX_KEYS = 1024


class _LogMethod(Protocol):
    """One level of a Logger: `log.warning` or `log.info`."""

    def __call__(self, event: str, /, **fields: object) -> object: ...


class LogLimiter:
    """Decides, per (source, kind), whether a line is logged, and reports what it held back."""

    def __init__(
        self,
        log: Logger,
        *,
        per_window: int = _PER_WINDOW,
        window_s: float = _WINDOW_S,
        max_keys: int = _MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._per_window = per_window
        self._window_s = window_s
        self._max_keys = max_keys
        self._clock = clock
        # key -> [window start, lines logged in it, lines suppressed in it]
        self._windows: OrderedDict[tuple[str, str], list[float]] = OrderedDict()

    def warning(self, event: str, *, source: str, kind: str, **fields: object) -> bool:
        """Log `event` at WARNING unless this (source, kind) has had its lines; True if logged."""
        return self._emit(self._log.warning, event, source, kind, fields)

    def info(self, event: str, *, source: str, kind: str, **fields: object) -> bool:
        return self._emit(self._log.info, event, source, kind, fields)

    def flush(self) -> None:
        """Report what windows that have ended held back (call now and then: a flood may just stop)."""
        now = self._clock()
        for (source, kind), window in list(self._windows.items()):
            if now - window[0] >= self._window_s:
                if window[2]:
                    self._summary(source, kind, window)
                del self._windows[(source, kind)]

    def _summary(self, source: str, kind: str, window: list[float]) -> None:
        self._log.warning(
            "log_suppressed", source=source, kind=kind, suppressed=int(window[2]), window_s=self._window_s
        )

    def _emit(self, method: _LogMethod, event: str, source: str, kind: str, fields: dict[str, object]) -> bool:
        now = self._clock()
        key = (source, kind)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = [now, 0.0, 0.0]
            while len(self._windows) > self._max_keys:
                self._windows.popitem(last=False)
        elif now - window[0] >= self._window_s:
            if window[2]:
                self._summary(source, kind, window)
            window[0], window[1], window[2] = now, 0.0, 0.0
            self._windows.move_to_end(key)
        if window[1] >= self._per_window:
            window[2] += 1
            return False
        window[1] += 1
        method(event, source=source, kind=kind, **fields)
        return True
