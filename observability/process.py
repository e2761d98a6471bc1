"""Process figures a long soak watches for growth: memory, greenlets, actors."""

from __future__ import annotations

import gc
import resource
from collections.abc import Sized
from typing import Protocol

import gevent
from pykka import ActorRegistry

__all__ = ["LiveCalls", "process_stats"]


class LiveCalls(Protocol):
    """What process_stats reads of the call registry: the calls live right now."""

    def live(self) -> Sized: ...


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
    except OSError:  # not Linux: peak RSS is the best we have
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def process_stats(calls: LiveCalls | None) -> dict[str, int]:
    """RSS, live gevent Greenlets, registered actors and live calls, right now."""
    greenlets = sum(1 for obj in gc.get_objects() if isinstance(obj, gevent.Greenlet) and not obj.dead)
    return {
        "rss_bytes": _rss_bytes(),
        "greenlets": greenlets,
        "actors": len(ActorRegistry.get_all()),
        "live_calls": len(calls.live()) if calls is not None else 0,
    }
