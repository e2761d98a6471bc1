"""The VAPI relay's edges, with real node processes: a parked VAPI socket whose stream never
comes, and a stream whose webhook's node is gone (docs/vapi-relay.md).

Two nodes (`python run.py`) share an SQLite call directory and one VAPI simulator (in this
process, so the test sees every VAPI call and its socket). Tickets, and so parked sockets,
last 2 s here (MEDIA_CONNECT_TIMEOUT_S). The last two tests kill node A.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest

from bench._server import ServerProcess
from sims.caller import CallerConfig, SimulatedCaller
from sims.vapi import VapiSimConfig, VapiSimulator
from tests.integration.test_call_flow import speak_and_wait_for_answer

PUBLIC_URL = "https://bridge.test"
TOKEN = "relay-test-auth-token-0123456789"
API_KEY = "relay-vapi-key"
TICKET_S = 2.0


class Pair:
    def __init__(self, nodes: list[ServerProcess], sim: VapiSimulator) -> None:
        self.nodes = nodes
        self.sim = sim

    def webhook(self, node: int) -> SimulatedCaller:
        caller = SimulatedCaller(CallerConfig(server_url=self.nodes[node].url, public_url=PUBLIC_URL,
                                              auth_token=TOKEN))
        status, twiml = caller.post_webhook()
        assert status == 200 and "<Stream" in twiml, twiml
        return caller

    def stream(self, webhook: SimulatedCaller, node: int) -> SimulatedCaller:
        stream = SimulatedCaller(CallerConfig(server_url=self.nodes[node].url, public_url=PUBLIC_URL,
                                              auth_token=TOKEN, call_sid=webhook.call_sid))
        stream.stream_url, stream.custom_parameters = webhook.stream_url, dict(webhook.custom_parameters)
        return stream

    def log(self, node: int) -> str:
        return self.nodes[node].log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Iterator[Pair]:
    sim = VapiSimulator(VapiSimConfig(api_key=API_KEY, reply_delay_ms=100, reply_ms=400, greeting_ms=300))
    sim.start()
    workdir: Path = tmp_path_factory.mktemp("relay")
    nodes = []
    for name in ("a", "b"):
        (workdir / name).mkdir()
        nodes.append(ServerProcess(workdir=workdir / name, chaos_rate=0, seed=0, extra_env={
            "DIRECTORY_PATH": str(workdir / "directory.db"),
            "NODE_ID": f"node-{name}",
            "PUBLIC_URL": PUBLIC_URL,
            "TWILIO_AUTH_TOKEN": TOKEN,
            "VAPI_API_KEY": API_KEY,
            "VAPI_BASE_URL": sim.base_url,
            "MEDIA_CONNECT_TIMEOUT_S": f"{TICKET_S:g}",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
        }))
    try:
        gevent.joinall([gevent.spawn(node.start) for node in nodes], raise_error=True, timeout=60)
        yield Pair(nodes, sim)
    finally:
        for node in nodes:
            node.stop(timeout_s=10)
        sim.stop()


def test_a_parked_vapi_socket_whose_stream_never_comes_is_closed_when_its_ticket_expires(pair):
    before = len(pair.sim.calls)
    webhook = pair.webhook(0)
    vapi_call = pair.sim.calls[before]
    assert vapi_call.connected.wait(5)  # node A parked the VAPI call's socket at the webhook
    parked_at = time.monotonic()
    assert vapi_call.ended.wait(TICKET_S + 3), "the parked socket was never closed"
    assert time.monotonic() - parked_at >= TICKET_S - 0.5  # not before the ticket expired
    assert vapi_call.ended_reason is not None  # A said goodbye (end-call) before closing
    lines = [line for line in pair.log(0).splitlines() if "vapi_parked_expired" in line and webhook.call_sid in line]
    assert len(lines) == 1, lines


def test_a_relayed_call_whose_webhooks_node_dies_goes_on_with_a_new_vapi_call(pair):
    """Node A is killed under the call, then started again for the next test."""
    before = len(pair.sim.calls)
    webhook = pair.webhook(0)
    stream = pair.stream(webhook, 1)
    try:
        stream.connect()
        stream.start_stream()
        assert stream.wait_for_audio(800, timeout_s=5), "no greeting"
        relayed = pair.sim.calls[before]
        pair.nodes[0].kill()  # the relay and the VAPI socket it held go with it
        assert relayed.ended.wait(5)
        # B's link saw its socket close: a new VAPI call, told not to greet again.
        assert speak_and_wait_for_answer(stream, ms=400)
        again = pair.sim.calls[before + 1:]
        assert len(again) == 1 and again[0].first_message_mode == "assistant-waits-for-user"
        assert not stream.closed.is_set()  # the caller's stream was never touched
        stream.send_stop()
    finally:
        stream.close()
        pair.nodes[0].start()


def test_when_the_webhooks_node_is_gone_the_streams_node_makes_a_new_vapi_call_and_the_caller_is_greeted(pair):
    """Last in the module: node A is killed."""
    before = len(pair.sim.calls)
    webhook = pair.webhook(0)
    parked = pair.sim.calls[before]
    assert parked.connected.wait(5)
    pair.nodes[0].kill()  # SIGKILL: its relay is gone, and its VAPI socket with it
    assert parked.ended.wait(5)
    stream = pair.stream(webhook, 1)
    try:
        stream.connect()
        stream.start_stream()
        assert stream.wait_for_audio(800, timeout_s=5), "no greeting"
        new_calls = pair.sim.calls[before + 1:]
        assert len(new_calls) == 1 and new_calls[0].greeted
        assert new_calls[0].first_message_mode is None  # a first greeting, not a reconnect's silence
        assert speak_and_wait_for_answer(stream, ms=400)
        stream.send_stop()
    finally:
        stream.close()
    assert '"vapi_prepared_call_lost"' in pair.log(1)
