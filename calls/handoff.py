"""A live phone call passing from one node to another: what the next node needs to carry on.

When our side of a `<Connect><Stream>` ends, Twilio asks the `<Connect action>` URL what to
do next, and a new `<Connect><Stream>` continues the same phone call (docs/twilio-handoff.md).
A `Handoff` is what travels in the call directory between the node that let the stream go
(or the heartbeat snapshot of one that died) and the node that takes the new stream:

- the conversation so far (calls/conversation.py's JSON), so the new VAPI call continues it;
- whether the caller was greeted (the new VAPI call then waits for the caller);
- `resumes`: how many times this phone call has been resumed already, and `hops`, the
  earlier ones (from, to, reason, when, and the silence each cost), so the call's one
  record tells its whole story;
- `started_at`: when the phone call started, on the first node.

`resume_allowed` bounds resumes: a call that keeps breaking gets the fallback instead of
looping between nodes. Pure: no I/O, no clock of its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Final

__all__ = [
    "CRASH",
    "DEPLOY",
    "MAX_RESUMES",
    "REASONS",
    "RESUME_WINDOW_S",
    "STREAM_BROKEN",
    "Handoff",
    "Hop",
    "resume_allowed",
]

DEPLOY: Final = "deploy"  # the node stopped (SIGTERM) and let its calls go
CRASH: Final = "crash"  # the node died; its last heartbeat snapshot carries the call
STREAM_BROKEN: Final = "stream_broken"  # Twilio's socket broke under a healthy call
REASONS: Final = frozenset({DEPLOY, CRASH, STREAM_BROKEN})

# More resumes than this within RESUME_WINDOW_S: the call is not healthy, the caller hears the fallback.
MAX_RESUMES: Final = 3
RESUME_WINDOW_S: Final = 60.0
# Hops kept per call: a call resumed all day keeps its latest story, bounded.
_HOPS_KEPT: Final = 20


@dataclass(frozen=True, slots=True)
class Hop:
    """One resume: the stream left `from_node` at `left_at` and `to_node` took the new one."""

    from_node: str
    to_node: str
    reason: str
    left_at: float  # seconds since the epoch, the leaving node's clock
    silence_ms: float | None  # the old stream's end to the new stream's `start`; None if unknown

    def to_json(self) -> dict[str, Any]:
        return {"from": self.from_node, "to": self.to_node, "reason": self.reason, "left_at": self.left_at,
                "silence_ms": self.silence_ms}

    @classmethod
    def from_json(cls, data: Any) -> Hop | None:
        if not isinstance(data, dict):
            return None
        try:
            silence = data.get("silence_ms")
            return cls(str(data["from"]), str(data["to"]), str(data["reason"]), float(data["left_at"]),
                       None if silence is None else float(silence))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Handoff:
    """A live phone call between two streams (see the module's docstring)."""

    call_sid: str
    conversation_json: list[dict[str, str]] = field(default_factory=list)
    greeted: bool = True
    resumes: int = 0  # resumes before this one
    from_node: str = ""
    reason: str = DEPLOY
    left_at: float = 0.0
    started_at: float = 0.0
    hops: tuple[Hop, ...] = ()

    def taken_by(self, node_id: str, *, at: float) -> Handoff:
        """This hand-off as the node that takes the new stream records it: one more resume, one more hop."""
        silence_ms = max(0.0, (at - self.left_at) * 1000.0) if self.left_at else None
        hop = Hop(self.from_node, node_id, self.reason, self.left_at, silence_ms)
        return replace(self, resumes=self.resumes + 1, hops=(*self.hops, hop)[-_HOPS_KEPT:])

    def to_dict(self) -> dict[str, Any]:
        return {
            "call_sid": self.call_sid, "conversation": self.conversation_json, "greeted": self.greeted,
            "resumes": self.resumes, "from": self.from_node, "reason": self.reason, "left_at": self.left_at,
            "started_at": self.started_at, "hops": [hop.to_json() for hop in self.hops],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Handoff | None:
        """The hand-off in `text`; None when it is not one (a store's garbage must not crash a webhook)."""
        try:
            return cls.from_dict(json.loads(text))
        except ValueError:
            return None

    @classmethod
    def from_dict(cls, data: Any) -> Handoff | None:
        """The hand-off in `to_dict`'s data; None when it is not one."""
        try:
            conversation = data.get("conversation", [])
            reason = str(data.get("reason", DEPLOY))
            return cls(
                call_sid=str(data["call_sid"]),
                conversation_json=[t for t in conversation if isinstance(t, dict)] if isinstance(conversation,
                                                                                                  list) else [],
                greeted=bool(data.get("greeted", True)),
                resumes=max(0, int(data.get("resumes", 0))),
                from_node=str(data.get("from", "")),
                reason=reason if reason in REASONS else DEPLOY,
                left_at=float(data.get("left_at", 0.0)),
                started_at=float(data.get("started_at", 0.0)),
                hops=tuple(h for h in (Hop.from_json(x) for x in data.get("hops", [])) if h is not None),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


def resume_allowed(handoff: Handoff, *, now: float, max_resumes: int = MAX_RESUMES,
                   window_s: float = RESUME_WINDOW_S) -> bool:
    """Whether one more resume is allowed: at most `max_resumes` within the last `window_s`."""
    recent = sum(1 for hop in handoff.hops if now - hop.left_at <= window_s)
    return recent < max_resumes
