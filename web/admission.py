"""Whether the server takes a new call: not while draining, not past MAX_CALLS, not overloaded."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["NEXT_NODE_HEADER", "Admission", "refusal_kind"]

# Sent by a proxy that will pass a new call's webhook or media socket on to another node
# (deploy/nginx.conf). A node too busy for the call then answers 503 instead of taking it
# or answering the fallback, and the call goes elsewhere; only when no node has room does a
# node take it (the socket) or answer the fallback (the webhook). Whoever sends the header
# can only change which node serves them, so it needs no trust.
NEXT_NODE_HEADER = "X-Bridge-Pass-On"


class Admission:
    """Shared by the webhook (fallback TwiML when refused) and /readyz (503 when refused)."""

    def __init__(self, live_calls: Callable[[], int], max_calls: int | None,
                 overload: Callable[[], str | None] | None = None) -> None:
        """`overload`: why the process is too busy for another call now, or None
        (observability/overload.py)."""
        self._live_calls = live_calls
        self._max_calls = max_calls
        self._overload = overload
        self.draining = False

    def refusal(self) -> str | None:
        """None when a new call is welcome; otherwise why not."""
        if self.draining:
            return "draining"
        if self._max_calls is not None and self._live_calls() >= self._max_calls:
            return f"full ({self._max_calls} calls)"
        if self._overload is not None:
            return self._overload()
        return None


def refusal_kind(refusal: str) -> str:
    """A refusal's kind, for a metric label: "draining", "full" or "overloaded"."""
    return refusal.split(" ", 1)[0]

