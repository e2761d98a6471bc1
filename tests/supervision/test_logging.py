"""What a supervised failure writes to the log: one WARNING, the traceback at DEBUG, no ERROR.

The logs go through the process's own configuration (observability.logging, JSON), so
pykka's stdlib logger is part of what is checked.
"""

from __future__ import annotations

import io
import json

import gevent
import pytest
from pykka import ActorRegistry

from observability.logging import configure_logging
from supervision import Backoff, ChildSpec, Restart, SupervisedActor, Supervisor, SupervisorFlags
from tests.supervision import wait_until

FAST = Backoff(min_s=0.01, max_s=0.02, jitter=0.0, reset_after_s=5.0)


class Worker(SupervisedActor):
    handler_deadline_s = 0.3

    def on_receive(self, message):
        match message:
            case "raise":
                raise RuntimeError("boom")
            case "kill":
                raise gevent.GreenletExit()
            case "hang":
                gevent.sleep(30)
            case "ping":
                return "pong"


class LeakyWorker(Worker):
    def _close(self):
        raise OSError("could not release")


class Lines:
    """The JSON lines written so far."""

    def __init__(self, out: io.StringIO) -> None:
        self._out = out

    def all(self) -> list[dict]:
        return [json.loads(line) for line in self._out.getvalue().splitlines() if line.strip()]

    def at(self, level: str) -> list[dict]:
        return [line for line in self.all() if line["level"] == level]


def _logs(level: str):
    out = io.StringIO()
    configure_logging(fmt="json", level=level, stream=out)
    yield Lines(out)
    ActorRegistry.stop_all(timeout=5)
    configure_logging(fmt="console", level="INFO")  # as tests/conftest.py left it


@pytest.fixture
def debug_logs():
    yield from _logs("DEBUG")


@pytest.fixture
def info_logs():
    yield from _logs("INFO")


def started(*specs: ChildSpec, flags: SupervisorFlags | None = None):
    sup = Supervisor.start(flags or SupervisorFlags(), list(specs))
    state = sup._actor_weakref()
    assert wait_until(lambda: all(state.children.get(s.id) is not None for s in specs))
    return sup, state


def worker(child_id: str, cls=Worker, **kw) -> ChildSpec:
    return ChildSpec(id=child_id, start=lambda h: cls.start(h), backoff=FAST, **kw)


def restarted(state, child_id: str, n: int):
    return lambda: state.child_states[child_id].restarts >= n and state.children.get(child_id) is not None


@pytest.mark.parametrize(
    ("fault", "kind", "reason"),
    [("raise", "failed", "RuntimeError: boom"), ("kill", "killed", "ActorKilled: GreenletExit"),
     ("hang", "hung", "hung for ")],
)
def test_a_recovered_fault_is_one_warning_line_and_its_traceback_is_debug(debug_logs, fault, kind, reason):
    _sup, state = started(worker("a"), worker("b"))
    state.children.tell("a", fault)
    assert wait_until(restarted(state, "a", 1))

    warnings = debug_logs.at("warning")
    assert len(warnings) == 1, warnings
    [line] = warnings
    assert line["event"] == "child_exited"
    assert line["actor"] == "a" and line["kind"] == kind and line["reason"].startswith(reason)
    assert line["restarts"] == 1 and line["restarting"] is True
    assert "exception" not in line
    assert debug_logs.at("error") == []
    assert not [x for x in debug_logs.all() if x.get("logger") == "pykka" and x["level"] != "debug"]
    # The traceback: a DEBUG line about the same child, and the only line that has one.
    with_traceback = [x for x in debug_logs.all() if "exception" in x]
    assert [(x["event"], x["level"], x["actor"]) for x in with_traceback] == [("child_traceback", "debug", "a")]
    assert "Traceback (most recent call last)" in with_traceback[0]["exception"]


def test_at_info_a_recovered_fault_writes_no_traceback_at_all(info_logs):
    _sup, state = started(worker("a"))
    for n, fault in enumerate(("raise", "kill"), start=1):
        assert wait_until(lambda: state.children.get("a") is not None)
        state.children.tell("a", fault)
        assert wait_until(restarted(state, "a", n))
    warnings = info_logs.at("warning")
    assert [(x["event"], x["kind"], x["restarts"]) for x in warnings] == [
        ("child_exited", "failed", 1), ("child_exited", "killed", 2)]
    assert info_logs.at("error") == []
    assert not [x for x in info_logs.all() if "exception" in x or "Traceback" in json.dumps(x)]


def test_a_failing_start_function_is_a_warning_with_its_traceback_at_debug(debug_logs):
    attempts = []

    def flaky(h):
        attempts.append(1)
        if len(attempts) < 2:
            raise RuntimeError("not yet")
        return Worker.start(h)

    started(ChildSpec(id="f", start=flaky, backoff=FAST))
    [line] = debug_logs.at("warning")
    assert (line["event"], line["actor"], line["kind"], line["restarts"]) == ("child_exited", "f", "failed", 1)
    assert "not yet" in line["reason"]
    assert debug_logs.at("error") == []
    [start_failed] = [x for x in debug_logs.all() if x["event"] == "child_start_failed"]
    assert start_failed["level"] == "debug" and "RuntimeError: not yet" in start_failed["exception"]


def test_a_give_up_is_an_error_and_only_the_recovered_faults_are_warnings(debug_logs):
    exits = []

    class Sup(Supervisor):
        def on_child_exited(self, child_id, exit_, restarting):
            exits.append(restarting)

    root = Supervisor.start(SupervisorFlags(), [ChildSpec(
        id="sup", restart=Restart.TEMPORARY,
        start=lambda h: Sup.start(SupervisorFlags(intensity=2, period_s=10), [worker("a")], handle=h))])
    root_state = root._actor_weakref()
    assert wait_until(lambda: root_state.children.get("sup") is not None)
    sup = root_state.children.get("sup")
    table = sup._actor_weakref().children
    for _ in range(3):
        assert wait_until(lambda: table.get("a") is not None)
        table.tell("a", "raise")
        assert wait_until(lambda: table.get("a") is None)
    assert wait_until(lambda: not sup.is_alive())

    # Two restarts, two warnings; the third failure is the give-up, an ERROR, and no restart.
    assert exits == [True, True, False]
    about_a = [x for x in debug_logs.at("warning") if x.get("actor") == "a"]
    assert [(x["event"], x["restarts"]) for x in about_a] == [("child_exited", 1), ("child_exited", 2)]
    [error] = debug_logs.at("error")
    assert (error["event"], error["actor"], error["kind"], error["restarts"]) == ("supervisor_gave_up", "a",
                                                                                 "failed", 2)
    assert error["reason"] == "RuntimeError: boom" and "exception" not in error


def test_with_isolated_children_a_child_given_up_is_an_error(debug_logs):
    _sup, state = started(worker("a", restart=Restart.TRANSIENT), worker("b"),
                          flags=SupervisorFlags(intensity=1, period_s=10, isolate_children=True))
    state.children.tell("a", "raise")
    assert wait_until(restarted(state, "a", 1))
    state.children.tell("a", "raise")
    assert wait_until(lambda: state.child_states["a"].state == "stopped")
    assert [(x["event"], x["actor"]) for x in debug_logs.at("warning")] == [("child_exited", "a")]
    assert [(x["event"], x["actor"], x["restarts"]) for x in debug_logs.at("error")] == [("child_gave_up", "a", 1)]


def test_a_child_whose_cleanup_raises_is_an_error_with_its_traceback(debug_logs):
    _sup, state = started(worker("a", cls=LeakyWorker))
    state.children.tell("a", "raise")
    assert wait_until(restarted(state, "a", 1))
    [error] = debug_logs.at("error")
    assert (error["event"], error["actor"]) == ("child_close_failed", "a")
    assert error["reason"] == "OSError: could not release"
    assert "Traceback" in error["exception"]
    assert [x["event"] for x in debug_logs.at("warning")] == ["child_exited"]


def test_an_actor_with_no_supervisor_keeps_pykkas_error(info_logs):
    ref = Worker.start()
    ref.tell("raise")
    assert wait_until(lambda: not ref.is_alive())
    [error] = info_logs.at("error")
    assert error["logger"] == "pykka" and "RuntimeError: boom" in error["exception"]
