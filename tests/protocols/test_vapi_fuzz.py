"""Property-based fuzzing of `protocols.vapi.parse_event` and `parse_create_response`: whatever
VAPI sends, the parsers return one of their documented types or raise ProtocolError."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import ProtocolError
from protocols.twilio import DTMF_DIGITS
from protocols.vapi import (
    ConversationUpdate,
    CreatedCall,
    Hang,
    OtherEvent,
    SpeechUpdate,
    StatusUpdate,
    Transcript,
    UserInterrupted,
    VapiEvent,
    dtmf_message,
    encode_add_message,
    encode_end_call,
    encode_say,
    parse_create_response,
    parse_event,
)
from tests.protocols.strategies import (
    FUZZ,
    any_text,
    check_protocol_error,
    extras,
    hostile_text,
    json_values,
    mutated,
    short_text,
)

EVENT_TYPES = (StatusUpdate, SpeechUpdate, UserInterrupted, Hang, Transcript, ConversationUpdate, OtherEvent)
# What a text frame can be refused for; VAPI's parsers have no binary or size check of their own.
KINDS = {"bad_json", "not_object", "missing_field", "bad_field"}
FINAL = 'transcript[transcriptType="final"]'
KNOWN_TYPES = {"status-update", "speech-update", "user-interrupted", "hang", "transcript", FINAL, "conversation-update"}
_SPOKEN = {"user": "user", "assistant": "assistant", "bot": "assistant"}

_CLOSERS = {"[": "]", '{"a":': "}", '{"type":"hang","x":[': "]"}
_RESERVED = frozenset(
    {"type", "status", "endedReason", "role", "turn", "turnId", "transcriptType", "transcript",
     "conversation", "messagesOpenAIFormatted", "messages"}
)


def parse(text: str | bytes) -> VapiEvent | ProtocolError:
    """The event, or the ProtocolError checked for its invariants; any other exception fails."""
    try:
        event = parse_event(text)
    except ProtocolError as exc:
        assert check_protocol_error(exc).kind in KINDS, exc
        return exc
    assert type(event) in EVENT_TYPES
    return event


def parse_call(body: str | bytes) -> CreatedCall | ProtocolError:
    try:
        call = parse_create_response(body)
    except ProtocolError as exc:
        assert check_protocol_error(exc).kind in KINDS, exc
        return exc
    assert type(call) is CreatedCall
    assert call.call_id and call.websocket_url.startswith(("wss://", "ws://"))
    return call


def encodings(text: str) -> list[str | bytes]:
    # Bytes are decoded as JSON bytes are, with surrogatepass: a lone surrogate survives that too.
    return [text, text.encode("utf-8", "surrogatepass")]


#
# Valid events, each with the value it must parse to.
#


@st.composite
def valid_events(draw: st.DrawFn) -> tuple[dict[str, Any], VapiEvent]:
    kind = draw(st.sampled_from(sorted(KNOWN_TYPES)) | any_text)
    event: dict[str, Any] = {**draw(extras(_RESERVED)), "type": kind}
    a, b, c = draw(any_text), draw(any_text), draw(any_text)
    optional = draw(st.sampled_from(["absent", "null", "given"]))
    given_or_none = a if optional == "given" else None

    def put_optional(key: str, value: object) -> None:
        if optional != "absent":
            event[key] = value

    expected: VapiEvent
    if kind == "status-update":
        event["status"] = b
        put_optional("endedReason", given_or_none)
        expected = StatusUpdate(status=b, ended_reason=given_or_none)
    elif kind == "speech-update":
        turn = draw(st.integers(0, 10**30)) if optional == "given" else None
        event.update(status=b, role=c)
        put_optional("turn", turn)
        expected = SpeechUpdate(status=b, role=c, turn=turn)
    elif kind == "user-interrupted":
        put_optional("turnId", given_or_none)
        expected = UserInterrupted(turn_id=given_or_none)
    elif kind == "hang":
        expected = Hang()
    elif kind in ("transcript", FINAL):
        event.update(role=b, transcript=c)
        if kind == "transcript" or optional == "given":
            event["transcriptType"] = a
        transcript_type = event.get("transcriptType", "final")
        expected = Transcript(role=b, transcript_type=transcript_type, transcript=c)
    elif kind == "conversation-update":
        key = draw(st.sampled_from(["conversation", "messagesOpenAIFormatted", "messages"]))
        roles = st.sampled_from(["user", "assistant", "bot", "system", "tool"])
        entries = draw(st.lists(st.tuples(roles, any_text), max_size=4))
        text_key = "message" if key == "messages" else "content"
        event[key] = [{"role": role, text_key: text} for role, text in entries]
        spoken = ((_SPOKEN.get(role), text.strip()) for role, text in entries)
        expected = ConversationUpdate(turns=tuple((r, t) for r, t in spoken if r is not None and t))
    else:
        expected = OtherEvent(type=kind)
    return event, expected


@st.composite
def valid_calls(draw: st.DrawFn) -> tuple[dict[str, Any], CreatedCall]:
    call_id = draw(hostile_text(min_size=1))
    url = draw(st.sampled_from(["wss://", "ws://"])) + draw(any_text)
    transport = {**draw(extras(frozenset({"websocketCallUrl"}))), "websocketCallUrl": url}
    body = {**draw(extras(frozenset({"id", "transport"}))), "id": call_id, "transport": transport}
    return body, CreatedCall(call_id=call_id, websocket_url=url)


#
# parse_event: whatever arrives, an event or a ProtocolError.
#


@FUZZ
@given(hostile_text(max_size=200))
def test_any_text_is_an_event_or_a_protocol_error(text: str) -> None:
    parse(text)


@FUZZ
@given(st.binary(max_size=200))
def test_any_bytes_are_an_event_or_a_protocol_error(data: bytes) -> None:
    parse(data)


@FUZZ
@given(
    valid_events().map(lambda pair: json.dumps(pair[0]).encode()),
    st.integers(0, 200),
    # Stray byte, overlong, encoded surrogate then stray, truncated, lone continuation, 5-byte.
    st.sampled_from([b"\xff", b"\xc0\x80", b"\xed\xa0\x80\xff", b"\xe2\x82", b"\x80", b"\xf8\x88"]),
)
def test_invalid_utf8_anywhere_in_a_frame_is_bad_json(
    frame: bytes, at: int, garbage: bytes
) -> None:
    # The frame starts with '{"', so json.loads decodes it as UTF-8 and must refuse the garbage.
    damaged = frame[: max(2, at)] + garbage + frame[max(2, at) :]
    result = parse(damaged)
    assert isinstance(result, ProtocolError) and result.kind == "bad_json", result


@FUZZ
@given(json_values, st.booleans())
def test_any_json_value_is_an_event_or_a_protocol_error(value: object, as_bytes: bool) -> None:
    text = json.dumps(value)
    result = parse(text.encode() if as_bytes else text)
    if type(value) is not dict:
        assert isinstance(result, ProtocolError) and result.kind == "not_object"
    elif "type" not in value or value["type"] is None:
        assert isinstance(result, ProtocolError) and result.kind == "missing_field"
    elif type(value["type"]) is not str:
        assert isinstance(result, ProtocolError) and result.kind == "bad_field"


@FUZZ
@given(
    any_text.filter(lambda kind: kind not in KNOWN_TYPES),
    st.dictionaries(short_text, json_values, max_size=4),
)
def test_a_type_the_bridge_does_not_act_on_is_other_event_whatever_its_fields(
    kind: str, fields: dict[str, Any]
) -> None:
    for text in encodings(json.dumps({**fields, "type": kind})):
        assert parse(text) == OtherEvent(type=kind)


@FUZZ
@given(mutated(valid_events().map(lambda pair: pair[0])), st.booleans())
def test_a_mutated_valid_event_is_an_event_or_a_protocol_error(text: str, as_bytes: bool) -> None:
    parse(text.encode("utf-8", "surrogatepass") if as_bytes else text)


@FUZZ
@given(st.integers(1, 200_000), st.sampled_from(sorted(_CLOSERS)), st.booleans())
def test_deep_nesting_is_bad_json_not_a_recursion_error(
    depth: int, opener: str, closed: bool
) -> None:
    closer = _CLOSERS[opener]
    text = opener * depth + ("0" + closer * depth if closed else "")
    result = parse(text)
    if not closed or depth > 100_000:  # unterminated, or past any recursion limit
        assert isinstance(result, ProtocolError) and result.kind in {"bad_json", "not_object"}


#
# parse_event: valid events round-trip.
#


@FUZZ
@given(valid_events(), st.booleans())
def test_a_valid_event_parses_to_exactly_its_fields(
    pair: tuple[dict[str, Any], VapiEvent], ascii_only: bool
) -> None:
    event, expected = pair
    for text in encodings(json.dumps(event, ensure_ascii=ascii_only)):
        assert parse_event(text) == expected


@FUZZ
@given(
    st.sampled_from(["status-update", "speech-update", "transcript"]),
    st.sampled_from(["status", "role", "transcriptType", "transcript"]),
    json_values.filter(lambda v: type(v) is not str),
)
def test_a_required_field_that_is_not_a_string_is_refused(
    kind: str, field: str, value: object
) -> None:
    event = {"type": kind, "status": "started", "role": "user", "transcriptType": "final"}
    event.update({"transcript": "hi", field: value})
    result = parse(json.dumps(event))
    required = {"status-update": {"status"}, "speech-update": {"status", "role"}}.get(
        kind, {"role", "transcriptType", "transcript"})
    if field in required:
        expected_kind = "missing_field" if value is None else "bad_field"
        assert isinstance(result, ProtocolError) and result.kind == expected_kind, result
    else:
        assert not isinstance(result, ProtocolError), result


@FUZZ
@given(json_values)
def test_a_speech_turn_is_taken_only_as_a_non_negative_integer_or_left_out(turn: object) -> None:
    event = {"type": "speech-update", "status": "started", "role": "user", "turn": turn}
    result = parse(json.dumps(event))
    if turn is None or (type(turn) is int and turn >= 0):
        assert result == SpeechUpdate(status="started", role="user", turn=turn)
    else:
        assert isinstance(result, ProtocolError) and result.kind == "bad_field", result


@FUZZ
@given(any_text, any_text, st.booleans(), st.sampled_from(sorted(DTMF_DIGITS)))
def test_what_we_send_is_well_formed_json_of_its_own_type(
    role: str, content: str, trigger: bool, digit: str
) -> None:
    # Not events VAPI sends, but a frame the parser cannot read would be a broken encoder.
    assert parse_event(encode_end_call()) == OtherEvent(type="end-call")
    assert parse_event(encode_say(content)) == OtherEvent(type="say")
    added = encode_add_message(role=role, content=content, trigger_response=trigger)
    assert parse_event(added) == OtherEvent(type="add-message")
    assert json.loads(added)["message"] == {"role": role, "content": content}
    assert parse_event(dtmf_message(digit)) == OtherEvent(type="add-message")


#
# parse_create_response: the POST /call answer.
#


@FUZZ
@given(
    hostile_text(max_size=200).flatmap(lambda text: st.sampled_from(encodings(text)))
    | st.binary(max_size=200)
)
def test_any_create_response_body_is_a_call_or_a_protocol_error(body: str | bytes) -> None:
    parse_call(body)


@FUZZ
@given(json_values)
def test_any_json_create_response_is_a_call_or_a_protocol_error(value: object) -> None:
    result = parse_call(json.dumps(value))
    if type(value) is not dict:
        assert isinstance(result, ProtocolError) and result.kind == "not_object"


@FUZZ
@given(mutated(valid_calls().map(lambda pair: pair[0])), st.booleans())
def test_a_mutated_create_response_is_a_call_or_a_protocol_error(text: str, as_bytes: bool) -> None:
    parse_call(text.encode("utf-8", "surrogatepass") if as_bytes else text)


@FUZZ
@given(valid_calls(), st.booleans())
def test_a_valid_create_response_parses_to_its_id_and_url(
    pair: tuple[dict[str, Any], CreatedCall], ascii_only: bool
) -> None:
    body, expected = pair
    for text in encodings(json.dumps(body, ensure_ascii=ascii_only)):
        assert parse_create_response(text) == expected


@FUZZ
@given(any_text | st.sampled_from(["wss://", "ws://", "WSS://x", "https://x", " wss://"]), any_text)
def test_a_call_url_is_taken_only_when_ws_or_wss(url: str, call_id: str) -> None:
    result = parse_call(json.dumps({"id": call_id, "transport": {"websocketCallUrl": url}}))
    if call_id and url.startswith(("wss://", "ws://")):
        assert result == CreatedCall(call_id=call_id, websocket_url=url)
    else:
        assert isinstance(result, ProtocolError) and result.kind == "bad_field", result
