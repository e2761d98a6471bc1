"""Shared test data for the records tests: a record factory and a logger that remembers."""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable
from typing import Any

import gevent

from records.model import CallRecord


def make_record(call_sid: str = "CA0001", **changes: Any) -> CallRecord:
    """A record with a distinct, non-default value in every field."""
    record = CallRecord(
        call_sid=call_sid,
        stream_sid="MZ" + str(call_sid)[2:],
        started_at=1_760_000_000.125,
        ended_at=1_760_000_093.5,
        outcome="completed",
        outcome_detail="caller hung up",
        restarts=(("codec", 0), ("twilio", 1), ("vad", 0), ("vapi", 2)),
        vapi_links=3,
        barge_ins=4,
        turns=7,
        turn_latency_p50_ms=612.5,
        turn_latency_p95_ms=1480.25,
        frames_in=4675,
        frames_out=4321,
        frames_dropped=12,
        cost_usd=0.0795,
        recording_path=f"/var/lib/bridge/recordings/{call_sid}.wav",
        node_id="bridge-1-4242",
    )
    return dataclasses.replace(record, **changes)


class RecordingLog:
    """Stands in for a structlog logger and keeps (level, event, fields) of every call."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.entries.append(("info", event, fields))

    def warning(self, event: str, **fields: Any) -> None:
        self.entries.append(("warning", event, fields))

    def error(self, event: str, **fields: Any) -> None:
        self.entries.append(("error", event, fields))

    def events(self, level: str | None = None) -> list[str]:
        return [event for lvl, event, _ in self.entries if level in (None, lvl)]

    def fields(self, event: str) -> list[dict[str, Any]]:
        return [fields for _, name, fields in self.entries if name == event]


def wait_until(predicate: Callable[[], object], timeout: float = 2.0) -> bool:
    """Poll `predicate` cooperatively until it is truthy or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        gevent.sleep(0.005)
    return bool(predicate())


def live_greenlets() -> int:
    return sum(1 for obj in gc.get_objects() if isinstance(obj, gevent.Greenlet) and not obj.dead)
