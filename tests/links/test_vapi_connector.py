"""VapiConnector treats VAPI as untrusted: no redirects, the key only to its own origin, bounded opens."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

import gevent
import pytest

from links.errors import ErrorKind, VapiUnavailable
from links.vapi import check_websocket_url
from protocols.vapi import PCM16K
from tests.links._peer import Peer, Request, accept_websocket, http_response
from tests.links.conftest import API_KEY, connector_for

pytestmark = pytest.mark.timeout(10)

BASE = "https://api.vapi.ai"


def created_body(port: int) -> bytes:
    return json.dumps(
        {"id": "call-1", "transport": {"provider": "vapi.websocket", "websocketCallUrl": f"ws://127.0.0.1:{port}/t"}}
    ).encode()


def answer_created(peer: Peer, conn: socket.socket, request: Request) -> None:
    http_response(conn, "201 Created", {"Content-Type": "application/json"}, created_body(peer.port))


# ---- the websocket URL, as a pure check -----------------------------------------------


@pytest.mark.parametrize(
    ("url", "base", "send_key"),
    [
        ("wss://api.vapi.ai/abc/transport", BASE, True),
        ("wss://api.vapi.ai:443/abc/transport", BASE, True),
        ("WSS://API.VAPI.AI/abc/transport", BASE, True),
        ("wss://phone-call-websocket.vapi.ai/abc/transport", BASE, False),
        ("wss://evil.example/abc/transport", BASE, False),
        ("wss://api.vapi.ai:8443/abc/transport", BASE, False),
        ("wss://api.vapi.ai.evil.example/abc", BASE, False),
        ("ws://127.0.0.1:5000/abc/transport", "http://127.0.0.1:5000", True),
        ("wss://127.0.0.1:5000/abc/transport", "http://127.0.0.1:5000", True),
        ("ws://127.0.0.1:5001/abc/transport", "http://127.0.0.1:5000", False),
        ("ws://localhost:5000/abc/transport", "http://127.0.0.1:5000", False),
    ],
)
def test_the_key_goes_only_to_the_base_urls_own_host_and_port(url: str, base: str, send_key: bool) -> None:
    assert check_websocket_url(url, base) is send_key


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("ws://api.vapi.ai/abc/transport", BASE),  # plain text against a TLS base URL
        ("http://api.vapi.ai/abc", BASE),
        ("https://api.vapi.ai/abc", BASE),
        ("ftp://api.vapi.ai/abc", "http://127.0.0.1:5000"),
        ("wss://user:secret@api.vapi.ai/abc", BASE),
        ("wss:///abc", BASE),
        ("wss://api.vapi.ai:99999/abc", BASE),
        ("/abc/transport", BASE),
    ],
)
def test_a_websocket_url_of_another_scheme_is_a_protocol_error(url: str, base: str) -> None:
    with pytest.raises(VapiUnavailable) as caught:
        check_websocket_url(url, base)
    assert caught.value.kind is ErrorKind.PROTOCOL
    assert url not in str(caught.value)  # the URL is a secret


def test_ws_is_refused_against_an_https_base_before_anything_is_dialled(make_peer: Callable[..., Peer]) -> None:
    peer = make_peer(lambda peer, conn, request: accept_websocket(conn, request))
    connector = connector_for(f"https://127.0.0.1:{peer.port}")
    with pytest.raises(VapiUnavailable) as caught:
        connector.connect(peer.ws_url())
    assert caught.value.kind is ErrorKind.PROTOCOL
    gevent.sleep(0.05)
    assert peer.connections == 0


# ---- the key on the websocket handshake -----------------------------------------------


def test_the_key_goes_with_the_handshake_to_vapis_own_origin(make_peer: Callable[..., Peer], open_link) -> None:
    peer = make_peer(lambda peer, conn, request: accept_websocket(conn, request))
    open_link(peer)
    assert peer.requests[0].headers.get("authorization") == f"Bearer {API_KEY}"


def test_the_key_never_goes_to_a_websocket_host_vapi_names(make_peer: Callable[..., Peer]) -> None:
    vapi = make_peer(answer_created)
    foreign = make_peer(lambda peer, conn, request: accept_websocket(conn, request))
    link = connector_for(vapi.http_url).connect(foreign.ws_url())
    try:
        assert len(foreign.requests) == 1
        assert "authorization" not in foreign.requests[0].headers
        assert API_KEY not in repr(foreign.requests[0])
    finally:
        link.shutdown()


def test_a_websocket_handshake_redirect_is_not_followed(make_peer: Callable[..., Peer]) -> None:
    target = make_peer(lambda peer, conn, request: accept_websocket(conn, request))

    def redirect(peer: Peer, conn: socket.socket, request: Request) -> None:
        http_response(conn, "302 Found", {"Location": target.ws_url()})

    vapi = make_peer(redirect)
    with pytest.raises(VapiUnavailable) as caught:
        connector_for(vapi.http_url).connect(vapi.ws_url())
    assert caught.value.kind is ErrorKind.PROTOCOL and "302" in str(caught.value)
    gevent.sleep(0.05)
    assert target.connections == 0


# ---- POST /call -----------------------------------------------------------------------


def test_create_call_sends_the_key_to_the_configured_origin(make_peer: Callable[..., Peer]) -> None:
    vapi = make_peer(answer_created)
    created = connector_for(vapi.http_url).create_call(PCM16K, None)
    assert created.call_id == "call-1"
    assert vapi.requests[0].headers["authorization"] == f"Bearer {API_KEY}"


@pytest.mark.parametrize("status", ["301 Moved Permanently", "302 Found", "303 See Other", "307 Temporary Redirect",
                                    "308 Permanent Redirect"])
def test_a_redirect_from_post_call_is_refused_and_its_target_never_sees_the_key(
    make_peer: Callable[..., Peer], status: str
) -> None:
    target = make_peer(answer_created)

    def redirect(peer: Peer, conn: socket.socket, request: Request) -> None:
        http_response(conn, status, {"Location": f"{target.http_url}/call"})

    vapi = make_peer(redirect)
    with pytest.raises(VapiUnavailable) as caught:
        connector_for(vapi.http_url).create_call(PCM16K, None)
    assert caught.value.kind is ErrorKind.PROTOCOL
    assert status.split()[0] in str(caught.value)
    gevent.sleep(0.05)
    assert target.connections == 0 and target.requests == []


# ---- a peer that drips bytes cannot hold an open forever --------------------------------


def drip(prefix: bytes) -> Callable[[Peer, socket.socket, Request], None]:
    def serve(peer: Peer, conn: socket.socket, request: Request) -> None:
        conn.sendall(prefix)
        while True:  # each byte well inside the socket timeout, so only a deadline ends this
            gevent.sleep(0.05)
            conn.sendall(b"x")

    return serve


def test_a_handshake_that_never_ends_times_out(make_peer: Callable[..., Peer]) -> None:
    peer = make_peer(drip(b"HTTP/1.1 101 Switching Protocols\r\nX-Drip: "))
    started = time.monotonic()
    with gevent.Timeout(3.0), pytest.raises(VapiUnavailable) as caught:
        connector_for(peer.http_url, timeout_s=0.3).connect(peer.ws_url())
    assert caught.value.kind is ErrorKind.TIMEOUT
    assert time.monotonic() - started < 1.0


def test_a_create_answer_that_never_ends_times_out(make_peer: Callable[..., Peer]) -> None:
    peer = make_peer(drip(b"HTTP/1.1 201 Created\r\nContent-Length: 100000\r\n\r\n"))
    started = time.monotonic()
    with gevent.Timeout(3.0), pytest.raises(VapiUnavailable) as caught:
        connector_for(peer.http_url, timeout_s=0.3).create_call(PCM16K, None)
    assert caught.value.kind is ErrorKind.TIMEOUT
    assert time.monotonic() - started < 1.0
