"""The fleet soak end to end, briefly (real nginx, Redis, two nodes, one rolling restart), and its arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench._fleet import RestartDone
from bench._fleet_call import PhoneCall, Resume
from bench._fleet_result import FleetSoakResult, format_fleet_table, lost_reason, nearest_rank
from bench._fleet_soak import run_fleet_soak
from tests.services import nginx_binary, redis_binary  # noqa: F401 - fixtures


# The fleet comes up in 2-4 s, the calls run 12 s, the restart takes about 1 s and the
# shutdown 1-2 s; the bound leaves room for a loaded machine and for the bench's own waits.
@pytest.mark.timeout(120)
def test_a_rolling_restart_under_live_calls_loses_no_call(tmp_path, nginx_binary, redis_binary):  # noqa: F811
    result = run_fleet_soak(
        calls=3, seconds=12, chaos_rate=0, seed=7, call_seconds=10, restart_every_s=6, drain_timeout_s=5,
        workdir=tmp_path, log=lambda line: None,
    )
    table = format_fleet_table(result)

    assert len(result.restarts) == 1, table
    restart = result.restarts[0]
    assert restart.exit_status == 0 and restart.stop_s < 5, table  # handed off, not drained to the timeout
    assert restart.live_before >= 1, table  # the restarted node had calls to move
    assert len(result.silences) >= restart.live_before, table  # each of them resumed on a new stream
    assert all(s < 1.5 for s in result.silences), table
    assert result.phone_calls and all(call.connected for call in result.phone_calls), table
    assert result.lost == [], table
    assert [node.exit_status for node in result.nodes] == [0, 0], table
    assert result.ok, table
    assert "| **phone calls lost**" in table and "| result" in table
    assert (tmp_path / "node-a.log").stat().st_size > 0


def _call(ended: str, *, resumes: int = 0, audio_stopped: bool = False, detail: str = "") -> PhoneCall:
    return PhoneCall(
        call_sid=f"CA{ended}{resumes}{audio_stopped}", connected=True, ended=ended, detail=detail,
        resumes=tuple(Resume(silence_s=0.1 * (i + 1), close_code=1000) for i in range(resumes)), stream_s=60.0,
        utterances_judged=4, unanswered=2 if audio_stopped else 0, audio_stopped=audio_stopped, ended_at=0.0,
    )


def test_a_call_is_lost_when_the_caller_got_anything_but_the_assistant_until_it_hung_up():
    assert lost_reason(_call("hung-up", resumes=2), None) is None
    assert lost_reason(_call("hangup"), "assistant-ended") is None  # the assistant's own decision
    assert lost_reason(_call("hangup"), "gave-up") == "hung up by the bridge (outcome gave-up)"
    assert lost_reason(_call("hung-up", audio_stopped=True), None) == "audio stopped (last two utterances unanswered)"
    assert lost_reason(_call("refused"), None) == "fallback at the webhook"
    assert lost_reason(_call("fallback"), "drained") == "fallback after the stream ended (outcome drained)"
    assert lost_reason(_call("failed", detail="action URL answered HTTP 502"), None) == (
        "failed: action URL answered HTTP 502"
    )


def test_the_table_counts_lost_calls_and_the_silence_of_each_hand_off():
    calls = [_call("hung-up", resumes=3), _call("fallback"), _call("hung-up")]
    result = FleetSoakResult(
        calls=3, seconds=60, chaos_rate=1, seed=1, call_seconds=30, restart_every_s=20, drain_timeout_s=15,
        restarts_planned=2, phone_calls=calls, outcomes={calls[1].call_sid: "drained"},
        restarts=[RestartDone(node="node-a", at_s=20, exit_status=0, stop_s=0.3, down_s=1.2, live_before=2)],
        nodes=[], peak_live_calls=3, workdir=Path("/tmp/x"),
    )
    table = format_fleet_table(result)

    assert "| **phone calls lost**" in table and "| **1** |" in table
    assert "| hand-offs (streams resumed)" in table and "3 in 1 calls" in table
    assert "0.20 s / 0.30 s / 0.30 s" in table  # p50 / p95 / max of 0.1, 0.2, 0.3
    assert "1 / 2, one node every 20 s" in table
    assert not result.ok
    assert nearest_rank([5.0, 1.0, 3.0, 2.0], 0.5) == 2.0
    assert nearest_rank([], 0.5) is None
