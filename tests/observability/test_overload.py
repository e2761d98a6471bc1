import os
import subprocess
import sys
import time
from pathlib import Path

import gevent
import gevent.event
import pytest

from observability.overload import LEAVE_MARGIN, WINDOW, CpuLoad, watch_loop

BUSY, IDLE = 1.0, 0.3


def feed(load, *shares):
    return [load.add(share) for share in shares]


def test_one_busy_moment_changes_nothing():
    # A collection or a burst of call set-ups keeps the core busy for a moment: not a node
    # past its capacity.
    load = CpuLoad(0.95)
    feed(load, *[IDLE] * WINDOW, BUSY, BUSY, *[IDLE] * WINDOW)
    assert not load.overloaded and load.refusal() is None


def test_a_core_kept_busy_for_the_window_is_overloaded_at_its_last_probe():
    load = CpuLoad(0.95)
    changes = feed(load, *[IDLE] * WINDOW, *[BUSY] * WINDOW)
    assert changes.index(True) == 2 * WINDOW - 1
    assert load.overloaded
    assert load.refusal() == "overloaded (100% of a core)"


def test_nothing_is_decided_before_a_full_window():
    load = CpuLoad(0.5)
    assert feed(load, *[BUSY] * (WINDOW - 1)) == [False] * (WINDOW - 1)
    assert not load.overloaded
    assert feed(load, BUSY) == [True]


def test_it_takes_calls_again_only_once_well_under_the_threshold():
    load = CpuLoad(0.95)
    feed(load, *[BUSY] * WINDOW)
    # Just under the threshold is not enough: the node would be let straight back over the edge.
    feed(load, *[0.95 - LEAVE_MARGIN / 2] * WINDOW)
    assert load.overloaded
    changes = feed(load, *[0.95 - LEAVE_MARGIN - 0.01] * WINDOW)
    assert True in changes and not load.overloaded and load.refusal() is None


@pytest.mark.parametrize("threshold", [0.0, -0.5, 1.5])
def test_a_threshold_is_a_share_of_one_core(threshold):
    with pytest.raises(ValueError, match="threshold"):
        CpuLoad(threshold)


def _hog(until: gevent.event.Event) -> None:
    """Keep the process's core busy as a node past its capacity does, yielding every 200 ms."""
    while not until.is_set():
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:
            pass
        gevent.sleep(0.001)  # a timer of its own, as socket waits are: sleep(0) would starve every timer


def test_the_probe_sees_a_busy_core_and_then_a_free_one():
    load, probes, verdicts = CpuLoad(0.9), [], []
    watcher = gevent.spawn(watch_loop, load, probes.append, verdicts.append)
    stop = gevent.event.Event()
    hog = gevent.spawn(_hog, stop)
    try:
        deadline = time.monotonic() + 10
        while not load.overloaded and time.monotonic() < deadline:
            gevent.sleep(0.05)
        assert load.overloaded and verdicts == [True]
        assert max(probes) >= 0.05  # the busy loop also woke the probe late
    finally:
        stop.set()
        hog.join(timeout=5)
    try:
        deadline = time.monotonic() + 10
        while load.overloaded and time.monotonic() < deadline:
            gevent.sleep(0.05)
        assert not load.overloaded and verdicts == [True, False]
    finally:
        watcher.kill()


_SHARED_CORE = """
import os, subprocess, sys, time
from observability.overload import demand_s
os.sched_setaffinity(0, {0})
rival = subprocess.Popen([sys.executable, "-c", "import os\\nos.sched_setaffinity(0, {0})\\nwhile True: pass"])
try:
    time.sleep(0.2)
    wall, cpu, wanted = time.perf_counter(), time.process_time(), demand_s()
    while time.perf_counter() - wall < 1.0:
        pass
    elapsed = time.perf_counter() - wall
    print((time.process_time() - cpu) / elapsed, (demand_s() - wanted) / elapsed)
finally:
    rival.kill()
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/schedstat"), reason="needs Linux's /proc/self/schedstat")
def test_a_process_that_shares_its_core_still_shows_it_wants_all_of_it():
    # A busy process pinned to one core with another busy one gets about half the core:
    # its CPU time would say "half loaded"; the time it wanted the core says "saturated".
    done = subprocess.run([sys.executable, "-c", _SHARED_CORE], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=30, check=True)
    cpu_share, demand_share = map(float, done.stdout.split())
    assert cpu_share < 0.8
    assert demand_share > 0.9
