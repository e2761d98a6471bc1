"""The soak bench end to end, briefly: a real server process, two calls, heavy chaos."""

from __future__ import annotations

import pytest

from bench.soak import format_table, run_soak


# Server start, a 3 s warm-up, 8 s of calls and shutdown take about 17 s; the bound
# leaves room for a loaded machine and for the bench's own drain waits when it fails.
@pytest.mark.timeout(120)
def test_a_short_chaotic_soak_loses_no_leg_leaves_no_call_actor_and_stops_cleanly(tmp_path):
    result = run_soak(
        calls=2, seconds=8, chaos_rate=30, seed=1, call_seconds=4,
        workdir=tmp_path, warmup_s=3, drain_wait_s=10, log=lambda line: None,
    )
    table = format_table(result)

    assert result.calls_run >= 2, table
    assert result.calls_connected == result.calls_run, table
    assert result.call_minutes > 0.1, table
    assert result.long_lived_actors == 2, table  # root supervisor + chaos monkey
    assert result.before.rss_bytes > 0 and result.after.rss_bytes > 0
    assert result.legs_lost == [], table
    assert result.call_actors_left == 0, table
    assert result.greenlet_growth <= 0, table
    assert result.server_exit == 0, table
    assert result.problems == [] and result.ok, table
    for row in (
        "| call-minutes |",
        "| faults injected |",
        "| restarts |",
        "| **Twilio legs lost** | **0** |",
        "| fault -> audio again p50 / p99 (bucket-interpolated) |",
        "| server RSS before -> after (MiB) |",
        "| server greenlets before -> after |",
        "| **actors left from calls** | **0** |",
        "| server exit after SIGTERM | 0 |",
        "| result | PASS |",
    ):
        assert row in table, table
    assert (tmp_path / "server.log").stat().st_size > 0
