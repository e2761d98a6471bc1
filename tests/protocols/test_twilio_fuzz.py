"""Property-based fuzzing of `protocols.twilio.parse_event`: whatever arrives on the socket, the
parser returns one of the six events or raises ProtocolError, never anything else."""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import ProtocolError
from protocols.twilio import (
    DTMF_DIGITS,
    MAX_FRAME_BYTES,
    Connected,
    Dtmf,
    Mark,
    Media,
    Start,
    Stop,
    TwilioEvent,
    encode_mark,
    encode_media,
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

EVENT_TYPES = (Connected, Start, Media, Mark, Dtmf, Stop)
# Decoding errors only: what a frame within the limit and sent as text can be refused for.
DECODED_KINDS = {
    "bad_json", "not_object", "unknown_event", "missing_field", "bad_field", "bad_base64"
}
B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
CANONICAL_B64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")

_RESERVED = frozenset(
    {"event", "streamSid", "media", "start", "mark", "dtmf", "stop", "protocol", "version"}
)


def parse(frame: str | bytes) -> TwilioEvent | ProtocolError:
    """The event, or the ProtocolError checked for its invariants; any other exception fails."""
    try:
        event = parse_event(frame)
    except ProtocolError as exc:
        return check_protocol_error(exc)
    assert type(event) in EVENT_TYPES
    return event


def expect(kind: str, frame: str | bytes) -> None:
    result = parse(frame)
    assert isinstance(result, ProtocolError), result
    assert result.kind == kind, result


def check_any_frame(frame: str | bytes) -> TwilioEvent | ProtocolError:
    """What holds for every frame: bytes are refused first, then size, then only decoding kinds."""
    result = parse(frame)
    if isinstance(frame, bytes):
        assert isinstance(result, ProtocolError) and result.kind == "binary_frame"
    elif len(frame) > MAX_FRAME_BYTES:
        assert isinstance(result, ProtocolError) and result.kind == "oversize"
    elif isinstance(result, ProtocolError):
        assert result.kind in DECODED_KINDS, result
    return result


#
# Valid messages, each with the event it must parse to.
#

counters = st.integers(0, 10**19 - 1)  # 19 decimal digits is the longest string counter taken


@st.composite
def media_messages(draw: st.DrawFn) -> tuple[dict[str, Any], Media]:
    sid = draw(any_text)
    track = draw(st.sampled_from(["inbound", "outbound"]) | any_text)
    chunk, timestamp = draw(counters), draw(counters)
    audio = draw(st.binary(max_size=400))
    as_strings = draw(st.booleans())  # Twilio sends "52"; a JSON 52 is tolerated
    message = {
        **draw(extras(_RESERVED)),
        "event": "media",
        "sequenceNumber": str(draw(counters)),
        "streamSid": sid,
        "media": {
            "track": track,
            "chunk": str(chunk) if as_strings else chunk,
            "timestamp": str(timestamp) if as_strings else timestamp,
            "payload": base64.b64encode(audio).decode("ascii"),
        },
    }
    return message, Media(sid, track, chunk, timestamp, audio)


@st.composite
def start_messages(draw: st.DrawFn) -> tuple[dict[str, Any], Start]:
    sid, call_sid, account_sid, encoding = (draw(any_text) for _ in range(4))
    tracks = draw(st.lists(any_text, max_size=3))
    custom = draw(st.none() | st.dictionaries(any_text, any_text, max_size=3))
    rate, channels = draw(st.integers(0, 10**30)), draw(st.integers(-5, 5))
    start: dict[str, Any] = {
        "accountSid": account_sid,
        "callSid": call_sid,
        "tracks": tracks,
        "mediaFormat": {"encoding": encoding, "sampleRate": rate, "channels": channels},
    }
    if custom is not None:
        start["customParameters"] = custom
    message: dict[str, Any] = {**draw(extras(_RESERVED)), "event": "start", "start": start}
    # Documented both inside `start` and at the top level; the inner one wins when both differ.
    where = draw(st.sampled_from(["inner", "top", "both", "both_differ"]))
    if where != "top":
        start["streamSid"] = sid
    if where != "inner":
        message["streamSid"] = sid if where != "both_differ" else draw(any_text)
    expected = Start(
        stream_sid=sid,
        call_sid=call_sid,
        account_sid=account_sid,
        tracks=tuple(tracks),
        custom_parameters=tuple((custom or {}).items()),
        encoding=encoding,
        sample_rate=rate,
        channels=channels,
    )
    return message, expected


@st.composite
def small_messages(draw: st.DrawFn) -> tuple[dict[str, Any], TwilioEvent]:
    sid, text = draw(any_text), draw(any_text)
    kind = draw(st.sampled_from(["connected", "mark", "dtmf", "stop"]))
    message: dict[str, Any] = {**draw(extras(_RESERVED)), "event": kind}
    expected: TwilioEvent
    if kind == "connected":
        message.update(protocol=sid, version=text)
        expected = Connected(protocol=sid, version=text)
    elif kind == "mark":
        message.update(streamSid=sid, mark={"name": text})
        expected = Mark(stream_sid=sid, name=text)
    elif kind == "dtmf":
        digit = draw(st.sampled_from(sorted(DTMF_DIGITS)))
        message.update(streamSid=sid, dtmf={"track": "inbound_track", "digit": digit})
        expected = Dtmf(stream_sid=sid, digit=digit)
    else:
        message.update(streamSid=sid, stop={"accountSid": text, "callSid": text})
        expected = Stop(stream_sid=sid, call_sid=text)
    return message, expected


valid_messages = media_messages() | start_messages() | small_messages()


def dumps(message: object, ascii_only: bool) -> str:
    return json.dumps(message, ensure_ascii=ascii_only)


#
# Whatever arrives: an event or a ProtocolError.
#


@FUZZ
@given(hostile_text(max_size=200))
def test_any_text_is_an_event_or_a_protocol_error(frame: str) -> None:
    check_any_frame(frame)


@FUZZ
@given(st.binary() | valid_messages.map(lambda pair: json.dumps(pair[0]).encode()))
def test_any_binary_frame_is_refused_even_valid_json(frame: bytes) -> None:
    expect("binary_frame", frame)


@FUZZ
@given(json_values, st.booleans())
def test_any_json_value_is_an_event_or_a_protocol_error(value: object, ascii_only: bool) -> None:
    result = check_any_frame(dumps(value, ascii_only))
    if type(value) is not dict:
        assert isinstance(result, ProtocolError) and result.kind == "not_object"


@FUZZ
@given(
    st.dictionaries(short_text, json_values, max_size=4),
    st.sampled_from(["media", "connected", "start", "mark", "dtmf", "stop"]) | json_values,
)
def test_any_object_with_any_event_is_an_event_or_a_protocol_error(
    fields: dict[str, Any], event: object
) -> None:
    result = check_any_frame(json.dumps({**fields, "event": event}))
    if type(event) is not str:
        assert isinstance(result, ProtocolError) and result.kind in {"missing_field", "bad_field"}


@FUZZ
@given(mutated(valid_messages.map(lambda pair: pair[0])))
def test_a_mutated_valid_message_is_an_event_or_a_protocol_error(frame: str) -> None:
    check_any_frame(frame)


@FUZZ
@given(st.integers(1, 40_000), st.sampled_from(["[", "{", '{"a":', '{"event":"media","media":[']))
def test_deep_nesting_within_the_limit_is_bad_json_not_a_recursion_error(
    depth: int, opener: str
) -> None:
    frame = opener * depth
    if len(frame) <= MAX_FRAME_BYTES:
        expect("bad_json", frame)  # unclosed, or too deep to decode
    else:
        expect("oversize", frame)


#
# Valid messages round-trip.
#


@FUZZ
@given(valid_messages, st.booleans())
def test_a_valid_message_parses_to_exactly_its_fields(
    pair: tuple[dict[str, Any], TwilioEvent], ascii_only: bool
) -> None:
    message, expected = pair
    assert parse_event(dumps(message, ascii_only)) == expected


@FUZZ
@given(any_text, st.binary(max_size=400), counters, counters)
def test_audio_from_encode_media_parses_back_to_the_same_bytes(
    sid: str, audio: bytes, chunk: int, timestamp: int
) -> None:
    message = json.loads(encode_media(sid, audio))
    message["media"].update(track="inbound", chunk=str(chunk), timestamp=str(timestamp))
    assert parse_event(json.dumps(message)) == Media(sid, "inbound", chunk, timestamp, audio)


@FUZZ
@given(any_text, any_text)
def test_a_mark_we_encode_parses_as_the_same_mark_when_echoed(sid: str, name: str) -> None:
    assert parse_event(encode_mark(sid, name)) == Mark(stream_sid=sid, name=name)


#
# Field-level oracles.
#


def _media_frame(ascii_only: bool = True, **media: object) -> str:
    fields: dict[str, object] = {"track": "inbound", "chunk": "1", "timestamp": "52", "payload": ""}
    fields.update(media)
    message = {"event": "media", "streamSid": "MZ1", "media": fields}
    return json.dumps(message, ensure_ascii=ascii_only)


@FUZZ
@given(
    st.text(st.sampled_from(sorted(B64_CHARS)), max_size=24)
    | st.text(st.sampled_from(sorted(B64_CHARS)) | st.characters(), max_size=24)
    | st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode()),
    st.booleans(),
)
def test_a_payload_is_audio_when_canonical_base64_and_refused_when_not_base64(
    payload: str, ascii_only: bool
) -> None:
    result = parse(_media_frame(payload=payload, ascii_only=ascii_only))
    if not set(payload) <= B64_CHARS:  # whitespace, url-safe '-' '_', non-ASCII, surrogates
        assert isinstance(result, ProtocolError) and result.kind == "bad_base64", result
    elif CANONICAL_B64.fullmatch(payload):
        assert isinstance(result, Media) and result.payload == base64.b64decode(payload)
    else:  # alphabet only, odd length or padding: audio or bad_base64, nothing else
        assert isinstance(result, Media) or result.kind == "bad_base64", result


@FUZZ
@given(st.sampled_from(["chunk", "timestamp"]), any_text | st.integers(0, 10**25).map(str))
def test_a_string_counter_is_taken_only_as_1_to_19_ascii_digits(field: str, value: str) -> None:
    result = parse(_media_frame(**{field: value}))
    if value.isascii() and value.isdigit() and 0 < len(value) <= 19:
        assert isinstance(result, Media)
        assert getattr(result, "chunk" if field == "chunk" else "timestamp_ms") == int(value)
    else:
        assert isinstance(result, ProtocolError) and result.kind == "bad_field", result


@FUZZ
@given(st.sampled_from(["chunk", "timestamp"]), json_values.filter(lambda v: type(v) is not str))
def test_a_non_string_counter_is_taken_only_as_a_non_negative_json_integer(
    field: str, value: object
) -> None:
    result = parse(_media_frame(**{field: value}))
    if value is None:
        assert isinstance(result, ProtocolError) and result.kind in {"missing_field", "bad_field"}
    elif type(value) is int and value >= 0:
        assert isinstance(result, Media)
    else:  # bools, floats (NaN, ±Infinity), negatives, arrays, objects
        assert isinstance(result, ProtocolError) and result.kind == "bad_field", result


@FUZZ
@given(any_text | st.sampled_from(sorted(DTMF_DIGITS)))
def test_a_dtmf_digit_is_exactly_one_keypad_key(digit: str) -> None:
    result = parse(json.dumps({"event": "dtmf", "streamSid": "MZ1", "dtmf": {"digit": digit}}))
    if digit in DTMF_DIGITS:
        assert result == Dtmf(stream_sid="MZ1", digit=digit)
    else:
        assert isinstance(result, ProtocolError) and result.kind == "bad_field", result


@FUZZ
@given(any_text.filter(lambda e: e not in {"media", "connected", "start", "mark", "dtmf", "stop"}))
def test_an_event_name_twilio_does_not_send_is_unknown(event: str) -> None:
    expect("unknown_event", json.dumps({"event": event, "streamSid": "MZ1"}))


#
# Oversize frames: refused on length alone, before any decoding.
#


@FUZZ
@given(
    valid_messages,
    st.integers(1, 4096),
    st.sampled_from([" ", "\t", "\r", "\n"]),
    st.booleans(),
)
def test_a_valid_frame_is_parsed_at_the_limit_and_refused_as_oversize_past_it(
    pair: tuple[dict[str, Any], TwilioEvent], extra: int, pad: str, pad_in_front: bool
) -> None:
    message, expected = pair
    frame = json.dumps(message)
    padding = pad * (MAX_FRAME_BYTES - len(frame))  # JSON whitespace: the frame stays valid
    at_limit = padding + frame if pad_in_front else frame + padding
    assert len(at_limit) == MAX_FRAME_BYTES
    assert parse_event(at_limit) == expected

    over = at_limit + pad * extra
    with mock.patch("protocols.twilio.json") as json_module:
        expect("oversize", over)
    json_module.loads.assert_not_called()


@FUZZ
@given(hostile_text(min_size=1, max_size=64), st.integers(1, 100))
def test_any_oversize_text_is_oversize_not_bad_json(chunk: str, extra: int) -> None:
    frame = chunk * (MAX_FRAME_BYTES // len(chunk) + extra)
    with mock.patch("protocols.twilio.json") as json_module:
        expect("oversize", frame)
    json_module.loads.assert_not_called()


@pytest.mark.parametrize(
    "frame", [b"x" * (MAX_FRAME_BYTES + 1), bytearray(b"{}"), memoryview(b"{}")]
)
def test_binary_frames_of_any_size_or_buffer_type_are_binary_frame(frame: Any) -> None:
    expect("binary_frame", frame)
