"""The simulator embedded in a long-running server must not grow with every call."""

from __future__ import annotations

import json
import urllib.request

import websocket

from sims.vapi import VapiSimConfig, VapiSimulator
from tests.integration.conftest import wait_until


def create_and_end(sim: VapiSimulator) -> None:
    body = {"assistantId": "a", "transport": {"provider": "vapi.websocket",
            "audioFormat": {"format": "pcm_s16le", "container": "raw", "sampleRate": 16000}}}
    request = urllib.request.Request(
        sim.base_url + "/call", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "t", "Authorization": "Bearer k"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        url = json.loads(response.read())["transport"]["websocketCallUrl"]
    ws = websocket.create_connection(url, timeout=5)
    ws.send_binary(bytes(640))
    ws.send(json.dumps({"type": "end-call"}))
    ws.close(timeout=1)


def test_without_recording_ended_calls_and_their_audio_are_forgotten():
    sim = VapiSimulator(VapiSimConfig(api_key="k", record=False, greeting_ms=0))
    sim.start()
    try:
        for _ in range(3):
            create_and_end(sim)
            assert wait_until(lambda: all(call.ended.is_set() for call in sim.calls))
        assert all(len(call.received_audio) == 0 for call in sim.calls)
        create_and_end(sim)
        assert len(sim.calls) == 1  # the three ended ones were dropped when the fourth came
    finally:
        sim.stop()
