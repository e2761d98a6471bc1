"""Simulated caller against a tiny fake bridge that checks signatures the way the real one must."""

from __future__ import annotations

import base64
import json
import socket
import struct
import time
import wave
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.event
import gevent.lock
import gevent.pool
import numpy as np
import pytest
from flask import Flask, Response, request
from gevent.pywsgi import WSGIServer
from geventwebsocket.handler import WebSocketHandler
from twilio.request_validator import RequestValidator

from audio.mulaw import pcm16_to_ulaw, ulaw_to_pcm16
from audio.signals import level_dbfs, silence, speech_like, tone
from sims.caller import CallerConfig, SimulatedCaller, main
from sims.script import CallerScript, Pause, Say, is_utterance

PUBLIC = "https://bridge.example.com"
MakeCaller = Callable[..., SimulatedCaller]
TOKEN = "0123456789abcdef0123456789abcdef"


def eventually(check: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(0.01)
    return True


class FakeBridge:
    """The server side of Twilio's protocol, just enough to test the caller against."""

    def __init__(self) -> None:
        self.validator = RequestValidator(TOKEN)
        self.webhook_signature_ok: bool | None = None
        self.webhook_form: dict[str, str] = {}
        self.webhook_host: str | None = None
        self.ws_signature_ok: bool | None = None
        self.ws_host: str | None = None
        self.received: list[tuple[float, dict[str, Any]]] = []
        self.connected = gevent.event.Event()
        self.disconnected = gevent.event.Event()
        self.on_message: Callable[[FakeBridge, dict[str, Any]], None] | None = None
        self.group = gevent.pool.Group()
        self._ws: Any = None
        self._lock = gevent.lock.RLock()
        self._handlers = gevent.pool.Pool()
        app = Flask("fake_bridge")
        app.add_url_rule("/voice/incoming", "voice", self._voice, methods=["POST"])
        app.add_url_rule("/media/<call_sid>", "media", self._media, websocket=True)
        self.server = WSGIServer(
            ("127.0.0.1", 0), app, handler_class=WebSocketHandler, spawn=self._handlers, log=None
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    @property
    def stream_sid(self) -> str:
        return self.events("start")[0][1]["streamSid"]

    def events(self, name: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, m) for t, m in self.received if m.get("event") == name]

    def send(self, message: dict[str, Any] | str | bytes) -> None:
        with self._lock:
            self._ws.send(json.dumps(message) if isinstance(message, dict) else message)

    def send_media(self, ulaw: bytes) -> None:
        payload = base64.b64encode(ulaw).decode()
        self.send({"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}})

    def send_mark(self, name: str) -> float:
        self.send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})
        return time.monotonic()

    def close(self, code: int) -> None:
        with self._lock:
            self._ws.send_frame(struct.pack("!H", code), self._ws.OPCODE_CLOSE)

    def drop(self) -> None:
        self._ws.handler.socket.shutdown(socket.SHUT_RDWR)

    def _voice(self) -> Response:
        url = PUBLIC + "/voice/incoming"
        signature = request.headers.get("X-Twilio-Signature", "")
        self.webhook_signature_ok = self.validator.validate(url, request.form, signature)
        self.webhook_form = request.form.to_dict()
        self.webhook_host = request.host
        if not self.webhook_signature_ok:
            return Response("bad signature", status=403)
        sid = request.form["CallSid"]
        twiml = (
            '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
            f'<Stream url="wss://bridge.example.com/media/{sid}"><Parameter name="token" value="tok-1"/></Stream>'
            "</Connect></Response>"
        )
        return Response(twiml, mimetype="text/xml")

    def _media(self, call_sid: str) -> str:
        ws = request.environ["wsgi.websocket"]
        url = f"wss://bridge.example.com/media/{call_sid}"
        self.ws_signature_ok = self.validator.validate(url, {}, request.headers.get("X-Twilio-Signature", ""))
        self.ws_host = request.headers.get("Host")
        self._ws = ws
        if not self.ws_signature_ok:
            self.close(1008)
        self.connected.set()
        try:
            while (message := ws.receive()) is not None:
                parsed = json.loads(message) if isinstance(message, str) else {"binary": bytes(message)}
                self.received.append((time.monotonic(), parsed))
                if self.on_message is not None:
                    self.on_message(self, parsed)
        finally:
            self.disconnected.set()
        return ""


@pytest.fixture
def bridge() -> Iterator[FakeBridge]:
    fake = FakeBridge()
    fake.server.start()
    yield fake
    fake.group.kill(timeout=1)
    fake.server.stop(timeout=1)


@pytest.fixture
def make_caller(bridge: FakeBridge) -> Iterator[MakeCaller]:
    callers: list[SimulatedCaller] = []

    def make(**overrides: Any) -> SimulatedCaller:
        config = {"server_url": bridge.url, "public_url": PUBLIC, "auth_token": TOKEN, **overrides}
        caller = SimulatedCaller(CallerConfig(**config))
        callers.append(caller)
        return caller

    yield make
    for caller in callers:
        caller.close()


@pytest.fixture
def streaming(bridge: FakeBridge, make_caller: MakeCaller) -> SimulatedCaller:
    caller = make_caller()
    assert caller.post_webhook()[0] == 200
    caller.connect()
    caller.start_stream()
    assert bridge.connected.wait(2) and eventually(lambda: bridge.events("start"))
    return caller


# ---- webhook and handshake ----------------------------------------------------------


def test_webhook_is_signed_like_twilio(bridge: FakeBridge, make_caller: MakeCaller) -> None:
    caller = make_caller()
    status, body = caller.post_webhook(extra_params={"Digits": "1"})
    assert status == 200 and "<Stream" in body
    assert bridge.webhook_signature_ok and bridge.webhook_host == "bridge.example.com"
    form = bridge.webhook_form
    assert form["CallSid"] == caller.call_sid and form["CallSid"].startswith("CA") and len(form["CallSid"]) == 34
    assert form["AccountSid"].startswith("AC") and len(form["AccountSid"]) == 34
    assert (form["CallStatus"], form["Direction"], form["ApiVersion"]) == ("ringing", "inbound", "2010-04-01")
    assert form["Digits"] == "1"
    assert caller.stream_url == f"wss://bridge.example.com/media/{caller.call_sid}"
    assert caller.custom_parameters == {"token": "tok-1"}

    assert caller.post_webhook(signature=None)[0] == 403
    assert caller.post_webhook(signature="bogus")[0] == 403 and bridge.webhook_signature_ok is False


def test_handshake_is_signed_and_start_describes_the_stream(
    bridge: FakeBridge, streaming: SimulatedCaller
) -> None:
    assert bridge.ws_signature_ok and bridge.ws_host == "bridge.example.com"
    connected, start = bridge.received[0][1], bridge.received[1][1]
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert start["sequenceNumber"] == "1" and start["streamSid"] == streaming.stream_sid
    assert start["start"] == {
        "accountSid": streaming.config.account_sid,
        "streamSid": streaming.stream_sid,
        "callSid": streaming.call_sid,
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"token": "tok-1"},
    }


def test_a_bad_handshake_signature_is_sent_as_is(bridge: FakeBridge, make_caller: MakeCaller) -> None:
    caller = make_caller()
    caller.post_webhook()
    caller.connect(signature="bogus")
    caller.start_stream()
    assert bridge.connected.wait(2) and bridge.ws_signature_ok is False
    assert caller.closed.wait(2) and caller.close_code == 1008 and caller.closed_early


# ---- what the caller sends ----------------------------------------------------------


def test_media_frames_are_paced_in_real_time(bridge: FakeBridge, streaming: SimulatedCaller) -> None:
    streaming.send_audio(silence(1000, 8000))
    streaming.send_audio(silence(200, 8000), realtime=False)
    assert eventually(lambda: len(bridge.events("media")) == 60)
    media = bridge.events("media")
    paced = [t for t, _ in media[:50]]
    # 50 frames at 20 ms: 49 intervals, no drift, no bursts. One wake-up may be late on a
    # busy machine (the suite runs in parallel groups); the pace is the median's to show.
    assert 0.93 < paced[-1] - paced[0] < 1.05
    assert 0.018 < float(np.median(np.diff(paced))) < 0.022
    assert max(np.diff(paced)) < 0.15
    assert media[59][0] - media[50][0] < 0.05  # the unpaced ones went at once
    timestamps = [int(m["media"]["timestamp"]) for _, m in media]
    assert timestamps[0] == 52 and np.all(np.diff(timestamps) == 20)
    assert [m["media"]["chunk"] for _, m in media[:3]] == ["1", "2", "3"]
    assert [m["sequenceNumber"] for _, m in media[:2]] == ["2", "3"]
    first = media[0][1]
    assert set(first) == {"event", "sequenceNumber", "media", "streamSid"}
    assert first["media"]["track"] == "inbound" and len(base64.b64decode(first["media"]["payload"])) == 160


def test_skip_ms_leaves_a_gap_in_timestamp_and_chunk(bridge: FakeBridge, streaming: SimulatedCaller) -> None:
    streaming.send_audio(silence(40, 8000))
    streaming.skip_ms(200)
    streaming.send_audio(silence(40, 8000))
    assert eventually(lambda: len(bridge.events("media")) == 4)
    media = [m["media"] for _, m in bridge.events("media")]
    assert [int(m["timestamp"]) for m in media] == [52, 72, 292, 312]
    assert [int(m["chunk"]) for m in media] == [1, 2, 13, 14]


def test_dtmf_and_stop_have_twilio_shapes(bridge: FakeBridge, streaming: SimulatedCaller) -> None:
    streaming.send_dtmf("5")
    streaming.send_stop()
    assert eventually(lambda: bridge.events("stop"))
    dtmf, stop = bridge.events("dtmf")[0][1], bridge.events("stop")[0][1]
    assert dtmf == {
        "event": "dtmf",
        "streamSid": streaming.stream_sid,
        "sequenceNumber": "2",
        "dtmf": {"track": "inbound_track", "digit": "5"},
    }
    assert stop == {
        "event": "stop",
        "sequenceNumber": "3",
        "stop": {"accountSid": streaming.config.account_sid, "callSid": streaming.call_sid},
        "streamSid": streaming.stream_sid,
    }


# ---- what the caller plays and echoes -----------------------------------------------


def test_marks_are_echoed_when_the_audio_would_have_played(bridge: FakeBridge, streaming: SimulatedCaller) -> None:
    answer = pcm16_to_ulaw(tone(440.0, 1000, 8000))
    for offset in range(0, len(answer), 1600):
        bridge.send_media(answer[offset : offset + 1600])
    sent_a = bridge.send_mark("a")
    bridge.send_mark("b")
    assert eventually(lambda: len(bridge.events("mark")) == 2)
    echoes = bridge.events("mark")
    assert [m["mark"]["name"] for _, m in echoes] == ["a", "b"]
    assert 0.95 < echoes[0][0] - sent_a < 1.1
    first = echoes[0][1]
    assert set(first) == {"event", "sequenceNumber", "streamSid", "mark"}
    assert (first["streamSid"], first["mark"]) == (streaming.stream_sid, {"name": "a"})
    # Nothing buffered any more: the next mark comes straight back.
    sent_c = bridge.send_mark("c")
    assert eventually(lambda: len(bridge.events("mark")) == 3)
    assert bridge.events("mark")[2][0] - sent_c < 0.05
    assert bytes(streaming.received_ulaw) == answer and len(streaming.media_events) == 5
    assert [name for _, name in streaming.marks_echoed] == ["a", "b", "c"]


def test_clear_drops_buffered_audio_and_echoes_pending_marks(
    bridge: FakeBridge, streaming: SimulatedCaller
) -> None:
    bridge.send_media(pcm16_to_ulaw(tone(440.0, 2000, 8000)))
    bridge.send_mark("x")
    bridge.send_media(pcm16_to_ulaw(tone(440.0, 1000, 8000)))
    bridge.send_mark("y")
    gevent.sleep(0.3)
    bridge.send({"event": "clear", "streamSid": streaming.stream_sid})
    cleared = time.monotonic()
    assert eventually(lambda: len(bridge.events("mark")) == 2)
    assert [m["mark"]["name"] for _, m in bridge.events("mark")] == ["x", "y"]
    assert all(t - cleared < 0.05 for t, _ in bridge.events("mark"))
    assert len(streaming.clears) == 1
    assert abs(streaming.cleared_bytes - 2.7 * 8000) < 800
    assert len(streaming.received_ulaw) == 3 * 8000  # kept, even though it never played


def test_protocol_errors_from_the_server_are_recorded(bridge: FakeBridge, streaming: SimulatedCaller) -> None:
    sid = streaming.stream_sid
    bad: list[dict[str, Any] | str | bytes] = [
        b"\x01\x02",
        "not json",
        {"event": "speak", "streamSid": sid},
        {"event": "media", "streamSid": "MZ" + "0" * 32, "media": {"payload": ""}},
        {"event": "media", "streamSid": sid, "media": {"payload": "", "track": "outbound"}},
        {"event": "media", "streamSid": sid, "media": {"payload": "%%%"}},
        {"event": "mark", "streamSid": sid, "mark": {"name": "m"}, "chunk": "1"},
        {"event": "clear"},
    ]
    for message in bad:
        bridge.send(message)
    bridge.send_media(b"\xff" * 160)
    assert eventually(lambda: len(streaming.received_ulaw) == 160)
    assert len(streaming.errors) == len(bad), streaming.errors
    assert "ERR-31950" in streaming.errors[0] and all("ERR-3195" in e for e in streaming.errors)
    assert streaming.marks_echoed == []


# ---- run(): the whole call ----------------------------------------------------------

SHORT_SCRIPT = CallerScript((Pause(ms=200), Say(ms=300, tone_hz=300.0), Pause(ms=900), Say(ms=300)))


def answer_each_utterance(
    delay_s: float = 0.2, then: Callable[[FakeBridge], None] | None = None
) -> Callable[[FakeBridge, dict[str, Any]], None]:
    """A bridge stand-in: 3 quiet frames after speech, answer with 300 ms of tone and a mark."""
    state = {"speaking": False, "quiet": 0, "answers": 0}

    def answer(fake: FakeBridge) -> None:
        gevent.sleep(delay_s)
        state["answers"] += 1
        fake.send_media(pcm16_to_ulaw(tone(440.0, 300, 8000)))
        fake.send_mark(f"answer-{state['answers']}")
        if then is not None:
            then(fake)

    def on_message(fake: FakeBridge, message: dict[str, Any]) -> None:
        if message.get("event") != "media":
            return
        loud = level_dbfs(ulaw_to_pcm16(base64.b64decode(message["media"]["payload"]))) > -40.0
        if loud:
            state["speaking"], state["quiet"] = True, 0
        elif state["speaking"]:
            state["quiet"] += 1
            if state["quiet"] == 3:
                state["speaking"] = False
                fake.group.spawn(answer, fake)

    return on_message


def test_run_places_a_call_and_measures_turn_latency(bridge: FakeBridge, make_caller: MakeCaller) -> None:
    bridge.on_message = answer_each_utterance()
    report = make_caller(script=SHORT_SCRIPT).run(timeout_s=15)
    assert report.ok, report
    assert report.outcome == "completed" and report.failure is None
    # 3 quiet frames (60 ms) to notice, then the 200 ms delay.
    assert len(report.turns) == 2 and all(230 < t < 400 for t in report.turns), report.turns
    assert report.marks_echoed == 2 and abs(report.audio_ms_received - 600) < 1
    assert bridge.events("stop") and bridge.disconnected.wait(2)
    # The adaptive tail waited for the last answer to play out, then stopped.
    assert report.duration_s < 4.5


def test_run_reports_a_clean_hang_up_after_the_answers_as_assistant_ended(
    bridge: FakeBridge, make_caller: MakeCaller
) -> None:
    def hang_up(fake: FakeBridge) -> None:
        gevent.sleep(0.4)
        fake.close(1000)

    bridge.on_message = answer_each_utterance(then=hang_up)
    script = CallerScript((Pause(ms=100), Say(ms=300), Pause(ms=3000)))
    report = make_caller(script=script).run(timeout_s=10)
    assert report.ok and report.outcome == "assistant-ended", report
    assert report.duration_s < 2.5 and not bridge.events("stop")


def test_run_fails_when_the_server_drops_the_stream(bridge: FakeBridge, make_caller: MakeCaller) -> None:
    def drop_after_start(fake: FakeBridge, message: dict[str, Any]) -> None:
        if message.get("event") == "media" and message["media"]["chunk"] == "10":
            fake.drop()

    bridge.on_message = drop_after_start
    report = make_caller(script=SHORT_SCRIPT).run(timeout_s=10)
    assert not report.ok and report.outcome == "failed"
    assert "closed by the server before stop" in (report.failure or "")


def test_run_reports_a_refused_webhook(make_caller: MakeCaller) -> None:
    report = make_caller(auth_token="wrong-token").run(timeout_s=5)
    assert not report.ok and report.failure == "webhook answered HTTP 403"


# ---- WAV scripts and the command line -----------------------------------------------


def write_wav(path: Any, pcm: np.ndarray, rate: int) -> str:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.astype("<i2").tobytes())
    return str(path)


def test_a_wav_script_is_split_into_utterances(tmp_path: Any) -> None:
    pcm = np.concatenate(
        [
            silence(300, 16000),
            speech_like(600, 16000, dbfs=-20.0),
            silence(800, 16000),
            tone(300.0, 400, 16000, dbfs=-20.0),
            silence(200, 16000),
        ]
    )
    script = CallerScript.from_wav(write_wav(tmp_path / "a.wav", pcm, 16000))
    assert [is_utterance(segment) for segment in script.segments] == [False, True, False, True, False]
    assert script.utterance_ends_ms == (900, 2100) and script.duration_ms == 2300
    rendered = np.concatenate([audio for _, audio in script.render()])
    assert rendered.size == 2300 * 8
    with pytest.raises(ValueError, match="sample rate"):
        CallerScript.from_wav(write_wav(tmp_path / "b.wav", pcm, 11025))


def test_main_places_calls_and_prints_a_summary(bridge: FakeBridge, tmp_path: Any, capsys: Any) -> None:
    bridge.on_message = answer_each_utterance()
    pcm = np.concatenate([silence(200, 8000), tone(300.0, 300, 8000, dbfs=-20.0), silence(300, 8000)])
    wav = write_wav(tmp_path / "c.wav", pcm, 8000)
    argv = ["--server", bridge.url, "--public-url", PUBLIC, "--wav", wav, "--timeout", "10"]
    assert main(argv, env={"TWILIO_AUTH_TOKEN": TOKEN}) == 0
    out = capsys.readouterr().out
    assert " turn 1: " in out and "ok 1   failed 0" in out and "p50" in out

    assert main([*argv, "--auth-token", "wrong"], env={}) == 1
    assert "FAILED: webhook answered HTTP 403" in capsys.readouterr().out


# ---- frames made as they go out (benches) -------------------------------------------


def test_send_live_makes_each_frame_when_due_and_clocks_it(bridge: FakeBridge, streaming: SimulatedCaller) -> None:
    made: list[tuple[float, float]] = []

    def make_frame(due: float) -> np.ndarray:
        made.append((due, time.monotonic()))
        return np.full(160, 1000 * len(made), dtype=np.int16)

    streaming.send_live(25, make_frame)
    assert eventually(lambda: len(bridge.events("media")) == 25)
    media = bridge.events("media")
    dues = [due for due, _ in made]
    # Paced on an absolute 20 ms clock, each frame made at (not before) its due time.
    assert np.allclose(np.diff(dues), 0.020)
    assert all(0 <= at - due < 0.03 for due, at in made)
    assert 0.45 < media[-1][0] - media[0][0] < 0.55
    decoded = [ulaw_to_pcm16(base64.b64decode(m["media"]["payload"])) for _, m in media]
    assert [int(np.median(frame)) for frame in decoded[:3]] == [
        int(np.median(ulaw_to_pcm16(pcm16_to_ulaw(np.full(160, v, dtype=np.int16))))) for v in (1000, 2000, 3000)
    ]
    assert streaming.frame_clock == [(due, 52 + 20 * k) for k, due in enumerate(dues)]

    with pytest.raises(ValueError, match="not 160"):
        streaming.send_live(1, lambda due: np.zeros(80, dtype=np.int16))
