from __future__ import annotations

import json

import pytest

from calls.conversation import Conversation, Turn


def test_turns_are_kept_in_order_and_blank_ones_ignored():
    conversation = Conversation()
    conversation.add("assistant", "Hello, how can I help?")
    conversation.add("user", "  ")
    conversation.add("user", " I need a taxi. ")
    assert conversation.turns() == (Turn("assistant", "Hello, how can I help?"), Turn("user", "I need a taxi."))
    assert len(conversation) == 2


def test_the_oldest_turns_go_first_past_the_turn_bound():
    conversation = Conversation(max_turns=3)
    for i in range(5):
        conversation.add("user" if i % 2 else "assistant", f"turn {i}")
    assert [t.text for t in conversation.turns()] == ["turn 2", "turn 3", "turn 4"]


def test_a_speakers_consecutive_utterances_are_one_turn():
    conversation = Conversation()
    conversation.add("assistant", "Hello.")
    conversation.add("assistant", "Where to?")
    conversation.add("user", "The station.")
    assert conversation.turns() == (Turn("assistant", "Hello. Where to?"), Turn("user", "The station."))


def test_the_oldest_turns_go_first_past_the_character_bound():
    conversation = Conversation(max_chars=10)
    conversation.add("user", "aaaa")
    conversation.add("assistant", "bbbb")
    conversation.add("user", "cccc")
    assert [t.text for t in conversation.turns()] == ["bbbb", "cccc"]


def test_an_over_long_turn_keeps_its_end():
    conversation = Conversation(max_chars=5)
    conversation.add("user", "first")
    conversation.add("assistant", "01234")
    conversation.add("assistant", "56789")
    assert conversation.turns() == (Turn("assistant", "56789"),)  # "01234 56789", cut to its end


def test_an_unknown_role_is_refused():
    with pytest.raises(ValueError, match="role"):
        Conversation().add("system", "you are a bot")


def test_replace_takes_a_reported_conversation_within_the_bounds():
    conversation = Conversation(max_turns=2)
    conversation.add("user", "old")
    conversation.replace([Turn("assistant", "a"), Turn("user", "b"), Turn("assistant", "c")])
    assert conversation.turns() == (Turn("user", "b"), Turn("assistant", "c"))


def test_json_round_trip_through_text():
    conversation = Conversation()
    conversation.add("assistant", "Hello")
    conversation.add("user", "Hi there")
    again = Conversation.from_json(json.loads(json.dumps(conversation.to_json())))
    assert again == conversation
    assert again.turns() == conversation.turns()


def test_from_json_skips_what_it_cannot_read():
    data = [{"role": "user", "text": "ok"}, {"role": "system", "text": "x"}, {"role": "user"}, "junk", None]
    assert Conversation.from_json(data).turns() == (Turn("user", "ok"),)
    assert len(Conversation.from_json({"not": "a list"})) == 0


def test_copy_is_independent():
    conversation = Conversation()
    conversation.add("user", "one")
    copy = conversation.copy()
    conversation.add("assistant", "two")
    assert len(copy) == 1
