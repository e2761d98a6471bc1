"""How a call ends: one closed vocabulary for logs, metrics, records and `/voice/after-stream`."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["EndRequest", "Outcome"]


class Outcome(enum.StrEnum):
    """Why a call ended. A str, so it goes into JSON, labels and SQL as its value."""

    COMPLETED = "completed"  # the caller hung up: Twilio's `stop`, or its socket closed
    ASSISTANT_ENDED = "assistant-ended"  # VAPI reported the call ended
    GAVE_UP = "gave-up"  # the bridge gave up: VAPI unreachable, restarts past the intensity, no media
    DRAINED = "drained"  # the server shut down before the call ended on its own
    FAILED = "failed"  # the call's own supervisor kept failing
    REFUSED = "refused"  # never admitted (full, or draining): the caller heard the fallback
    HANDED_OFF = "handed-off"  # this node let the live call go to another (calls/handoff.py): not its end

    @property
    def hangs_up(self) -> bool:
        """After this outcome Twilio should hang up; after the others the caller hears the fallback."""
        return self in (Outcome.COMPLETED, Outcome.ASSISTANT_ENDED)


@dataclass(frozen=True, slots=True)
class EndRequest:
    """The first reason given for ending a call; later ones are consequences of it."""

    outcome: Outcome
    detail: str = ""
