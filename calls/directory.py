"""The call directory: what every node of a fleet must agree on about a call, behind one interface.

A call's requests may land on different nodes (no sticky sessions): the webhook on one,
the media socket on another, `/voice/after-stream` on a third. What they share is here:

| entry | written by | read by |
|---|---|---|
| admitted (TTL: the ticket's) | the webhook's node | the gate of any node |
| claimed (a lease the heartbeat renews) | the node whose socket showed the ticket first | the gate, chaos routing |
| outcome (kept a day) | the owner node, at the call's end | after-stream, replayed webhooks |
| a node's live snapshots (TTL) | each node, every few seconds | the admin API, the dashboard |
| a node's command queue | any node (a chaos click) | that node, which applies them |
| moving (hand-off, TTL) | the node letting a call go, or one finding its owner dead | after-stream, the new node |

Three backends: `MemoryDirectory` here (one process, the default: nothing to install),
an SQLite file shared by the workers of one machine (directory/sqlite.py) and Redis for
many machines (directory/redis.py). A call's state moves only forward: admitted ->
claimed -> ended; a claim consumes the admission, so a replayed ticket finds nothing to
claim. A shared backend raises `DirectoryUnavailable` when it cannot answer; the caller
decides what degrades (actors/fleet.py).

This module is pure: the memory backend reads the time from the clock it is given.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from calls.handoff import Handoff
from calls.outcome import Outcome

__all__ = [
    "ALREADY_STREAMING",
    "ENDED",
    "NOT_ADMITTED",
    "OUTCOME_KEPT_S",
    "CallDirectory",
    "DirectoryUnavailable",
    "MemoryDirectory",
    "NodeView",
]

# Why a media socket may not take a call (the gate's and the claim's answers).
ENDED: Final = "ended"
NOT_ADMITTED: Final = "no call admitted"
ALREADY_STREAMING: Final = "already has a media socket"

# Twilio asks /voice/after-stream within seconds of the stream's end; a replayed webhook
# is refused as long as the outcome is kept (and after that by the call records).
OUTCOME_KEPT_S: Final = 24 * 3600.0
# Outcomes a memory directory remembers: months of calls must cost no memory.
_MEMORY_OUTCOMES: Final = 10_000
# Admissions between two sweeps of the ones whose stream never came.
_SWEEP_EVERY: Final = 256


class DirectoryUnavailable(Exception):
    """A shared directory could not answer in time (its store is down or locked)."""


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node as its last heartbeat showed it: its live calls' snapshots."""

    node_id: str
    at: float  # when it was published (seconds since the epoch)
    calls: list[dict[str, Any]] = field(default_factory=list)
    draining: bool = False  # it is stopping: no call should be handed to it


class CallDirectory(Protocol):
    """What the nodes of a fleet share about calls. Every method is bounded in time."""

    @property
    def shared(self) -> bool:
        """Whether other processes see this directory (False: one process, nothing to publish)."""
        ...

    def admit(self, call_sid: str, node_id: str, ttl_s: float) -> None:
        """The webhook answered this call: a socket presenting its ticket may claim it for `ttl_s`."""
        ...

    def refusal(self, call_sid: str) -> str | None:
        """None when a media socket may try to take this call; else ENDED, ALREADY_STREAMING or NOT_ADMITTED."""
        ...

    def claim(self, call_sid: str, node_id: str, lease_s: float) -> str | None:
        """Take the admitted call for `node_id`, atomically: the first claim wins, later ones get a refusal."""
        ...

    def finish(self, call_sid: str, outcome: Outcome) -> None:
        """The call ended with `outcome`: kept OUTCOME_KEPT_S for any node to read; its claim is released."""
        ...

    def outcome(self, call_sid: str) -> Outcome | None:
        """How the call ended; None while it is live, or unknown."""
        ...

    def owner(self, call_sid: str) -> str | None:
        """The node holding the live call, if one does."""
        ...

    def heartbeat(self, node_id: str, calls: Sequence[dict[str, Any]], ttl_s: float, *, draining: bool = False) -> None:
        """`node_id` lives, with these calls (snapshots with a `call_sid`); their claims and its view last `ttl_s`.

        `draining`: the node is stopping (other nodes must not hand it calls).
        """
        ...

    def nodes(self) -> list[NodeView]:
        """Every node whose last heartbeat has not expired."""
        ...

    def send_command(self, node_id: str, command: dict[str, Any], ttl_s: float) -> None:
        """Queue `command` for `node_id`; it is dropped if not taken within `ttl_s`."""
        ...

    def take_commands(self, node_id: str, wait_s: float) -> list[dict[str, Any]]:
        """The commands queued for `node_id`, waiting up to `wait_s` for the first one."""
        ...

    def mark_moving(self, call_sid: str, handoff: Handoff, ttl_s: float) -> None:
        """The live call is between two streams: keep `handoff` for `ttl_s` and release the call's claim,
        so the node that takes the new stream can claim it."""
        ...

    def moving(self, call_sid: str) -> Handoff | None:
        """The call's hand-off while it is moving; None otherwise."""
        ...

    def take_moving(self, call_sid: str, node_id: str) -> Handoff | None:
        """Take the call's hand-off for `node_id`, atomically: the first taker gets it, later ones None."""
        ...

    def close(self) -> None:
        """Release connections; idempotent."""
        ...


@dataclass(slots=True)
class _Entry:
    state: str  # "admitted", "claimed"
    node_id: str
    expires_at: float


class MemoryDirectory:
    """The directory of a single process: plain dicts, today's behaviour, nothing to install.

    Claims do not expire here: the process that holds the call is the one asking.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._outcomes: OrderedDict[str, Outcome] = OrderedDict()
        self._views: dict[str, NodeView] = {}
        self._commands: dict[str, list[dict[str, Any]]] = {}
        self._moving: dict[str, tuple[Handoff, float]] = {}
        self._admitted_since_sweep = 0

    @property
    def shared(self) -> bool:
        return False

    def _live_entry(self, call_sid: str) -> _Entry | None:
        entry = self._entries.get(call_sid)
        if entry is not None and entry.state == "admitted" and entry.expires_at <= self._clock():
            del self._entries[call_sid]
            return None
        return entry

    def admit(self, call_sid: str, node_id: str, ttl_s: float) -> None:
        self._admitted_since_sweep += 1
        if self._admitted_since_sweep >= _SWEEP_EVERY:
            # Admissions whose stream never came are otherwise dropped only when asked about.
            self._admitted_since_sweep = 0
            for stale in [sid for sid, e in self._entries.items() if e.state == "admitted"]:
                self._live_entry(stale)
        entry = self._live_entry(call_sid)
        if call_sid in self._outcomes or (entry is not None and entry.state == "claimed"):
            return
        self._entries[call_sid] = _Entry("admitted", node_id, self._clock() + ttl_s)

    def refusal(self, call_sid: str) -> str | None:
        if call_sid in self._outcomes:
            return ENDED
        entry = self._live_entry(call_sid)
        if entry is None:
            return NOT_ADMITTED
        return ALREADY_STREAMING if entry.state == "claimed" else None

    def claim(self, call_sid: str, node_id: str, lease_s: float) -> str | None:
        refusal = self.refusal(call_sid)
        if refusal is None:
            self._entries[call_sid] = _Entry("claimed", node_id, self._clock() + lease_s)
        return refusal

    def finish(self, call_sid: str, outcome: Outcome) -> None:
        self._entries.pop(call_sid, None)
        self._moving.pop(call_sid, None)
        self._outcomes[call_sid] = outcome
        self._outcomes.move_to_end(call_sid)
        while len(self._outcomes) > _MEMORY_OUTCOMES:
            self._outcomes.popitem(last=False)

    def outcome(self, call_sid: str) -> Outcome | None:
        return self._outcomes.get(call_sid)

    def owner(self, call_sid: str) -> str | None:
        entry = self._entries.get(call_sid)
        return entry.node_id if entry is not None and entry.state == "claimed" else None

    def heartbeat(self, node_id: str, calls: Sequence[dict[str, Any]], ttl_s: float, *, draining: bool = False) -> None:
        now = self._clock()
        self._views[node_id] = NodeView(node_id, now, list(calls), draining)
        for call in calls:
            entry = self._entries.get(str(call.get("call_sid")))
            if entry is not None and entry.state == "claimed" and entry.node_id == node_id:
                entry.expires_at = now + ttl_s

    def nodes(self) -> list[NodeView]:
        return list(self._views.values())

    def send_command(self, node_id: str, command: dict[str, Any], ttl_s: float) -> None:
        self._commands.setdefault(node_id, []).append(command)

    def take_commands(self, node_id: str, wait_s: float) -> list[dict[str, Any]]:
        return self._commands.pop(node_id, [])

    def mark_moving(self, call_sid: str, handoff: Handoff, ttl_s: float) -> None:
        entry = self._entries.get(call_sid)
        if entry is not None and entry.state == "claimed":
            del self._entries[call_sid]
        self._moving[call_sid] = (handoff, self._clock() + ttl_s)

    def moving(self, call_sid: str) -> Handoff | None:
        held = self._moving.get(call_sid)
        if held is None:
            return None
        if held[1] <= self._clock():
            del self._moving[call_sid]
            return None
        return held[0]

    def take_moving(self, call_sid: str, node_id: str) -> Handoff | None:
        handoff = self.moving(call_sid)
        self._moving.pop(call_sid, None)
        return handoff

    def close(self) -> None:
        return None
