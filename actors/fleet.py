"""FleetNode: this process's part in the fleet, around the shared call directory.

It is the only user of the directory (calls/directory.py) and says what degrades when a
shared directory cannot answer (its store is down): every operation is bounded by the
backend's timeout, a failure is counted (`bridge_directory_errors_total`) and logged
once per transition (`directory_unavailable` WARNING, then `directory_available`), and
the node goes on with what it knows itself:

- calls in progress keep going: nothing on their path reads the directory;
- a new call still starts: its ticket alone carries what the stream's node needs, and the
  gate and the claim fall back to this node's own knowledge (a replayed ticket is still
  refused by the node that holds or ended the call; a second node cannot tell);
- `/voice/after-stream` answers from this node's memory, else with the fallback TwiML;
- the admin API and the dashboard show this node's calls only, and chaos reaches only them;
- a live call cannot move to another node (calls/handoff.py): a deploy drains as one process does.

A call moves between nodes through the directory: the node letting it go marks it moving
with its hand-off; after-stream on any node sees it and answers with a new stream; the
node that takes that stream takes the hand-off. A node that died marks nothing: its last
heartbeat snapshot of each call carries the hand-off (`handoff` in the snapshot), and
`orphan` rebuilds it once the owner's heartbeats have stopped.

With a shared directory it runs two greenlets: a heartbeat every HEARTBEAT_S that
refreshes its calls' claims and publishes their snapshots (both expire after
HEARTBEAT_TTL_S, so a dead node's calls age out), and a command loop that waits on this
node's queue and applies each chaos command locally. Outcomes are written by a third, from
a queue, so a call's end (inside its controller) never waits on the store.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import gevent
import gevent.pool
import gevent.queue

from calls.directory import CallDirectory, DirectoryUnavailable, MemoryDirectory, NodeView
from calls.handoff import CRASH, Handoff
from calls.outcome import Outcome
from directory import RedisDirectory, SqliteDirectory
from observability.logging import BoundLogger
from observability.metrics import Metrics
from protocols.ticket import TicketSealer, ticket_key
from settings import ConfigError, Settings

__all__ = ["HEARTBEAT_S", "HEARTBEAT_TTL_S", "MOVING_TTL_S", "FleetNode", "fleet_from_settings"]

T = TypeVar("T")

HEARTBEAT_S: Final = 2.0
# Three missed heartbeats: the node is gone, its claims and snapshots expire.
HEARTBEAT_TTL_S: Final = 3 * HEARTBEAT_S + 1.0
# A chaos command not taken by then is stale: the click was long ago.
_COMMAND_TTL_S: Final = 10.0
# How long the command loop waits on its queue before looking again.
_COMMAND_WAIT_S: Final = 1.0
# After a failure, the loops wait this long before trying the store again.
_RETRY_S: Final = 1.0
# Outcomes waiting for the store; beyond this the oldest are dropped (counted).
_OUTCOME_QUEUE: Final = 10_000
# A call that ended on another node a moment ago: its outcome may be on its way.
_SETTLE_WAIT_S: Final = 2.0
_SETTLE_STEP_S: Final = 0.05
# A moving call's hand-off waits this long for Twilio to ask the action URL and open the new stream.
MOVING_TTL_S: Final = 60.0
# A node whose last heartbeat is older than this has missed one: it is gone (SIGKILL, a crash).
_OWNER_GONE_S: Final = HEARTBEAT_S + 1.0


class FleetNode:
    """The directory as this node uses it: bounded, counted, degrading to local knowledge."""

    def __init__(
        self, directory: CallDirectory, *, node_id: str, metrics: Metrics, log: BoundLogger, admit_ttl_s: float,
    ) -> None:
        self.directory = directory
        self.node_id = node_id
        self._metrics = metrics
        self._log = log.bind(actor="fleet", node=node_id)
        self._admit_ttl_s = admit_ttl_s
        self._available = True
        self._group = gevent.pool.Group()
        self._outcomes: gevent.queue.Queue[tuple[str, Outcome]] = gevent.queue.Queue()
        self._snapshots: Callable[[], list[dict[str, Any]]] = list
        self._inject: Callable[[str, str, str], bool] = lambda call_sid, actor, fault: False
        self.draining = False  # published with the heartbeat: no node hands this one a call

    @property
    def shared(self) -> bool:
        return self.directory.shared

    # Health ---------------------------------------------------------------------------

    def _try(self, operation: str, action: Callable[[], T], default: T) -> T:
        try:
            result = action()
        except DirectoryUnavailable as exc:
            self._metrics.directory_errors.labels(operation=operation).inc()
            if self._available:
                self._available = False
                self._log.warning("directory_unavailable", operation=operation, detail=str(exc))
            return default
        if not self._available:
            self._available = True
            self._log.info("directory_available", operation=operation)
        return result

    @property
    def available(self) -> bool:
        return self._available

    # The call's path ------------------------------------------------------------------

    def admit(self, call_sid: str) -> None:
        """The webhook admitted the call; without the directory the ticket alone admits it."""
        self._try("admit", lambda: self.directory.admit(call_sid, self.node_id, self._admit_ttl_s), None)

    def refusal(self, call_sid: str) -> str | None:
        """The gate's question; None (let `start` and its ticket decide) when the directory is down."""
        return self._try("refusal", lambda: self.directory.refusal(call_sid), None)

    def claim(self, call_sid: str) -> str | None:
        """Take the call for this node; None when won, or when the directory is down (local checks stand)."""
        return self._try("claim", lambda: self.directory.claim(call_sid, self.node_id, HEARTBEAT_TTL_S), None)

    def outcome(self, call_sid: str) -> Outcome | None:
        return self._try("outcome", lambda: self.directory.outcome(call_sid), None)

    def settled_outcome(self, call_sid: str) -> Outcome | None:
        """The outcome; while another node still holds the call, wait briefly for it.

        The owner writes the outcome just as it closes Twilio's socket, and Twilio asks
        /voice/after-stream at once, perhaps of this node: the write may be a moment behind.
        """
        outcome = self.outcome(call_sid)
        deadline = time.monotonic() + _SETTLE_WAIT_S
        while outcome is None and time.monotonic() < deadline and self._try(
            "owner", lambda: self.directory.owner(call_sid), None
        ) is not None:
            gevent.sleep(_SETTLE_STEP_S)
            outcome = self.outcome(call_sid)
        return outcome

    def finished(self, call_sid: str, outcome: Outcome) -> None:
        """The call ended here: its outcome goes to the directory from the writer greenlet (never blocks)."""
        if not self.shared:
            self._try("finish", lambda: self.directory.finish(call_sid, outcome), None)  # a dict: instant
            return
        if self._outcomes.qsize() >= _OUTCOME_QUEUE:
            self._metrics.directory_errors.labels(operation="finish_dropped").inc()
            return
        self._outcomes.put_nowait((call_sid, outcome))

    # Calls moving between nodes (calls/handoff.py) ---------------------------------------

    def peers_taking_calls(self) -> list[str]:
        """The other live nodes that are not stopping: where a handed-off call can go."""
        now = time.time()
        return [view.node_id for view in self.other_nodes() if not view.draining and now - view.at <= _OWNER_GONE_S]

    def mark_moving(self, handoff: Handoff) -> bool:
        """Publish the live call's hand-off (and release its claim); False when the directory is down."""

        def mark() -> bool:
            self.directory.mark_moving(handoff.call_sid, handoff, MOVING_TTL_S)
            return True

        return self._try("mark_moving", mark, False)

    def moving(self, call_sid: str) -> Handoff | None:
        return self._try("moving", lambda: self.directory.moving(call_sid), None)

    def take_moving(self, call_sid: str) -> Handoff | None:
        return self._try("take_moving", lambda: self.directory.take_moving(call_sid, self.node_id), None)

    def orphan(self, call_sid: str, *, now: float, left_at: float) -> tuple[str | None, Handoff | None]:
        """(owner, hand-off) of a live call held by another node: the hand-off only if that node is gone.

        Gone: its heartbeat view expired or is older than a missed beat. The hand-off is the
        one its last snapshot of the call published, as a crash that left at `left_at` (when
        Twilio asked the action URL, which it does as the stream breaks). (None, None): no node holds
        the call (or the directory is down).
        """
        owner = self.owner(call_sid)
        if owner is None or owner == self.node_id:
            return owner, None
        view = next((v for v in self.other_nodes() if v.node_id == owner), None)
        if view is not None and now - view.at <= _OWNER_GONE_S:
            return owner, None
        snapshot = next((c for c in (view.calls if view is not None else []) if isinstance(c, dict)
                         and c.get("call_sid") == call_sid), None)
        published = Handoff.from_dict(snapshot.get("handoff")) if snapshot is not None else None
        if published is None:
            published = Handoff(call_sid=call_sid, from_node=owner)
        return owner, Handoff(
            call_sid=call_sid, conversation_json=published.conversation_json, greeted=published.greeted,
            resumes=published.resumes, from_node=owner, reason=CRASH,
            left_at=left_at, started_at=published.started_at, hops=published.hops,
        )

    # The fleet's view -----------------------------------------------------------------

    def other_nodes(self) -> list[NodeView]:
        """Every other live node with its calls (empty without a shared directory, or while it is down)."""
        if not self.shared:
            return []
        views: list[NodeView] = self._try("nodes", self.directory.nodes, [])
        return [view for view in views if view.node_id != self.node_id]

    def owner(self, call_sid: str) -> str | None:
        return self._try("owner", lambda: self.directory.owner(call_sid), None)

    def send_chaos(self, node_id: str, call_sid: str, actor: str, fault: str) -> bool:
        """Queue a fault for the node that holds the call; False if the directory is down."""
        command = {"kind": "chaos", "call_sid": call_sid, "actor": actor, "fault": fault, "from": self.node_id}

        def send() -> bool:
            self.directory.send_command(node_id, command, _COMMAND_TTL_S)
            return True

        return self._try("send_command", send, False)

    # Background greenlets -------------------------------------------------------------

    def start(self, *, snapshots: Callable[[], list[dict[str, Any]]], inject: Callable[[str, str, str], bool]) -> None:
        """Publish `snapshots()` (this node's live calls) and apply chaos through `inject` (shared directories only)."""
        self._snapshots, self._inject = snapshots, inject
        if not self.shared:
            return
        self._group.spawn(self._heartbeats)
        self._group.spawn(self._commands)
        self._group.spawn(self._write_outcomes)

    def stop(self, timeout_s: float = 2.0) -> None:
        """Write the outcomes still queued (bounded), stop the greenlets, close the directory."""
        deadline = time.monotonic() + timeout_s
        while not self._outcomes.empty() and self._available and time.monotonic() < deadline:
            gevent.sleep(0.01)
        self._group.kill(block=True, timeout=1.0)
        self.directory.close()

    def heartbeat(self) -> None:
        """Publish this node's live calls once (the heartbeat greenlet's step; tests call it too)."""
        calls = self._snapshots()
        self._try("heartbeat", lambda: self.directory.heartbeat(
            self.node_id, calls, HEARTBEAT_TTL_S, draining=self.draining), None)

    def _heartbeats(self) -> None:
        while True:
            self.heartbeat()
            gevent.sleep(HEARTBEAT_S)

    def _commands(self) -> None:
        while True:
            commands = self._try(
                "take_commands", lambda: self.directory.take_commands(self.node_id, _COMMAND_WAIT_S), None
            )
            if commands is None:
                gevent.sleep(_RETRY_S)
                continue
            for command in commands:
                self._apply(command)

    def _apply(self, command: dict[str, Any]) -> None:
        if command.get("kind") != "chaos":
            self._log.warning("fleet_command_unknown", kind=str(command.get("kind"))[:40])
            return
        call_sid, actor, fault = (str(command.get(k, "")) for k in ("call_sid", "actor", "fault"))
        delivered = self._inject(call_sid, actor, fault)
        self._log.info("chaos_injected", call_sid=call_sid, actor="fleet", target=actor, fault=fault,
                       source=str(command.get("from", "?"))[:80], delivered=delivered)

    def _write_outcomes(self) -> None:
        while True:
            call_sid, outcome = self._outcomes.peek()

            def write(call_sid: str = call_sid, outcome: Outcome = outcome) -> bool:
                self.directory.finish(call_sid, outcome)
                return True

            if self._try("finish", write, False):
                self._outcomes.get_nowait()
            else:
                gevent.sleep(_RETRY_S)  # kept, in order, until the store is back


def fleet_from_settings(
    settings: Settings, *, metrics: Metrics, log: BoundLogger
) -> tuple[FleetNode, TicketSealer]:
    """This process's FleetNode (Redis, else an SQLite file, else memory) and the fleet's ticket sealer.

    The node's id is NODE_ID (or the host name) and this process's pid: each worker of a
    machine is a node of its own. The ticket TTL is MEDIA_CONNECT_TIMEOUT_S: the stream
    must arrive within it after the webhook.

    Raises:
        ConfigError: DIRECTORY_PATH is in a directory that does not exist.
    """
    fleet = settings.fleet
    directory: CallDirectory
    if fleet.redis_url is not None:
        directory = RedisDirectory(fleet.redis_url)
    elif fleet.directory_path is not None:
        parent = Path(fleet.directory_path).parent
        if not parent.is_dir():
            raise ConfigError("DIRECTORY_PATH", fleet.directory_path, f"a file in an existing directory ({parent})")
        directory = SqliteDirectory(fleet.directory_path)
    else:
        directory = MemoryDirectory()
    node_id = f"{fleet.node_name}-{os.getpid()}"
    key = ticket_key(fleet_secret=fleet.fleet_secret, auth_token=settings.twilio.auth_token)
    ttl_s = settings.media_connect_timeout_s
    node = FleetNode(directory, node_id=node_id, metrics=metrics, log=log, admit_ttl_s=ttl_s)
    return node, TicketSealer(key, ttl_s=ttl_s)
