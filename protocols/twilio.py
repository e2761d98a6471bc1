"""Twilio Media Streams (bidirectional `<Connect><Stream>`): JSON text frames ⇄ frozen events.

Inbound: `parse_event(frame)` turns one websocket frame into a `TwilioEvent` or raises
`ProtocolError`. Outbound: `encode_media`, `encode_mark` and `encode_clear` build the only three
messages Twilio accepts, with exactly the documented fields (ERR-31951 rejects extra ones).
Protocol facts: docs/twilio-media-streams.md.
"""

from __future__ import annotations

import json
from base64 import b64decode, b64encode
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import orjson

from protocols.errors import ProtocolError
from protocols.fields import integer as _int
from protocols.fields import obj as _obj
from protocols.fields import string as _str

__all__ = [
    "DTMF_DIGITS",
    "MAX_FRAME_BYTES",
    "Connected",
    "Dtmf",
    "Mark",
    "Media",
    "MediaEncoder",
    "Start",
    "Stop",
    "TwilioEvent",
    "encode_clear",
    "encode_mark",
    "encode_media",
    "parse_event",
]

# Twilio sends ~300-character media frames and a start frame well under 2 KiB; nothing it sends
# comes close. Checked on len(frame) before decoding, so a hostile frame costs no parsing. For a
# str this counts characters, which bounds the UTF-8 size at 4× the limit.
MAX_FRAME_BYTES: Final = 64 * 1024

# Keys Twilio can report in a `dtmf` event: the 12 keypad keys plus the rare A–D tones.
# Checked so that only a single known key ever reaches the assistant's prompt.
DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")

# Counters arrive as decimal strings ("52"); 19 digits is far beyond any call's length and keeps
# int() away from Python's 4300-digit conversion limit.
_MAX_COUNTER_DIGITS: Final = 19

# Compact separators: the encoder object is stateless and built once, so the hot path skips
# json.dumps' per-call encoder construction.
_encode_json: Final = json.JSONEncoder(separators=(",", ":")).encode


#
# Twilio → server events.
#


@dataclass(frozen=True, slots=True)
class Connected:
    """Twilio → server: the websocket is up (first message; no streamSid yet)."""

    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Start:
    """Twilio → server: stream metadata, sent once right after `Connected`.

    `custom_parameters` are the `<Parameter>` pairs from the TwiML, in the order Twilio sent them.
    """

    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    custom_parameters: tuple[tuple[str, str], ...]
    encoding: str
    sample_rate: int
    channels: int


@dataclass(frozen=True, slots=True)
class Media:
    """Twilio → server: one chunk of caller audio; `payload` is raw 8 kHz mu-law (base64-decoded).

    `chunk` and `timestamp_ms` may jump when Twilio drops audio (ERR-31930); never assume
    `chunk × 20 ms == timestamp_ms`.
    """

    stream_sid: str
    track: str
    chunk: int
    timestamp_ms: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Mark:
    """Twilio → server: a mark we sent was reached, or cancelled by an earlier `clear`."""

    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class Dtmf:
    """Twilio → server: the caller pressed a key (one of `DTMF_DIGITS`)."""

    stream_sid: str
    digit: str


@dataclass(frozen=True, slots=True)
class Stop:
    """Twilio → server: the stream stopped or the call ended."""

    stream_sid: str
    call_sid: str


TwilioEvent: TypeAlias = Connected | Start | Media | Mark | Dtmf | Stop


#
# Parsing.
#


def parse_event(frame: str | bytes) -> TwilioEvent:
    """Parse one websocket frame from Twilio.

    Args:
        frame: the frame as received; Twilio only sends text frames.

    Returns:
        The event, with `sequenceNumber` dropped and string counters converted to `int`.

    Raises:
        ProtocolError: `binary_frame`, `oversize`, `bad_json`, `not_object`, `unknown_event`,
            `missing_field`, `bad_field` or `bad_base64`.
    """
    if not isinstance(frame, str):
        raise ProtocolError(
            "binary_frame", f"Twilio sends text frames only, got {len(frame)} bytes"
        )
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError("oversize", f"{len(frame)} characters > {MAX_FRAME_BYTES}")
    try:
        # orjson parses a media frame in a third of json's time. What it refuses (integers
        # beyond 64 bits, NaN, lone surrogates, nesting past 1024, or simply bad JSON) goes
        # to json, so the result, or the error, is always json's.
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        try:
            message = json.loads(frame)
        except (ValueError, RecursionError) as exc:
            # RecursionError: a 64 KiB frame of nested brackets is deep enough to hit it.
            raise ProtocolError("bad_json", str(exc)) from exc
    if type(message) is not dict:
        raise ProtocolError("not_object", f"top level is {type(message).__name__}")
    event = message.get("event")
    if event is None:
        raise ProtocolError("missing_field", "no 'event'")
    if type(event) is not str:
        raise ProtocolError("bad_field", f"'event' is {type(event).__name__}, not a string")
    parser = _PARSERS.get(event)
    if parser is None:
        raise ProtocolError("unknown_event", f"event {event[:40]!r}")
    return parser(message)


def _parse_media(message: dict[str, Any]) -> Media:
    # Hot path (50 frames/s per call): one try block around direct indexing instead of a
    # helper call per field; only the two counters go through a helper.
    try:
        stream_sid = message["streamSid"]
        media = message["media"]
        track = media["track"]
        chunk = media["chunk"]
        timestamp = media["timestamp"]
        payload = media["payload"]
    except KeyError as exc:
        raise ProtocolError("missing_field", f"media event has no {exc.args[0]!r}") from None
    except TypeError:
        raise ProtocolError("bad_field", "media event: 'media' is not an object") from None
    if type(stream_sid) is not str or type(track) is not str or type(payload) is not str:
        raise ProtocolError("bad_field", "media: streamSid, track and payload must be strings")
    try:
        audio = b64decode(payload, validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII characters in the string
        raise ProtocolError("bad_base64", f"media.payload: {exc}") from None
    return Media(
        stream_sid,
        track,
        _counter(chunk, "media.chunk"),
        _counter(timestamp, "media.timestamp"),
        audio,
    )


def _parse_connected(message: dict[str, Any]) -> Connected:
    return Connected(
        protocol=_str(message, "protocol", "connected"),
        version=_str(message, "version", "connected"),
    )


def _parse_start(message: dict[str, Any]) -> Start:
    start = _obj(message, "start", "start")
    media_format = _obj(start, "mediaFormat", "start")
    # WSM documents streamSid both inside `start` and at the top level; accept either.
    stream_sid = start.get("streamSid", message.get("streamSid"))
    if stream_sid is None:
        raise ProtocolError("missing_field", "start has no 'streamSid'")
    if type(stream_sid) is not str:
        raise ProtocolError("bad_field", "start.streamSid is not a string")
    tracks = start.get("tracks")
    if tracks is None:
        raise ProtocolError("missing_field", "start has no 'tracks'")
    if type(tracks) is not list or not all(type(track) is str for track in tracks):
        raise ProtocolError("bad_field", "start.tracks is not a list of strings")
    return Start(
        stream_sid=stream_sid,
        call_sid=_str(start, "callSid", "start"),
        account_sid=_str(start, "accountSid", "start"),
        tracks=tuple(tracks),
        custom_parameters=_custom_parameters(start.get("customParameters")),
        encoding=_str(media_format, "encoding", "start.mediaFormat"),
        sample_rate=_int(media_format, "sampleRate", "start.mediaFormat"),
        channels=_int(media_format, "channels", "start.mediaFormat"),
    )


def _custom_parameters(value: object) -> tuple[tuple[str, str], ...]:
    # Twilio sends {} when the TwiML had no <Parameter>; tolerate the key being absent too.
    if value is None:
        return ()
    if type(value) is not dict:
        raise ProtocolError("bad_field", "start.customParameters is not an object")
    pairs = tuple(value.items())
    if not all(type(item) is str for pair in pairs for item in pair):
        raise ProtocolError("bad_field", "start.customParameters values must be strings")
    return pairs


def _parse_mark(message: dict[str, Any]) -> Mark:
    return Mark(
        stream_sid=_str(message, "streamSid", "mark"),
        name=_str(_obj(message, "mark", "mark"), "name", "mark"),
    )


def _parse_dtmf(message: dict[str, Any]) -> Dtmf:
    stream_sid = _str(message, "streamSid", "dtmf")
    digit = _str(_obj(message, "dtmf", "dtmf"), "digit", "dtmf")
    if digit not in DTMF_DIGITS:
        raise ProtocolError("bad_field", f"dtmf.digit {digit[:8]!r} is not a keypad key")
    return Dtmf(stream_sid=stream_sid, digit=digit)


def _parse_stop(message: dict[str, Any]) -> Stop:
    return Stop(
        stream_sid=_str(message, "streamSid", "stop"),
        call_sid=_str(_obj(message, "stop", "stop"), "callSid", "stop"),
    )


_PARSERS: Final[dict[str, Callable[[dict[str, Any]], TwilioEvent]]] = {
    "media": _parse_media,
    "connected": _parse_connected,
    "start": _parse_start,
    "mark": _parse_mark,
    "dtmf": _parse_dtmf,
    "stop": _parse_stop,
}


def _counter(value: object, name: str) -> int:
    """A non-negative counter sent as a decimal string (Twilio) or, leniently, a JSON integer."""
    if type(value) is str:
        if 0 < len(value) <= _MAX_COUNTER_DIGITS and value.isascii() and value.isdigit():
            return int(value)
    elif type(value) is int and value >= 0:
        return value
    raise ProtocolError("bad_field", f"{name} is not a non-negative integer")


#
# Server → Twilio messages.
#


def encode_media(stream_sid: str, ulaw: bytes) -> str:
    """Build a `media` message carrying raw 8 kHz mu-law audio (any length, no file header)."""
    return _encode_json(
        {
            "event": "media",
            "streamSid": stream_sid,
            "media": {"payload": b64encode(ulaw).decode("ascii")},
        }
    )


class MediaEncoder:
    """`media` messages for one stream as UTF-8 bytes, the same text `encode_media` builds.

    The hot path's encoder: the parts that never change are encoded once, so a frame
    costs one base64 encoding and one join, with no dict, JSON encoder or str round trip.
    """

    __slots__ = ("_head", "stream_sid")

    def __init__(self, stream_sid: str) -> None:
        self.stream_sid = stream_sid
        self._head = ('{"event":"media","streamSid":' + _encode_json(stream_sid) + ',"media":{"payload":"').encode()

    def encode(self, ulaw: bytes) -> bytes:
        return b"".join((self._head, b64encode(ulaw), b'"}}'))


def encode_mark(stream_sid: str, name: str) -> str:
    """Build a `mark` message; Twilio echoes it when the audio sent before it has played.

    A mark echoed after a `clear` means the audio was discarded, not played (docs/twilio-media-streams.md).
    """
    return _encode_json({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def encode_clear(stream_sid: str) -> str:
    """Build a `clear` message: Twilio drops buffered audio and echoes all pending marks."""
    return _encode_json({"event": "clear", "streamSid": stream_sid})
