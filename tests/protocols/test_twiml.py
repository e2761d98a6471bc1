from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from protocols.twiml import (
    CALL_SID_PATTERN,
    connect_stream_twiml,
    fallback_twiml,
    hangup_twiml,
    is_call_sid,
    media_stream_url,
)

CALL_SID = "CA3c95a2a6bba5fde93a5dea01e388e8fb"
NASTY = """a&b <c> "d" 'e'"""
STREAM_URL = f"wss://bridge.example.com/media/{CALL_SID}"


def _root(twiml: str) -> ET.Element:
    assert twiml.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    return ET.fromstring(twiml)  # noqa: S314 - our own TwiML


# Call SIDs.


@pytest.mark.parametrize(
    "value", [CALL_SID, CALL_SID.upper().replace("CA3C", "CA3c"), "CA" + "0" * 32]
)
def test_a_call_sid_is_ca_and_32_hex_digits(value: str) -> None:
    assert is_call_sid(value)
    assert CALL_SID_PATTERN.fullmatch(value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "CA",
        "ca3c95a2a6bba5fde93a5dea01e388e8fb",
        "MZ3c95a2a6bba5fde93a5dea01e388e8fb",
        CALL_SID[:-1],
        CALL_SID + "0",
        CALL_SID + "\n",
        " " + CALL_SID,
        "CA3c95a2a6bba5fde93a5dea01e388e8fg",
        "CA../../admin/0123456789abcdef0123",
    ],
)
def test_anything_else_is_not_a_call_sid(value: str | None) -> None:
    assert not is_call_sid(value)


# Media stream URL.


@pytest.mark.parametrize(
    ("public_url", "expected"),
    [
        ("https://x.example", f"wss://x.example/media/{CALL_SID}"),
        ("https://x.example/", f"wss://x.example/media/{CALL_SID}"),
        ("http://x.example", f"wss://x.example/media/{CALL_SID}"),
        ("wss://x.example", f"wss://x.example/media/{CALL_SID}"),
        ("https://x.example:8443", f"wss://x.example:8443/media/{CALL_SID}"),
        ("https://x.example/bridge", f"wss://x.example/bridge/media/{CALL_SID}"),
        ("https://x.example/bridge/", f"wss://x.example/bridge/media/{CALL_SID}"),
        ("https://x.example/a/b?token=1#frag", f"wss://x.example/a/b/media/{CALL_SID}"),
        ("https://user:pw@x.example/a", f"wss://x.example/a/media/{CALL_SID}"),
        ("https://127.0.0.1:5000", f"wss://127.0.0.1:5000/media/{CALL_SID}"),
    ],
)
def test_media_stream_url_is_wss_on_the_public_host_and_path(
    public_url: str, expected: str
) -> None:
    assert media_stream_url(public_url, CALL_SID) == expected


@pytest.mark.parametrize("call_sid", ["", "CA123", "../admin", CALL_SID + "?x=1"])
def test_media_stream_url_refuses_what_is_not_a_call_sid(call_sid: str) -> None:
    with pytest.raises(ValueError, match="Call SID"):
        media_stream_url("https://x.example", call_sid)


@pytest.mark.parametrize(
    "public_url",
    ["", "x.example", "/bridge", "ftp://x.example", "https://", "https://x.example:port"],
)
def test_media_stream_url_refuses_a_public_url_without_scheme_and_host(public_url: str) -> None:
    with pytest.raises(ValueError):
        media_stream_url(public_url, CALL_SID)


# <Connect><Stream>.


def test_connect_stream_twiml_connects_to_the_stream_and_posts_to_the_action_url() -> None:
    root = _root(
        connect_stream_twiml(
            action_url="https://bridge.example.com/voice/after",
            stream_url=STREAM_URL,
            parameters={"session": "opaque-token", "from": "+14158675309"},
        )
    )

    assert root.tag == "Response"
    [connect] = list(root)
    assert connect.tag == "Connect"
    assert connect.attrib == {"action": "https://bridge.example.com/voice/after", "method": "POST"}
    [stream] = list(connect)
    assert stream.tag == "Stream"
    assert stream.attrib == {"url": STREAM_URL}
    assert [(p.tag, p.attrib) for p in stream] == [
        ("Parameter", {"name": "session", "value": "opaque-token"}),
        ("Parameter", {"name": "from", "value": "+14158675309"}),
    ]


def test_connect_stream_twiml_without_parameters_has_an_empty_stream() -> None:
    root = _root(
        connect_stream_twiml(action_url="https://b/after", stream_url=STREAM_URL, parameters={})
    )

    assert list(root.find("Connect/Stream")) == []  # type: ignore[arg-type]


def test_connect_stream_twiml_escapes_every_value() -> None:
    action_url = "https://b.example/after?x=1&y=<2>"
    twiml = connect_stream_twiml(
        action_url=action_url, stream_url=STREAM_URL, parameters={NASTY: NASTY + "\n"}
    )

    for raw in ("&b", "<c>", '"d"', "&y", "<2>", "\n"):
        assert raw not in twiml
    assert "&amp;" in twiml and "&lt;" in twiml and "&quot;" in twiml
    root = _root(twiml)
    assert root.find("Connect").get("action") == action_url  # type: ignore[union-attr]
    parameter = root.find("Connect/Stream/Parameter")
    assert parameter is not None
    assert (parameter.get("name"), parameter.get("value")) == (NASTY, NASTY + "\n")


@pytest.mark.parametrize(
    "stream_url",
    [
        f"https://bridge.example.com/media/{CALL_SID}",
        f"ws://bridge.example.com/media/{CALL_SID}",
        f"wss://bridge.example.com/media/{CALL_SID}?token=1",
        "wss:///media",
        "/media",
    ],
)
def test_connect_stream_twiml_refuses_a_stream_url_twilio_cannot_open(stream_url: str) -> None:
    with pytest.raises(ValueError, match="wss://"):
        connect_stream_twiml(action_url="https://b/after", stream_url=stream_url, parameters={})


def test_a_parameter_name_and_value_must_stay_under_500_characters() -> None:
    connect_stream_twiml(
        action_url="https://b/after", stream_url=STREAM_URL, parameters={"k": "v" * 498}
    )
    with pytest.raises(ValueError, match="500"):
        connect_stream_twiml(
            action_url="https://b/after", stream_url=STREAM_URL, parameters={"k": "v" * 499}
        )


def test_a_parameter_needs_a_name() -> None:
    with pytest.raises(ValueError, match="name"):
        connect_stream_twiml(
            action_url="https://b/after", stream_url=STREAM_URL, parameters={"": "v"}
        )


@pytest.mark.parametrize("value", ["\x00", "a\x1bb", "\ufffe"])
def test_characters_xml_cannot_carry_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="XML"):
        connect_stream_twiml(
            action_url="https://b/after", stream_url=STREAM_URL, parameters={"k": value}
        )
    with pytest.raises(ValueError, match="XML"):
        fallback_twiml(say=value, dial=None)


# Hangup and fallback.


def test_hangup_twiml_only_hangs_up() -> None:
    root = _root(hangup_twiml())

    assert [(child.tag, child.attrib, list(child)) for child in root] == [("Hangup", {}, [])]


def test_fallback_twiml_says_the_message_then_dials_the_number() -> None:
    root = _root(fallback_twiml(say="Connecting you to a person.", dial="+18005551212"))

    assert [(child.tag, child.text, child.attrib) for child in root] == [
        ("Say", "Connecting you to a person.", {}),
        ("Dial", "+18005551212", {}),
    ]


def test_fallback_twiml_without_a_number_only_says_the_message() -> None:
    root = _root(fallback_twiml(say="Sorry, goodbye.", dial=None))

    assert [(child.tag, child.text) for child in root] == [("Say", "Sorry, goodbye.")]


def test_fallback_twiml_uses_the_voice_when_given() -> None:
    root = _root(fallback_twiml(say="Hello", dial=None, voice="Polly.Joanna"))

    assert root.find("Say").attrib == {"voice": "Polly.Joanna"}  # type: ignore[union-attr]


def test_fallback_twiml_with_an_empty_message_leaves_out_say() -> None:
    root = _root(fallback_twiml(say="", dial="+18005551212"))

    assert [child.tag for child in root] == ["Dial"]


def test_fallback_twiml_escapes_the_message_the_voice_and_the_number() -> None:
    twiml = fallback_twiml(say=NASTY, dial="+1 <800> & 5", voice='v"x')

    assert "<c>" not in twiml and "<800>" not in twiml and "& " not in twiml
    root = _root(twiml)
    say, dial = list(root)
    assert (say.text, say.get("voice"), dial.text) == (NASTY, 'v"x', "+1 <800> & 5")
