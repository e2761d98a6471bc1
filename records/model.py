"""The call record: what is kept about one call once it has ended."""

from __future__ import annotations

from dataclasses import dataclass

from calls.handoff import Hop
from calls.outcome import Outcome

__all__ = ["OUTCOMES", "CallRecord"]

# The vocabulary the bridge writes into `outcome`. The record keeps plain strings rather
# than the Enum because the column must still read back if a later version adds one.
OUTCOMES = tuple(outcome.value for outcome in Outcome)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRecord:
    """One finished call: identity, timing, outcome, per-actor restarts, media counters, cost, recording.

    Times are unix seconds (wall clock, so they mean something after a restart).
    `restarts` is a tuple of (actor, count) pairs so the record stays immutable and hashable.
    """

    call_sid: str
    stream_sid: str | None
    started_at: float
    ended_at: float
    outcome: str
    outcome_detail: str
    restarts: tuple[tuple[str, int], ...]
    vapi_links: int
    barge_ins: int
    turns: int
    turn_latency_p50_ms: float | None
    turn_latency_p95_ms: float | None
    frames_in: int
    frames_out: int
    frames_dropped: int
    cost_usd: float
    # The call's recording (RECORDINGS_DIR), or None: recordings off, or writing it failed.
    recording_path: str | None = None
    # The node that held the call's stream (its NODE_ID and pid); None in rows from before v3.
    node_id: str | None = None
    # The phone call's moves between nodes before it ended on `node_id`, oldest first (v4).
    handoffs: tuple[Hop, ...] = ()

    @property
    def duration_s(self) -> float:
        """Seconds from start to end; never negative, even if the wall clock stepped back."""
        return max(0.0, self.ended_at - self.started_at)

    def to_json(self) -> dict[str, object]:
        """A plain JSON-able dict, with `restarts` as an object and `duration_s` included."""
        return {
            "call_sid": self.call_sid,
            "stream_sid": self.stream_sid,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_s": self.duration_s,
            "outcome": self.outcome,
            "outcome_detail": self.outcome_detail,
            "restarts": dict(self.restarts),
            "vapi_links": self.vapi_links,
            "barge_ins": self.barge_ins,
            "turns": self.turns,
            "turn_latency_p50_ms": self.turn_latency_p50_ms,
            "turn_latency_p95_ms": self.turn_latency_p95_ms,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "frames_dropped": self.frames_dropped,
            "cost_usd": self.cost_usd,
            "recording_path": self.recording_path,
            "node_id": self.node_id,
            "handoffs": [hop.to_json() for hop in self.handoffs],
        }
