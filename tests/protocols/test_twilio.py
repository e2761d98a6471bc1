from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from protocols.errors import ProtocolError
from protocols.twilio import (
    MAX_FRAME_BYTES,
    Connected,
    Dtmf,
    Mark,
    Media,
    Start,
    Stop,
    encode_clear,
    encode_mark,
    encode_media,
    parse_event,
)

FIXTURES = Path(__file__).parent / "fixtures"
STREAM_SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
CALL_SID = "CA3c95a2a6bba5fde93a5dea01e388e8fb"
ACCOUNT_SID = "AC18fbd524d33614fba208030751dffdca"


def _frames() -> list[str]:
    return list(json.loads((FIXTURES / "twilio_inbound_call.json").read_text())["frames"])


def _media(**media: Any) -> str:
    fields: dict[str, Any] = {
        "track": "inbound",
        "chunk": "1",
        "timestamp": "52",
        "payload": "AAE=",
    }
    fields.update(media)
    return json.dumps(
        {"event": "media", "sequenceNumber": "2", "media": fields, "streamSid": STREAM_SID}
    )


def _start_message() -> dict[str, Any]:
    return dict(json.loads(_frames()[1]))


def _expect(kind: str, frame: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse_event(frame)
    assert caught.value.kind == kind, caught.value
    return caught.value


# Real sample sequence (docs/twilio-media-streams.md).


def test_the_recorded_call_parses_into_its_six_events_in_order() -> None:
    events = [parse_event(frame) for frame in _frames()]

    assert [type(event) for event in events] == [Connected, Start, Media, Dtmf, Mark, Stop]


def test_connected_carries_protocol_and_version() -> None:
    assert parse_event(_frames()[0]) == Connected(protocol="Call", version="1.0.0")


def test_start_carries_the_call_identity_format_and_custom_parameters() -> None:
    assert parse_event(_frames()[1]) == Start(
        stream_sid=STREAM_SID,
        call_sid=CALL_SID,
        account_sid=ACCOUNT_SID,
        tracks=("inbound",),
        custom_parameters=(("aCutomParameter", "aCustomValue that was set in TwiML"),),
        encoding="audio/x-mulaw",
        sample_rate=8000,
        channels=1,
    )


def test_media_decodes_a_real_payload_to_160_bytes_of_mulaw_and_string_counters_to_ints() -> None:
    event = parse_event(_frames()[2])

    assert isinstance(event, Media)
    assert (event.stream_sid, event.track, event.chunk, event.timestamp_ms) == (
        STREAM_SID,
        "inbound",
        1,
        52,
    )
    assert len(event.payload) == 160  # 20 ms at 8 kHz
    assert event.payload[:3] == bytes([0xEB, 0xF8, 0xE4])


def test_dtmf_mark_and_stop_carry_their_fields() -> None:
    _, _, _, dtmf, mark, stop = _frames()

    assert parse_event(dtmf) == Dtmf(stream_sid=STREAM_SID, digit="1")
    assert parse_event(mark) == Mark(stream_sid=STREAM_SID, name="Repeat message 0")
    assert parse_event(stop) == Stop(stream_sid=STREAM_SID, call_sid=CALL_SID)


def test_parsed_events_are_immutable_and_hashable() -> None:
    event = parse_event(_frames()[1])
    assert isinstance(event, Start)

    with pytest.raises(AttributeError):
        event.stream_sid = "MZother"  # type: ignore[misc]
    assert hash(event) == hash(parse_event(_frames()[1]))


# Tolerances.


def test_start_accepts_a_stream_sid_given_only_at_the_top_level() -> None:
    message = _start_message()
    del message["start"]["streamSid"]

    event = parse_event(json.dumps(message))

    assert isinstance(event, Start) and event.stream_sid == STREAM_SID


def test_start_without_custom_parameters_has_none() -> None:
    message = _start_message()
    del message["start"]["customParameters"]

    event = parse_event(json.dumps(message))

    assert isinstance(event, Start) and event.custom_parameters == ()


def test_start_keeps_custom_parameters_in_the_order_sent() -> None:
    message = _start_message()
    message["start"]["customParameters"] = {"z": "1", "a": "2", "m": "3"}

    event = parse_event(json.dumps(message))

    assert isinstance(event, Start)
    assert event.custom_parameters == (("z", "1"), ("a", "2"), ("m", "3"))


def test_media_accepts_counters_sent_as_json_integers() -> None:
    event = parse_event(_media(chunk=7, timestamp=171))

    assert isinstance(event, Media) and (event.chunk, event.timestamp_ms) == (7, 171)


def test_media_tolerates_counter_jumps_and_an_empty_payload() -> None:
    event = parse_event(_media(chunk="900", timestamp="99999", payload=""))

    assert event == Media(STREAM_SID, "inbound", 900, 99999, b"")


def test_media_ignores_fields_it_does_not_use() -> None:
    message = json.loads(_media())
    message["extra"] = {"anything": [1, 2]}
    del message["sequenceNumber"]

    assert isinstance(parse_event(json.dumps(message)), Media)


def test_a_frame_of_exactly_the_limit_is_parsed() -> None:
    frame = _media()
    frame = frame + " " * (MAX_FRAME_BYTES - len(frame))

    assert len(frame) == MAX_FRAME_BYTES
    assert isinstance(parse_event(frame), Media)


# Errors: one per kind, and the field checks.


def test_a_binary_frame_is_refused() -> None:
    _expect("binary_frame", _frames()[0].encode())


def test_an_oversize_frame_is_refused_before_decoding() -> None:
    # Invalid JSON, so only a length check made before json.loads can say "oversize".
    _expect("oversize", "{" * (MAX_FRAME_BYTES + 1))


def test_a_valid_but_oversize_frame_is_refused() -> None:
    frame = _media()
    _expect("oversize", frame + " " * (MAX_FRAME_BYTES + 1 - len(frame)))


@pytest.mark.parametrize("frame", ["", "{", "not json", '{"event":"media",}', "{'event':'media'}"])
def test_text_that_is_not_json_is_bad_json(frame: str) -> None:
    _expect("bad_json", frame)


def test_deeply_nested_json_within_the_size_limit_is_bad_json() -> None:
    _expect("bad_json", "[" * 30000 + "]" * 30000)


@pytest.mark.parametrize("frame", ["[]", '"media"', "42", "null", "true"])
def test_json_that_is_not_an_object_is_refused(frame: str) -> None:
    _expect("not_object", frame)


def test_a_message_without_event_is_missing_a_field() -> None:
    _expect("missing_field", '{"streamSid": "MZ1"}')


@pytest.mark.parametrize("event", [1, ["media"], {"name": "media"}, True])
def test_a_non_string_event_is_a_bad_field(event: object) -> None:
    _expect("bad_field", json.dumps({"event": event}))


@pytest.mark.parametrize("event", ["clear", "Media", "hello", ""])
def test_an_event_twilio_does_not_send_is_unknown(event: str) -> None:
    _expect("unknown_event", json.dumps({"event": event, "streamSid": STREAM_SID}))


@pytest.mark.parametrize("field", ["track", "chunk", "timestamp", "payload"])
def test_media_without_a_media_field_is_missing_a_field(field: str) -> None:
    message = json.loads(_media())
    del message["media"][field]

    error = _expect("missing_field", json.dumps(message))
    assert field in error.detail


@pytest.mark.parametrize("field", ["media", "streamSid"])
def test_media_without_its_object_or_stream_sid_is_missing_a_field(field: str) -> None:
    message = json.loads(_media())
    del message[field]

    _expect("missing_field", json.dumps(message))


@pytest.mark.parametrize("media", ["abc", [1], None, 5])
def test_media_whose_media_is_not_an_object_is_a_bad_field(media: object) -> None:
    message = json.loads(_media())
    message["media"] = media

    _expect("bad_field", json.dumps(message))


@pytest.mark.parametrize(
    ("field", "value"), [("track", 1), ("payload", None), ("payload", ["AAE="])]
)
def test_media_with_a_non_string_field_is_a_bad_field(field: str, value: object) -> None:
    _expect("bad_field", _media(**{field: value}))


@pytest.mark.parametrize(
    "value",
    ["abc", "", "-1", " 1", "1.5", "1e3", "+5", "1_000", "١٢", "9" * 20, -1, 1.0, True, None],
)
@pytest.mark.parametrize("field", ["chunk", "timestamp"])
def test_media_counters_must_be_non_negative_decimal_integers(field: str, value: object) -> None:
    _expect("bad_field", _media(**{field: value}))


@pytest.mark.parametrize("payload", ["AAE", "AA=E", "!!!!", "AAE=\n", "AAÉ=", "AA E="])
def test_media_payload_must_be_strict_base64(payload: str) -> None:
    _expect("bad_base64", _media(payload=payload))


@pytest.mark.parametrize(
    "path",
    [
        ("start",),
        ("start", "mediaFormat"),
        ("start", "callSid"),
        ("start", "accountSid"),
        ("start", "tracks"),
        ("start", "mediaFormat", "encoding"),
        ("start", "mediaFormat", "sampleRate"),
        ("start", "mediaFormat", "channels"),
    ],
)
def test_start_without_a_required_field_is_missing_a_field(path: tuple[str, ...]) -> None:
    message = _start_message()
    parent = message
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]

    _expect("missing_field", json.dumps(message))


def test_start_without_any_stream_sid_is_missing_a_field() -> None:
    message = _start_message()
    del message["start"]["streamSid"]
    del message["streamSid"]

    _expect("missing_field", json.dumps(message))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("start",), "oops"),
        (("start", "callSid"), 5),
        (("start", "streamSid"), ["MZ"]),
        (("start", "tracks"), "inbound"),
        (("start", "tracks"), ["inbound", 1]),
        (("start", "customParameters"), ["a", "b"]),
        (("start", "customParameters"), {"a": 1}),
        (("start", "mediaFormat"), "audio/x-mulaw"),
        (("start", "mediaFormat", "sampleRate"), "8000"),
        (("start", "mediaFormat", "sampleRate"), 8000.5),
        (("start", "mediaFormat", "channels"), True),
    ],
)
def test_start_with_a_wrongly_typed_field_is_a_bad_field(
    path: tuple[str, ...], value: object
) -> None:
    message = _start_message()
    parent = message
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value

    _expect("bad_field", json.dumps(message))


@pytest.mark.parametrize(
    "message",
    [
        {"event": "connected", "version": "1.0.0"},
        {"event": "connected", "protocol": "Call"},
        {"event": "mark", "mark": {"name": "a"}},
        {"event": "mark", "streamSid": STREAM_SID},
        {"event": "mark", "streamSid": STREAM_SID, "mark": {}},
        {"event": "dtmf", "streamSid": STREAM_SID, "dtmf": {"track": "inbound_track"}},
        {"event": "dtmf", "dtmf": {"digit": "1"}},
        {"event": "stop", "streamSid": STREAM_SID, "stop": {"accountSid": ACCOUNT_SID}},
        {"event": "stop", "streamSid": STREAM_SID},
        {"event": "stop", "stop": {"callSid": CALL_SID}},
    ],
)
def test_small_events_without_a_required_field_are_missing_a_field(message: dict[str, Any]) -> None:
    _expect("missing_field", json.dumps(message))


@pytest.mark.parametrize(
    "message",
    [
        {"event": "connected", "protocol": 1, "version": "1.0.0"},
        {"event": "mark", "streamSid": STREAM_SID, "mark": "a"},
        {"event": "mark", "streamSid": STREAM_SID, "mark": {"name": 3}},
        {"event": "dtmf", "streamSid": STREAM_SID, "dtmf": {"digit": 1}},
        {"event": "stop", "streamSid": 7, "stop": {"callSid": CALL_SID}},
    ],
)
def test_small_events_with_a_wrongly_typed_field_are_a_bad_field(message: dict[str, Any]) -> None:
    _expect("bad_field", json.dumps(message))


@pytest.mark.parametrize("digit", ["0", "9", "*", "#", "A", "D"])
def test_dtmf_accepts_every_keypad_key(digit: str) -> None:
    frame = json.dumps({"event": "dtmf", "streamSid": STREAM_SID, "dtmf": {"digit": digit}})

    assert parse_event(frame) == Dtmf(STREAM_SID, digit)


@pytest.mark.parametrize("digit", ["", "12", "x", "E", " 1", "1\n"])
def test_dtmf_refuses_anything_but_a_single_keypad_key(digit: str) -> None:
    frame = json.dumps({"event": "dtmf", "streamSid": STREAM_SID, "dtmf": {"digit": digit}})

    _expect("bad_field", frame)


# Server → Twilio.


def _outbound() -> dict[str, Any]:
    return dict(json.loads((FIXTURES / "twilio_outbound.json").read_text()))


def test_encode_media_gives_exactly_event_stream_sid_and_payload() -> None:
    encoded = encode_media(STREAM_SID, b"\xff\xff\x7f\x7f")

    assert json.loads(encoded) == _outbound()["media"]


def test_encode_media_payload_round_trips_any_length_of_audio() -> None:
    audio = bytes(range(256)) * 5

    decoded = json.loads(encode_media(STREAM_SID, audio))

    assert base64.b64decode(decoded["media"]["payload"], validate=True) == audio


def test_encode_media_of_no_audio_sends_an_empty_payload() -> None:
    assert json.loads(encode_media(STREAM_SID, b"")) == {
        "event": "media",
        "streamSid": STREAM_SID,
        "media": {"payload": ""},
    }


def test_what_we_encode_as_media_is_what_we_parse_as_media() -> None:
    # Our simulators speak Twilio's side with these; only the fields Twilio adds are missing.
    message = json.loads(encode_media(STREAM_SID, b"\x01\x02"))
    message["media"].update(track="inbound", chunk="3", timestamp="60")

    assert parse_event(json.dumps(message)) == Media(STREAM_SID, "inbound", 3, 60, b"\x01\x02")


def test_encode_mark_gives_exactly_event_stream_sid_and_name() -> None:
    assert json.loads(encode_mark(STREAM_SID, "resp-7-chunk-3")) == _outbound()["mark"]


def test_encode_mark_escapes_any_name_as_json() -> None:
    name = 'say "hi" \\ \n ünï'

    assert json.loads(encode_mark(STREAM_SID, name))["mark"]["name"] == name


def test_encode_clear_gives_exactly_event_and_stream_sid() -> None:
    assert json.loads(encode_clear(STREAM_SID)) == _outbound()["clear"]


def test_encoded_messages_are_compact_ascii_text() -> None:
    encoded = encode_mark(STREAM_SID, "ü")

    assert encoded.isascii()
    assert ", " not in encoded and ": " not in encoded
