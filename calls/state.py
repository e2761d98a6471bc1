"""What a call is, as plain data: no sockets, actor refs or greenlets, so it can be stored elsewhere.

`CallState` is the value a call record, the admin API and (later) another process need.
What a process holds for a call (its sockets, actors, timers) is actors.call.CallContext.

Each field has one writer, named below; everyone else reads it or sends its writer a
message. "The controller" is the call's CallSupervisor (actors/supervisor.py), whichever
incarnation is running; the actors send it what they measure (actors/messages.py).

| field | writer |
|---|---|
| call_sid, started_at | the registry, when a media socket presents the call's ticket; never changed |
| stream_sid | TwilioActor, from Twilio's `start` |
| vapi_links, vapi_greeted | VapiActor (each incarnation in turn): as links come up; at the first assistant audio |
| conversation | VapiActor (each incarnation), from VAPI's transcripts; seeded by the CallState's maker on a resume |
| end_request | CallContext.end / request_end: the first request wins, later ones are ignored |
| outcome, outcome_detail | the controller, once, when the call ends (finish_call) |
| stats, latency_*_ms, fault_at_ns, restarts, events | the controller, from its children's messages |
| supervisor_restarts | the registry, told by the root supervisor |
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from calls.conversation import Conversation
from calls.outcome import EndRequest, Outcome

__all__ = ["CallState", "CallStats"]

_EVENTS_KEPT = 20  # recent events per call, for the dashboard
# Turn latencies kept per call for its record's percentiles; a long call keeps the latest.
_TURNS_KEPT = 1000


@dataclass(slots=True)
class CallStats:
    """Counters for the call's record, summed by the controller from its children's reports."""

    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0
    barge_ins: int = 0
    turns: int = 0
    turn_ms: list[float] = field(default_factory=list)

    def add(self, *, frames_in: int, frames_out: int, frames_dropped: int, barge_ins: int,
            turn_ms: tuple[float, ...]) -> None:
        self.frames_in += frames_in
        self.frames_out += frames_out
        self.frames_dropped += frames_dropped
        self.barge_ins += barge_ins
        self.turns += len(turn_ms)
        self.turn_ms.extend(turn_ms)
        if len(self.turn_ms) > _TURNS_KEPT:
            del self.turn_ms[: len(self.turn_ms) - _TURNS_KEPT]


@dataclass(slots=True, eq=False)
class CallState:
    """One call's identity, progress and outcome (writers: see the module's table)."""

    call_sid: str
    started_at: float = field(default_factory=time.time)
    stream_sid: str | None = None
    vapi_links: int = 0
    vapi_greeted: bool = False  # the caller has heard the assistant (a later VAPI call must not greet)
    conversation: Conversation = field(default_factory=Conversation)  # what has been said, bounded
    end_request: EndRequest | None = None
    outcome: Outcome | None = None
    outcome_detail: str = ""
    stats: CallStats = field(default_factory=CallStats)
    latency_in_ms: float | None = None  # smoothed, for the dashboard
    latency_out_ms: float | None = None
    fault_at_ns: int | None = None  # an actor failed; cleared when caller audio reaches VAPI again
    restarts: dict[str, int] = field(default_factory=dict)  # per child, across supervisor incarnations
    supervisor_restarts: int = 0
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=_EVENTS_KEPT))

    def event(self, kind: str, detail: str = "") -> None:
        """Note something an operator would want to see on the dashboard (the controller's)."""
        self.events.append({"t": time.time(), "kind": kind, "detail": detail})

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data."""
        request = self.end_request
        return {
            "call_sid": self.call_sid,
            "started_at": self.started_at,
            "stream_sid": self.stream_sid,
            "vapi_links": self.vapi_links,
            "vapi_greeted": self.vapi_greeted,
            "conversation": self.conversation.to_json(),
            "end_request": None if request is None else {"outcome": request.outcome.value, "detail": request.detail},
            "outcome": None if self.outcome is None else self.outcome.value,
            "outcome_detail": self.outcome_detail,
            "stats": {
                "frames_in": self.stats.frames_in,
                "frames_out": self.stats.frames_out,
                "frames_dropped": self.stats.frames_dropped,
                "barge_ins": self.stats.barge_ins,
                "turns": self.stats.turns,
                "turn_ms": list(self.stats.turn_ms),
            },
            "latency_in_ms": self.latency_in_ms,
            "latency_out_ms": self.latency_out_ms,
            "restarts": dict(self.restarts),
            "supervisor_restarts": self.supervisor_restarts,
            "events": list(self.events),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallState:
        request = data.get("end_request")
        stats = data["stats"]
        state = cls(
            call_sid=data["call_sid"],
            started_at=data["started_at"],
            stream_sid=data["stream_sid"],
            vapi_links=data["vapi_links"],
            vapi_greeted=data["vapi_greeted"],
            conversation=Conversation.from_json(data.get("conversation", [])),
            end_request=None if request is None else EndRequest(Outcome(request["outcome"]), request["detail"]),
            outcome=None if data["outcome"] is None else Outcome(data["outcome"]),
            outcome_detail=data["outcome_detail"],
            stats=CallStats(
                frames_in=stats["frames_in"],
                frames_out=stats["frames_out"],
                frames_dropped=stats["frames_dropped"],
                barge_ins=stats["barge_ins"],
                turns=stats["turns"],
                turn_ms=list(stats["turn_ms"]),
            ),
            latency_in_ms=data["latency_in_ms"],
            latency_out_ms=data["latency_out_ms"],
            restarts=dict(data["restarts"]),
            supervisor_restarts=data["supervisor_restarts"],
        )
        state.events.extend(data["events"])
        return state
