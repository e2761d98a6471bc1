"""deploy/nginx.conf run by a real nginx in front of two loopback upstreams that say who they are."""

from __future__ import annotations

import itertools
import re
import socket
from collections.abc import Iterator

import gevent
import pytest
import requests

from bench._nginx_conf import without_pass_on
from tests.fleet.deploy_config import DEPLOY_CONF, render
from tests.services import NginxServer, free_port


class Upstream:
    """A loopback HTTP/1.1 server answering every request with its name, and a WebSocket-style
    101 answer (then an echo of the bytes that follow) to an upgrade request; it keeps the
    request heads and bodies it saw. A `busy` one answers 503 to a new call's webhook or
    upgrade the proxy says it can pass on (X-Bridge-Pass-On), and "<name>:fallback" to a
    webhook it cannot (an upgrade it cannot pass on, it takes)."""

    def __init__(self, name: str, busy: bool = False) -> None:
        self.name = name
        self.busy = busy
        self.bodies: list[bytes] = []
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.heads: list[str] = []
        self._server = gevent.spawn(self._serve)

    def _serve(self) -> None:
        while True:
            conn, _ = self.listener.accept()
            gevent.spawn(self._handle, conn)

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            raw_head, body = data.split(b"\r\n\r\n", 1)
            head = raw_head.decode()
            self.heads.append(head)
            length = next((int(line.split(":", 1)[1]) for line in head.lower().splitlines()
                           if line.startswith("content-length:")), 0)
            while len(body) < length:
                body += conn.recv(4096)
            self.bodies.append(body)
            if self.busy and head.startswith("POST /voice/incoming "):
                if "x-bridge-pass-on: 1" in head.lower():
                    conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                answer = self.name.encode() + b":fallback"
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (len(answer), answer))
                return
            if "upgrade: websocket" in head.lower():
                if self.busy and "x-bridge-pass-on: 1" in head.lower():
                    conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                while chunk := conn.recv(4096):
                    conn.sendall(self.name.encode() + b":" + chunk)
                return
            body = self.name.encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))

    def close(self) -> None:
        self._server.kill()
        self.listener.close()


@pytest.fixture
def upstreams() -> Iterator[list[Upstream]]:
    nodes = [Upstream("node-a"), Upstream("node-b")]
    yield nodes
    for node in nodes:
        node.close()


def test_the_shipped_config_shows_two_nodes_round_robin_and_passive_checks_only():
    text = DEPLOY_CONF.read_text()
    live = "\n".join(line.split("#")[0] for line in text.splitlines())  # what nginx reads
    for sticky in ("ip_hash", "hash ", "sticky"):
        assert sticky not in live
    assert "max_fails=" in live and "fail_timeout=" in live
    assert "health_check" not in live and "health_check uri=/readyz" in text  # NGINX Plus only: a comment
    assert "listen 443 ssl" in text and "listen 443" not in live  # TLS: a comment
    # New calls' webhooks have a group of their own, with the very same nodes.
    groups = dict(re.findall(r"^upstream (\w+) \{(.*?)^\}", live, re.S | re.M))
    nodes = {name: re.findall(r"^\s*server ([^;]+);", body, re.M) for name, body in groups.items()}
    assert set(nodes) == {"bridge", "bridge_new_calls"}
    assert nodes["bridge"] == nodes["bridge_new_calls"] and len(nodes["bridge"]) >= 2


def test_requests_alternate_between_the_nodes_with_the_proxy_headers(nginx_server: NginxServer, upstreams):
    port = free_port()
    nginx_server.start(render([u.address for u in upstreams], port), port)
    answers = [requests.get(f"{nginx_server.url}/readyz", timeout=5).text for _ in range(6)]
    assert sorted(answers) == ["node-a"] * 3 + ["node-b"] * 3
    assert all(a != b for a, b in itertools.pairwise(answers))  # round robin, not sticky
    head = upstreams[0].heads[0].lower()
    assert "x-forwarded-for: 127.0.0.1" in head and "x-forwarded-proto: http" in head


def test_a_node_that_is_down_is_skipped_and_left_out(nginx_server: NginxServer, upstreams):
    dead = free_port()  # nothing listens there: connections are refused
    port = free_port()
    nginx_server.start(render([f"127.0.0.1:{dead}", upstreams[0].address], port), port)
    answers = [requests.post(f"{nginx_server.url}/voice/incoming", data={"x": "1"}, timeout=5) for _ in range(4)]
    assert [(a.status_code, a.text) for a in answers] == [(200, "node-a")] * 4
    assert len(upstreams[0].heads) == 4  # each request reached the live node exactly once


def _media_socket(port: int) -> bytes:
    """Upgrade /media/CA0123 through nginx, send one frame; what came back (the node's echo)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(
            b"GET /media/CA0123 HTTP/1.1\r\nHost: bridge.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += conn.recv(4096)
        assert reply.startswith(b"HTTP/1.1 101"), reply
        conn.sendall(b"frame-1")
        return conn.recv(4096)


def test_media_sockets_are_upgraded_and_tunnelled_both_ways(nginx_server: NginxServer, upstreams):
    port = free_port()
    nginx_server.start(render([u.address for u in upstreams], port), port)
    echoed = _media_socket(port)
    assert echoed in (b"node-a:frame-1", b"node-b:frame-1")
    head = next(h for u in upstreams for h in u.heads).lower()
    assert "upgrade: websocket" in head and "connection: upgrade" in head
    assert "sec-websocket-key: dghlihnhbxbszsbub25jzq==" in head


def test_only_media_paths_are_upgraded(nginx_server: NginxServer, upstreams):
    port = free_port()
    nginx_server.start(render([u.address for u in upstreams], port), port)
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade"}
    requests.get(f"{nginx_server.url}/admin/calls", headers=upgrade, timeout=5)
    head = next(h for u in upstreams for h in u.heads).lower()
    assert "upgrade:" not in head and "connection: close" in head


def test_a_new_call_a_busy_node_turns_away_goes_to_the_next_node(nginx_server: NginxServer):
    busy, free = Upstream("node-a", busy=True), Upstream("node-b")
    try:
        port = free_port()
        nginx_server.start(render([busy.address, free.address], port), port)
        answers = [requests.post(f"{nginx_server.url}/voice/incoming", data={"CallSid": f"CA{i}"}, timeout=5)
                   for i in range(4)]
        assert [(a.status_code, a.text) for a in answers] == [(200, "node-b")] * 4
        assert busy.heads and all("x-bridge-pass-on: 1" in head.lower() for head in busy.heads)
        assert sorted(free.bodies) == [f"CallSid=CA{i}".encode() for i in range(4)]  # each webhook once, whole
        # Turned away for new calls only: its live calls' requests still reach it.
        assert {requests.get(f"{nginx_server.url}/readyz", timeout=5).text for _ in range(4)} == {"node-a", "node-b"}
    finally:
        busy.close()
        free.close()


def test_when_every_node_is_busy_the_caller_gets_a_nodes_fallback_not_an_error(nginx_server: NginxServer):
    nodes = [Upstream("node-a", busy=True), Upstream("node-b", busy=True)]
    try:
        port = free_port()
        nginx_server.start(render([node.address for node in nodes], port), port)
        for i in range(3):
            answer = requests.post(f"{nginx_server.url}/voice/incoming", data={"CallSid": f"CA{i}"}, timeout=5)
            assert answer.status_code == 200 and answer.text in ("node-a:fallback", "node-b:fallback")
            last = next(node for node in nodes if answer.text.startswith(node.name))
            assert "x-bridge-pass-on" not in last.heads[-1].lower()
            assert last.bodies[-1] == f"CallSid=CA{i}".encode()  # the last try carried the webhook's body too
    finally:
        for node in nodes:
            node.close()


def test_a_media_socket_a_busy_node_turns_away_goes_to_the_next_node_or_to_a_node_anyway(nginx_server: NginxServer):
    busy, free = Upstream("node-a", busy=True), Upstream("node-b")
    try:
        port = free_port()
        nginx_server.start(render([busy.address, free.address], port), port)
        assert [_media_socket(port) for _ in range(4)] == [b"node-b:frame-1"] * 4
        assert any("x-bridge-pass-on: 1" in head.lower() for head in busy.heads)
        free.busy = True  # now no node has room: a node takes the socket all the same
        assert _media_socket(port) in (b"node-a:frame-1", b"node-b:frame-1")
    finally:
        busy.close()
        free.close()


def test_without_pass_on_a_busy_node_answers_the_fallback_itself(nginx_server: NginxServer):
    # bench.soak --fleet --no-pass-on: the fleet as it was before nodes passed calls on.
    busy, free = Upstream("node-a", busy=True), Upstream("node-b")
    try:
        port = free_port()
        nginx_server.start(without_pass_on(render([busy.address, free.address], port)), port)
        answers = {requests.post(f"{nginx_server.url}/voice/incoming", data={"x": "1"}, timeout=5).text
                   for _ in range(2)}
        assert answers == {"node-a:fallback", "node-b"}
        assert _media_socket(port) in (b"node-a:frame-1", b"node-b:frame-1")
        assert not any("x-bridge-pass-on" in head.lower() for head in busy.heads + free.heads)
    finally:
        busy.close()
        free.close()

