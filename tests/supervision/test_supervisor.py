"""The Supervisor behaviour with real pykka actors under gevent."""

import time

import gevent
from pykka import ActorRegistry

from supervision import (
    AutoShutdown,
    Backoff,
    ChildSpec,
    ExitKind,
    Restart,
    Strategy,
    SupervisedActor,
    Supervisor,
    SupervisorFlags,
)
from supervision.supervisor import StartChild
from tests.supervision import wait_until

FAST = Backoff(min_s=0.01, max_s=0.02, jitter=0.0, reset_after_s=5.0)


class Crash:
    pass


class Kill:
    pass


class Hang:
    pass


class Done:
    pass


class Worker(SupervisedActor):
    handler_deadline_s = 0.3

    def __init__(self, handle, log_, name):
        super().__init__(handle)
        self.log_ = log_
        self.name = name

    def on_start(self):
        self.log_.append(("start", self.name))

    def _close(self):
        self.log_.append(("close", self.name))

    def on_receive(self, message):
        match message:
            case Crash():
                raise RuntimeError("boom")
            case Kill():
                raise gevent.GreenletExit()
            case Hang():
                gevent.sleep(30)
            case Done():
                self.actor_ref.stop(block=False)
            case "ping":
                return "pong"


def spec(name, log_, **kw):
    return ChildSpec(id=name, start=lambda h: Worker.start(h, log_, name), backoff=FAST, **kw)


def restarted(sup_ref, child, n):
    return lambda: sup_ref._actor_weakref().child_states[child].restarts >= n and \
        sup_ref._actor_weakref().children.get(child) is not None


def test_children_start_in_order_and_stop_in_reverse():
    log_ = []
    sup = Supervisor.start(SupervisorFlags(), [spec(n, log_) for n in ("a", "b", "c")])
    assert wait_until(lambda: len(log_) == 3)
    sup.stop(timeout=5)
    assert log_ == [("start", "a"), ("start", "b"), ("start", "c"),
                    ("close", "c"), ("close", "b"), ("close", "a")]


def test_one_for_one_restarts_only_the_failed_child_with_fresh_state():
    log_ = []
    sup = Supervisor.start(SupervisorFlags(), [spec("a", log_), spec("b", log_)])
    table = sup._actor_weakref().children
    assert wait_until(lambda: table.get("b") is not None)
    old_b, a = table.get("b"), table.get("a")
    table.tell("b", Crash())
    assert wait_until(restarted(sup, "b", 1))
    assert table.get("b") is not old_b
    assert table.get("a") is a and a.is_alive()
    assert table.get("b").ask("ping", timeout=1) == "pong"


def test_a_base_exception_in_one_actor_does_not_stop_any_other_actor():
    log_ = []
    bystander = Supervisor.start(SupervisorFlags(), [spec("x", log_)])
    sup = Supervisor.start(SupervisorFlags(), [spec("a", log_)])
    table = sup._actor_weakref().children
    assert wait_until(lambda: table.get("a") is not None)
    table.tell("a", Kill())
    assert wait_until(restarted(sup, "a", 1))
    assert sup._actor_weakref().child_states["a"].last_exit.kind is ExitKind.KILLED
    other = bystander._actor_weakref().children.get("x")
    assert other.is_alive() and other.ask("ping", timeout=1) == "pong"


def test_an_actor_killed_while_idle_is_restarted_not_left_a_zombie():
    log_ = []
    sup = Supervisor.start(SupervisorFlags(), [spec("a", log_)])
    table = sup._actor_weakref().children
    assert wait_until(lambda: table.get("a") is not None)
    victim = table.get("a")
    victim._actor_weakref()._greenlet.kill(block=True)
    assert not victim.is_alive()
    assert wait_until(restarted(sup, "a", 1))


def test_a_hung_handler_is_killed_by_the_watchdog_and_replaced_within_its_deadline():
    log_ = []
    sup = Supervisor.start(SupervisorFlags(), [spec("a", log_)])
    table = sup._actor_weakref().children
    assert wait_until(lambda: table.get("a") is not None)
    started = time.monotonic()
    table.tell("a", Hang())
    assert wait_until(restarted(sup, "a", 1), timeout=3)
    # deadline 0.3 s + one watchdog period 0.25 s + backoff
    assert time.monotonic() - started < 1.0
    assert sup._actor_weakref().child_states["a"].last_exit.kind is ExitKind.HUNG


def test_one_for_all_restarts_every_child():
    log_ = []
    sup = Supervisor.start(SupervisorFlags(strategy=Strategy.ONE_FOR_ALL),
                           [spec("a", log_), spec("b", log_), spec("c", log_)])
    table = sup._actor_weakref().children
    assert wait_until(lambda: table.get("c") is not None)
    before = {n: table.get(n) for n in "abc"}
    table.tell("b", Crash())
    assert wait_until(lambda: all(table.get(n) not in (None, before[n]) for n in "abc"))


def test_rest_for_one_restarts_the_failed_child_and_those_started_after_it():
    log_ = []
    sup = Supervisor.start(SupervisorFlags(strategy=Strategy.REST_FOR_ONE),
                           [spec("a", log_), spec("b", log_), spec("c", log_)])
    table = sup._actor_weakref().children
    assert wait_until(lambda: table.get("c") is not None)
    before = {n: table.get(n) for n in "abc"}
    table.tell("b", Crash())
    assert wait_until(lambda: all(table.get(n) not in (None, before[n]) for n in "bc"))
    assert table.get("a") is before["a"]


def test_exceeding_the_intensity_stops_everything_and_reports_failure_upwards():
    log_ = []
    gave_up = []

    class Sup(Supervisor):
        def on_give_up(self, child_id, exit_):
            gave_up.append(child_id)

    root = Supervisor.start(SupervisorFlags(), [ChildSpec(
        id="sup", restart=Restart.TEMPORARY,
        start=lambda h: Sup.start(SupervisorFlags(intensity=2, period_s=10), [spec("a", log_)], handle=h))])
    assert wait_until(lambda: root._actor_weakref().children.get("sup") is not None)
    sup = root._actor_weakref().children.get("sup")
    table = sup._actor_weakref().children
    for _ in range(3):
        assert wait_until(lambda: table.get("a") is not None)
        table.tell("a", Crash())
        gevent.sleep(0.05)
    assert wait_until(lambda: not sup.is_alive())
    assert gave_up == ["a"]
    root_state = root._actor_weakref()
    assert wait_until(lambda: "sup" not in root_state.child_states)
    assert not [r for r in ActorRegistry.get_all() if r.actor_class is Worker]


def test_transient_child_exiting_normally_is_not_restarted_and_auto_shutdown_stops_the_supervisor():
    log_ = []
    sup = Supervisor.start(
        SupervisorFlags(auto_shutdown=AutoShutdown.ANY_SIGNIFICANT),
        [spec("a", log_), spec("t", log_, restart=Restart.TRANSIENT, significant=True)],
    )
    table = sup._actor_weakref().children
    assert wait_until(lambda: table.get("t") is not None)
    table.tell("t", Done())
    assert wait_until(lambda: not sup.is_alive())
    assert ("close", "a") in log_
    assert not ActorRegistry.get_all()


def test_transient_child_that_fails_is_restarted():
    log_ = []
    sup = Supervisor.start(SupervisorFlags(), [spec("t", log_, restart=Restart.TRANSIENT)])
    table = sup._actor_weakref().children
    assert wait_until(lambda: table.get("t") is not None)
    table.tell("t", Crash())
    assert wait_until(restarted(sup, "t", 1))


def test_a_failing_start_function_counts_as_a_failure_and_is_retried():
    log_ = []
    attempts = []

    def flaky(h):
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("not yet")
        return Worker.start(h, log_, "f")

    sup = Supervisor.start(SupervisorFlags(intensity=5), [ChildSpec(id="f", start=flaky, backoff=FAST)])
    table = sup._actor_weakref().children
    assert wait_until(lambda: table.get("f") is not None)
    assert len(attempts) == 3


def test_messages_to_a_restarting_child_are_dropped_and_counted():
    log_ = []
    slow = Backoff(min_s=0.3, max_s=0.3, jitter=0.0)
    sup = Supervisor.start(
        SupervisorFlags(), [ChildSpec(id="a", start=lambda h: Worker.start(h, log_, "a"), backoff=slow)]
    )
    table = sup._actor_weakref().children
    assert wait_until(lambda: table.get("a") is not None)
    table.tell("a", Crash())
    assert wait_until(lambda: table.get("a") is None)
    assert table.tell("a", "ping") is False
    assert table.dropped >= 1


def test_with_isolated_children_one_child_exceeding_its_intensity_stops_alone():
    log_ = []
    sup = Supervisor.start(
        SupervisorFlags(intensity=1, period_s=10, isolate_children=True),
        [spec("a", log_, restart=Restart.TRANSIENT), spec("b", log_)],
    )
    state = sup._actor_weakref()
    table = state.children
    assert wait_until(lambda: table.get("b") is not None)
    b = table.get("b")
    table.tell("a", Crash())
    assert wait_until(restarted(sup, "a", 1))
    table.tell("a", Crash())
    assert wait_until(lambda: state.child_states["a"].state == "stopped")
    assert table.get("a") is None
    assert sup.is_alive() and table.get("b") is b and b.ask("ping", timeout=1) == "pong"
    assert not state.gave_up


def test_a_supervisor_that_gives_up_is_not_restarted_by_a_transient_parent():
    log_ = []
    starts = []

    def start_sup(h):
        starts.append(1)
        return Supervisor.start(SupervisorFlags(intensity=0), [spec("a", log_)], handle=h)

    root = Supervisor.start(SupervisorFlags(), [ChildSpec(id="sup", restart=Restart.TRANSIENT, start=start_sup)])
    assert wait_until(lambda: root._actor_weakref().children.get("sup") is not None)
    sup = root._actor_weakref().children.get("sup")
    assert wait_until(lambda: sup._actor_weakref().children.get("a") is not None)
    sup._actor_weakref().children.tell("a", Crash())
    assert wait_until(lambda: root._actor_weakref().child_states["sup"].state == "stopped")
    assert len(starts) == 1


class Fragile(Supervisor):
    def handle_message(self, message):
        if isinstance(message, Kill):
            raise gevent.GreenletExit()
        return super().handle_message(message)


def test_a_supervisor_that_fails_is_restarted_by_a_transient_parent():
    log_ = []
    root = Supervisor.start(SupervisorFlags(), [ChildSpec(
        id="sup", restart=Restart.TRANSIENT, backoff=FAST,
        start=lambda h: Fragile.start(SupervisorFlags(), [spec("a", log_)], handle=h))])
    assert wait_until(lambda: root._actor_weakref().children.get("sup") is not None)
    sup = root._actor_weakref().children.get("sup")
    sup.tell(Kill())  # a BaseException in the supervisor itself
    assert wait_until(restarted(root, "sup", 1))
    assert wait_until(lambda: root._actor_weakref().children.get("sup")._actor_weakref().children.get("a") is not None)


def test_children_added_at_run_time_are_forgotten_once_they_stop_for_good():
    log_ = []
    root = Supervisor.start(SupervisorFlags())
    for n in range(20):
        ref = root.ask(StartChild(spec(f"unit{n}", log_, restart=Restart.TRANSIENT)), timeout=2)
        ref.tell(Done())
    assert wait_until(lambda: root._actor_weakref().child_states == {})
