"""VAPI `vapi.websocket` transport: the create-call body and response, and the JSON text frames.

Audio travels as raw binary frames in both directions and never passes through here; only text
frames do. Server → client events are flat `{"type": ...}` objects (no `{"message": ...}` wrapper,
which is for Server-URL webhooks only). Protocol facts: docs/vapi-websocket-transport.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from protocols.errors import ProtocolError
from protocols.fields import optional_string as _optional_str
from protocols.fields import string as _str
from protocols.twilio import DTMF_DIGITS

__all__ = [
    "MULAW8K",
    "PCM16K",
    "AudioFormat",
    "ConversationUpdate",
    "CreatedCall",
    "Hang",
    "OtherEvent",
    "SpeechUpdate",
    "StatusUpdate",
    "Transcript",
    "UserInterrupted",
    "VapiEvent",
    "create_call_body",
    "dtmf_message",
    "encode_add_message",
    "encode_context_message",
    "encode_end_call",
    "encode_say",
    "parse_create_response",
    "parse_event",
]

_AUDIO_FORMATS: Final = frozenset({"pcm_s16le", "mulaw"})
_MAX_SAMPLE_RATE_HZ: Final = 192_000  # the OpenAPI AudioFormat.sampleRate maximum

# Legacy alternate spelling of a final transcript's type in the OpenAPI ClientMessage union.
_FINAL_TRANSCRIPT_TYPE: Final = 'transcript[transcriptType="final"]'

_encode_json: Final = json.JSONEncoder(separators=(",", ":")).encode


#
# Creating the call (POST https://api.vapi.ai/call).
#


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """The transport's audio format, same in both directions; the container is always `raw`.

    `format` is `pcm_s16le` (mono, little-endian) or `mulaw`; VAPI resamples as needed.
    """

    format: str
    sample_rate: int

    def __post_init__(self) -> None:
        if self.format not in _AUDIO_FORMATS:
            raise ValueError(f"format must be 'pcm_s16le' or 'mulaw', got {self.format!r}")
        if type(self.sample_rate) is not int or not 0 < self.sample_rate <= _MAX_SAMPLE_RATE_HZ:
            raise ValueError(f"sample_rate must be an int in 1..192000, got {self.sample_rate!r}")


PCM16K: Final = AudioFormat("pcm_s16le", 16000)  # VAPI's default
MULAW8K: Final = AudioFormat("mulaw", 8000)  # Twilio's format: no transcoding needed


def create_call_body(
    *, assistant_id: str, audio_format: AudioFormat, first_message_mode: str | None = None
) -> dict[str, object]:
    """Build the JSON body that creates a websocket-transport call for a saved assistant.

    `first_message_mode` goes into `assistantOverrides` when given; VAPI accepts
    `assistant-speaks-first`, `assistant-speaks-first-with-model-generated-message` and
    `assistant-waits-for-user`. No phone fields: VAPI refuses them with this transport.
    """
    body: dict[str, object] = {
        "assistantId": assistant_id,
        "transport": {
            "provider": "vapi.websocket",
            "audioFormat": {
                "format": audio_format.format,
                "container": "raw",
                "sampleRate": audio_format.sample_rate,
            },
        },
    }
    if first_message_mode is not None:
        body["assistantOverrides"] = {"firstMessageMode": first_message_mode}
    return body


@dataclass(frozen=True, slots=True)
class CreatedCall:
    """VAPI → server: the new call's id and the websocket URL to dial (a secret: never log it)."""

    call_id: str
    websocket_url: str


def parse_create_response(body: bytes | str) -> CreatedCall:
    """Read `id` and `transport.websocketCallUrl` from a create-call response body.

    `websocketCallUrl` is documented but missing from the OpenAPI schema, hence the care.

    Raises:
        ProtocolError: `bad_json`, `not_object`, `missing_field` or `bad_field` (empty id, or a
            URL that is not ws:// or wss://).
    """
    call = _load_object(body)
    call_id = _str(call, "id", "call")
    transport = call.get("transport")
    if transport is None:
        raise ProtocolError("missing_field", "call has no 'transport'")
    if type(transport) is not dict:
        raise ProtocolError("bad_field", "call: 'transport' is not an object")
    url = _str(transport, "websocketCallUrl", "call.transport")
    if not call_id:
        raise ProtocolError("bad_field", "call.id is empty")
    if not url.startswith(("wss://", "ws://")):
        raise ProtocolError("bad_field", "call.transport.websocketCallUrl is not a ws(s):// URL")
    return CreatedCall(call_id=call_id, websocket_url=url)


#
# VAPI → server events (text frames on the transport socket).
#


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """VAPI → server: call status changed (`in-progress`, `ended`, …), with why it ended."""

    status: str
    ended_reason: str | None


@dataclass(frozen=True, slots=True)
class SpeechUpdate:
    """VAPI → server: `role` (`user`/`assistant`) `started`/`stopped` speaking in `turn`."""

    status: str
    role: str
    turn: int | None


@dataclass(frozen=True, slots=True)
class UserInterrupted:
    """VAPI → server: the caller barged in; `turn_id` matches `model-output.turnId` when given."""

    turn_id: str | None


@dataclass(frozen=True, slots=True)
class Hang:
    """VAPI → server: the assistant is stalling (slow model or voice)."""


@dataclass(frozen=True, slots=True)
class Transcript:
    """VAPI → server: a `partial` or `final` transcript of `role`'s speech."""

    role: str
    transcript_type: str
    transcript: str


@dataclass(frozen=True, slots=True)
class ConversationUpdate:
    """VAPI → server: the VAPI call's whole conversation so far, as `(role, text)` pairs.

    Only what was said is kept: `role` is `user` or `assistant` (VAPI's `bot`); system
    prompts, tool calls and entries without text are left out. `skipped` counts entries
    that were not even shaped like a message.
    """

    turns: tuple[tuple[str, str], ...]
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class OtherEvent:
    """VAPI → server: any other well-formed event (`conversation-update`, `model-output`, …)."""

    type: str


VapiEvent: TypeAlias = (
    StatusUpdate | SpeechUpdate | UserInterrupted | Hang | Transcript | ConversationUpdate | OtherEvent
)


def parse_event(text: str | bytes) -> VapiEvent:
    """Parse one JSON text frame from VAPI (UTF-8 bytes are accepted as well as str).

    Types this bridge does not act on come back as `OtherEvent`, not as errors: the set VAPI
    sends depends on `clientMessages` and grows over time.

    Raises:
        ProtocolError: `bad_json`, `not_object`, `missing_field` (no `type`, or a field a known
            type requires) or `bad_field`.
    """
    event = _load_object(text)
    kind = event.get("type")
    if kind is None:
        raise ProtocolError("missing_field", "event has no 'type'")
    if type(kind) is not str:
        raise ProtocolError("bad_field", "event 'type' is not a string")
    parser = _PARSERS.get(kind)
    if parser is None:
        return OtherEvent(type=kind)
    return parser(event)


def _parse_status_update(event: dict[str, Any]) -> StatusUpdate:
    return StatusUpdate(
        status=_str(event, "status", "status-update"),
        ended_reason=_optional_str(event, "endedReason", "status-update"),
    )


def _parse_speech_update(event: dict[str, Any]) -> SpeechUpdate:
    turn = event.get("turn")
    if turn is not None and (type(turn) is not int or turn < 0):
        raise ProtocolError("bad_field", "speech-update: 'turn' is not a non-negative integer")
    return SpeechUpdate(
        status=_str(event, "status", "speech-update"),
        role=_str(event, "role", "speech-update"),
        turn=turn,
    )


def _parse_user_interrupted(event: dict[str, Any]) -> UserInterrupted:
    return UserInterrupted(turn_id=_optional_str(event, "turnId", "user-interrupted"))


def _parse_hang(event: dict[str, Any]) -> Hang:
    return Hang()


def _parse_transcript(event: dict[str, Any]) -> Transcript:
    return Transcript(
        role=_str(event, "role", "transcript"),
        transcript_type=_str(event, "transcriptType", "transcript"),
        transcript=_str(event, "transcript", "transcript"),
    )


def _parse_final_transcript(event: dict[str, Any]) -> Transcript:
    # The type already says "final"; tolerate the field being left out in this spelling.
    if "transcriptType" not in event:
        event = {**event, "transcriptType": "final"}
    return _parse_transcript(event)


# Where a conversation-update carries the history: a live recording shows `conversation`
# (OpenAI-style `role`/`content`), the schema `messagesOpenAIFormatted` (the same) and
# `messages` (`role` `bot`/`user`/..., text in `message`). The first one present is read.
_CONVERSATION_KEYS: Final = ("conversation", "messagesOpenAIFormatted", "messages")
_SPOKEN_ROLES: Final = {"user": "user", "assistant": "assistant", "bot": "assistant"}


def _parse_conversation_update(event: dict[str, Any]) -> ConversationUpdate:
    for key in _CONVERSATION_KEYS:
        if key in event:
            entries = event[key]
            break
    else:
        raise ProtocolError("missing_field", "conversation-update has no 'conversation' or 'messages'")
    if type(entries) is not list:
        raise ProtocolError("bad_field", f"conversation-update: {key!r} is not a list")
    turns: list[tuple[str, str]] = []
    skipped = 0
    for entry in entries:
        if type(entry) is not dict or type(entry.get("role")) is not str:
            skipped += 1
            continue
        role = _SPOKEN_ROLES.get(entry["role"])
        text = _message_text(entry)
        if role is not None and text:
            turns.append((role, text))
    return ConversationUpdate(turns=tuple(turns), skipped=skipped)


def _message_text(entry: dict[str, Any]) -> str:
    """The text of one history entry: `content` (a string or OpenAI text parts) or `message`."""
    content = entry.get("content", entry.get("message"))
    if type(content) is str:
        return content.strip()
    if type(content) is list:  # OpenAI content parts: keep the text ones
        texts = (p.get("text") for p in content if type(p) is dict and p.get("type") == "text")
        return " ".join(t for t in texts if type(t) is str).strip()
    return ""


_PARSERS: Final[dict[str, Callable[[dict[str, Any]], VapiEvent]]] = {
    "status-update": _parse_status_update,
    "speech-update": _parse_speech_update,
    "user-interrupted": _parse_user_interrupted,
    "hang": _parse_hang,
    "transcript": _parse_transcript,
    _FINAL_TRANSCRIPT_TYPE: _parse_final_transcript,
    "conversation-update": _parse_conversation_update,
}


def _load_object(text: str | bytes) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # includes UnicodeDecodeError for bytes
        raise ProtocolError("bad_json", str(exc)) from exc
    if type(value) is not dict:
        raise ProtocolError("not_object", f"top level is {type(value).__name__}")
    return value


#
# Server → VAPI messages. Send only types VAPI defines: unknown ones may close the socket.
#


def encode_end_call() -> str:
    """Build `end-call` (not the stale docs' `hangup`); send it, then close the socket."""
    return _encode_json({"type": "end-call"})


def encode_add_message(*, role: str, content: str, trigger_response: bool = True) -> str:
    """Build `add-message`: append `{role, content}` to the conversation.

    With `trigger_response` the assistant answers it right away.
    """
    return _encode_json(
        {
            "type": "add-message",
            "message": {"role": role, "content": content},
            "triggerResponseEnabled": trigger_response,
        }
    )


def encode_context_message(*, role: str, content: str) -> str:
    """Build the `add-message` that gives a new VAPI call one earlier turn of the conversation.

    No response is triggered: the assistant takes it in as history and waits for the caller.
    """
    return encode_add_message(role=role, content=content, trigger_response=False)


def encode_say(content: str) -> str:
    """Build `say`: the assistant speaks `content` verbatim (VAPI may drop or delay it silently)."""
    return _encode_json({"type": "say", "content": content})


def dtmf_message(digit: str) -> str:
    """Build the `add-message` that tells the assistant the caller pressed a key.

    Sent as the user's turn, worded as a plain statement ("The caller pressed the key 5 on their
    keypad.") so the assistant's prompt can react to it, and with a response triggered.

    Raises:
        ValueError: `digit` is not a single keypad key (`0`–`9`, `*`, `#`, `A`–`D`).
    """
    if digit not in DTMF_DIGITS:
        # Only a known key may reach the model's context.
        raise ValueError(f"not a DTMF key: {digit!r}")
    return encode_add_message(
        role="user", content=f"The caller pressed the key {digit} on their keypad."
    )
