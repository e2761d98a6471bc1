"""Both ends of N calls in one gevent process: Twilio's media socket and VAPI's transport.

Each `LoadCall` is one phone call: the Twilio side posts the signed voice webhook, opens
the signed media socket, sends `connected` and `start` (with the TwiML's parameters, as
Twilio does), then a 20 ms media frame every 20 ms for the call's whole life; the VAPI
side answers the bridge's `POST /call` and its WebSocket, and answers each of the
caller's utterances with 1 s of assistant audio in 20 ms frames in the format the bridge
asked for (with `duplex`, the assistant talks all the time instead). One `Pacer`
greenlet sends every call's frames on an absolute clock, calls spread evenly over the
20 ms period as independent callers would be.

What is measured and how (the bridge forwards every frame once, in order, so frame k
out is frame k in; counting bytes finds k without marking the audio, which transcoding
would not preserve anyway):
* uplink: the send time of Twilio frame k, then the arrival at the VAPI side of the
  byte that completes uplink frame k (640 bytes of PCM16 16 kHz, or 160 of mu-law);
* downlink: the send time of VAPI frame k, then the arrival at the Twilio side of the
  byte that completes 160 bytes of mu-law (the base64 payload's decoded length).
Both times are read in this process, so the figure is the bridge's processing and
queueing plus two loopback hops plus this process's own wake-up delay: an upper bound
on what the bridge adds, the same for every target measured.

The Twilio side echoes each mark when the audio before it would have finished playing
(a playout clock per call, checked every 20 ms), like Twilio; the bridge's playback
lead therefore never fills and pacing does not hold audio back. The caller is quiet
(noise under the VAD's floor) while the assistant answers, so no barge-in cuts the
measured audio; the VAD sees real utterance starts and ends.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import os
import socket
import time
import uuid
from array import array
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import gevent
import gevent.event
import gevent.server
import numpy as np
from twilio.request_validator import RequestValidator

from audio.mulaw import pcm16_to_ulaw
from audio.signals import speech_like, white_noise
from bench._load_wire import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    WireError,
    accept_key,
    client_frame,
    headers_of,
    new_mask_key,
    read_http_head,
    server_frame,
    unmask,
)
from sims.webhook import post_form, stream_from_twiml, voice_params

__all__ = ["LoadCall", "Pacer", "VapiFront", "Window", "setup_call"]

FRAME_S = 0.020
_SLOTS = 10  # phases within the 20 ms period
_ACCOUNT_SID = "AC" + "0" * 32
_RECV_BYTES = 65536
_SOCKET_TIMEOUT_S = 10.0
_MEDIA_PREFIX = b'{"event":"media"'
_MARK_PREFIX = b'{"event":"mark"'
_CLEAR_PREFIX = b'{"event":"clear"'
_PAYLOAD_KEY = b'"payload":"'
_NAME_KEY = b'"name":"'


class Window:
    """The measurement window, shared by every call: latencies of frames sent inside it count."""

    def __init__(self) -> None:
        self.start = float("inf")
        self.end = float("inf")
        self.up = array("d")
        self.down = array("d")
        self.extra_up = 0  # bytes beyond what was sent: the bridge made audio up (gap filling)
        self.extra_down = 0


def _b64_frames(pcm8k: np.ndarray) -> list[bytes]:
    ulaw = pcm16_to_ulaw(pcm8k)
    return [base64.b64encode(ulaw[i : i + 160]) for i in range(0, len(ulaw) - 159, 160)]


def _assistant_frames(audio_format: str) -> list[bytes]:
    """Pre-built server frames of 20 ms assistant audio (a -20 dBFS voice-band tone)."""
    rate = 16000 if audio_format == "pcm_s16le" else 8000
    t = np.arange(rate * _ANSWER_FRAMES // 50) / rate
    pcm = (3277 * np.sin(2 * np.pi * 440 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.int16)
    per = rate // 50
    chunks = [pcm[i * per : (i + 1) * per] for i in range(_ANSWER_FRAMES)]
    if audio_format == "pcm_s16le":
        payloads = [c.astype("<i2").tobytes() for c in chunks]
    else:
        payloads = [pcm16_to_ulaw(c) for c in chunks]
    return [server_frame(p, OP_BINARY) for p in payloads]


# A conversation cycle of 3.2 s per call: the caller speaks 1.2 s (speech-like, -20 dBFS),
# 0.4 s later the assistant answers for 1 s, then 0.6 s of quiet. The caller's quiet is
# noise at about -50 dBFS, under the VAD's -45 dBFS floor, so no answer is barged in on.
# Calls start at different points of the cycle, as independent conversations would.
_CYCLE = 160
_SPEECH_FRAMES = 60
_ANSWER_AT, _ANSWER_FRAMES = 80, 50
CALLER_SPEECH = _b64_frames(speech_like(_SPEECH_FRAMES * 20, 8000, dbfs=-20.0, seed=3))
CALLER_QUIET = _b64_frames(white_noise(_ANSWER_FRAMES * 20, 8000, dbfs=-50.0, seed=4))
ASSISTANT = {fmt: _assistant_frames(fmt) for fmt in ("pcm_s16le", "mulaw")}


class LoadCall:
    """One call's two legs, their counters and their send times."""

    def __init__(self, index: int, window: Window, *, duplex: bool = False) -> None:
        self.index = index
        # duplex: the assistant talks all the time and the caller stays quiet (the worst case).
        self.duplex = duplex
        self.phase = (index * 53) % _CYCLE
        self.window = window
        self.call_sid = "CA" + uuid.uuid4().hex
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.error: str | None = None
        self.tw: socket.socket | None = None
        self.vapi: socket.socket | None = None
        self.vapi_ready = gevent.event.Event()
        self.vapi_format = "pcm_s16le"
        self.up_frame_bytes = 640
        self.key = new_mask_key()
        self.sending = False
        self.stopping = False  # we are hanging up: closes from here on are expected
        self.up_sent = array("d")
        self.down_sent = array("d")
        self.up_rx = 0  # bytes of caller audio the VAPI side received
        self.down_rx = 0  # bytes of mu-law the Twilio side received
        self.marks: collections.deque[tuple[float, bytes]] = collections.deque()
        self.play_until = 0.0
        self.clears = 0
        self.sequence = 2  # connected=1, start=2
        self.tw_closed = gevent.event.Event()
        self.vapi_closed = gevent.event.Event()
        self.vapi_calls = 0
        self._up_frame_prefix = b""
        self._up_frame_suffix = b""

    def fail(self, why: str) -> None:
        if self.error is None and not self.stopping:
            self.error = why

    # Sending (the pacer) ------------------------------------------------------------------

    def send_tick(self) -> None:
        tw, vapi = self.tw, self.vapi
        if tw is None or vapi is None:
            return
        now = time.perf_counter()
        k = len(self.up_sent)
        pos = (k + self.phase) % _CYCLE
        speaking = pos < _SPEECH_FRAMES and not self.duplex
        answering = self.duplex or _ANSWER_AT <= pos < _ANSWER_AT + _ANSWER_FRAMES
        self.sequence += 1
        text = b"".join((
            b'{"event":"media","sequenceNumber":"', str(self.sequence).encode(),
            b'","media":{"track":"inbound","chunk":"', str(k + 1).encode(),
            b'","timestamp":"', str(k * 20).encode(),
            b'","payload":"', CALLER_SPEECH[pos] if speaking else CALLER_QUIET[k % _ANSWER_FRAMES],
            b'"},"streamSid":"', self.stream_sid.encode(), b'"}',
        ))
        self.up_sent.append(now)
        try:
            tw.sendall(client_frame(text, OP_TEXT, self.key))
            if answering:
                self.down_sent.append(now)
                vapi.sendall(ASSISTANT[self.vapi_format][(len(self.down_sent) - 1) % _ANSWER_FRAMES])
        except OSError as exc:
            self.fail(f"send failed: {exc}")
            self.sending = False
            return
        marks = self.marks
        while marks and marks[0][0] <= now:
            self._echo_mark(marks.popleft()[1])

    def _echo_mark(self, name: bytes) -> None:
        self.sequence += 1
        text = b"".join((
            b'{"event":"mark","sequenceNumber":"', str(self.sequence).encode(), b'","streamSid":"',
            self.stream_sid.encode(), b'","mark":{"name":"', name, b'"}}',
        ))
        if self.tw is not None:
            try:
                self.tw.sendall(client_frame(text, OP_TEXT, self.key))
            except OSError as exc:
                self.fail(f"mark echo failed: {exc}")

    def send_stop(self) -> None:
        self.stopping = True
        self.sending = False
        tw = self.tw
        if tw is None:
            return
        self.sequence += 1
        text = json.dumps({
            "event": "stop", "sequenceNumber": str(self.sequence), "streamSid": self.stream_sid,
            "stop": {"accountSid": _ACCOUNT_SID, "callSid": self.call_sid},
        }).encode()
        try:
            tw.sendall(client_frame(text, OP_TEXT, self.key))
            tw.sendall(client_frame(b"\x03\xe8", OP_CLOSE, self.key))
        except OSError:
            pass

    # Reading the Twilio side (the bridge's frames to Twilio) ------------------------------

    def read_twilio(self, rest: bytes) -> None:
        tw = self.tw
        assert tw is not None
        buf = bytearray(rest)
        window = self.window
        try:
            while True:
                pos = 0
                n = len(buf)
                while n - pos >= 2:
                    b1 = buf[pos + 1] & 0x7F
                    head = 2
                    if b1 == 126:
                        if n - pos < 4:
                            break
                        b1 = (buf[pos + 2] << 8) | buf[pos + 3]
                        head = 4
                    elif b1 == 127:
                        if n - pos < 10:
                            break
                        b1 = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                        head = 10
                    end = pos + head + b1
                    if end > n:
                        break
                    opcode = buf[pos] & 0x0F
                    start = pos + head
                    pos = end
                    if opcode == OP_TEXT:
                        if buf.startswith(_MEDIA_PREFIX, start):
                            at = buf.find(_PAYLOAD_KEY, start, end) + len(_PAYLOAD_KEY)
                            close = buf.find(b'"', at, end)
                            b64 = close - at
                            pad = (buf[close - 1] == 61) + (buf[close - 2] == 61)
                            got = b64 // 4 * 3 - pad
                            now = time.perf_counter()
                            before = self.down_rx
                            self.down_rx = after = before + got
                            sent = self.down_sent
                            for k in range(before // 160, after // 160):
                                if k < len(sent):
                                    t = sent[k]
                                    if window.start <= t < window.end:
                                        window.down.append(now - t)
                                else:
                                    window.extra_down += 160
                            self.play_until = max(self.play_until, now) + got / 8000.0
                        elif buf.startswith(_MARK_PREFIX, start):
                            at = buf.find(_NAME_KEY, start, end) + len(_NAME_KEY)
                            name = bytes(buf[at : buf.find(b'"', at, end)])
                            self.marks.append((max(self.play_until, time.perf_counter()), name))
                        elif buf.startswith(_CLEAR_PREFIX, start):
                            self.clears += 1
                            self.play_until = 0.0
                            self.marks = collections.deque((0.0, name) for _, name in self.marks)
                    elif opcode == OP_CLOSE:
                        self.fail("the bridge closed the Twilio socket")
                        self.tw_closed.set()
                        return
                    elif opcode == OP_PING:
                        tw.sendall(client_frame(bytes(buf[start:end]), OP_PONG, self.key))
                if pos:
                    del buf[:pos]
                data = tw.recv(_RECV_BYTES)
                if not data:
                    self.fail("the bridge dropped the Twilio socket")
                    self.tw_closed.set()
                    return
                buf += data
        except OSError as exc:
            self.fail(f"Twilio socket: {exc}")
            self.tw_closed.set()

    # Reading the VAPI side (the bridge's frames to VAPI) ----------------------------------

    def read_vapi(self, sock: socket.socket, rest: bytes) -> None:
        buf = bytearray(rest)
        window = self.window
        fb = self.up_frame_bytes
        try:
            while True:
                pos = 0
                n = len(buf)
                while n - pos >= 6:
                    b1 = buf[pos + 1] & 0x7F
                    head = 6
                    if b1 == 126:
                        if n - pos < 8:
                            break
                        b1 = (buf[pos + 2] << 8) | buf[pos + 3]
                        head = 8
                    elif b1 == 127:
                        if n - pos < 14:
                            break
                        b1 = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                        head = 14
                    end = pos + head + b1
                    if end > n:
                        break
                    opcode = buf[pos] & 0x0F
                    if opcode == OP_BINARY:
                        now = time.perf_counter()
                        before = self.up_rx
                        self.up_rx = after = before + b1
                        sent = self.up_sent
                        for k in range(before // fb, after // fb):
                            if k < len(sent):
                                t = sent[k]
                                if window.start <= t < window.end:
                                    window.up.append(now - t)
                            else:
                                window.extra_up += fb
                    elif opcode == OP_PING:
                        payload = unmask(bytes(buf[pos + head : end]), bytes(buf[pos + head - 4 : pos + head]))
                        sock.sendall(server_frame(payload, OP_PONG))
                    elif opcode == OP_CLOSE:
                        self.fail("the bridge closed the VAPI socket")
                        with contextlib.suppress(OSError):
                            sock.sendall(server_frame(b"\x03\xe8", OP_CLOSE))
                        self.vapi_closed.set()
                        return
                    pos = end
                if pos:
                    del buf[:pos]
                data = sock.recv(_RECV_BYTES)
                if not data:
                    self.fail("the bridge dropped the VAPI socket")
                    self.vapi_closed.set()
                    return
                buf += data
        except OSError as exc:
            self.fail(f"VAPI socket: {exc}")
            self.vapi_closed.set()


class VapiFront:
    """VAPI's REST `POST /call` and `vapi.websocket` transport, on one loopback port.

    Calls are matched to the load's calls in order: the load sets calls up one at a time,
    so the next `POST /call` belongs to the call being set up (`expect`).
    """

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self._server = gevent.server.StreamServer(("127.0.0.1", 0), self._handle)
        self._expected: collections.deque[LoadCall] = collections.deque()
        self._by_id: dict[str, LoadCall] = {}
        self.unexpected = 0  # POST /call with no call being set up: a VAPI link was replaced

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(timeout=1.0)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def expect(self, call: LoadCall) -> None:
        self._expected.append(call)

    def _handle(self, sock: socket.socket, _address: Any) -> None:
        sock.settimeout(_SOCKET_TIMEOUT_S)
        try:
            head, rest = read_http_head(sock)
            line, fields = headers_of(head)
            method, path = line.split(b" ")[:2]
            if method == b"POST" and path == b"/call":
                self._create(sock, fields, rest)
            elif method == b"GET" and path.endswith(b"/transport"):
                self._transport(sock, path.split(b"/")[1].decode(), fields, rest)
            else:
                sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except (OSError, WireError, ValueError):
            pass
        finally:
            sock.close()

    def _create(self, sock: socket.socket, fields: dict[bytes, bytes], rest: bytes) -> None:
        length = int(fields.get(b"content-length", b"0"))
        while len(rest) < length:
            chunk = sock.recv(length - len(rest))
            if not chunk:
                return
            rest += chunk
        if fields.get(b"authorization") != f"Bearer {self.api_key}".encode():
            sock.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        body = json.loads(rest[:length])
        audio = body.get("transport", {}).get("audioFormat", {})
        call_id = str(uuid.uuid4())
        if self._expected:
            call = self._expected.popleft()
            call.vapi_format = "mulaw" if audio.get("format") == "mulaw" else "pcm_s16le"
            call.up_frame_bytes = 160 if call.vapi_format == "mulaw" else 640
            call.vapi_calls += 1
            self._by_id[call_id] = call
        else:
            self.unexpected += 1
        host = self.base_url.removeprefix("http://")
        answer = json.dumps({
            "id": call_id, "status": "queued", "type": "vapi.websocketCall",
            "transport": {"provider": "vapi.websocket", "websocketCallUrl": f"ws://{host}/{call_id}/transport"},
        }).encode()
        sock.sendall(
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(answer)}\r\n\r\n".encode() + answer
        )

    def _transport(self, sock: socket.socket, call_id: str, fields: dict[bytes, bytes], rest: bytes) -> None:
        call = self._by_id.pop(call_id, None)
        key = fields.get(b"sec-websocket-key")
        if call is None or key is None:
            sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        sock.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n"
        )
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        call.vapi = sock
        call.vapi_ready.set()
        call.read_vapi(sock, rest)


def setup_call(call: LoadCall, front: VapiFront, server_url: str, auth_token: str, timeout_s: float) -> None:
    """Webhook, media socket, `connected` and `start`, and the call's VAPI leg; raises on failure."""
    validator = RequestValidator(auth_token)
    front.expect(call)
    path = "/voice/incoming"
    params = voice_params(_ACCOUNT_SID, call.call_sid)
    url = server_url + path
    status, body, _ = post_form(server_url, urlsplit(server_url).netloc, path, params,
                                validator.compute_signature(url, params))
    stream = stream_from_twiml(body, url) if status == 200 else None
    if stream is None:
        raise WireError(f"webhook answered HTTP {status} without a <Stream>")
    stream_url, parameters = stream
    parts = urlsplit(stream_url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key.decode()}\r\nUser-Agent: Twilio.TmeWs/1.0\r\n"
        f"X-Twilio-Signature: {validator.compute_signature(stream_url, {})}\r\n\r\n".encode()
    )
    head, rest = read_http_head(sock)
    line, fields = headers_of(head)
    if b" 101 " not in line + b" " or fields.get(b"sec-websocket-accept") != accept_key(key):
        sock.close()
        raise WireError(f"media socket refused: {line.decode(errors='replace')}")
    sock.settimeout(None)
    call.tw = sock
    for message in (
        {"event": "connected", "protocol": "Call", "version": "1.0.0"},
        {"event": "start", "sequenceNumber": "1", "streamSid": call.stream_sid, "start": {
            "accountSid": _ACCOUNT_SID, "streamSid": call.stream_sid, "callSid": call.call_sid,
            "tracks": ["inbound"], "customParameters": parameters,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}},
    ):
        sock.sendall(client_frame(json.dumps(message).encode(), OP_TEXT, call.key))
    gevent.spawn(call.read_twilio, rest)
    if not call.vapi_ready.wait(timeout_s):
        raise WireError("the bridge did not open the VAPI leg in time")


class Pacer:
    """Sends every live call's frames, both ways, every 20 ms, calls spread over the period."""

    def __init__(self) -> None:
        self._slots: list[list[LoadCall]] = [[] for _ in range(_SLOTS)]
        self._next = 0
        self.late = 0  # slots served more than 5 ms late: this process was too busy
        self._greenlet: gevent.Greenlet[[], None] | None = None

    def add(self, call: LoadCall) -> None:
        self._slots[self._next % _SLOTS].append(call)
        self._next += 1
        call.sending = True

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()

    def _run(self) -> None:
        step = FRAME_S / _SLOTS
        due = time.perf_counter()
        slot = 0
        clock: Callable[[], float] = time.perf_counter
        while True:
            now = clock()
            if now < due:
                gevent.sleep(due - now)
                now = clock()
            if now - due > 0.005:
                self.late += 1
            for call in self._slots[slot]:
                if call.sending:
                    call.send_tick()
            slot = (slot + 1) % _SLOTS
            due += step
