"""Translation between `CallRecord` and a row of the `calls` table.

Records are checked field by field here, in the writer greenlet, so one malformed record
is refused alone instead of failing the transaction of every record batched with it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from calls.handoff import Hop
from records.errors import InvalidRecord
from records.model import CallRecord

__all__ = ["COLUMNS", "INSERT_SQL", "SELECT_SQL", "from_row", "to_row"]

# Order of the columns in every INSERT and SELECT below, and in to_row/from_row.
# duration_s is derived from the two times; it is stored so SQL can filter and sum on it,
# and ignored when a row is read back.
COLUMNS = (
    "call_sid",
    "stream_sid",
    "started_at",
    "ended_at",
    "duration_s",
    "outcome",
    "outcome_detail",
    "restarts",
    "vapi_links",
    "barge_ins",
    "turns",
    "turn_latency_p50_ms",
    "turn_latency_p95_ms",
    "frames_in",
    "frames_out",
    "frames_dropped",
    "cost_usd",
    "recording_path",
    "node_id",
    "handoffs",
)

# Built once from the constant COLUMNS above; values always go in as ? parameters.
INSERT_SQL = (
    f"INSERT OR REPLACE INTO calls ({', '.join(COLUMNS)}) "  # noqa: S608 - constant column names only
    f"VALUES ({', '.join('?' for _ in COLUMNS)})"
)
SELECT_SQL = f"SELECT {', '.join(COLUMNS)} FROM calls"  # noqa: S608 - constant column names only


def to_row(record: CallRecord) -> tuple[object, ...]:
    """The row for `record`, in `COLUMNS` order.

    Raises:
        InvalidRecord: a field has the wrong type, a number is not finite, or an actor
            appears twice in `restarts` (the stored JSON object could not keep both).
    """
    return (
        _text("call_sid", record.call_sid),
        _text("stream_sid", record.stream_sid, nullable=True),
        _real("started_at", record.started_at),
        _real("ended_at", record.ended_at),
        _real("duration_s", record.duration_s),
        _text("outcome", record.outcome),
        _text("outcome_detail", record.outcome_detail),
        _restarts(record.restarts),
        _count("vapi_links", record.vapi_links),
        _count("barge_ins", record.barge_ins),
        _count("turns", record.turns),
        _real("turn_latency_p50_ms", record.turn_latency_p50_ms, nullable=True),
        _real("turn_latency_p95_ms", record.turn_latency_p95_ms, nullable=True),
        _count("frames_in", record.frames_in),
        _count("frames_out", record.frames_out),
        _count("frames_dropped", record.frames_dropped),
        _real("cost_usd", record.cost_usd),
        _text("recording_path", record.recording_path, nullable=True),
        _text("node_id", record.node_id, nullable=True),
        _handoffs(record.handoffs),
    )


def from_row(row: Sequence[Any]) -> CallRecord:
    """The record stored in `row` (selected with `SELECT_SQL`)."""
    (
        call_sid, stream_sid, started_at, ended_at, _duration_s, outcome, outcome_detail,
        restarts, vapi_links, barge_ins, turns, p50_ms, p95_ms,
        frames_in, frames_out, frames_dropped, cost_usd, recording_path, node_id, handoffs,
    ) = row  # fmt: skip
    return CallRecord(
        call_sid=call_sid,
        stream_sid=stream_sid,
        started_at=started_at,
        ended_at=ended_at,
        outcome=outcome,
        outcome_detail=outcome_detail,
        # json keeps the object's key order, so the tuple reads back as it was written.
        restarts=tuple((str(actor), int(count)) for actor, count in json.loads(restarts).items()),
        vapi_links=vapi_links,
        barge_ins=barge_ins,
        turns=turns,
        turn_latency_p50_ms=p50_ms,
        turn_latency_p95_ms=p95_ms,
        frames_in=frames_in,
        frames_out=frames_out,
        frames_dropped=frames_dropped,
        cost_usd=cost_usd,
        recording_path=recording_path,
        node_id=node_id,
        handoffs=_read_handoffs(handoffs),
    )


def _text(name: str, value: object, *, nullable: bool = False) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise InvalidRecord(name, value, "a string" + (" or None" if nullable else ""))
    return value


def _real(name: str, value: object, *, nullable: bool = False) -> float | None:
    if value is None and nullable:
        return None
    # sqlite stores NaN as NULL, which would break NOT NULL columns or read back as None.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRecord(name, value, "a finite number" + (" or None" if nullable else ""))
    return float(value)


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRecord(name, value, "an integer >= 0")
    return value


def _restarts(value: object) -> str:
    if not isinstance(value, tuple | list):
        raise InvalidRecord("restarts", value, "a tuple of (actor, count) pairs")
    counts: dict[str, int] = {}
    for pair in value:
        if not (isinstance(pair, tuple | list) and len(pair) == 2 and isinstance(pair[0], str)):
            raise InvalidRecord("restarts", value, "a tuple of (actor, count) pairs")
        actor, count = pair
        if actor in counts:
            raise InvalidRecord("restarts", value, "each actor at most once")
        counts[actor] = _count(f"restarts[{actor}]", count)
    return json.dumps(counts, separators=(",", ":"))


def _handoffs(value: object) -> str:
    if not isinstance(value, tuple | list) or not all(isinstance(hop, Hop) for hop in value):
        raise InvalidRecord("handoffs", value, "a tuple of Hop")
    return json.dumps([hop.to_json() for hop in value], separators=(",", ":"))


def _read_handoffs(text: object) -> tuple[Hop, ...]:
    try:
        items = json.loads(text) if isinstance(text, str) else []
    except ValueError:
        return ()
    return tuple(hop for hop in (Hop.from_json(item) for item in items) if hop is not None)
