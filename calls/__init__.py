"""What a call is, as plain data: how it ended (Outcome) and the state that outlives its actors."""

from calls.outcome import EndRequest, Outcome

__all__ = ["EndRequest", "Outcome"]
