"""The barge-in bench, end to end in miniature (a real server process, real speech), and its arithmetic."""

from __future__ import annotations

import pytest

from bench._bargein_audio import missing_tools
from bench._bargein_matrix import Group, SideResult, format_report, format_summary
from bench._bargein_trial import Condition, TrialPlan, TrialResult
from bench.bargein import Side, run_bench

_MISSING = missing_tools()

OVER = Condition("during", "burst", -18.0, None)
SILENT = Condition("silent", "burst", None, None, silent_s=4.0)


# Sounds (about 1 s), a server start, and two calls side by side (the longer about 6 s): some 10 s.
@pytest.mark.skipif(_MISSING is not None, reason=f"needs the bench's tools: {_MISSING}")
@pytest.mark.timeout(90)
def test_a_caller_talking_over_the_assistant_is_cleared_and_a_silent_one_is_not():
    groups = [Group("during", "over", (OVER,), 1), Group("silent", "silent", (SILENT,), 1)]
    [side], described = run_bench([Side("this")], groups, seed=3, parallel=2, log=lambda line: None)
    table = "\n".join(format_report(groups, [side]))

    assert side.errors == [], table
    [over] = side.of(OVER)
    [silent] = side.of(SILENT)
    # Speech at -18 dBFS over a -20 dBFS assistant, no echo, no noise: every VAD hears it.
    # The clear comes after the VAD has heard some speech, and well inside the window.
    assert over.latency_ms is not None, table
    assert 20.0 < over.latency_ms < 1500.0, table
    assert over.onset_ms is not None and over.first_audio_ms is not None
    assert over.onset_ms - over.first_audio_ms >= 500.0  # the caller started during the turn
    assert silent.clears_ms == [] and silent.false_clears == 0, table
    assert 3.5 < silent.assistant_s < 4.5, table  # its exposure: the assistant's 4 s, heard
    assert side.server_cpu_s > 0.0 and side.call_s > 5.0
    assert "| burst | -18 | none | 1/1 |" in table and "0 in 0.1 min" in table, table
    assert described[0].startswith("this: ")


def _result(condition, *, onset, first_audio, clears, assistant_s=0.0):
    plan = TrialPlan(condition=condition, index=0, caller_clip=0, assistant_turns=((0, 0.0, 5.0),),
                     echo_delay_ms=100.0, during_offset_s=1.0, room_offset=0)
    reference = None if onset is None else max(onset, first_audio)
    return TrialResult(plan=plan, onset_ms=onset, first_audio_ms=first_audio, reference_ms=reference,
                       clears_ms=clears, assistant_s=assistant_s, stream_s=6.0)


def test_latency_counts_from_the_later_of_onset_and_first_audio_and_early_clears_are_false():
    during = _result(OVER, onset=1500.0, first_audio=100.0, clears=[900.0, 1720.0], assistant_s=1.4)
    assert during.latency_ms == pytest.approx(220.0)
    assert during.false_clears == 1  # the clear at 900 ms came before the caller said anything
    first = Condition("first-frame", "realtime", -24.0, -10.0)
    already = _result(first, onset=52.0, first_audio=300.0, clears=[650.0])
    assert already.latency_ms == pytest.approx(350.0) and already.false_clears == 0
    late = _result(OVER, onset=1000.0, first_audio=100.0, clears=[4100.0])
    assert late.latency_ms is None  # past the 3 s window: a miss, not a latency
    silent = _result(SILENT, onset=None, first_audio=100.0, clears=[2000.0, 5000.0], assistant_s=30.0)
    assert silent.latency_ms is None and silent.false_clears == 2

    side = SideResult(label="x", results=[during, late, silent], server_cpu_s=1.0, wall_s=10.0)
    table = "\n".join(format_report([Group("during", "t", (OVER,), 2), Group("silent", "s", (SILENT,), 1)], [side]))
    assert "| burst | -18 | none | 1/2 | 220 / 220 |" in table, table
    assert "| burst | none | none | 2 in 0.5 min (4.00/min) |" in table, table
    # The early clear cut the turn short for nobody here: the late one is a plain miss.
    assert "| 1/2 | 220 / 220 |" in table and "cut early" not in table, table
    summary = "\n".join(format_summary([Group("during", "t", (OVER,), 2), Group("silent", "s", (SILENT,), 1)], [side]))
    assert "| over the assistant, burst: caller -30 to -12 dBFS, echo none to -10 dB | 1/2 | 220 / 220 |" in summary
    # 3 false barge-ins over 1.4 s + 30 s of assistant speech heard in silence.
    assert "| every silent stretch (silent callers, and before each caller's onset) | false barge-ins: | " \
        "3 in 0.5 min (5.73/min) |" in summary, summary
