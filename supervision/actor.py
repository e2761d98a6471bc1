"""SupervisedActor: a pykka ThreadingActor (a greenlet under gevent) that fails alone.

pykka turns any BaseException escaping a handler (GreenletExit, gevent.Timeout,
SystemExit) into ActorRegistry.stop_all(): every actor of every call would stop. Here
such an exception becomes an ordinary failure of this actor only, and an actor killed
while idle is marked stopped instead of lingering as a zombie that never answers.
Every way of stopping is reported to the supervisor through the ChildHandle.

Logging: pykka logs every failure at ERROR with its traceback. Under a supervisor a
failure is an exit the supervisor handles and logs once (a WARNING when it restarts
the child); here the traceback goes to a DEBUG line about the child, through its
handle. An actor with no supervisor keeps pykka's ERROR: nobody recovers it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import gevent
import gevent.queue
import pykka
import pykka.messages
import structlog
from pykka import ActorRegistry

from supervision.dispatcher import Dispatcher, Mailbox
from supervision.exits import Exit, ExitKind

if TYPE_CHECKING:
    from pykka._envelope import Envelope  # what pykka's own ActorInbox protocol carries

__all__ = ["ActorKilled", "ChildHandle", "ChildLog", "ExcInfo", "SupervisedActor", "kill_actor"]

# The messages pykka's own _handle_receive acts on; everything else is on_receive's.
_PYKKA_MESSAGES = frozenset({
    pykka.messages._ActorStop,  # noqa: SLF001 - pykka's stop message has no public name
    pykka.messages.ProxyCall,
    pykka.messages.ProxyGetAttr,
    pykka.messages.ProxySetAttr,
})

ExcInfo: TypeAlias = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]


class ChildLog(Protocol):
    """Where a child's own lines go: its supervisor's logger (structlog's bound loggers fit)."""

    def debug(self, event: str, /, **fields: object) -> object: ...

    def error(self, event: str, /, **fields: object) -> object: ...


class ActorKilled(Exception):
    """A BaseException hit an actor's handler; carried as an ordinary failure."""


class ChildHandle:
    """What a supervisor gives each incarnation of a child: where to report how it ended.

    Also where the child's failure details are logged: `log` with `log_fields` (what
    identifies the child in its supervisor's lines). Without them, a logger of this
    library's own, with the child's id.
    """

    def __init__(
        self,
        child_id: str,
        incarnation: int,
        on_exit: Callable[[Exit], None] | None = None,
        *,
        log: ChildLog | None = None,
        log_fields: Mapping[str, object] | None = None,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.child_id = child_id
        # Where the child takes its messages: a greenlet shared with its siblings, or
        # (None) one of its own.
        self.dispatcher = dispatcher
        self.incarnation = incarnation
        self.exit: Exit | None = None
        self._on_exit = on_exit
        self.stop_requested = False  # set by the supervisor before it stops the child
        self._log = log
        self._log_fields = dict(log_fields) if log_fields is not None else {"child": child_id}

    def report(self, exit_: Exit) -> None:
        # The first report wins: on_stop after a failure must not turn it into NORMAL.
        if self.exit is None:
            self.exit = exit_
            if self._on_exit is not None:
                self._on_exit(exit_)

    def _logger(self) -> ChildLog:
        if self._log is None:
            # structlog.get_logger is typed Any; what it makes has debug and error.
            fallback: ChildLog = structlog.get_logger("supervision")
            return fallback
        return self._log

    def log_traceback(self, exc_info: ExcInfo) -> None:
        """A failure's traceback: DEBUG only. The supervisor logs the fault itself, once."""
        self._logger().debug("child_traceback", **self._log_fields, exc_info=exc_info)

    def log_close_failed(self, exc_info: ExcInfo) -> None:
        """Releasing what the child held raised: ERROR, with the traceback.

        Nothing recovers this (the child is gone, and whatever the failed close held may
        be left behind): a bug for a person to fix, so the one failure logged at ERROR.
        """
        self._logger().error("child_close_failed", **self._log_fields, reason=_describe(exc_info[1]),
                             exc_info=exc_info)


class SupervisedActor(pykka.ThreadingActor):
    """Base of every actor in the system.

    Subclasses implement `on_receive` and may override `on_start` and `_close`; `_close`
    runs exactly once whichever way the actor ends (pykka calls on_stop or on_failure,
    never both, and neither when on_start fails).
    """

    # Non-daemon threads make start and stop O(live actors) on CPython 3.11/3.12.
    use_daemon_thread = True
    # A handler running longer than this is hung: the supervisor's watchdog kills the
    # actor and it restarts. None: never. Handlers here never wait on I/O, so a second
    # is far beyond any honest one.
    handler_deadline_s: float | None = None

    # Narrower than pykka's ActorInbox (put/get/empty): ours can also tell its size.
    actor_inbox: gevent.queue.Queue[Envelope[Any]] | Mailbox

    def __init__(self, handle: ChildHandle | None = None) -> None:
        # Before pykka's __init__, which makes the inbox.
        self._dispatcher = handle.dispatcher if handle is not None else None
        super().__init__()
        self._handle = handle
        self._closed = False
        self.busy_since: float | None = None  # monotonic start of the running handler

    def _close(self) -> None:
        """Release what this actor holds. Runs once, in the actor's greenlet."""

    def _close_once(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._close()
            except Exception:
                if self._handle is None:
                    raise  # pykka logs it (ERROR)
                self._handle.log_close_failed(sys.exc_info())

    def _report(self, exit_: Exit) -> None:
        if self._handle is not None:
            self._handle.report(exit_)

    # pykka hooks -----------------------------------------------------------------

    def on_stop(self) -> None:
        stop_requested = self._handle is not None and self._handle.stop_requested
        self._report(Exit(ExitKind.SHUTDOWN if stop_requested else ExitKind.NORMAL))
        # Stopping is bounded by each child's own shutdown timeout, not by the handler
        # deadline: a supervisor stopping slow children is not hung.
        self.busy_since = None
        self._close_once()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        kind = ExitKind.KILLED if isinstance(exception_value, ActorKilled) else ExitKind.FAILED
        self._report(Exit(kind, _describe(exception_value)))
        self._close_once()

    # pykka internals, overridden for containment --------------------------------

    def _handle_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # pykka's version logs "Unhandled exception in ..." at ERROR with the traceback,
        # then unregisters and stops the actor. Under a supervisor the failure is an exit
        # it handles (and logs once): the traceback is for debugging only.
        if self._handle is None:
            super()._handle_failure(exception_type, exception_value, traceback)
            return
        self._handle.log_traceback((exception_type, exception_value, traceback))
        ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()

    def _create_actor_inbox(self) -> gevent.queue.Queue[Envelope[Any]] | Mailbox:  # type: ignore[override]
        if self._dispatcher is not None:
            return self._dispatcher.mailbox()
        # gevent's own queue: cooperative like the patched queue.Queue, with less overhead.
        return gevent.queue.Queue()

    def _start_actor_loop(self) -> None:
        if self._dispatcher is not None:
            assert isinstance(self.actor_inbox, Mailbox)  # noqa: S101 - made so in __init__
            self._dispatcher.start(self.actor_inbox, self)
            return
        # A plain greenlet instead of a (patched) Thread, kept so a watchdog can kill a
        # hung actor; the kill arrives as GreenletExit and is contained below.
        self._greenlet = gevent.spawn(self._actor_loop)

    def kill(self, reason: str) -> None:
        """Kill the actor from outside (watchdog, chaos); it fails as KILLED."""
        self._report(Exit(ExitKind.HUNG if reason.startswith("hung") else ExitKind.KILLED, reason))
        if self._dispatcher is not None:
            assert isinstance(self.actor_inbox, Mailbox)  # noqa: S101
            self._dispatcher.kill(self.actor_inbox, reason)
            return
        greenlet = getattr(self, "_greenlet", None)
        if greenlet is not None and not greenlet.dead:
            greenlet.kill(block=False)

    def _handle_receive(self, message: Any) -> Any:
        self.busy_since = time.monotonic()
        try:
            # pykka's own messages (stop, proxy calls) go through pykka; every other one
            # straight to on_receive, without pykka's four isinstance checks per message.
            if type(message) in _PYKKA_MESSAGES:
                return super()._handle_receive(message)
            return self.on_receive(message)
        except Exception:
            raise
        except BaseException as exc:  # GreenletExit, gevent.Timeout, SystemExit, ...
            raise ActorKilled(_describe(exc)) from exc
        finally:
            self.busy_since = None

    def _actor_loop_setup(self) -> None:
        try:
            self.on_start()
        except BaseException as exc:  # noqa: BLE001 - pykka would not call on_failure here
            self._handle_failure(*sys.exc_info())
            kind = ExitKind.FAILED if isinstance(exc, Exception) else ExitKind.KILLED
            self._report(Exit(kind, "on_start: " + _describe(exc)))
            self._close_once()

    # Steps of a dispatched actor (supervision/dispatcher.py): pykka's actor loop, cut
    # at each message so a dispatcher can run it between its siblings' messages.

    def _dispatch_setup(self) -> None:
        self._actor_loop_setup()

    def _dispatch_message(self, envelope: Envelope[Any]) -> None:
        # One turn of pykka's _actor_loop_running. _handle_receive has already turned a
        # BaseException into ActorKilled, so a failure here is always an Exception.
        try:
            response = self._handle_receive(envelope.message)
            if envelope.reply_to is not None:
                envelope.reply_to.set(response)
        except Exception:  # noqa: BLE001 - as pykka: the asker gets it, else the actor fails
            if envelope.reply_to is not None:
                envelope.reply_to.set_exception()
                return
            self._handle_failure(*sys.exc_info())
            try:
                self.on_failure(*sys.exc_info())
            except Exception:  # noqa: BLE001 - as pykka: a failing on_failure is logged, the actor stops
                self._handle_failure(*sys.exc_info())

    def _dispatch_killed(self) -> None:
        ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()
        self._report(Exit(ExitKind.KILLED, "while idle"))
        self._close_once()

    def _dispatch_stopped(self) -> bool:
        return self.actor_stopped.is_set()

    def _dispatch_teardown(self) -> None:
        self._actor_loop_teardown()

    def _actor_loop(self) -> None:
        try:
            super()._actor_loop()
        except BaseException as exc:  # noqa: BLE001 - a kill must not leave a zombie (below)
            # Killed while waiting on its inbox (outside pykka's try): without this the
            # actor stays registered and "alive" forever, and asks to it hang.
            ActorRegistry.unregister(self.actor_ref)
            self.actor_stopped.set()
            self._report(Exit(ExitKind.KILLED, "while idle: " + _describe(exc)))
            self._close_once()


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown"
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def kill_actor(ref: pykka.ActorRef[Any], reason: str) -> bool:
    """Kill the actor behind `ref` if it is a live SupervisedActor; True if it was."""
    actor = ref._actor_weakref()  # noqa: SLF001 - pykka keeps no public handle on the actor
    if isinstance(actor, SupervisedActor):
        actor.kill(reason)
        return True
    return False
