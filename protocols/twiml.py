"""TwiML documents the voice webhook answers with, built with twilio's `VoiceResponse`.

Also owns the shape of a Call SID and of the per-call media-stream URL that `<Stream>` points at.
Protocol facts: docs/twilio-media-streams.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

from twilio.twiml.voice_response import VoiceResponse

__all__ = [
    "CALL_SID_PATTERN",
    "MAX_PARAMETER_CHARS",
    "connect_stream_twiml",
    "fallback_twiml",
    "hangup_twiml",
    "is_call_sid",
    "media_stream_url",
]

# "CA" followed by 32 hex digits. Use with fullmatch (is_call_sid does), so no trailing newline
# or suffix slips through the way `$` would let it.
CALL_SID_PATTERN: Final = re.compile(r"CA[0-9a-fA-F]{32}")

# STREAM: "The combined length of each <Parameter> name and value attributes must be under 500
# characters."
MAX_PARAMETER_CHARS: Final = 500

# Characters XML 1.0 cannot carry at all, even escaped. ElementTree writes them through and
# Twilio would then reject the whole document, so refuse them up front.
_XML_ILLEGAL: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

_PUBLIC_URL_SCHEMES: Final = frozenset({"http", "https", "ws", "wss"})


def is_call_sid(value: str | None) -> bool:
    """Tell whether `value` is a Twilio Call SID (`CA` + 32 hex digits)."""
    return isinstance(value, str) and CALL_SID_PATTERN.fullmatch(value) is not None


def media_stream_url(public_url: str, call_sid: str) -> str:
    """Build the `wss://` URL Twilio opens for one call's media stream.

    The host, port and path prefix of `public_url` are kept; its scheme, credentials, query and
    fragment are not (Stream URLs must be wss and carry no query string). For example
    `https://x.example/bridge` and `CA…` give `wss://x.example/bridge/media/CA…`.

    Raises:
        ValueError: `call_sid` is not a Call SID, or `public_url` has no host or an unknown scheme.
    """
    if not is_call_sid(call_sid):
        # It becomes a path segment, so anything else could reshape the URL.
        raise ValueError(f"not a Call SID: {call_sid!r}")
    parts = urlsplit(public_url)
    if parts.scheme not in _PUBLIC_URL_SCHEMES or not parts.hostname:
        raise ValueError(f"public_url must be an absolute http(s)/ws(s) URL, got {public_url!r}")
    _ = parts.port  # raises ValueError for a non-numeric or out-of-range port
    host_port = parts.netloc.rpartition("@")[2]
    return f"wss://{host_port}{parts.path.rstrip('/')}/media/{call_sid}"


def connect_stream_twiml(*, action_url: str, stream_url: str, parameters: Mapping[str, str]) -> str:
    """Answer a call by connecting it to our bidirectional media stream.

    `<Connect action=… method="POST">` makes Twilio request `action_url` once the stream ends
    (we close the socket or it fails), so the call can continue with fresh TwiML. `parameters`
    arrive in the `start` event's `customParameters`. Every value is XML-escaped by twilio's
    builder.

    Raises:
        ValueError: `stream_url` is not a `wss://` URL without query, a parameter name is empty,
            a name plus value is 500 characters or more, or a value holds characters XML forbids.
    """
    parts = urlsplit(stream_url)
    if parts.scheme != "wss" or not parts.hostname or parts.query:
        raise ValueError(f"stream_url must be wss:// with no query string, got {stream_url!r}")
    _check_xml(action_url, "action_url")
    _check_xml(stream_url, "stream_url")
    response = VoiceResponse()
    stream = response.connect(action=action_url, method="POST").stream(url=stream_url)
    for name, value in parameters.items():
        if not name:
            raise ValueError("a <Parameter> needs a non-empty name")
        if len(name) + len(value) >= MAX_PARAMETER_CHARS:
            raise ValueError(f"<Parameter> {name!r}: name + value must be under 500 characters")
        _check_xml(name, "parameter name")
        _check_xml(value, f"parameter {name!r}")
        stream.parameter(name=name, value=value)
    return str(response.to_xml())


def hangup_twiml() -> str:
    """End the call: `<Response><Hangup/></Response>`."""
    response = VoiceResponse()
    response.hangup()
    return str(response.to_xml())


def fallback_twiml(*, say: str, dial: str | None, voice: str | None = None) -> str:
    """Tell the caller something, then optionally hand the call to a number.

    Gives `<Say voice=…>say</Say>` followed by `<Dial>dial</Dial>` when `dial` is set. An empty
    `say` leaves out `<Say>`; with no `dial` either, Twilio simply hangs up.

    Raises:
        ValueError: a value holds characters XML forbids.
    """
    response = VoiceResponse()
    if say:
        _check_xml(say, "say")
        if voice is not None:
            _check_xml(voice, "voice")
        response.say(say, voice=voice)
    if dial:
        _check_xml(dial, "dial")
        response.dial(dial)
    return str(response.to_xml())


def _check_xml(value: str, what: str) -> None:
    if _XML_ILLEGAL.search(value):
        raise ValueError(f"{what} contains a character XML 1.0 cannot represent")
