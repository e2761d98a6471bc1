"""The load bench end to end, briefly: a real server process, three paced calls both ways."""

from __future__ import annotations

import math

import pytest

from bench.load import THIS_CHECKOUT, format_table, run_load


# Server start (~2 s), a 0.5 s warm-up, set-up, 0.5 s settle, a 2 s window, drain and
# shutdown: about 8 s. The bound leaves room for a loaded machine.
@pytest.mark.timeout(90)
def test_three_paced_calls_are_measured_both_ways_with_nothing_dropped_or_failed():
    result = run_load(THIS_CHECKOUT, 3, seconds=2.0, workers=1, pin=False, log=lambda line: None,
                      duplex=True, warmup_s=0.5, settle_s=0.5)
    table = format_table([result])

    assert result.connected == 3 and result.failed == 0, (table, result.first_error)
    # 3 calls x 50 frames a second, both ways (duplex: the assistant talks all the time),
    # from the first set-up to the end of the window: at least the window's 300 a way.
    assert result.frames_up >= 300 and result.frames_down >= 300, table
    assert result.dropped_up == 0 and result.dropped_down == 0, table
    for latency in (result.up_p50_ms, result.up_p99_ms, result.down_p50_ms, result.down_p99_ms):
        assert math.isfinite(latency) and 0.0 < latency < 1000.0, table
    assert result.up_p50_ms <= result.up_p99_ms <= result.up_max_ms, table
    assert result.clears == 0, table  # the caller was quiet: no barge-in cut the measured audio
    assert result.cpu_pct > 0.0 and result.rss_mb > 0.0, table
    assert "| this checkout | 3 | 0 |" in table
