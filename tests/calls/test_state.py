from __future__ import annotations

import json

from calls.state import CallState


def test_the_conversation_travels_with_the_call_state():
    state = CallState("CA" + "ab" * 16)
    state.conversation.add("assistant", "Hello")
    state.conversation.add("user", "Hi")
    again = CallState.from_json(json.loads(json.dumps(state.to_json())))
    assert again.conversation == state.conversation
    assert len(again.conversation) == 2


def test_a_state_stored_before_conversations_reads_as_an_empty_one():
    data = CallState("CA" + "ab" * 16).to_json()
    del data["conversation"]
    assert len(CallState.from_json(data).conversation) == 0
