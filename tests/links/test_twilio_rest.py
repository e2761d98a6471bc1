"""The outbound dialer's checks before Twilio is asked, its settings, and Twilio's answers it cannot use."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from links.twilio_rest import OutboundCallError, OutboundErrorKind, TwilioDialer, is_e164
from settings import ConfigError, Settings

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "dialer-auth-token-0123456789abcd"


def dialer(**kw) -> TwilioDialer:
    base = {"account_sid": SID, "auth_token": TOKEN, "from_number": "+15557654321",
            "public_url": "https://bridge.example.com", "api_base_url": "http://127.0.0.1:9"}
    return TwilioDialer(**{**base, **kw})


@pytest.mark.parametrize("number, ok", [("+15551234567", True), ("+442071838750", True), ("+1", False),
                                        ("15551234567", False), ("+05551234567", False), ("+1555123456789012", False),
                                        ("+1 555 123 4567", False), ("", False)])
def test_e164(number, ok):
    assert is_e164(number) is ok


def test_settings_give_the_dialer_what_it_needs():
    settings = Settings.from_env({"TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_ACCOUNT_SID": SID,
                                  "TWILIO_FROM_NUMBER": "+15557654321", "PUBLIC_URL": "https://bridge.example.com"})
    assert settings.twilio.api_base_url == "https://api.twilio.com"
    made = TwilioDialer.from_settings(settings)
    assert made.voice_url == "https://bridge.example.com/voice/incoming"
    assert made.problems() == []
    assert TOKEN not in repr(made) and TOKEN not in repr(settings)


@pytest.mark.parametrize("name, value", [("TWILIO_FROM_NUMBER", "555-0100"), ("TWILIO_FROM_NUMBER", "+1 555 0100"),
                                         ("TWILIO_API_BASE_URL", "api.twilio.com"),
                                         ("TWILIO_API_BASE_URL", "ftp://api.twilio.com")])
def test_bad_outbound_settings_are_config_errors(name, value):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    assert info.value.name == name


def test_a_generated_token_cannot_place_calls():
    settings = Settings.from_env({"TWILIO_ACCOUNT_SID": SID, "TWILIO_FROM_NUMBER": "+15557654321",
                                  "PUBLIC_URL": "https://bridge.example.com"})
    problems = TwilioDialer.from_settings(settings).problems()
    assert len(problems) == 1 and problems[0].startswith("TWILIO_AUTH_TOKEN is unset")


@pytest.mark.parametrize("change, named", [
    ({"account_sid": None}, "TWILIO_ACCOUNT_SID is unset"),
    ({"account_sid": "SK" + "0" * 32}, "TWILIO_ACCOUNT_SID is not an account SID"),
    ({"auth_token": None}, "TWILIO_AUTH_TOKEN is unset"),
    ({"from_number": None}, "TWILIO_FROM_NUMBER is unset"),
    ({"public_url": "http://127.0.0.1:3000", "api_base_url": "https://api.twilio.com"}, "PUBLIC_URL"),
    ({"public_url": "https://10.0.0.5", "api_base_url": "https://api.twilio.com"}, "PUBLIC_URL"),
])
def test_each_missing_setting_is_named_and_twilio_is_not_asked(change, named):
    with pytest.raises(OutboundCallError) as info:
        dialer(**change).place("+15551234567")
    assert info.value.kind is OutboundErrorKind.NOT_CONFIGURED and info.value.kind.http_status == 503
    assert named in str(info.value) and TOKEN not in str(info.value)


def test_a_from_in_the_request_stands_in_for_the_setting():
    assert dialer(from_number=None).problems(from_given=True) == []


@pytest.mark.parametrize("to, from_", [("5551234567", None), ("+15551234567", "+1-555"), ("x" * 500, None)])
def test_numbers_that_are_not_e164_are_invalid(to, from_):
    with pytest.raises(OutboundCallError) as info:
        dialer().place(to, from_)
    assert info.value.kind is OutboundErrorKind.INVALID and info.value.kind.http_status == 400
    assert "E.164" in str(info.value) and len(str(info.value)) < 200


def serve_once(body: bytes, status: str = "201 Created") -> tuple[str, threading.Thread]:
    """A one-request HTTP server answering `body`, on a loopback port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def run() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                head, _, rest = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)
                while len(rest) < length:
                    rest += conn.recv(4096)
                conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                             "Connection: close\r\n\r\n".encode() + body)

    thread = threading.Thread(target=run)
    thread.start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", thread


@pytest.mark.parametrize("body, status", [(b"not json", "201 Created"), (json.dumps({"status": "queued"}).encode(),
                                          "201 Created"), (b"<html>bad gateway</html>", "502 Bad Gateway")])
def test_answers_that_are_not_twilios_are_errors_not_crashes(body, status):
    base, thread = serve_once(body, status)
    try:
        with pytest.raises(OutboundCallError) as info:
            dialer(api_base_url=base).place("+15551234567")
    finally:
        thread.join(10)
    assert info.value.kind in (OutboundErrorKind.UNREACHABLE, OutboundErrorKind.REJECTED)
    assert info.value.kind.http_status == 502
    assert TOKEN not in str(info.value)
