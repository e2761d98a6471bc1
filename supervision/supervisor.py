"""Supervisor: the generic behaviour. Subclasses supply children and react to outcomes.

A supervisor starts its children in spec order and watches each incarnation with a
death-watch greenlet (`actor_stopped.wait()`, which sees every way an actor can stop).
When a child stops, its restart type decides whether it comes back; the strategy
decides which siblings come back with it; the backoff decides when; the restart window
decides whether to give up. Giving up stops every child in reverse order and then the
supervisor itself, with an abnormal exit its own parent sees.

Siblings never hold each other's refs: they send through the supervisor's ChildTable,
which always points at the live incarnation, so a restarted child is reachable the
moment it is back.

Log levels, for operators who alert on them. A fault the supervisor recovers from (a
child failed, was killed, hung and was replaced by the watchdog) is one WARNING line,
`child_exited`, with actor (the child's role), kind, reason, restarts and restarting; its
traceback is a DEBUG line (`child_traceback`). ERROR is for what no restart fixes: giving
up (`supervisor_gave_up`, `child_gave_up`) and a child whose cleanup raised
(`child_close_failed`). A child that does not stop within its shutdown time is killed and
the stop goes on (`child_shutdown_timeout`, WARNING): the usual cause is a peer slow to
finish a close handshake, and nothing waits on it.
"""

from __future__ import annotations

import contextlib
import queue
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

import gevent
import gevent.pool
import gevent.queue
import pykka
import structlog
from pykka import ActorDeadError, ActorRegistry
from pykka._envelope import Envelope  # what ActorRef.tell puts in a mailbox (pykka exports no name for it)

from supervision.actor import ChildHandle, SupervisedActor, kill_actor
from supervision.dispatcher import Dispatcher, Mailbox
from supervision.exits import Exit, ExitKind
from supervision.restarts import RestartWindow, backoff_delay_s
from supervision.spec import AutoShutdown, ChildSpec, Restart, Strategy, SupervisorFlags

__all__ = ["ChildSnapshot", "ChildState", "ChildTable", "StartChild", "Supervisor", "SupervisorLog"]


class SupervisorLog(Protocol):
    """The logger a supervisor writes to; structlog's bound loggers fit.

    The shape of observability.logging.Logger, declared again here because this library
    imports nothing from the project.
    """

    def debug(self, event: str, /, **fields: object) -> object: ...

    def info(self, event: str, /, **fields: object) -> object: ...

    def warning(self, event: str, /, **fields: object) -> object: ...

    def error(self, event: str, /, **fields: object) -> object: ...


class ChildSnapshot(TypedDict):
    """One child in `Supervisor.snapshot()`."""

    state: str
    restarts: int
    last_exit: str | None


def _queued(ref: pykka.ActorRef[Any]) -> int:
    """Messages waiting in the mailbox of the actor behind `ref`.

    pykka types a mailbox as put/get/empty only. A SupervisedActor's is gevent's Queue,
    a plain ThreadingActor's is queue.Queue: both can tell their size.
    """
    inbox = ref.actor_inbox
    if isinstance(inbox, (gevent.queue.Queue, queue.Queue, Mailbox)):
        return inbox.qsize()
    raise TypeError(f"a {type(inbox).__name__} mailbox cannot tell its size")


class ChildTable:
    """Role -> live ref. Reading and telling are safe from any greenlet of the process."""

    def __init__(self) -> None:
        self._refs: dict[str, pykka.ActorRef[Any]] = {}
        self.dropped = 0  # messages sent to a child that was not there (restarting or gone)
        self.overflowed = 0  # messages dropped because the child's mailbox was full

    def get(self, child_id: str) -> pykka.ActorRef[Any] | None:
        return self._refs.get(child_id)

    def tell(self, child_id: str, message: object) -> bool:
        """Send to the current incarnation; False (and counted) when there is none."""
        ref = self._refs.get(child_id)
        # What pykka's ActorRef.tell does (a dead actor takes nothing; else the message
        # goes into its mailbox in an Envelope), without raising and catching
        # ActorDeadError or two calls more per message: this is every hop of a call.
        if ref is not None and not ref.actor_stopped.is_set():
            ref.actor_inbox.put(Envelope(message))
            return True
        self.dropped += 1
        return False

    def tell_bounded(self, child_id: str, message: object, limit: int) -> bool:
        """Like tell, unless `limit` messages already wait in the child's mailbox: then drop it.

        For producers that a peer outside the process drives (a socket reader): a stuck
        or slow child must not let its mailbox grow without bound. False (and counted in
        `overflowed`) when dropped for that reason.
        """
        ref = self._refs.get(child_id)
        if ref is not None and _queued(ref) >= limit:
            self.overflowed += 1
            return False
        return self.tell(child_id, message)

    def _set(self, child_id: str, ref: pykka.ActorRef[Any] | None) -> None:
        if ref is None:
            self._refs.pop(child_id, None)
        else:
            self._refs[child_id] = ref


@dataclass(slots=True)
class ChildState:
    """The supervisor's record of one child across its incarnations."""

    spec: ChildSpec
    state: str = "starting"  # starting | running | restarting | stopped
    incarnation: int = 0
    restarts: int = 0
    attempt: int = 0  # backoff step; back to 0 after a stable run
    started_at: float = 0.0
    ref: pykka.ActorRef[Any] | None = None
    handle: ChildHandle | None = None
    last_exit: Exit | None = None
    exits: dict[str, int] = field(default_factory=dict)  # exit kind -> count
    window: RestartWindow | None = None  # its own restart window, with isolate_children
    dynamic: bool = False  # added at run time (StartChild): forgotten once it stops for good


@dataclass(frozen=True, slots=True)
class StartChild:
    """edge → supervisor: add a child at run time (ask; the reply is its ref)."""

    spec: ChildSpec


@dataclass(frozen=True, slots=True)
class _ChildExited:
    child_id: str
    incarnation: int
    exit: Exit


@dataclass(frozen=True, slots=True)
class _RestartDue:
    child_ids: tuple[str, ...]


# How often the watchdog looks for children stuck in a handler.
_WATCHDOG_PERIOD_S = 0.25


class Supervisor(SupervisedActor):
    """OTP-style supervisor actor. Override `init` (and the `on_*` hooks) to specialise."""

    def __init__(
        self,
        flags: SupervisorFlags | None = None,
        specs: Sequence[ChildSpec] = (),
        *,
        handle: ChildHandle | None = None,
        log: SupervisorLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        name: str = "supervisor",
    ) -> None:
        super().__init__(handle)
        self.flags = flags or SupervisorFlags()
        self._initial_specs = tuple(specs)
        self.children = ChildTable()
        self.child_states: dict[str, ChildState] = {}  # insertion order = start order
        self.name = name
        self._log: SupervisorLog = log if log is not None else structlog.get_logger().bind(supervisor=name)
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter, not a secret
        self._window = RestartWindow(self.flags.intensity, self.flags.period_s)
        self._greenlets = gevent.pool.Group()
        self._stopping = False
        self.gave_up = False
        self._child_dispatcher: Dispatcher | None = None  # with flags.shared_greenlet, from on_start

    # Callbacks for subclasses ------------------------------------------------------

    def init(self) -> tuple[SupervisorFlags, Sequence[ChildSpec]]:
        """OTP's init/1: the flags and the children. Runs in the supervisor's greenlet."""
        return self.flags, self._initial_specs

    def on_child_exited(self, child_id: str, exit_: Exit, restarting: bool) -> None:
        """A child stopped; `restarting` says whether it will come back."""

    def on_give_up(self, child_id: str, exit_: Exit) -> None:
        """Restart intensity exceeded; runs before the children are stopped."""

    def on_child_gave_up(self, child_id: str, exit_: Exit) -> None:
        """With isolate_children: this child exceeded its own intensity and stays stopped."""

    def child_log_fields(self, child_id: str) -> dict[str, object]:
        """Fields for every log line about one child; a subclass may add what identifies it.

        `actor` is the child's role (its id here), `supervisor` whose child it is.
        """
        return {"child": child_id, "actor": child_id, "supervisor": self.name}

    def on_shutdown(self) -> None:
        """Runs after every child has stopped, whatever the reason."""

    def handle_message(self, message: Any) -> Any:
        """Messages that are not the supervisor's own."""
        self._log.warning("unexpected_message", message_type=type(message).__name__)
        return None

    # Lifecycle ---------------------------------------------------------------------

    def on_start(self) -> None:
        self.flags, specs = self.init()
        self._window = RestartWindow(self.flags.intensity, self.flags.period_s)
        if self.flags.shared_greenlet:
            self._child_dispatcher = Dispatcher(self.name)
        for spec in specs:
            self._add(spec)
        self._greenlets.spawn(self._watchdog)

    def _close(self) -> None:
        self._stopping = True
        self._stop_children(list(self.child_states))
        if self._child_dispatcher is not None:
            self._child_dispatcher.close()
        self._greenlets.kill(block=False)
        self.on_shutdown()

    def on_receive(self, message: Any) -> Any:
        match message:
            case _ChildExited():
                self._on_child_exited(message)
            case _RestartDue():
                self._on_restart_due(message.child_ids)
            case StartChild():
                return self._add(message.spec, dynamic=True)
            case _:
                return self.handle_message(message)
        return None

    # Starting ----------------------------------------------------------------------

    def _add(self, spec: ChildSpec, dynamic: bool = False) -> pykka.ActorRef[Any] | None:
        if spec.id in self.child_states:
            raise ValueError(f"duplicate child id {spec.id!r}")
        self.child_states[spec.id] = ChildState(spec=spec, dynamic=dynamic)
        self._start(spec.id)
        return self.child_states[spec.id].ref

    def _start(self, child_id: str) -> None:
        child = self.child_states[child_id]
        child.incarnation += 1
        handle = ChildHandle(child_id, child.incarnation, log=self._log, log_fields=self.child_log_fields(child_id),
                             dispatcher=self._child_dispatcher)
        child.handle = handle
        child.started_at = self._clock()
        try:
            ref = child.spec.start(handle)
        except Exception as exc:  # noqa: BLE001 - logged below, and the child fails like any other
            # A start function that raises is a failed incarnation like any other: its
            # exit is the WARNING (or the give-up); the traceback is for debugging.
            self._log.debug("child_start_failed", **self.child_log_fields(child_id), exc_info=True)
            child.state = "running"
            self.actor_ref.tell(_ChildExited(child_id, child.incarnation, Exit(ExitKind.FAILED, f"start: {exc!r}")))
            return
        child.ref = ref
        child.state = "running"
        self.children._set(child_id, ref)  # noqa: SLF001 - the table is ours
        self._greenlets.spawn(self._watch, child_id, child.incarnation, ref, handle)

    def _watch(self, child_id: str, incarnation: int, ref: pykka.ActorRef[Any], handle: ChildHandle) -> None:
        ref.actor_stopped.wait()
        # pykka sets actor_stopped just before on_failure reports the reason.
        for _ in range(3):
            if handle.exit is not None:
                break
            gevent.sleep(0)
        exit_ = handle.exit or Exit(ExitKind.VANISHED, "stopped without a report")
        with contextlib.suppress(ActorDeadError):
            self.actor_ref.tell(_ChildExited(child_id, incarnation, exit_))

    # Reacting to exits -------------------------------------------------------------

    def _on_child_exited(self, message: _ChildExited) -> None:
        child = self.child_states.get(message.child_id)
        if child is None or self._stopping or child.incarnation != message.incarnation:
            return
        if child.state != "running":
            return  # we stopped it on purpose (strategy or shutdown)
        exit_ = message.exit
        child.last_exit = exit_
        child.exits[exit_.kind.value] = child.exits.get(exit_.kind.value, 0) + 1
        child.ref = None
        self.children._set(child.spec.id, None)  # noqa: SLF001
        restart = _should_restart(child.spec.restart, exit_)
        # Past the restart intensity the child does not come back: a give-up, logged as
        # an ERROR below instead of the exit line (one line per fault).
        within = restart and self._within_intensity(child)
        if within or not restart:
            log = self._log.warning if exit_.abnormal else self._log.info
            log(
                "child_exited",
                **self.child_log_fields(child.spec.id),
                kind=exit_.kind.value,
                reason=exit_.reason,
                restarts=child.restarts + 1 if within else child.restarts,  # counting this one
                restarting=within,
            )
        self.on_child_exited(child.spec.id, exit_, within)
        if not restart:
            child.state = "stopped"
            # As OTP's dynamic children: a run-time child that is done is forgotten, so
            # a supervisor of a stream of work units (calls) does not grow with them.
            if child.spec.restart is Restart.TEMPORARY or child.dynamic:
                del self.child_states[child.spec.id]
            if child.spec.significant and self._auto_shutdown_due():
                self._log.info("auto_shutdown", **self.child_log_fields(child.spec.id))
                self.actor_ref.stop(block=False)
            return
        if within:
            self._schedule_restart(child, exit_)
        elif self.flags.isolate_children:
            self._log.error("child_gave_up", **self.child_log_fields(child.spec.id), kind=exit_.kind.value,
                            reason=exit_.reason, restarts=child.restarts, intensity=self.flags.intensity,
                            period_s=self.flags.period_s)
            child.state = "stopped"
            self.on_child_gave_up(child.spec.id, exit_)
            if child.spec.restart is Restart.TEMPORARY or child.dynamic:
                del self.child_states[child.spec.id]
        else:
            self._give_up(child.spec.id, exit_)

    def _within_intensity(self, child: ChildState) -> bool:
        """Count a restart of `child` in its window; False when that exceeds the intensity."""
        if self.flags.isolate_children:
            if child.window is None:
                child.window = RestartWindow(self.flags.intensity, self.flags.period_s)
            return child.window.add(self._clock())
        return self._window.add(self._clock())

    def _auto_shutdown_due(self) -> bool:
        significant = [c for c in self.child_states.values() if c.spec.significant]
        if self.flags.auto_shutdown is AutoShutdown.ANY_SIGNIFICANT:
            return True
        if self.flags.auto_shutdown is AutoShutdown.ALL_SIGNIFICANT:
            return all(c.state == "stopped" for c in significant)
        return False

    def _schedule_restart(self, failed: ChildState, exit_: Exit) -> None:
        ids = list(self.child_states)
        position = ids.index(failed.spec.id)
        if self.flags.strategy is Strategy.ONE_FOR_ALL:
            affected = ids
        elif self.flags.strategy is Strategy.REST_FOR_ONE:
            affected = ids[position:]
        else:
            affected = [failed.spec.id]
        siblings = [
            i for i in affected
            if i != failed.spec.id and self.child_states[i].spec.restart is not Restart.TEMPORARY
        ]
        self._stop_children(siblings, restarting=True)
        # A temporary sibling stopped by the strategy is gone for good, as in OTP.
        for i in affected:
            if i != failed.spec.id and self.child_states[i].spec.restart is Restart.TEMPORARY:
                self._stop_children([i])
        if self._clock() - failed.started_at >= failed.spec.backoff.reset_after_s:
            failed.attempt = 0
        delay = backoff_delay_s(failed.spec.backoff, failed.attempt, self._rng)
        failed.attempt += 1
        restart_ids = tuple(i for i in affected if i == failed.spec.id or i in siblings)
        for i in restart_ids:
            self.child_states[i].state = "restarting"
        self._log.info("restart_scheduled", **self.child_log_fields(failed.spec.id), delay_s=round(delay, 3),
                       with_=list(restart_ids))
        self._greenlets.spawn(self._tell_later, delay, _RestartDue(restart_ids))

    def _tell_later(self, delay_s: float, message: object) -> None:
        gevent.sleep(delay_s)
        self._tell_self(message)

    def _tell_self(self, message: object) -> None:
        """From a greenlet of this supervisor's own: queue a message for its handlers."""
        with contextlib.suppress(ActorDeadError):
            self.actor_ref.tell(message)

    def _on_restart_due(self, child_ids: tuple[str, ...]) -> None:
        if self._stopping:
            return
        for child_id in child_ids:
            child = self.child_states.get(child_id)
            if child is None or child.state != "restarting":
                continue
            child.restarts += 1
            self._start(child_id)
            self._log.info("child_restarted", **self.child_log_fields(child_id), restarts=child.restarts,
                           reason=child.last_exit.kind.value if child.last_exit else "strategy")

    def _give_up(self, child_id: str, exit_: Exit) -> None:
        self.gave_up = True
        child = self.child_states.get(child_id)
        self._log.error(
            "supervisor_gave_up",
            offender=child_id,
            **self.child_log_fields(child_id),
            kind=exit_.kind.value,
            reason=exit_.reason,
            restarts=child.restarts if child is not None else 0,
            intensity=self.flags.intensity,
            period_s=self.flags.period_s,
        )
        self.on_give_up(child_id, exit_)
        # OTP ends a supervisor that gives up with reason `shutdown`: its parent restarts
        # it only if it is permanent. The error itself was logged above.
        self._report(Exit(ExitKind.SHUTDOWN, f"restart intensity exceeded by {child_id}"))
        self.actor_ref.stop(block=False)

    # Stopping ----------------------------------------------------------------------

    def _stop_children(self, child_ids: Sequence[str], restarting: bool = False) -> None:
        """Stop in reverse start order, each within its shutdown time, killing it after."""
        for child_id in reversed(child_ids):
            child = self.child_states.get(child_id)
            if child is None or child.ref is None:
                continue
            ref, child.ref = child.ref, None
            child.state = "restarting" if restarting else "stopped"
            self.children._set(child_id, None)  # noqa: SLF001
            if child.handle is not None:
                child.handle.stop_requested = True
            try:
                ref.stop(block=True, timeout=child.spec.shutdown_s)
            except pykka.Timeout:
                # Handled here (killed, the stop goes on): a warning, see the module's docstring.
                self._log.warning("child_shutdown_timeout", **self.child_log_fields(child_id),
                                  shutdown_s=child.spec.shutdown_s)
                kill_actor(ref, "shutdown timeout")
                ActorRegistry.unregister(ref)
            except ActorDeadError:
                pass

    # Watchdog ----------------------------------------------------------------------

    def _watchdog(self) -> None:
        """Replace children stuck in one handler past their deadline (see SupervisedActor.busy_since)."""
        while True:
            gevent.sleep(_WATCHDOG_PERIOD_S)
            now = time.monotonic()
            for child in list(self.child_states.values()):
                ref = child.ref
                if ref is None or child.state != "running":
                    continue
                actor = ref._actor_weakref()  # noqa: SLF001
                deadline = getattr(actor, "handler_deadline_s", None)
                busy_since = getattr(actor, "busy_since", None)
                if deadline and busy_since is not None and now - busy_since > deadline:
                    # The fault's one WARNING is its exit (kind "hung"), once it is replaced.
                    self._log.info("child_hung", **self.child_log_fields(child.spec.id),
                                   busy_s=round(now - busy_since, 3))
                    kill_actor(ref, f"hung for {now - busy_since:.2f}s in one handler")

    # Introspection -----------------------------------------------------------------

    def snapshot(self) -> dict[str, ChildSnapshot]:
        """Per child: state, restarts, last exit. Plain data, safe to read from any greenlet."""
        return {
            child_id: {
                "state": child.state,
                "restarts": child.restarts,
                "last_exit": child.last_exit.kind.value if child.last_exit else None,
            }
            for child_id, child in self.child_states.items()
        }


def _should_restart(restart: Restart, exit_: Exit) -> bool:
    if restart is Restart.PERMANENT:
        return True
    if restart is Restart.TRANSIENT:
        return exit_.abnormal
    return False
