"""The soak bench: end to end briefly (a real server process, two calls, heavy chaos), and its arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench._prom import bucket_quantile
from bench._soak_result import CallResult, ProcessSample
from bench.soak import _build_result, format_table, run_soak


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
    assert result.long_lived_actors >= 2, table  # at least the root supervisor and the chaos monkey
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


def test_bucket_quantiles_interpolate_inside_the_bucket_and_floor_past_the_last_bound():
    # 10 observations: 4 in (0, 0.1], 4 in (0.1, 0.5], 2 above 1.0.
    buckets = [(0.1, 4.0), (0.5, 8.0), (1.0, 8.0), (float("inf"), 10.0)]

    assert bucket_quantile(0.5, buckets) == (pytest.approx(0.1 + 0.4 * 1 / 4), False)
    assert bucket_quantile(0.2, buckets) == (pytest.approx(0.05), False)
    assert bucket_quantile(0.99, buckets) == (1.0, True)
    assert bucket_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None


def _call(call_sid, *, closed_early=False, stop_sent=True, ended_at=1000.0):
    return CallResult(
        call_sid=call_sid, connected=True, stop_sent=stop_sent, closed_early=closed_early,
        close_code=1000 if closed_early else None, error=None, stream_s=60.0, ended_at=ended_at,
        audio_s_received=5.0,
    )


def test_a_leg_is_lost_only_when_the_server_dropped_a_call_it_did_not_mean_to_end():
    sample = ProcessSample(rss_bytes=1, greenlets=5, actors=3, live_calls=0)
    results = [
        _call("CA1"),  # hung up normally
        _call("CA2", closed_early=True),  # the server gave up on purpose
        _call("CA3", closed_early=True),  # dropped, server says completed: lost
        _call("CA4"),  # hung up, but the server ended it 30 s later
    ]
    records = {
        "CA1": {"outcome": "completed", "outcome_detail": "caller hung up", "ended_at": 1000.1},
        "CA2": {"outcome": "gave-up", "outcome_detail": "vapi kept failing", "ended_at": 1000.0},
        "CA3": {"outcome": "completed", "outcome_detail": "twilio socket closed", "ended_at": 1000.0},
        "CA4": {"outcome": "gave-up", "outcome_detail": "twilio kept failing", "ended_at": 1030.0},
    }
    result = _build_result(
        calls=4, seconds=60, chaos_rate=2, seed=1, call_seconds=60, results=results, records=records,
        metrics=({}, {}), long_lived=3, before=sample, after=sample, samples=[(0.0, sample)],
        server_exit=0, log_path=Path("server.log"), problems=[],
    )

    assert [leg.call_sid for leg in result.legs_lost] == ["CA3"]
    assert [call_sid for call_sid, _, _ in result.gave_up] == ["CA2", "CA4"]
    assert [call_sid for call_sid, _, _ in result.outlived] == ["CA4"]
    assert not result.ok
    table = format_table(result)
    assert "| **Twilio legs lost** | **1** |" in table
    assert "| **calls that outlived their caller** | **1** |" in table
