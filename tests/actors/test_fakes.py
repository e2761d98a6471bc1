"""The harness itself: virtual time must hold sleepers exactly until their deadline."""

from __future__ import annotations

import gevent

from tests.actors.fakes import FakeClock, settle


def test_a_sleeper_wakes_only_once_time_passes_its_deadline() -> None:
    clock = FakeClock(start_s=10.0)
    woke: list[float] = []
    sleeper = gevent.spawn(lambda: (clock.sleep(1.5), woke.append(clock.now_s)))
    settle()
    assert clock.pending == [1.5]
    clock.advance(1.499)
    assert woke == []
    clock.advance(0.001)
    assert woke == [11.5]
    assert clock.pending == []
    sleeper.join(timeout=1)


def test_chained_sleeps_inside_one_advance_each_start_from_their_own_deadline() -> None:
    clock = FakeClock(start_s=0.0)
    times: list[float] = []

    def loop() -> None:
        for delay in (0.25, 0.5, 1.0):
            clock.sleep(delay)
            times.append(clock.now_s)

    runner = gevent.spawn(loop)
    settle()
    clock.advance(1.6)
    assert times == [0.25, 0.75]  # the third would end at 1.75
    assert clock.now_s == 1.6
    clock.advance(0.15)
    assert times == [0.25, 0.75, 1.75]
    runner.join(timeout=1)


def test_a_killed_sleeper_is_forgotten() -> None:
    clock = FakeClock()
    sleeper = gevent.spawn(clock.sleep, 5.0)
    settle()
    assert clock.pending == [5.0]
    sleeper.kill(block=True, timeout=1)
    assert clock.pending == []
