import time

import gevent
import gevent.event
import pytest

from observability.looplag import ENTER, LEAVE, WINDOW, LoopLag, watch_loop

LATE, ON_TIME = 0.2, 0.001


def feed(lag, *lateness):
    return [lag.add(value) for value in lateness]


def test_one_stall_changes_nothing():
    # A full collection or a slow write makes one probe late: not a node past its capacity.
    lag = LoopLag(0.04)
    feed(lag, *[ON_TIME] * WINDOW)
    assert feed(lag, 2.0) == [False]
    feed(lag, *[ON_TIME] * WINDOW)
    assert not lag.overloaded and lag.refusal() is None


def test_a_loop_late_in_half_the_window_is_overloaded_at_that_probe():
    lag = LoopLag(0.04)
    changes = feed(lag, *[LATE, ON_TIME] * WINDOW)
    assert changes.index(True) == 2 * ENTER - 2  # the ENTER-th late probe
    assert lag.overloaded
    assert lag.refusal() == f"overloaded (event loop {lag.median_s() * 1000:.0f} ms late)"


def test_it_takes_calls_again_only_once_the_window_has_all_but_a_few_late_probes():
    lag = LoopLag(0.04)
    feed(lag, *[LATE] * WINDOW)
    assert lag.overloaded
    # Going back under the threshold half the time is not enough: it must have kept up.
    feed(lag, *[ON_TIME, LATE] * WINDOW)
    assert lag.overloaded
    changes = feed(lag, *[ON_TIME] * WINDOW)
    assert changes.index(True) == 2 * (WINDOW // 2 - LEAVE) - 1  # the window's late probes fell to LEAVE
    assert not lag.overloaded and lag.refusal() is None


def test_lateness_at_the_threshold_is_not_late():
    lag = LoopLag(0.04)
    feed(lag, *[0.04] * WINDOW)
    assert not lag.overloaded


@pytest.mark.parametrize("threshold", [0.0, -1.0])
def test_a_threshold_must_be_positive(threshold):
    with pytest.raises(ValueError, match="threshold_s"):
        LoopLag(threshold)


def _hog(until: gevent.event.Event) -> None:
    """Keep the event loop busy as a node past its capacity does: 200 ms of work between yields."""
    while not until.is_set():
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:
            pass
        gevent.sleep(0.001)  # a timer of its own, as socket waits are: sleep(0) would starve every timer


def test_the_probe_sees_a_busy_loop_and_then_a_free_one():
    lag, probes, verdicts = LoopLag(0.05), [], []
    watcher = gevent.spawn(watch_loop, lag, probes.append, verdicts.append)
    stop = gevent.event.Event()
    hog = gevent.spawn(_hog, stop)
    try:
        deadline = time.monotonic() + 10
        while not lag.overloaded and time.monotonic() < deadline:
            gevent.sleep(0.05)
        assert lag.overloaded and verdicts == [True]
        assert max(probes) >= 0.05
    finally:
        stop.set()
        hog.join(timeout=5)
    try:
        deadline = time.monotonic() + 10
        while lag.overloaded and time.monotonic() < deadline:
            gevent.sleep(0.05)
        assert not lag.overloaded and verdicts == [True, False]
    finally:
        watcher.kill()
