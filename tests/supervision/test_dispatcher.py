"""Actors sharing one greenlet (Dispatcher): same guarantees as a greenlet each, fewer wake-ups."""


import gevent
import pykka
import pytest
from pykka import ActorRegistry

from supervision import Backoff, ChildHandle, ChildSpec, ExitKind, SupervisedActor, Supervisor, SupervisorFlags
from supervision.actor import kill_actor
from supervision.dispatcher import Dispatcher
from tests.supervision import wait_until

FAST = Backoff(min_s=0.01, max_s=0.02, jitter=0.0, reset_after_s=5.0)


class Block:
    def __init__(self, seconds):
        self.seconds = seconds


class Crash:
    pass


class Recorder(SupervisedActor):
    """Records (name, message, greenlet) per message; passes ints on to `next_ref`, minus one."""

    handler_deadline_s = 0.2

    def __init__(self, handle, name, seen, next_ref=None):
        super().__init__(handle)
        self.name = name
        self.seen = seen
        self.next_ref = next_ref
        self.running = 0
        self.closed = False

    def _close(self):
        self.closed = True

    def on_receive(self, message):
        self.running += 1
        try:
            assert self.running == 1, "two messages of one actor at once"
            self.seen.append((self.name, message, gevent.getcurrent()))
            match message:
                case Block(seconds=seconds):
                    gevent.sleep(seconds)
                case Crash():
                    raise RuntimeError("boom")
                case "ping":
                    return "pong"
                case int() if message > 0 and self.next_ref is not None:
                    self.next_ref.tell(message - 1)
            return None
        finally:
            self.running -= 1


def start(dispatcher, name, seen, next_ref=None, exits=None):
    handle = ChildHandle(name, 1, on_exit=exits.append if exits is not None else None, dispatcher=dispatcher)
    return Recorder.start(handle, name, seen, next_ref)


def test_a_message_crossing_actors_of_one_dispatcher_runs_in_one_greenlet_in_order():
    seen = []
    d = Dispatcher()
    c = start(d, "c", seen)
    b = start(d, "b", seen, c)
    a = start(d, "a", seen, b)
    for n in (2, 5):
        a.tell(n)
    assert wait_until(lambda: len(seen) == 6)
    assert [(name, m) for name, m, _ in seen] == [("a", 2), ("a", 5), ("b", 1), ("b", 4), ("c", 0), ("c", 3)]
    assert len({g for _, _, g in seen}) == 1  # one greenlet took every message
    assert d.runners_started == 1


def test_actors_without_a_dispatcher_each_run_in_their_own_greenlet():
    seen = []
    b = Recorder.start(None, "b", seen)
    a = Recorder.start(None, "a", seen, b)
    a.tell(1)
    assert wait_until(lambda: len(seen) == 2)
    assert seen[0][2] is not seen[1][2]


def test_a_blocked_handler_does_not_stall_its_siblings_and_its_actor_stays_one_at_a_time():
    seen = []
    d = Dispatcher()
    slow = start(d, "slow", seen)
    quick = start(d, "quick", seen)
    slow.tell(Block(0.3))
    assert wait_until(lambda: len(seen) == 1)
    slow.tell("after")  # must wait for the blocked message, not run beside it
    quick.tell("ping")
    assert wait_until(lambda: ("quick", "ping") in [(n, m) for n, m, _ in seen], timeout=0.2)
    assert ("slow", "after") not in [(n, m) for n, m, _ in seen]
    assert wait_until(lambda: ("slow", "after") in [(n, m) for n, m, _ in seen], timeout=2)
    assert d.runners_started == 2
    assert quick.ask("ping", timeout=1) == "pong" and slow.ask("ping", timeout=1) == "pong"


def test_killing_a_blocked_actor_fails_it_alone():
    seen, exits = [], []
    d = Dispatcher()
    victim = start(d, "victim", seen, exits=exits)
    sibling = start(d, "sibling", seen)
    victim.tell(Block(30))
    assert wait_until(lambda: len(seen) == 1)
    actor = victim._actor_weakref()
    assert kill_actor(victim, "hung for 1s in one handler")
    assert wait_until(lambda: not victim.is_alive())
    assert exits[0].kind is ExitKind.HUNG and actor.closed
    assert sibling.ask("ping", timeout=1) == "pong"


def test_killing_an_idle_actor_stops_it_and_releases_what_it_holds():
    seen, exits = [], []
    d = Dispatcher()
    victim = start(d, "victim", seen, exits=exits)
    sibling = start(d, "sibling", seen)
    assert victim.ask("ping", timeout=1) == "pong"
    actor = victim._actor_weakref()
    kill_actor(victim, "chaos")
    assert wait_until(lambda: not victim.is_alive())
    assert exits[0].kind is ExitKind.KILLED and actor.closed
    assert ActorRegistry.get_by_urn(actor.actor_urn) is None
    assert sibling.ask("ping", timeout=1) == "pong"


def test_a_failure_stops_only_its_actor_and_an_ask_to_a_stopped_actor_fails_fast():
    seen, exits = [], []
    d = Dispatcher()
    crasher = start(d, "crasher", seen, exits=exits)
    sibling = start(d, "sibling", seen)
    crasher.tell(Crash())
    assert wait_until(lambda: not crasher.is_alive())
    assert exits[0].kind is ExitKind.FAILED
    assert sibling.ask("ping", timeout=1) == "pong"
    with pytest.raises(pykka.ActorDeadError):
        crasher.ask("ping", timeout=1)


def test_stop_answers_and_runs_on_stop_and_the_closed_dispatcher_ends_its_greenlet():
    seen = []
    d = Dispatcher()
    a = start(d, "a", seen)
    assert a.ask("ping", timeout=1) == "pong"
    actor = a._actor_weakref()
    a.stop(block=True, timeout=1)
    assert actor.closed
    runner = d._runner
    d.close()
    assert wait_until(lambda: runner.dead, timeout=1)


def test_a_supervisor_with_shared_greenlet_restarts_a_child_onto_the_same_greenlet():
    seen = []
    specs = [ChildSpec(id=n, start=lambda h, n=n: Recorder.start(h, n, seen), backoff=FAST) for n in ("a", "b")]
    sup = Supervisor.start(SupervisorFlags(shared_greenlet=True), specs)
    table = sup._actor_weakref().children
    assert wait_until(lambda: table.get("b") is not None)
    table.tell("a", Crash())
    state = sup._actor_weakref().child_states["a"]
    assert wait_until(lambda: state.restarts == 1 and table.get("a") is not None)
    for name in ("a", "b"):
        assert table.get(name).ask("ping", timeout=1) == "pong"
    greenlets = {g for _, m, g in seen if m == "ping"}
    assert len(greenlets) == 1


def test_a_hung_child_of_a_shared_greenlet_is_replaced_by_the_watchdog_while_its_sibling_goes_on():
    seen = []
    specs = [ChildSpec(id=n, start=lambda h, n=n: Recorder.start(h, n, seen), backoff=FAST) for n in ("a", "b")]
    sup = Supervisor.start(SupervisorFlags(shared_greenlet=True), specs)
    table = sup._actor_weakref().children
    assert wait_until(lambda: table.get("b") is not None)
    table.tell("a", Block(30))
    assert table.get("b").ask("ping", timeout=1) == "pong"  # while a is stuck
    state = sup._actor_weakref().child_states["a"]
    assert wait_until(lambda: state.restarts == 1 and table.get("a") is not None, timeout=5)
    assert state.last_exit.kind is ExitKind.HUNG
    assert table.get("a").ask("ping", timeout=1) == "pong"
