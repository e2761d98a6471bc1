"""Dispatcher: one greenlet takes the messages of several actors in turn.

Under gevent every pykka actor has a greenlet of its own, so every message is a wake-up:
a hub callback, a switch to the actor's greenlet and one back. A message that crosses
four actors costs five wake-ups, whatever the handlers do. Actors that share a Dispatcher
keep their own mailbox each, and each still takes one message at a time, in order, and
fails, stops and restarts alone; but a message between two of them is a deque append,
and a message from outside wakes the group once, however many of its actors it crosses.

A handler that blocks (waits on a socket, sleeps, hangs) must not stall its siblings.
The dispatcher notices when a message arrives from another greenlet while its greenlet
is inside a handler, which can only mean that handler has yielded: it leaves that
greenlet to the blocked handler, to finish that one message and end, and goes on in a
new one. An actor is never run by two greenlets at once.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

import gevent

__all__ = ["Dispatched", "Dispatcher", "Mailbox", "Preempted"]

# Messages one actor takes in a row before its siblings get a turn.
_ACTOR_TURN = 8
# Messages the group takes in one wake-up before other greenlets of the process run.
_GROUP_TURN = 64


class Preempted(BaseException):
    """Thrown into a handler blocked too long; the actor fails with it (as a kill)."""


class Dispatched(Protocol):
    """What an actor gives the dispatcher: its steps, each run in the dispatcher's greenlet."""

    def _dispatch_setup(self) -> None:
        """Start (pykka's on_start path); runs before the first message."""

    def _dispatch_message(self, envelope: Any) -> None:
        """Take one message, as pykka's actor loop does."""

    def _dispatch_killed(self) -> None:
        """The actor was killed while it waited for a message."""

    def _dispatch_stopped(self) -> bool:
        """True once the actor has stopped: it takes nothing more."""

    def _dispatch_teardown(self) -> None:
        """Answer what is left in the mailbox (pykka's teardown); runs once, after it stopped."""


class Mailbox:
    """A dispatched actor's inbox: pykka's put/get/empty, plus qsize.

    `put` is safe from any greenlet; the rest is the dispatcher's and the actor's.
    """

    __slots__ = ("_dispatcher", "actor", "done", "items", "kill_pending", "running_in", "scheduled", "started")

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self.items: deque[Any] = deque()
        self.actor: Dispatched | None = None
        self.scheduled = False  # in the dispatcher's ready queue
        self.running_in: Any = None  # the greenlet inside one of this actor's steps, if any
        self.started = False
        self.kill_pending = False
        self.done = False

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self.items.append(item)
        if not self.scheduled and not self.done:
            self._dispatcher.schedule(self)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        # Only ever asked for what is there: the dispatcher checks first, teardown drains.
        return self.items.popleft()

    def empty(self) -> bool:
        return not self.items

    def qsize(self) -> int:
        return len(self.items)


class Dispatcher:
    """Runs the mailboxes given to it in one greenlet (a new one when a handler blocks)."""

    def __init__(self, name: str = "dispatcher") -> None:
        self.name = name
        self._ready: deque[Mailbox] = deque()
        self._runner: gevent.Greenlet[[], None] | None = None
        # The runner waits for work parked in the hub, and a callback switches back to it:
        # no Waiter object per wait, and one call less each way.
        self._idle = False
        self._in_step: Mailbox | None = None  # whose step the current runner is inside
        self._closed = False
        self.runners_started = 0  # greenlets started: 1 + the times a handler blocked

    def mailbox(self) -> Mailbox:
        return Mailbox(self)

    def start(self, mailbox: Mailbox, actor: Dispatched) -> None:
        """Begin running `actor`: its setup, then its messages."""
        mailbox.actor = actor
        self.schedule(mailbox)

    def schedule(self, mailbox: Mailbox) -> None:
        if mailbox.scheduled:
            return
        mailbox.scheduled = True
        self._ready.append(mailbox)
        runner = self._runner
        if runner is None:
            self._spawn()
        elif self._idle:
            self._idle = False
            gevent.get_hub().loop.run_callback(runner.switch)
        elif self._in_step is not None and gevent.getcurrent() is not runner:
            # The runner is inside a step and yet another greenlet runs: the step has
            # yielded (a blocking call, a hang). Leave that greenlet to it.
            self._spawn()

    def kill(self, mailbox: Mailbox, reason: str) -> None:
        """Make the actor fail as killed: inside the step it is blocked in, or at its next turn."""
        if mailbox.done:
            return
        greenlet = mailbox.running_in
        if greenlet is None:
            mailbox.kill_pending = True
            self.schedule(mailbox)
            return
        gevent.get_hub().loop.run_callback(self._preempt, mailbox, greenlet, reason)

    def close(self) -> None:
        """The group is done: the runner ends once idle (work that still comes starts one again)."""
        self._closed = True
        if self._idle and self._runner is not None:
            self._idle = False
            gevent.get_hub().loop.run_callback(self._runner.switch)

    # The runner ----------------------------------------------------------------------

    def _spawn(self) -> None:
        self._in_step = None
        self._idle = False
        self.runners_started += 1
        self._runner = gevent.spawn(self._run)

    def _preempt(self, mailbox: Mailbox, greenlet: Any, reason: str) -> None:
        # Runs in the hub: throw only if the actor is still inside that same step.
        if mailbox.running_in is greenlet and not greenlet.dead:
            greenlet.throw(Preempted(reason))
        elif not mailbox.done:
            mailbox.kill_pending = True
            self.schedule(mailbox)

    def _run(self) -> None:
        me = gevent.getcurrent()
        hub = gevent.get_hub()
        taken = 0
        ready = self._ready
        while self._runner is me:
            if not ready:
                if self._closed:
                    self._runner = None
                    return
                taken = 0
                self._idle = True
                hub.switch()  # back here when schedule or close switches to this greenlet
                continue
            mailbox = ready.popleft()
            mailbox.scheduled = False
            if mailbox.running_in is not None or mailbox.done:
                continue  # its blocked greenlet reschedules it when the step ends
            taken += self._turn(mailbox, me)
            if self._runner is not me:
                return  # a step blocked here and a new runner took over; this one was that step's
            if taken >= _GROUP_TURN:
                taken = 0
                gevent.sleep(0)

    def _turn(self, mailbox: Mailbox, me: Any) -> int:
        actor = mailbox.actor
        if actor is None:
            return 0
        mailbox.running_in = me
        self._in_step = mailbox
        taken = 0
        try:
            if not mailbox.started:
                mailbox.started = True
                actor._dispatch_setup()  # noqa: SLF001 - the dispatcher is the actor's loop
            if mailbox.kill_pending and not actor._dispatch_stopped():  # noqa: SLF001
                mailbox.kill_pending = False
                actor._dispatch_killed()  # noqa: SLF001
            while taken < _ACTOR_TURN and mailbox.items and not actor._dispatch_stopped():  # noqa: SLF001
                taken += 1
                actor._dispatch_message(mailbox.items.popleft())  # noqa: SLF001
                if self._runner is not me:
                    break  # this step blocked and the group moved on: end with it
        except Preempted:
            # Handlers and setup turn a throw into the actor's failure themselves; one that
            # lands between them (in a reply's set) fails the actor here instead.
            if not actor._dispatch_stopped():  # noqa: SLF001
                actor._dispatch_killed()  # noqa: SLF001
        finally:
            mailbox.running_in = None
            if self._in_step is mailbox:
                self._in_step = None
        if actor._dispatch_stopped():  # noqa: SLF001
            mailbox.done = True
            mailbox.actor = None
            actor._dispatch_teardown()  # noqa: SLF001
        elif mailbox.items or mailbox.kill_pending:
            self.schedule(mailbox)
        return taken

