"""VapiActor alone: outage retries, giving up, replay after a lost link, keepalive.

The connector and link are fakes and time is virtual, so every timer (retry backoff,
keepalive interval, pong timeout) is stepped by the test, exactly to its deadline.
"""

from __future__ import annotations

import json
import random
import time

import pytest

from actors.call import CallContext, PreparedVapi
from actors.messages import AssistantAudio, EndCall, EventNoted, HoldCaller, UplinkAudio
from actors.vapi import _NO_SECOND_GREETING, _RETRY_BACKOFF, VapiActor
from calls.conversation import Turn
from calls.outcome import Outcome
from links.errors import ErrorKind, VapiUnavailable
from links.vapi import Signal
from protocols.vapi import PCM16K, CreatedCall
from supervision import Exit, ExitKind, backoff_delay_s
from tests.actors.fakes import FakeClock, FakeConnector, FakeVapiLink, ProbeParent, settle, wait_until

FRAME_BYTES_16K = 640


def send_uplink(call: CallContext, parent: ProbeParent, marker: int) -> bytes:
    """What CodecActor does with 20 ms of caller audio: keep it in the call, tell the VapiActor."""
    data = bytes([marker]) * FRAME_BYTES_16K
    seq = call.uplink.append(data)
    assert parent.table.tell("vapi", UplinkAudio(seq, data, call.clock.monotonic_ns()))
    return data


def link_up(parent: ProbeParent, connector: FakeConnector, count: int = 1) -> FakeVapiLink:
    assert wait_until(lambda: len(connector.links) == count), connector.creates
    parent.settle()  # VapiLinkUp handled: the replay is out, live frames may follow
    return connector.link


def test_an_outage_is_retried_with_jittered_backoff_and_the_link_then_replays_what_waited(
    call: CallContext, parent: ProbeParent, clock: FakeClock, connector: FakeConnector
) -> None:
    connector.refuse(2, ErrorKind.SERVER)
    # The third attempt creates the call, but its socket does not open: a retry like the others.
    connector.connect_script.append(VapiUnavailable(ErrorKind.CONNECTIVITY, "call socket failed: ConnectionRefused"))
    parent.start(VapiActor)
    # The caller keeps talking meanwhile; the codec keeps the frames in the call's buffer.
    waited = [send_uplink(call, parent, n) for n in (1, 2, 3)]
    assert parent.wait_for("twilio", HoldCaller) == [HoldCaller(True)]
    assert [e.kind for e in parent.wait_for("supervisor", EventNoted)] == ["outage"]

    # The same arithmetic, on the same seeded random numbers, as the actor's.
    rng = random.Random(1)
    delays = [backoff_delay_s(_RETRY_BACKOFF, attempt, rng) for attempt in range(3)]
    assert delays[0] < delays[1] < delays[2]  # doubling, jitter and all (seed 1)
    for attempt, delay in enumerate(delays, start=1):
        assert wait_until(lambda n=attempt: len(connector.creates) == n)
        assert clock.pending == pytest.approx([delay], abs=1e-9)
        clock.advance(delay - 0.001)
        assert len(connector.creates) == attempt, "retried before its delay was over"
        clock.advance(0.001)

    link = link_up(parent, connector)
    assert len(connector.creates) == 4
    gaps = [b - a for a, b in zip(connector.create_times, connector.create_times[1:], strict=False)]
    assert gaps == pytest.approx(delays, abs=1e-9)
    assert parent.of("twilio", HoldCaller) == [HoldCaller(True), HoldCaller(False)]
    # Every attempt is the first link of the call: VAPI greets the caller.
    assert connector.creates == [(PCM16K, None)] * 4
    # What waited in the buffer goes out first, in order; live audio follows, once.
    assert link.audio_sent == waited
    live = send_uplink(call, parent, 4)
    parent.table.tell("vapi", UplinkAudio(2, waited[1], clock.monotonic_ns()))  # already replayed
    parent.settle()
    assert link.audio_sent == [*waited, live]
    assert call.uplink.sent_seq == 4
    assert not call.state.vapi_greeted  # VAPI has not said a word yet
    link.feed(b"\x01\x02" * 320)
    parent.wait_for("codec", AssistantAudio)
    assert call.state.vapi_greeted
    assert call.state.vapi_links == 1
    assert [e.kind for e in parent.of("supervisor", EventNoted)] == ["outage"]  # no "reconnect" on a first link
    assert clock.pending == [call.settings.keepalive_interval_s]  # only the keepalive waits now


def test_the_next_incarnation_does_not_greet_again_and_replays_only_what_the_lost_link_may_have_swallowed(
    call: CallContext, parent: ProbeParent, connector: FakeConnector
) -> None:
    first = parent.start(VapiActor)
    link1 = link_up(parent, connector)
    delivered = [send_uplink(call, parent, n) for n in (1, 2, 3)]
    parent.settle()
    link1.feed(b"\x01\x02" * 320)  # VAPI speaks: it had everything sent so far
    parent.wait_for("codec", AssistantAudio)
    assert call.uplink.answered_seq == 3
    swallowed = [send_uplink(call, parent, n) for n in (4, 5)]
    parent.settle()
    assert link1.audio_sent == delivered + swallowed

    link1.feed(Signal.CLOSED)
    assert wait_until(lambda: parent.exits)
    assert parent.exits == [Exit(ExitKind.FAILED, "VapiLinkDead: closed by VAPI")]
    assert not first.is_alive()
    assert link1.closed_with == [False]  # a dead link gets no goodbye

    parent.start(VapiActor)  # what the supervisor does next, after its backoff
    link2 = link_up(parent, connector, count=2)
    assert connector.creates[1] == (PCM16K, _NO_SECOND_GREETING)
    assert link2.audio_sent == swallowed
    assert call.state.vapi_links == 2
    reconnects = [e for e in parent.of("supervisor", EventNoted) if e.kind == "reconnect"]
    assert reconnects == [EventNoted("reconnect", "VAPI link 2, 0 turns given, 40 ms replayed")]
    assert parent.of("twilio", HoldCaller) == []  # no outage: the caller heard no hold sound


def test_words_vapi_heard_but_had_not_answered_when_its_link_died_are_replayed_to_the_next(
    call: CallContext, parent: ProbeParent, clock: FakeClock, connector: FakeConnector
) -> None:
    # Issue 14: VAPI heard the caller's utterance (its transcript and a pong came back),
    # then the link died before VAPI answered. The next link is a new VAPI call, which
    # never heard those words: they must be replayed, or the caller's turn goes unanswered.
    parent.start(VapiActor)
    link1 = link_up(parent, connector)
    answered = [send_uplink(call, parent, n) for n in (1, 2)]
    parent.settle()
    link1.feed(b"\x01\x02" * 320)  # the assistant's previous answer: frames 1 and 2 were heard
    parent.wait_for("codec", AssistantAudio)
    utterance = [send_uplink(call, parent, n) for n in (3, 4, 5)]
    parent.settle()
    assert link1.audio_sent == answered + utterance
    clock.advance(call.settings.keepalive_interval_s)
    assert link1.pings == 1
    transcript = '{"type": "transcript", "role": "user", "transcriptType": "final", "transcript": "hello"}'
    link1.feed(transcript, Signal.PONG)
    assert wait_until(lambda: link1.unread == 0)
    parent.settle()
    assert call.uplink.answered_seq == 2  # heard, not answered

    link1.feed(Signal.CLOSED)
    assert wait_until(lambda: parent.exits)
    parent.start(VapiActor)
    link2 = link_up(parent, connector, count=2)
    assert link2.audio_sent == utterance


def test_vapi_unreachable_past_the_retry_budget_ends_the_call_as_gave_up_in_virtual_time(
    call: CallContext, parent: ProbeParent, clock: FakeClock, connector: FakeConnector
) -> None:
    connector.refuse_forever = VapiUnavailable(ErrorKind.SERVER, "POST /call answered 503")
    budget = call.settings.retry_budget_s
    # When the actor must give up: the first retry whose delay would overrun the budget.
    rng = random.Random(1)
    delays: list[float] = []
    while sum(delays) + (delay := backoff_delay_s(_RETRY_BACKOFF, len(delays), rng)) <= budget:
        delays.append(delay)
    attempts = len(delays) + 1
    assert attempts > 5  # a real outage's worth of retries, not an early exit

    started = time.monotonic()
    ref = parent.start(VapiActor)
    parent.wait_for("twilio", HoldCaller)
    clock.advance(sum(delays) - 0.001)
    parent.settle()
    assert len(connector.creates) == attempts - 1
    assert call.state.end_request is None
    clock.advance(0.002)  # the last attempt fails too, and no delay fits any more

    ends = parent.wait_for("supervisor", EndCall)
    request = call.state.end_request
    assert request is not None
    assert request.outcome is Outcome.GAVE_UP
    assert request.detail.startswith(f"VAPI unavailable after {attempts} attempts: server:")
    assert ends == [EndCall(Outcome.GAVE_UP, request.detail)]
    assert len(connector.creates) == attempts
    assert clock.sleeps == pytest.approx(delays)
    assert parent.of("twilio", HoldCaller) == [HoldCaller(True), HoldCaller(False)]
    assert connector.links == []
    assert clock.pending == []
    assert ref.is_alive()  # the supervisor stops it, with the rest of the call
    assert time.monotonic() - started < budget / 3, "the budget was waited out in real time"


def test_a_permanent_refusal_gives_up_at_once(
    call: CallContext, parent: ProbeParent, clock: FakeClock, connector: FakeConnector
) -> None:
    connector.refuse(1, ErrorKind.AUTHENTICATION)
    parent.start(VapiActor)
    parent.wait_for("supervisor", EndCall)
    assert call.state.end_request is not None
    assert call.state.end_request.outcome is Outcome.GAVE_UP
    assert "after 1 attempts: authentication" in call.state.end_request.detail
    assert clock.sleeps == []
    assert len(connector.creates) == 1


def test_no_pong_within_the_timeout_fails_the_actor(
    call: CallContext, parent: ProbeParent, clock: FakeClock, connector: FakeConnector
) -> None:
    ref = parent.start(VapiActor)
    link = link_up(parent, connector)
    assert clock.pending == [5.0]
    clock.advance(4.999)
    assert link.pings == 0
    clock.advance(0.001)
    assert link.pings == 1
    assert clock.pending == [1.0]
    clock.advance(0.999)
    parent.settle()
    assert ref.is_alive()
    assert parent.exits == []

    clock.advance(0.001)
    assert wait_until(lambda: parent.exits)
    assert parent.exits == [Exit(ExitKind.FAILED, "VapiLinkDead: no pong within 1s")]
    assert wait_until(lambda: not ref.is_alive())
    assert link.closed_with == [False]
    assert clock.pending == []  # its timers went with it


def test_a_pong_in_time_keeps_the_link_but_vouches_for_no_audio(
    call: CallContext, parent: ProbeParent, clock: FakeClock, connector: FakeConnector
) -> None:
    ref = parent.start(VapiActor)
    link = link_up(parent, connector)
    before = [send_uplink(call, parent, n) for n in (1, 2)]
    parent.settle()
    clock.advance(5.0)
    assert link.pings == 1
    after = send_uplink(call, parent, 3)
    parent.settle()
    assert link.audio_sent == [*before, after]

    link.feed(Signal.PONG)
    assert wait_until(lambda: link.unread == 0)
    settle()
    # Delivered is not answered: were the VAPI call to die now, the next one must hear it all.
    assert call.uplink.answered_seq == 0
    clock.advance(1.0)
    parent.settle()
    assert ref.is_alive()
    assert parent.exits == []
    assert clock.pending == [5.0]  # the next round

    # The control: the next ping goes unanswered, and the same link dies for it.
    clock.advance(5.0)
    assert link.pings == 2
    clock.advance(1.0)
    assert wait_until(lambda: parent.exits)
    assert parent.exits[0].reason == "VapiLinkDead: no pong within 1s"


def test_the_first_link_joins_the_vapi_call_the_webhook_created_and_a_later_one_creates_its_own(
    call: CallContext, parent: ProbeParent, connector: FakeConnector
) -> None:
    call.prepared_vapi = PreparedVapi(CreatedCall(call_id="from-the-ticket", websocket_url="wss://vapi.invalid/call/ticket"))
    first = parent.start(VapiActor)
    link1 = link_up(parent, connector)
    assert connector.creates == []  # no POST /call: the ticket's call is joined
    assert link1.call_id == "ticket" and call.prepared_vapi is None
    assert call.state.vapi_links == 1
    link1.feed(b"\x01\x02" * 320)  # the ticket's call greets the caller
    parent.wait_for("codec", AssistantAudio)
    link1.feed(Signal.CLOSED)
    assert wait_until(lambda: parent.exits) and not first.is_alive()
    parent.start(VapiActor)  # the supervisor's restart: the ticket's call is gone with its link
    link_up(parent, connector, count=2)
    assert connector.creates == [(PCM16K, _NO_SECOND_GREETING)]


def test_a_link_that_dies_before_the_assistant_said_a_word_leaves_the_next_vapi_call_to_greet(
    call: CallContext, parent: ProbeParent, connector: FakeConnector
) -> None:
    first = parent.start(VapiActor)
    link1 = link_up(parent, connector)
    waited = [send_uplink(call, parent, n) for n in (1, 2)]
    parent.settle()
    link1.feed(Signal.CLOSED)  # opened, then gone before VAPI said anything
    assert wait_until(lambda: parent.exits) and not first.is_alive()
    assert not call.state.vapi_greeted
    parent.start(VapiActor)
    link2 = link_up(parent, connector, count=2)
    # The caller has heard nothing: the new call greets, as a first call would, with no
    # history to give and no "reconnect" to report; what the caller said is replayed.
    assert connector.creates == [(PCM16K, None), (PCM16K, None)]
    assert link2.audio_sent == waited and not [t for t in link2.sent if isinstance(t, str)]
    assert [e for e in parent.of("supervisor", EventNoted) if e.kind == "reconnect"] == []
    link2.feed(b"\x01\x02" * 320)
    parent.wait_for("codec", AssistantAudio)
    assert call.state.vapi_greeted


def test_a_webhook_vapi_call_that_cannot_be_joined_is_replaced_by_a_new_one_that_greets(
    call: CallContext, parent: ProbeParent, connector: FakeConnector
) -> None:
    call.prepared_vapi = PreparedVapi(CreatedCall(call_id="from-the-ticket", websocket_url="wss://vapi.invalid/call/ticket"))
    connector.connect_script.append(VapiUnavailable(ErrorKind.CONNECTIVITY, "call socket refused: 404"))
    parent.start(VapiActor)
    link = link_up(parent, connector)
    assert connector.creates == [(PCM16K, None)]  # the caller has not been greeted yet
    assert link.call_id == "1"
    assert parent.of("twilio", HoldCaller) == []  # not an outage: no hold sound


# The conversation.


def transcript(role: str, text: str, kind: str = "final") -> str:
    return json.dumps({"type": "transcript", "role": role, "transcriptType": kind, "transcript": text})


def history(*turns: tuple[str, str]) -> str:
    entries = [{"role": "system", "content": "You are a test assistant."}]
    entries += [{"role": role, "content": text} for role, text in turns]
    return json.dumps({"type": "conversation-update", "conversation": entries})


def feed_events(parent: ProbeParent, link: FakeVapiLink, *events: str) -> None:
    link.feed(*events)
    assert wait_until(lambda: link.unread == 0)
    parent.settle()


def test_final_transcripts_are_kept_in_the_call_state_and_partial_ones_are_not(
    call: CallContext, parent: ProbeParent, connector: FakeConnector
) -> None:
    parent.start(VapiActor)
    link = link_up(parent, connector)
    feed_events(
        parent, link,
        transcript("assistant", "Hello, where to?"),
        transcript("user", "To the", kind="partial"),
        transcript("user", "To the station."),
        transcript("assistant", "Booked."),
    )
    assert call.state.conversation.turns() == (
        Turn("assistant", "Hello, where to?"), Turn("user", "To the station."), Turn("assistant", "Booked.")
    )


def test_a_conversation_update_stands_for_the_link_and_later_transcripts_are_not_added_twice(
    call: CallContext, parent: ProbeParent, connector: FakeConnector
) -> None:
    parent.start(VapiActor)
    link = link_up(parent, connector)
    feed_events(parent, link, transcript("assistant", "Hi."), history(("assistant", "Hi."), ("user", "Hello.")))
    assert call.state.conversation.turns() == (Turn("assistant", "Hi."), Turn("user", "Hello."))
    # VAPI may send a turn's final transcript after the update that holds it.
    feed_events(parent, link, transcript("user", "Hello."))
    assert call.state.conversation.turns() == (Turn("assistant", "Hi."), Turn("user", "Hello."))


def test_malformed_history_is_counted_and_the_call_goes_on(
    call: CallContext, parent: ProbeParent, connector: FakeConnector
) -> None:
    parent.start(VapiActor)
    link = link_up(parent, connector)
    feed_events(
        parent, link,
        '{"type": "conversation-update", "conversation": "oops"}',
        '{"type": "conversation-update", "conversation": [7, {"role": "user", "content": "Yes."}]}',
    )
    assert call.metrics.value("bridge_malformed_inputs_total", source="vapi", kind="bad_field") == 1
    assert call.metrics.value("bridge_malformed_inputs_total", source="vapi", kind="history_entry") == 1
    assert call.state.conversation.turns() == (Turn("user", "Yes."),)
    assert parent.exits == []


def test_a_replaced_link_gives_the_new_vapi_call_the_conversation_before_the_replayed_audio(
    call: CallContext, parent: ProbeParent, connector: FakeConnector
) -> None:
    parent.start(VapiActor)
    link1 = link_up(parent, connector)
    feed_events(
        parent, link1,
        transcript("assistant", "Hello, where to?"), transcript("user", "To the station."),
        transcript("assistant", "When?"),
    )
    link1.feed(b"\x01\x02" * 320)  # the last of "When?"
    parent.wait_for("codec", AssistantAudio)
    swallowed = [send_uplink(call, parent, n) for n in (1, 2)]  # "Now, please": never answered
    parent.settle()
    link1.feed(Signal.CLOSED)
    assert wait_until(lambda: parent.exits)

    parent.start(VapiActor)
    link2 = link_up(parent, connector, count=2)
    assert connector.creates[1] == (PCM16K, _NO_SECOND_GREETING)
    context = [json.loads(text) for text in link2.sent if isinstance(text, str)]
    assert context == [
        {"type": "add-message", "message": {"role": "assistant", "content": "Hello, where to?"},
         "triggerResponseEnabled": False},
        {"type": "add-message", "message": {"role": "user", "content": "To the station."},
         "triggerResponseEnabled": False},
        {"type": "add-message", "message": {"role": "assistant", "content": "When?"},
         "triggerResponseEnabled": False},
    ]
    assert link2.sent[3:] == swallowed  # the history first, then the caller's words
    reconnects = [e.detail for e in parent.of("supervisor", EventNoted) if e.kind == "reconnect"]
    assert reconnects == ["VAPI link 2, 3 turns given, 40 ms replayed"]

    # The new VAPI call reports the history it was given as its own, then its own turns.
    given = [("assistant", "Hello, where to?"), ("user", "To the station."), ("assistant", "When?")]
    feed_events(parent, link2, history(*given[:1]))  # still taking it in: nothing is lost
    assert len(call.state.conversation) == 3
    feed_events(parent, link2, history(*given, ("user", "Now, please.")))
    assert call.state.conversation.turns()[-1] == Turn("user", "Now, please.")
    assert len(call.state.conversation) == 4


def test_a_new_vapi_call_that_reports_only_its_own_turns_keeps_the_earlier_ones(
    call: CallContext, parent: ProbeParent, connector: FakeConnector
) -> None:
    call.state.vapi_greeted = True  # a call taken over from elsewhere, with its conversation
    call.state.conversation.add("assistant", "Hello.")
    call.state.conversation.add("user", "Hi.")
    parent.start(VapiActor)
    link = link_up(parent, connector)
    assert connector.creates == [(PCM16K, _NO_SECOND_GREETING)]
    assert len(link.text_sent) == 2
    feed_events(parent, link, history(("assistant", "How can I help?")))
    assert [t.text for t in call.state.conversation.turns()] == ["Hello.", "Hi.", "How can I help?"]


def test_the_first_link_of_a_call_is_given_no_history(
    call: CallContext, parent: ProbeParent, connector: FakeConnector
) -> None:
    parent.start(VapiActor)
    link = link_up(parent, connector)
    assert link.text_sent == []
    assert connector.creates == [(PCM16K, None)]
