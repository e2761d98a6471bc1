"""The log limiter: a flood of bad input costs a handful of lines and one summary."""

from __future__ import annotations

from observability.ratelimit import LogLimiter


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, object]]] = []

    def warning(self, event: str, **fields: object) -> None:
        self.lines.append((event, fields))

    info = warning


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_logs_the_first_few_lines_then_says_how_many_it_held_back():
    log, clock = Recorder(), Clock()
    limiter = LogLimiter(log, per_window=5, window_s=10.0, clock=clock)
    logged = sum(limiter.warning("frame_malformed", source="1.2.3.4", kind="oversize", n=i) for i in range(100_000))
    assert logged == 5 and len(log.lines) == 5
    clock.now = 10.0
    assert limiter.warning("frame_malformed", source="1.2.3.4", kind="oversize")
    assert log.lines[5] == ("log_suppressed", {"source": "1.2.3.4", "kind": "oversize", "suppressed": 99_995,
                                               "window_s": 10.0})


def test_sources_and_kinds_have_windows_of_their_own():
    log, clock = Recorder(), Clock()
    limiter = LogLimiter(log, per_window=1, clock=clock)
    assert limiter.warning("x", source="a", kind="k")
    assert not limiter.warning("x", source="a", kind="k")
    assert limiter.warning("x", source="b", kind="k")
    assert limiter.warning("x", source="a", kind="other")


def test_flush_reports_a_flood_that_has_stopped_and_forgets_quiet_keys():
    log, clock = Recorder(), Clock()
    limiter = LogLimiter(log, per_window=1, window_s=10.0, clock=clock)
    for _ in range(3):
        limiter.warning("x", source="a", kind="k")
    limiter.flush()
    assert len(log.lines) == 1  # the window is still open
    clock.now = 11.0
    limiter.flush()
    assert log.lines[-1][0] == "log_suppressed" and log.lines[-1][1]["suppressed"] == 2
    limiter.flush()
    assert len(log.lines) == 2


def test_the_table_of_keys_is_bounded():
    log, clock = Recorder(), Clock()
    limiter = LogLimiter(log, per_window=1, max_keys=100, clock=clock)
    for i in range(10_000):
        limiter.warning("x", source=f"10.0.{i // 256}.{i % 256}", kind="k")
    assert len(limiter._windows) == 100
