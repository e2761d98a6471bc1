"""Deadlines and bounds on plain HTTP: slow or huge requests cost the server nothing lasting."""

from __future__ import annotations

import socket
import time

import pytest
import requests

from protocols.signature import SignatureValidator
from tests.integration.conftest import AUTH_TOKEN

CALL_SID = "CA" + "0123456789abcdef" * 2


@pytest.fixture
def server_env():
    return {
        "HTTP_HEADER_TIMEOUT_S": "1",
        "HTTP_IDLE_TIMEOUT_S": "1",
        "HTTP_BODY_TIMEOUT_S": "1",
        "MAX_BODY_BYTES": "65536",
        "MAX_CONNECTIONS": "8",
    }


def connect(bridge) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", bridge.port), timeout=10)
    return conn


def read_until_closed(conn: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes; and how long that took."""
    began, data = time.monotonic(), b""
    while True:
        try:
            chunk = conn.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - began


def signature(bridge, path: str, params: dict[str, str]) -> str:
    return SignatureValidator(AUTH_TOKEN).sign(bridge.settings.public_url + path, params)


def test_half_sent_headers_are_dropped_at_the_header_deadline(bridge):
    with connect(bridge) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        answer, waited = read_until_closed(conn)
    assert waited < 4
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")


def test_a_request_line_sent_a_byte_at_a_time_is_dropped_too(bridge):
    with connect(bridge) as conn:
        began = time.monotonic()
        closed = False
        for byte in b"GET /healthz HTTP/1.1\r\n":
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.1)
            if time.monotonic() - began > 5:
                break
        if not closed:
            _, _waited = read_until_closed(conn)
    assert time.monotonic() - began < 6


def test_an_idle_keep_alive_connection_is_closed(bridge):
    with connect(bridge) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer, waited = read_until_closed(conn)
    assert answer.startswith(b"HTTP/1.1 200")
    assert 0.5 < waited < 4


def test_an_unsigned_webhook_is_refused_before_its_body_is_read(bridge):
    with connect(bridge) as conn:
        conn.sendall(b"POST /voice/incoming HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
                     b"\r\nContent-Length: 268435456\r\n\r\n" + b"a=b&" * 1000)
        answer, waited = read_until_closed(conn)
    assert answer.startswith((b"HTTP/1.1 403", b"HTTP/1.1 413")), answer[:40]
    assert waited < 3


def test_a_body_over_the_limit_is_refused_from_its_content_length(bridge):
    with connect(bridge) as conn:
        conn.sendall(b"POST /voice/incoming HTTP/1.1\r\nHost: x\r\nX-Twilio-Signature: abc\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 268435456\r\n\r\n")
        answer, waited = read_until_closed(conn)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:40]
    assert waited < 3
    assert bridge.metrics.value("bridge_malformed_inputs_total", source="http", kind="body_too_large") == 1


def test_a_chunked_body_is_cut_off_at_the_limit(bridge):
    chunk = b"a" * 8192
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(20))
    with connect(bridge) as conn:
        conn.sendall(b"POST /voice/incoming HTTP/1.1\r\nHost: x\r\nX-Twilio-Signature: abc\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        answer, _ = read_until_closed(conn)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:40]


def test_a_body_that_trickles_in_is_dropped_at_the_body_deadline(bridge):
    with connect(bridge) as conn:
        conn.sendall(b"POST /voice/incoming HTTP/1.1\r\nHost: x\r\nX-Twilio-Signature: abc\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nCallSid=")
        answer, waited = read_until_closed(conn)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:40]
    assert waited < 3
    assert bridge.metrics.value("bridge_malformed_inputs_total", source="http", kind="body_timeout") == 1


def test_a_form_with_too_many_fields_is_refused_before_the_signature_math(bridge):
    params = {f"f{i}": "" for i in range(5000)}
    body = "&".join(f"{k}=" for k in params)
    assert len(body) < 65536
    response = requests.post(
        f"http://127.0.0.1:{bridge.port}/voice/incoming", data=body,
        headers={"X-Twilio-Signature": "abc", "Content-Type": "application/x-www-form-urlencoded"}, timeout=5,
    )
    assert response.status_code == 400
    assert bridge.metrics.value("bridge_malformed_inputs_total", source="webhook", kind="bad_form") == 1


def test_a_multipart_webhook_is_refused_without_touching_the_disk(bridge):
    files = {"upload": ("x.bin", b"\0" * 60000)}
    response = requests.post(f"http://127.0.0.1:{bridge.port}/voice/incoming", files=files,
                             headers={"X-Twilio-Signature": "abc"}, timeout=5)
    assert response.status_code == 415


def test_a_real_webhook_still_passes(bridge):
    params = {"CallSid": CALL_SID, "From": "+14155550100", "AccountSid": "AC" + "0" * 32}
    response = requests.post(f"http://127.0.0.1:{bridge.port}/voice/incoming", data=params,
                             headers={"X-Twilio-Signature": signature(bridge, "/voice/incoming", params)}, timeout=5)
    assert response.status_code == 200 and "<Stream" in response.text


def test_held_connections_beyond_the_cap_wait_and_are_served_once_the_deadlines_free_them(bridge):
    held = [connect(bridge) for _ in range(8)]
    try:
        for conn in held:
            conn.sendall(b"GET /healthz HTTP/1.1\r\n")  # never finished
        began = time.monotonic()
        response = requests.get(f"http://127.0.0.1:{bridge.port}/healthz", timeout=10)
        assert response.status_code == 200
        assert time.monotonic() - began < 5  # freed by the header deadline, not by luck
    finally:
        for conn in held:
            conn.close()
