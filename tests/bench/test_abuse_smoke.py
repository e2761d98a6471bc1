"""The abuse bench: its arithmetic and verdicts without a server, then two cheap cases end to end."""

from __future__ import annotations

import json

import pytest

from bench._abuse_attacks import (
    PATH_FORMS,
    bad_websocket_key,
    replay_captured_handshake,
    replay_legit_handshake,
    replay_webhook,
    setup_replay,
    unsigned_path_forms,
)
from bench._abuse_case import Case, run_case
from bench._abuse_measure import (
    ACCESS_LOG,
    CaseResult,
    Finding,
    count_log_lines,
    format_case,
    format_summary,
    judge,
    rss_before_and_max,
    worst_gap_ms,
)

MIB = 1024 * 1024

# ---- arithmetic and verdicts -------------------------------------------------------------


def test_worst_gap_counts_the_edges_of_the_window():
    arrivals = [0.95, 1.02, 1.04, 1.30, 1.32]
    # The stretch across the window's start runs from the last arrival before it.
    assert worst_gap_ms(arrivals, 1.0, 1.35) == pytest.approx(260.0)
    # A stream that stopped: the gap runs to the end of the window.
    assert worst_gap_ms(arrivals, 1.0, 2.0) == pytest.approx(680.0)
    # Nothing at all: the whole window.
    assert worst_gap_ms([], 1.0, 1.5) == pytest.approx(500.0)


def test_rss_growth_is_the_peak_in_the_window_over_the_last_sample_before_it():
    samples = [(0.0, 100), (0.9, 110), (1.1, 150), (1.5, 130), (2.5, 999)]
    assert rss_before_and_max(samples, 1.0, 2.0) == (110, 150)
    assert rss_before_and_max([(1.2, 5)], 1.0, 2.0) == (5, 5)
    assert rss_before_and_max([], 1.0, 2.0) == (None, None)


def test_log_lines_are_counted_per_event_with_library_and_access_lines_apart(tmp_path):
    log = tmp_path / "server.log"
    before = [json.dumps({"event": "server_listening"})]
    after = [
        json.dumps({"event": "twilio_frame_malformed", "kind": "oversize"}),
        json.dumps({"event": "twilio_frame_malformed", "kind": "oversize"}),
        json.dumps({"event": "log_suppressed", "suppressed": 1998}),
        json.dumps({"event": '127.0.0.1 - - "GET /healthz HTTP/1.1" 200', "logger": "geventwebsocket.handler"}),
        json.dumps({"event": "Traceback ...", "logger": "gevent", "level": "error"}),
        "Traceback (most recent call last):",
    ]
    log.write_text("\n".join(before) + "\n")
    offset = log.stat().st_size
    with log.open("a") as f:
        f.write("\n".join(after) + "\n")

    total, events = count_log_lines(log, offset)

    assert total == 6
    assert events == {"twilio_frame_malformed": 2, "log_suppressed": 1, ACCESS_LOG: 1,
                      "[gevent] error": 1, "<not json>": 1}


def _result(**changes) -> CaseResult:
    fields = dict(
        key="x", name="synthetic", title="made up", window_s=10.0, ran=True, legit_alive=True,
        legit_detail="fine", inbound_gap_ms=30.0, outbound_gap_ms=40.0, rss_before_bytes=60 * MIB,
        rss_max_bytes=61 * MIB, cpu_percent=5.0, log_lines=3, log_events={"call_answered": 3},
    )
    fields.update(changes)
    return CaseResult(**fields)


def test_a_clean_case_passes_and_each_criterion_fails_it_on_its_own():
    unjudged = _result()
    assert not unjudged.ok  # no verdict before judging
    clean = _result()
    judge(clean)
    assert clean.ok, format_case(clean)

    failing = {
        "attack achieved nothing it should not": _result(findings=[Finding("a", "HTTP status", 101, ok=False)]),
        "no extra VAPI call": _result(vapi_fresh=1),
        "legit call alive": _result(legit_alive=False),
        "legit inbound gap <= 250 ms": _result(inbound_gap_ms=251.0),
        "legit outbound gap <= 250 ms": _result(outbound_gap_ms=None),
        "server RSS growth <= 50 MiB": _result(rss_max_bytes=111 * MIB),
        "no log event > 25 lines": _result(log_events={"vapi_event_malformed": 26, ACCESS_LOG: 500}),
        "bench ran cleanly": _result(problems=["an attack crashed"]),
    }
    for name, result in failing.items():
        checks = judge(result)
        assert not result.ok, name
        assert [c.name for c in checks if not c.ok] == [name], format_case(result)

    # One access-log line per request is not a flood of one event.
    access_only = _result(log_events={ACCESS_LOG: 500})
    judge(access_only)
    assert access_only.ok, format_case(access_only)


def test_the_report_prints_every_finding_check_and_the_verdict():
    result = _result(findings=[Finding("upgrade //media/<sid>", "HTTP status", 101, ok=False, want="no 101"),
                               Finding("upgrade /nope", "HTTP status", 404, ok=True),
                               Finding("replay", "answer", "HTTP 200, no <Stream>")])
    text = format_case(result)

    assert "[FAIL] upgrade //media/<sid>: HTTP status = 101 (want: no 101)" in text
    assert "[ ok ] upgrade /nope: HTTP status = 404" in text
    assert "[info] replay: answer = HTTP 200, no <Stream>" in text
    assert "growth +1.0 MiB" in text
    assert text.endswith("RESULT x synthetic: FAIL")
    table = format_summary([result, _result(name="other")])
    assert "| x synthetic | FAIL |" in table and "| x other | PASS |" in table


def test_a_case_that_could_not_run_fails():
    result = CaseResult(key="x", name="broken", title="t", error="ServerError: no /healthz")
    judge(result)
    assert not result.ok
    assert "ServerError: no /healthz" in format_case(result)


# ---- end to end: a real server process, the legit call, the cheapest attacks -------------


def _findings(result: CaseResult, attack_prefix: str, metric: str) -> list[Finding]:
    return [f for f in result.findings if f.attack.startswith(attack_prefix) and f.metric == metric]


# Server start, the legit call, 1.5 s warm-up, 2 s of attack, 1.5 s tail, shutdown: ~8 s.
@pytest.mark.timeout(40)
def test_path_forms_and_bad_keys_against_a_real_server(tmp_path):
    case = Case("t1", "path-forms+keys", "smoke", (unsigned_path_forms, bad_websocket_key))
    result = run_case(case, seconds=2.0, workdir=tmp_path, log=lambda line: None)
    text = format_case(result)

    assert result.ran, text
    assert not result.problems, text
    statuses = {f.attack: f.value for f in _findings(result, "upgrade ", "HTTP status")}
    assert len(statuses) == len(PATH_FORMS), text
    assert all(isinstance(status, int) for status in statuses.values()), text
    keys = _findings(result, "Sec-WebSocket-Key", "HTTP status")
    assert len(keys) == 3 and all(isinstance(f.value, int) for f in keys), text
    # The measurements are real: 20 ms frames both ways, a live server's memory and CPU.
    assert result.legit_alive, text
    assert 15.0 <= result.inbound_gap_ms < 5000.0 and 15.0 <= result.outbound_gap_ms < 5000.0, text
    assert result.rss_before_bytes is not None and result.rss_before_bytes > 10 * MIB, text
    assert result.cpu_percent is not None and result.cpu_percent > 0.0, text
    assert result.log_lines > 0 and (tmp_path / "server.log").stat().st_size > 0, text
    assert f"RESULT t1 path-forms+keys: {'PASS' if result.ok else 'FAIL'}" in text

    # SECURITY FIX (upgrade gate): holds once only signed canonical /media/<CallSid>
    # upgrades of admitted calls are accepted; fails against the unfixed tree (a5dcbe2^),
    # where //media/, ///media/, /%2Fmedia/, /healthz, /dashboard and /nope all got 101.
    assert 101 not in statuses.values(), text
    assert result.vapi_fresh == 0, text
    # SECURITY FIX (handshake checks): a bad Sec-WebSocket-Key is a 400 (403 when also
    # unsigned), never a 500 as before the fix.
    assert all(f.ok for f in keys), text


# Setup adds a whole captured call (webhook, handshake, 1 s of audio, stop): ~12 s.
@pytest.mark.timeout(40)
def test_replays_are_measured_against_a_real_server(tmp_path):
    case = Case("t6", "replay", "smoke", (replay_webhook, replay_captured_handshake, replay_legit_handshake),
                setup=setup_replay)
    result = run_case(case, seconds=3.0, workdir=tmp_path, log=lambda line: None)
    text = format_case(result)

    assert result.ran, text
    assert not result.problems, text
    assert len(_findings(result, "replayed webhook of an ended call", "answer")) == 1, text
    assert len(_findings(result, "captured handshake of the ended call", "HTTP status")) == 3, text
    assert len(_findings(result, "the live legit call's handshake", "HTTP status")) == 3, text
    # A replay of the live call's handshake must not take the call from its caller.
    assert result.legit_alive, text
    assert result.rss_growth_mib is not None, text
    assert ("no extra VAPI call", result.vapi_fresh == 0) in [(c.name, c.ok) for c in result.checks], text


class _FakeSimCall:
    def __init__(self, call_id: str, ended: bool) -> None:
        import gevent.event

        self.call_id = call_id
        self.first_message_mode = None
        self.audio_format = "pcm_s16le"
        self.greeting_ms = 60_000
        self.on_audio = None
        self.ended = gevent.event.Event()
        if ended:
            self.ended.set()


def test_the_legit_calls_inbound_audio_follows_its_own_relinks_only():
    import numpy as np

    from bench._abuse_measure import VapiTracker

    quiet, loud = bytes(640), (np.full(320, 8000, dtype="<i2")).tobytes()
    tracker = VapiTracker()
    calls = {}

    def create(call_id: str, *, relink: bool, ended: bool = False) -> None:
        call = calls[call_id] = _FakeSimCall(call_id, ended)
        call.first_message_mode = "assistant-waits-for-user" if relink else None
        tracker.on_call(call)

    create("legit", relink=False, ended=True)
    create("attacker", relink=False)  # a new call: counted apart, never the legit's
    create("victim-relink", relink=True)  # loud: a victim's re-link
    create("legit-relink", relink=True)  # quiet, after the legit link ended
    for call_id, data in (("legit", quiet), ("attacker", quiet), ("victim-relink", loud), ("legit-relink", quiet)):
        calls[call_id].on_audio(calls[call_id], data)

    assert tracker.legit_chain("legit") == ["legit", "legit-relink"]
    assert len(tracker.legit_arrivals("legit")) == 2
    assert [info.call_id for info in tracker.calls.values() if info.relink] == ["victim-relink", "legit-relink"]
    assert tracker.calls["victim-relink"].loud and not tracker.calls["legit-relink"].loud
    # Only the call created right after `long_greeting_next` keeps the long greeting.
    assert {call.greeting_ms for call in calls.values()} == {3000}
    tracker.long_greeting_next = True
    create("next", relink=False)
    create("after", relink=False)
    assert (calls["next"].greeting_ms, calls["after"].greeting_ms) == (60_000, 3000)
