"""VAPI simulator over real loopback sockets: `POST /call`, the transport websocket, faults."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import gevent
import gevent.event
import gevent.pool
import numpy as np
import pytest
import websocket

from audio.mulaw import pcm16_to_ulaw, ulaw_to_pcm16
from audio.signals import dominant_frequency_hz, silence, tone
from sims.vapi import SimCall, VapiSimConfig, VapiSimulator
from sims.vapi_call import AssistantTurn

FAST = VapiSimConfig(greeting_ms=200, reply_ms=400, reply_delay_ms=150, end_of_utterance_ms=240)
PCM16K = {"format": "pcm_s16le", "container": "raw", "sampleRate": 16000}
MULAW8K = {"format": "mulaw", "container": "raw", "sampleRate": 8000}


@pytest.fixture
def sim_factory() -> Iterator[Any]:
    sims: list[VapiSimulator] = []

    def make(config: VapiSimConfig = FAST) -> VapiSimulator:
        sim = VapiSimulator(config)
        sim.start()
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        sim.stop()


@pytest.fixture
def sim(sim_factory: Any) -> VapiSimulator:
    return sim_factory()


def eventually(check: Any, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(0.01)
    return True


def post_call(
    sim: VapiSimulator, body: Any, headers: dict[str, str] | None = None, raw: str | None = None
) -> tuple[int, Any]:
    url = urlsplit(sim.base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
    try:
        sent = {"Content-Type": "application/json", "User-Agent": "bridge-test/1.0", **(headers or {})}
        sent = {k: v for k, v in sent.items() if v is not None}
        connection.request("POST", "/call", body=raw if raw is not None else json.dumps(body), headers=sent)
        response = connection.getresponse()
        text = response.read().decode()
    finally:
        connection.close()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text


def create_body(audio: dict[str, Any] = PCM16K, mode: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "assistantId": "asst-1",
        "transport": {"provider": "vapi.websocket", "audioFormat": audio},
    }
    if mode:
        body["assistantOverrides"] = {"firstMessageMode": mode}
    return body


class Client:
    """The bridge's side, reduced to a websocket-client socket plus a reader greenlet."""

    def __init__(self, url: str, audio: dict[str, Any]) -> None:
        self.ws = websocket.create_connection(url, timeout=5)
        self.rate = audio["sampleRate"]
        self.mulaw = audio["format"] == "mulaw"
        self.texts: list[tuple[float, dict[str, Any]]] = []
        self.audio = bytearray()
        self.audio_times: list[float] = []
        self.close_code: int | None = None
        self.closed = gevent.event.Event()
        self._group = gevent.pool.Group()
        self._group.spawn(self._read)

    def _read(self) -> None:
        try:
            while True:
                try:
                    opcode, frame = self.ws.recv_data_frame(control_frame=True)
                except websocket.WebSocketTimeoutException:
                    continue
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    self.texts.append((time.monotonic(), json.loads(frame.data)))
                elif opcode == websocket.ABNF.OPCODE_BINARY:
                    self.audio += frame.data
                    self.audio_times.append(time.monotonic())
                elif opcode == websocket.ABNF.OPCODE_CLOSE:
                    self.close_code = int.from_bytes(frame.data[:2], "big") if len(frame.data) >= 2 else 1005
                    return
        except (OSError, websocket.WebSocketException):
            return
        finally:
            self.closed.set()

    def send_pcm(self, pcm: np.ndarray) -> float:
        """Send in 20 ms frames on an absolute clock; returns when the last frame went."""
        samples = self.rate // 50
        start = time.monotonic()
        for index in range(0, len(pcm), samples):
            gevent.sleep(max(0.0, start + index / self.rate - time.monotonic()))
            chunk = pcm[index : index + samples]
            self.ws.send_binary(pcm16_to_ulaw(chunk) if self.mulaw else chunk.astype("<i2").tobytes())
        return time.monotonic()

    def wait_text(self, kind: str, timeout: float = 3.0, **fields: Any) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, message in self.texts:
                if message.get("type") == kind and all(message.get(k) == v for k, v in fields.items()):
                    return at, message
            gevent.sleep(0.01)
        raise AssertionError(f"no {kind} {fields} in {[m for _, m in self.texts]}")

    def types(self) -> list[str]:
        return [m.get("type") for _, m in self.texts]

    def close(self) -> None:
        try:
            self.ws.close(timeout=1)
        finally:
            self._group.kill(timeout=1)
            self.ws.shutdown()


@pytest.fixture
def connect() -> Iterator[Any]:
    clients: list[Client] = []

    def make(
        sim: VapiSimulator, audio: dict[str, Any] = PCM16K, mode: str | None = None
    ) -> tuple[Client, SimCall]:
        status, created = post_call(sim, create_body(audio, mode))
        assert status == 201, created
        client = Client(created["transport"]["websocketCallUrl"], audio)
        clients.append(client)
        call = sim.call(created["id"])
        assert call.connected.wait(timeout=2)
        return client, call

    yield make
    for client in clients:
        client.close()


# ---- POST /call ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("not json", id="not-json"),
        pytest.param({"transport": {"provider": "vapi.websocket"}}, id="no-assistant-id"),
        pytest.param({"assistantId": "a", "transport": {"provider": "twilio"}}, id="wrong-provider"),
        pytest.param(create_body({"format": "opus", "container": "raw", "sampleRate": 48000}), id="bad-format"),
        pytest.param(create_body({"format": "mulaw", "container": "raw", "sampleRate": 16000}), id="mulaw-16k"),
        pytest.param(create_body(PCM16K, mode="sing-first"), id="bad-first-message-mode"),
    ],
)
def test_create_refuses_a_bad_body_with_400(sim: VapiSimulator, body: Any) -> None:
    status, answer = post_call(sim, body, raw=body if isinstance(body, str) else None)
    assert status == 400
    assert answer["statusCode"] == 400 and answer["message"]
    assert sim.calls == []


def test_create_without_user_agent_gets_cloudflare_1010(sim: VapiSimulator) -> None:
    status, answer = post_call(sim, create_body(), headers={"User-Agent": None})
    assert (status, answer) == (403, "error code: 1010")


def test_create_requires_the_bearer_key_when_configured(sim_factory: Any) -> None:
    sim = sim_factory(VapiSimConfig(api_key="sk-test"))
    assert post_call(sim, create_body())[0] == 401
    assert post_call(sim, create_body(), headers={"Authorization": "Bearer nope"})[0] == 401
    status, created = post_call(sim, create_body(), headers={"Authorization": "Bearer sk-test"})
    assert status == 201
    assert created["type"] == "vapi.websocketCall" and created["status"] == "queued"
    port = urlsplit(sim.base_url).port
    assert created["transport"]["websocketCallUrl"] == f"ws://127.0.0.1:{port}/{created['id']}/transport"


def test_fail_next_creates_then_recovers(sim: VapiSimulator) -> None:
    sim.fail_next_creates(2, status=500)
    assert [post_call(sim, create_body())[0] for _ in range(3)] == [500, 500, 201]
    sim.refuse_creates(True)
    assert post_call(sim, create_body())[0] == 503
    sim.refuse_creates(False)
    assert post_call(sim, create_body())[0] == 201
    assert len(sim.calls) == 2


# ---- the transport ------------------------------------------------------------------


def test_created_url_opens_and_the_call_greets(sim: VapiSimulator, connect: Any) -> None:
    client, call = connect(sim)
    client.wait_text("speech-update", status="stopped", role="assistant", turn=0)
    assert client.types()[:2] == ["status-update", "speech-update"]
    assert client.texts[0][1] == {"type": "status-update", "status": "in-progress"}
    assert call.greeted and (call.audio_format, call.sample_rate) == ("pcm_s16le", 16000)
    # 200 ms greeting at 16 kHz pcm_s16le, in 640-byte frames.
    assert len(client.audio) == 200 * 32


def test_waits_for_user_does_not_greet(sim: VapiSimulator, connect: Any) -> None:
    client, call = connect(sim, mode="assistant-waits-for-user")
    gevent.sleep(0.4)
    assert call.first_message_mode == "assistant-waits-for-user"
    assert not call.greeted and client.audio == b"" and client.types() == ["status-update"]


@pytest.mark.parametrize("audio", [PCM16K, MULAW8K], ids=["pcm16k", "mulaw8k"])
def test_answers_an_utterance_with_the_tone_after_the_delay(
    sim: VapiSimulator, connect: Any, audio: dict[str, Any]
) -> None:
    client, call = connect(sim, audio=audio, mode="assistant-waits-for-user")
    rate = audio["sampleRate"]
    client.send_pcm(silence(100, rate))
    spoke_until = client.send_pcm(tone(300.0, 400, rate, dbfs=-20.0))
    client.send_pcm(silence(800, rate))
    stopped_at, _ = client.wait_text("speech-update", status="stopped", role="assistant", turn=0)

    _, transcript = client.wait_text("transcript", role="user", transcriptType="final")
    assert transcript["transcript"]
    first_audio = client.audio_times[0] - spoke_until
    # Endpointing (240 ms of silence) plus the 150 ms reply delay.
    assert 0.3 < first_audio < 0.6
    raw = bytes(client.audio)
    answer = ulaw_to_pcm16(raw) if client.mulaw else np.frombuffer(raw, dtype="<i2")
    assert abs(dominant_frequency_hz(answer, rate) - 440.0) < 5.0
    assert len(answer) == rate * 400 // 1000
    assert (call.utterances, call.answers_sent, call.interruptions_sent) == (1, 1, 0)
    # Burst mode, but `stopped` waits for the answer's real-time play-out.
    assert stopped_at - client.audio_times[0] >= 0.35
    # Everything we sent arrived (the last frame may still be on the way).
    assert eventually(lambda: len(call.received_pcm16()) == rate * 1300 // 1000)
    assert abs(dominant_frequency_hz(call.received_pcm16()[rate // 10 : rate // 2], rate) - 300.0) < 5.0


@pytest.mark.parametrize("realtime", [False, True], ids=["burst", "realtime"])
def test_speaking_over_an_answer_interrupts_it(sim_factory: Any, connect: Any, realtime: bool) -> None:
    sim = sim_factory(VapiSimConfig(greeting_ms=3000, send_realtime=realtime, end_of_utterance_ms=240))
    client, call = connect(sim)
    client.send_pcm(silence(300, 16000))
    client.send_pcm(tone(300.0, 200, 16000, dbfs=-20.0))
    interrupted_at, _ = client.wait_text("user-interrupted")
    stopped_at, _ = client.wait_text("speech-update", status="stopped", turn=0)
    assert call.interruptions_sent == 1
    # The greeting ends at the barge-in, not when its 3 s would have played out.
    assert stopped_at - interrupted_at < 0.1
    if realtime:
        # ...and real-time frames stopped arriving with it.
        assert len(client.audio) < 16000 * 2 * 1.0
        assert client.audio_times[-1] <= interrupted_at + 0.05
    else:
        assert len(client.audio) == 3 * 16000 * 2  # a burst was all sent before the barge-in


@pytest.mark.parametrize("realtime", [False, True], ids=["burst", "realtime"])
def test_a_caller_already_talking_when_a_turn_begins_interrupts_it_after_voice_seconds(
    sim_factory: Any, connect: Any, realtime: bool
) -> None:
    # The second turn begins while the caller is mid-utterance: no utterance starts during
    # it, but VAPI's voiceSeconds (0.2 s of voice while it speaks) still stops it.
    sim = sim_factory(VapiSimConfig(send_realtime=realtime, end_of_utterance_ms=400))
    turns = [AssistantTurn(pcm=silence(100, 16000)),
             AssistantTurn(pcm=tone(440.0, 3000, 16000, dbfs=-20.0), pause_s=0.6)]
    sim.on_call = lambda call: setattr(call, "turns", turns)
    client, call = connect(sim)
    client.wait_text("speech-update", status="stopped", turn=0)
    client.send_pcm(tone(300.0, 400, 16000, dbfs=-20.0))  # the caller starts in the pause...
    assert call.interruptions_sent == 0
    client.wait_text("speech-update", status="started", turn=1)
    client.send_pcm(tone(300.0, 300, 16000, dbfs=-20.0))  # ...and talks on over the turn
    client.wait_text("user-interrupted")
    assert call.interruptions_sent == 1


def test_answers_pings_until_blackholed(sim: VapiSimulator) -> None:
    _status, created = post_call(sim, create_body(mode="assistant-waits-for-user"))
    ws = websocket.create_connection(created["transport"]["websocketCallUrl"], timeout=1)
    try:
        opcode, _ = ws.recv_data_frame(control_frame=True)  # status-update
        assert opcode == websocket.ABNF.OPCODE_TEXT
        ws.ping(b"one")
        opcode, frame = ws.recv_data_frame(control_frame=True)
        assert (opcode, frame.data) == (websocket.ABNF.OPCODE_PONG, b"one")

        sim.call(created["id"]).blackhole()
        ws.settimeout(0.5)
        ws.ping(b"two")
        with pytest.raises(websocket.WebSocketTimeoutException):
            ws.recv_data_frame(control_frame=True)
        assert not sim.call(created["id"]).ended.is_set()
    finally:
        ws.shutdown()


def test_end_call_from_the_client_ends_it(sim: VapiSimulator, connect: Any) -> None:
    client, call = connect(sim, mode="assistant-waits-for-user")
    client.ws.send(json.dumps({"type": "add-message", "message": {"role": "user", "content": "hi"}}))
    client.ws.send(json.dumps({"type": "end-call"}))
    _, ended = client.wait_text("status-update", status="ended")
    assert ended["endedReason"] == "customer-ended-call"
    assert client.closed.wait(timeout=2) and client.close_code == 1000
    assert call.ended.wait(timeout=2)
    assert [m["type"] for m in call.received_text] == ["add-message", "end-call"]


def test_unknown_client_type_closes_with_1008(sim: VapiSimulator, connect: Any) -> None:
    client, call = connect(sim, mode="assistant-waits-for-user")
    client.ws.send(json.dumps({"type": "ping"}))
    assert client.closed.wait(timeout=2) and client.close_code == 1008
    assert call.ended.wait(timeout=2) and call.received_text == [{"type": "ping"}]


def test_say_is_spoken_and_end_after_turns_hangs_up(sim_factory: Any, connect: Any) -> None:
    config = VapiSimConfig(reply_ms=200, reply_delay_ms=50, end_of_utterance_ms=200, end_after_turns=1)
    sim = sim_factory(config)
    client, call = connect(sim, mode="assistant-waits-for-user")
    client.ws.send(json.dumps({"type": "say", "content": "hello", "endCallAfterSpoken": False}))
    client.wait_text("speech-update", status="stopped", turn=0)
    client.send_pcm(tone(300.0, 200, 16000, dbfs=-20.0))
    client.send_pcm(silence(300, 16000))
    _, ended = client.wait_text("status-update", status="ended")
    assert ended["endedReason"] == "assistant-ended-call"
    assert client.closed.wait(timeout=2) and client.close_code == 1000
    assert call.ended.wait(timeout=2) and call.ended_reason == "assistant-ended-call"


def test_sever_drops_the_socket_without_a_close_frame(sim: VapiSimulator, connect: Any) -> None:
    client, call = connect(sim, mode="assistant-waits-for-user")
    call.sever()
    assert client.closed.wait(timeout=2)
    assert client.close_code is None
    assert call.ended.wait(timeout=2)


def test_a_second_connection_to_the_same_call_is_refused(sim: VapiSimulator, connect: Any) -> None:
    _client, call = connect(sim, mode="assistant-waits-for-user")  # the first connection stays open
    second = Client(f"ws://127.0.0.1:{urlsplit(sim.base_url).port}/{call.call_id}/transport", PCM16K)
    try:
        assert second.closed.wait(timeout=2) and second.close_code == 1008
    finally:
        second.close()
    assert not call.ended.is_set()


def test_stop_closes_live_calls_with_1001(sim_factory: Any, connect: Any) -> None:
    sim = sim_factory()
    client, call = connect(sim)
    sim.stop()
    assert call.ended.is_set()
    assert client.closed.wait(timeout=2) and client.close_code == 1001


# ---- scripted turns (benches) -------------------------------------------------------


@pytest.mark.parametrize("realtime", [False, True], ids=["burst", "realtime"])
def test_scripted_turns_replace_the_greeting_at_this_calls_pace(sim: VapiSimulator, realtime: bool) -> None:
    status, created = post_call(sim, create_body())
    assert status == 201
    call = sim.call(created["id"])
    first, second = tone(300.0, 400, 16000, dbfs=-20.0), tone(500.0, 200, 16000, dbfs=-20.0)
    call.turns = [AssistantTurn(pcm=first), AssistantTurn(pcm=second, pause_s=0.3)]
    call.send_realtime = realtime  # the config (FAST) says burst
    client = Client(created["transport"]["websocketCallUrl"], PCM16K)
    try:
        stopped, _ = client.wait_text("speech-update", status="stopped", turn=0)
        started, _ = client.wait_text("speech-update", status="started", turn=1)
        client.wait_text("speech-update", status="stopped", turn=1)
        audio = np.frombuffer(bytes(client.audio), dtype="<i2")
        assert np.array_equal(audio, np.concatenate([first, second]))  # instead of the 200 ms greeting
        first_frames = client.audio_times[: 400 // 20]
        spread = first_frames[-1] - first_frames[0]
        assert (0.3 < spread < 0.5) if realtime else spread < 0.1
        assert started - stopped >= 0.3  # the pause, after the first turn had played out
        assert [turn for _, _, turn in call.turns_spoken] == [0, 1]
    finally:
        client.close()


def test_a_simulator_that_does_not_answer_still_hears_the_utterance(sim_factory: Any, connect: Any) -> None:
    sim = sim_factory(VapiSimConfig(greeting_ms=200, reply_delay_ms=50, end_of_utterance_ms=240, answers=False))
    client, call = connect(sim, mode="assistant-waits-for-user")
    client.send_pcm(tone(300.0, 400, 16000, dbfs=-20.0))
    client.send_pcm(silence(700, 16000))
    assert eventually(lambda: call.utterances == 1)
    gevent.sleep(0.3)
    assert client.audio == b"" and call.answers_sent == 0
    assert client.types() == ["status-update"]


# ---- the conversation ---------------------------------------------------------------


def test_what_is_said_is_reported_as_final_transcripts_and_the_whole_history(
    sim: VapiSimulator, connect: Any
) -> None:
    client, _call = connect(sim)
    greeting = "Hello, this is the simulated assistant."
    client.wait_text("transcript", role="assistant", transcriptType="final", transcript=greeting)
    client.send_pcm(tone(300.0, 300, 16000, dbfs=-20.0))
    client.send_pcm(silence(400, 16000))
    client.wait_text("transcript", role="user", transcriptType="final", transcript="utterance 1")
    client.wait_text("transcript", role="assistant", transcriptType="final", transcript="Answer 1.")
    updates = [m["conversation"] for _, m in client.texts if m["type"] == "conversation-update"]
    assert updates[-1] == [
        {"role": "system", "content": "You are the simulated assistant."},
        {"role": "assistant", "content": greeting},
        {"role": "user", "content": "utterance 1"},
        {"role": "assistant", "content": "Answer 1."},
    ]
    assert len(updates) == 3  # one per turn committed


def test_history_given_by_add_message_is_recorded_and_the_answer_knows_it(sim: VapiSimulator, connect: Any) -> None:
    client, call = connect(sim, mode="assistant-waits-for-user")
    for role, content in [("assistant", "Hello."), ("user", "A taxi, please.")]:
        message = {"role": role, "content": content}
        client.ws.send(json.dumps({"type": "add-message", "message": message, "triggerResponseEnabled": False}))
    client.send_pcm(tone(300.0, 300, 16000, dbfs=-20.0))
    client.send_pcm(silence(400, 16000))
    _, answer = client.wait_text("transcript", role="assistant", transcriptType="final")
    assert answer["transcript"] == "Answer 1. I remember 2 earlier turns."
    assert [(m.role, m.content, m.trigger_response, m.audio_bytes_before) for m in call.added_messages] == [
        ("assistant", "Hello.", False, 0),
        ("user", "A taxi, please.", False, 0),
    ]
    assert call.history_given == 2 and not call.greeted
    assert call.history[:3] == [("assistant", "Hello."), ("user", "A taxi, please."), ("user", "utterance 1")]
