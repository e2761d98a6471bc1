"""The hand-off that travels between nodes: its JSON, its hops, and the bound on resumes."""

from __future__ import annotations

from calls.handoff import CRASH, DEPLOY, MAX_RESUMES, RESUME_WINDOW_S, Handoff, Hop, resume_allowed

SID = "CA" + "ab" * 16


def test_a_handoff_reads_back_as_it_was_written():
    handoff = Handoff(call_sid=SID, conversation_json=[{"role": "assistant", "text": "Hi"}], greeted=True,
                      resumes=1, from_node="node-a-1", reason=CRASH, left_at=100.5, started_at=90.0,
                      hops=(Hop("node-b-2", "node-a-1", DEPLOY, 95.0, 60.0),))
    assert Handoff.from_json(handoff.to_json()) == handoff
    assert Handoff.from_dict(handoff.to_dict()) == handoff


def test_garbage_is_no_handoff_and_an_unknown_reason_is_a_deploy():
    assert Handoff.from_json("not json") is None
    assert Handoff.from_json("[1, 2]") is None
    assert Handoff.from_json('{"conversation": []}') is None  # no CallSid
    odd = Handoff.from_json(f'{{"call_sid": "{SID}", "reason": "magic", "hops": [{{"from": 1}}], "resumes": -4}}')
    assert odd is not None and odd.reason == DEPLOY and odd.hops == () and odd.resumes == 0


def test_the_node_taking_the_stream_adds_a_hop_with_the_silence_since_the_old_stream_ended():
    handoff = Handoff(call_sid=SID, from_node="node-a", reason=DEPLOY, left_at=100.0, resumes=0)
    taken = handoff.taken_by("node-b", at=100.25)
    assert taken.resumes == 1
    assert taken.hops == (Hop("node-a", "node-b", DEPLOY, 100.0, 250.0),)
    # Unknown end (no left_at): no silence figure rather than a made-up one.
    assert Handoff(call_sid=SID).taken_by("node-b", at=5.0).hops[0].silence_ms is None


def test_resumes_are_bounded_within_the_window_only():
    now = 1000.0
    recent = tuple(Hop("a", "b", DEPLOY, now - 1.0 - i, 50.0) for i in range(MAX_RESUMES))
    assert not resume_allowed(Handoff(call_sid=SID, hops=recent), now=now)
    assert resume_allowed(Handoff(call_sid=SID, hops=recent[:-1]), now=now)
    old = tuple(Hop("a", "b", DEPLOY, now - RESUME_WINDOW_S - 1.0 - i, 50.0) for i in range(MAX_RESUMES))
    assert resume_allowed(Handoff(call_sid=SID, hops=old), now=now)
