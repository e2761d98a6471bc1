"""One call's requests spread over three real server processes that share a call directory.

No sticky sessions: Twilio's webhook lands on node A, its media socket on node B, its
`/voice/after-stream` on node C. Node A opens the VAPI call's socket at the webhook and
parks it; node B reaches it through A's relay (docs/vapi-relay.md). Each node is
`python run.py` on its own loopback port, all with the same Twilio token and PUBLIC_URL
(as behind a load balancer) and one VAPI simulator (in this process). The directory is an
SQLite file (the workers of one machine: nothing to install) or a real redis-server (a
fleet of machines). The nodes are shared by the module's tests; calls are short.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
import requests
import websocket

from audio.signals import silence
from bench._server import ServerProcess
from protocols.signature import SignatureValidator
from protocols.ticket import TicketSealer, relay_socket_url, ticket_key
from sims.caller import CallerConfig, CallerError, SimulatedCaller
from sims.vapi import VapiSimConfig, VapiSimulator
from tests.integration.test_call_flow import speak_and_wait_for_answer
from tests.services import redis_server  # noqa: F401 - a fixture

PUBLIC_URL = "https://bridge.test"
TOKEN = "fleet-test-auth-token-0123456789"
ADMIN = "fleet-admin-token"
API_KEY = "fleet-vapi-key"


class Fleet:
    def __init__(self, nodes: list[ServerProcess], sim: VapiSimulator) -> None:
        self.nodes = nodes
        self.sim = sim

    def caller(self, node: int, call_sid: str | None = None) -> SimulatedCaller:
        return SimulatedCaller(CallerConfig(server_url=self.nodes[node].url, public_url=PUBLIC_URL,
                                            auth_token=TOKEN, call_sid=call_sid))

    def stream_elsewhere(self, webhook: SimulatedCaller, node: int) -> SimulatedCaller:
        """Twilio's media socket for the call `webhook` set up, landing on `node`."""
        stream = self.caller(node, webhook.call_sid)
        stream.stream_url, stream.custom_parameters = webhook.stream_url, dict(webhook.custom_parameters)
        return stream

    def post(self, node: int, path: str, params: dict[str, str]) -> requests.Response:
        signature = SignatureValidator(TOKEN).sign(PUBLIC_URL + path, params)
        return requests.post(f"{self.nodes[node].url}{path}", data=params, timeout=10,
                             headers={"X-Twilio-Signature": signature, "Connection": "close"})

    def admin(self, node: int, method: str, path: str, **kw: object) -> requests.Response:
        return requests.request(method, f"{self.nodes[node].url}{path}", timeout=10,
                                headers={"Authorization": f"Bearer {ADMIN}", "Connection": "close"}, **kw)

    def calls_seen_by(self, node: int) -> dict[str, dict]:
        return {c["call_sid"]: c for c in self.admin(node, "GET", "/admin/calls").json()["calls"]}

    def vapi_links(self, node: int, event: str) -> float:
        """The node's bridge_vapi_links_total for `event` (0 before the first)."""
        found = re.search(rf'^bridge_vapi_links_total{{event="{event}"}} (\S+)$', self.nodes[node].metrics_text(), re.M)
        return float(found.group(1)) if found else 0.0


def wait_for(predicate, timeout: float = 5.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        gevent.sleep(step)
    return bool(predicate())


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def fleet(request, tmp_path_factory) -> Iterator[Fleet]:
    sim = VapiSimulator(VapiSimConfig(api_key=API_KEY, reply_delay_ms=100, reply_ms=400, greeting_ms=300))
    sim.start()
    workdir: Path = tmp_path_factory.mktemp(f"fleet-{request.param}")
    if request.param == "sqlite":
        shared = {"DIRECTORY_PATH": str(workdir / "directory.db")}
    else:
        server = request.getfixturevalue("redis_server")
        shared = {"REDIS_URL": server.url.rsplit("/", 1)[0] + f"/{secrets.randbelow(15) + 1}"}
    nodes = []
    for name in ("a", "b", "c"):
        (workdir / name).mkdir()
        nodes.append(ServerProcess(workdir=workdir / name, chaos_rate=0, seed=0, extra_env={
            **shared,
            "NODE_ID": f"node-{name}",
            "PUBLIC_URL": PUBLIC_URL,
            "TWILIO_AUTH_TOKEN": TOKEN,
            "ADMIN_TOKEN": ADMIN,
            "VAPI_API_KEY": API_KEY,
            "VAPI_BASE_URL": sim.base_url,
            "LOG_LEVEL": "WARNING",
        }))
    try:
        gevent.joinall([gevent.spawn(node.start) for node in nodes], raise_error=True, timeout=60)
        yield Fleet(nodes, sim)
    finally:
        for node in nodes:
            node.stop(timeout_s=10)
        sim.stop()


def test_a_stream_on_another_node_gets_the_call_and_an_after_stream_on_a_third_hangs_up(fleet):
    webhook = fleet.caller(0)
    before = len(fleet.sim.calls)
    status, twiml = webhook.post_webhook()
    assert status == 200 and "<Stream" in twiml
    created = fleet.sim.calls[before:]
    assert len(created) == 1  # node A created the VAPI call
    stream = fleet.stream_elsewhere(webhook, 1)
    try:
        stream.connect()
        stream.start_stream()
        # Node B joined the VAPI call node A created (the ticket carried it): no second one.
        assert created[0].connected.wait(5)
        assert speak_and_wait_for_answer(stream, ms=400)
        assert len(fleet.sim.calls) == before + 1
        # Node C lists node B's call once B's heartbeat has published it.
        assert wait_for(lambda: webhook.call_sid in fleet.calls_seen_by(2), timeout=5)
        assert fleet.calls_seen_by(2)[webhook.call_sid]["node"].startswith("node-b-")
        created[0].end_call()  # the assistant hangs up
        assert stream.closed.wait(5)
    finally:
        stream.close()
    answer = fleet.post(2, "/voice/after-stream", {"CallSid": webhook.call_sid, "CallStatus": "in-progress"})
    assert answer.status_code == 200 and "<Hangup" in answer.text, answer.text
    # A replayed webhook, on a node that never saw the call, starts nothing.
    assert "<Hangup" in fleet.post(0, "/voice/incoming", {"CallSid": webhook.call_sid}).text
    assert "<Hangup" in fleet.post(2, "/voice/incoming", {"CallSid": webhook.call_sid}).text


def test_a_stream_on_another_node_hears_the_greeting_through_the_webhook_nodes_relay(fleet):
    relayed_before = fleet.vapi_links(0, "relayed")
    before = len(fleet.sim.calls)
    webhook = fleet.caller(0)
    webhook.post_webhook()
    vapi_call = fleet.sim.calls[before]
    # Node A opened the VAPI call's one socket at the webhook, before any stream: it is parked there.
    assert vapi_call.connected.wait(5)
    stream = fleet.stream_elsewhere(webhook, 1)
    try:
        stream.connect()
        stream.start_stream()
        assert stream.wait_for_audio(800, timeout_s=5), "no greeting"  # 100 ms of it, through A
        assert vapi_call.greeted
        assert speak_and_wait_for_answer(stream, ms=400)  # and the caller's words reach VAPI through A too
        assert fleet.vapi_links(0, "relayed") == relayed_before + 1
        assert len(fleet.sim.calls) == before + 1  # node B made no VAPI call of its own
        vapi_call.end_call()  # the assistant hangs up: its close reaches B through A
        assert stream.closed.wait(5)
    finally:
        stream.close()
    assert wait_for(lambda: webhook.call_sid not in fleet.calls_seen_by(1))


def test_the_relay_refuses_before_the_upgrade_without_the_fleets_token_and_gives_a_socket_once(fleet):
    webhook = fleet.caller(0)
    before = len(fleet.sim.calls)
    webhook.post_webhook()
    assert fleet.sim.calls[before].connected.wait(5)
    url = relay_socket_url(fleet.nodes[0].url, webhook.call_sid)
    sealer = TicketSealer(ticket_key(fleet_secret=None, auth_token=TOKEN), ttl_s=30)
    wrong = TicketSealer(ticket_key(fleet_secret="not the fleet's", auth_token=TOKEN), ttl_s=30)
    for header in ([], [f"Authorization: Bearer {wrong.relay_token(webhook.call_sid, now=time.time())}"],
                   [f"Authorization: Bearer {sealer.relay_token(fleet.caller(0).call_sid, now=time.time())}"]):
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(url, header=header, timeout=5)
        assert refused.value.status_code == 403
    good = [f"Authorization: Bearer {sealer.relay_token(webhook.call_sid, now=time.time())}"]
    taken = websocket.create_connection(url, header=good, timeout=5)
    try:
        assert taken.handshake_response.headers.get("sec-websocket-extensions") is None
        # What VAPI sent while the socket was parked comes first, unchanged: its greeting's audio.
        assert any(isinstance(taken.recv(), bytes) for _ in range(20))
        with pytest.raises(websocket.WebSocketBadStatusException) as again:
            websocket.create_connection(url, header=good, timeout=5)  # the same token, a second time
        assert again.value.status_code == 403
    finally:
        taken.close()
    assert fleet.sim.calls[before].ended.wait(5)  # the relay's end closed the VAPI socket


def test_the_calls_ticket_takes_one_stream_on_one_node_and_no_node_takes_a_second(fleet):
    webhook = fleet.caller(0)
    webhook.post_webhook()
    first, second = fleet.stream_elsewhere(webhook, 1), fleet.stream_elsewhere(webhook, 2)
    try:
        first.connect()
        first.start_stream()
        assert wait_for(lambda: webhook.call_sid in fleet.calls_seen_by(1))
        with pytest.raises(CallerError) as refused:
            second.connect()  # node C's gate: the call already streams on node B
        assert refused.value.status == 403
        first.send_audio(silence(200, 8000))
        first.send_stop()
        assert wait_for(lambda: webhook.call_sid not in fleet.calls_seen_by(1))
        # After the end, the ticket gets nothing anywhere either.
        for node in (0, 2):
            again = fleet.stream_elsewhere(webhook, node)
            with pytest.raises(CallerError) as refused:
                again.connect()
            assert refused.value.status == 403
    finally:
        first.close()
        second.close()


def test_a_call_unknown_to_every_node_is_refused_before_the_upgrade(fleet):
    stranger = fleet.caller(1)
    stranger.stream_url = f"wss://bridge.test/media/{stranger.call_sid}"
    with pytest.raises(CallerError) as refused:
        stranger.connect()
    assert refused.value.status == 403


def test_a_chaos_click_on_one_node_restarts_an_actor_of_a_call_on_another(fleet):
    webhook = fleet.caller(2)
    webhook.post_webhook()
    stream = fleet.stream_elsewhere(webhook, 1)
    try:
        stream.connect()
        stream.start_stream()
        assert wait_for(lambda: webhook.call_sid in fleet.calls_seen_by(0), timeout=8)  # node A sees B's call
        answer = fleet.admin(0, "POST", f"/admin/calls/{webhook.call_sid}/chaos",
                             json={"actor": "codec", "fault": "raise"})
        assert answer.status_code == 202 and answer.json()["node"].startswith("node-b-")

        def codec_restarts() -> int:
            call = fleet.admin(1, "GET", f"/admin/calls/{webhook.call_sid}").json()
            return int(call["actors"]["codec"]["restarts"])

        assert wait_for(lambda: codec_restarts() == 1, timeout=5)
        assert speak_and_wait_for_answer(stream, ms=400)  # and the call goes on
        stream.send_stop()
    finally:
        stream.close()
    assert wait_for(lambda: webhook.call_sid not in fleet.calls_seen_by(1))
    ended = fleet.admin(0, "POST", f"/admin/calls/{webhook.call_sid}/chaos", json={"actor": "codec", "fault": "raise"})
    assert ended.status_code == 404
