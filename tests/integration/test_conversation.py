"""The conversation outlives its VAPI call: a replacement VAPI call is told what was said."""

from __future__ import annotations

from actors.messages import InjectFault
from audio.signals import silence, tone
from sims.vapi_call import GREETING_TEXT
from tests.integration.conftest import wait_until
from tests.integration.test_call_flow import sim_call_for, speak_and_wait_for_answer, start_call


def keep_talking_until(caller, predicate, timeout=5.0):
    """Silence on the line (Twilio streams continuously) until `predicate` holds."""
    for _ in range(int(timeout / 0.1)):
        if predicate():
            return True
        caller.send_audio(silence(100, 8000))
    return bool(predicate())


def test_a_replaced_vapi_link_hands_the_conversation_to_the_new_vapi_call(bridge, vapi_sim, make_caller):
    caller = start_call(make_caller)
    first = sim_call_for(vapi_sim)
    assert speak_and_wait_for_answer(caller)
    call = bridge.calls.get(caller.call_sid)
    earlier = [("assistant", GREETING_TEXT), ("user", "utterance 1"), ("assistant", "Answer 1.")]
    # The bridge keeps the conversation as VAPI reports it.
    assert keep_talking_until(caller, lambda: [(t.role, t.text) for t in call.state.conversation.turns()] == earlier)
    assert first.history == earlier

    call.children.tell("vapi", InjectFault("blackhole"))  # chaos `vapi blackhole`: pongs stop
    caller.send_audio(tone(600.0, 400, 8000, -20.0))  # words the dying link swallows
    caller.send_audio(silence(400, 8000))
    second = sim_call_for(vapi_sim, index=1, timeout=5)
    assert second.first_message_mode == "assistant-waits-for-user"

    # The new VAPI call got the earlier turns as history, before any of the caller's audio.
    assert wait_until(lambda: len(second.added_messages) == 3, timeout=3)
    given = [(m.role, m.content, m.trigger_response, m.audio_bytes_before) for m in second.added_messages]
    assert given == [(role, text, False, 0) for role, text in earlier]
    # The replayed words get their answer, and the answer shows the assistant knew the rest.
    knew = "Answer 1. I remember 3 earlier turns."
    assert keep_talking_until(caller, lambda: ("assistant", knew) in second.history)
    assert not second.greeted
    assert keep_talking_until(caller, lambda: call.state.conversation.turns()[-1].text == knew)
    assert [(t.role, t.text) for t in call.state.conversation.turns()][:3] == earlier
    assert caller.errors == []
