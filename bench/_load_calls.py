"""Both ends of N calls in one lean process: Twilio's media socket and VAPI's transport.

Each `LoadCall` is one phone call: the Twilio side posts the signed voice webhook, opens
the signed media socket, sends `connected` and `start` (with the TwiML's parameters, as
Twilio does), then a 20 ms media frame every 20 ms for the call's whole life; the VAPI
side answers the bridge's `POST /call` and its WebSocket, and answers each of the
caller's utterances with 1 s of assistant audio in 20 ms frames in the format the bridge
asked for (with `duplex`, the assistant talks all the time instead).

Set-up is plain blocking code (the caller's side in the thread that runs the bench, the
VAPI side in `VapiFront`'s threads); once a call's two sockets are open they are handed
to the `Engine` (bench/_load_engine.py), one thread that streams and reads every call on
one epoll loop. This module holds what one call does on each tick and on each read.

What is measured and how (the bridge forwards every frame once, in order, so frame k
out is frame k in; counting bytes finds k without marking the audio, which transcoding
would not preserve anyway):
* uplink: the send time of Twilio frame k, then the arrival at the VAPI side of the
  byte that completes uplink frame k (640 bytes of PCM16 16 kHz, or 160 of mu-law);
* downlink: the send time of VAPI frame k, then the arrival at the Twilio side of the
  byte that completes 160 bytes of mu-law (the base64 payload's decoded length).
A send time is the engine's clock (time.time) read just before it sends a phase's batch
of frames; an arrival time is the kernel's receive timestamp of the read that completed
the frame (SO_TIMESTAMPNS: when its last segment reached the socket, on the same clock).
So the figure is the bridge's processing and queueing plus two loopback hops plus the
time this process takes to send the rest of a batch (well under a millisecond): an
upper bound on what the bridge adds, the same for every target measured. How late this
process reads is not in it (before the kernel's timestamps, its wake-up delay was).

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
import struct
import threading
import time
import uuid
from array import array
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np
from twilio.request_validator import RequestValidator
from wsaccel.xormask import XorMaskerSimple  # type: ignore[import-untyped]

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

if TYPE_CHECKING:
    from bench._load_engine import Engine

__all__ = ["FRAME_S", "LoadCall", "VapiFront", "Window", "setup_call"]

FRAME_S = 0.020
_ACCOUNT_SID = "AC" + "0" * 32
_SOCKET_TIMEOUT_S = 10.0
_MEDIA_PREFIX = b'{"event":"media"'
_MARK_PREFIX = b'{"event":"mark"'
_CLEAR_PREFIX = b'{"event":"clear"'
_PAYLOAD_KEY = b'"payload":"'
_PAYLOAD_KEY_LEN = len(_PAYLOAD_KEY)
_NAME_KEY = b'"name":"'
_TEXT_HEAD16 = struct.Struct("!BBH").pack
# One receive buffer for every socket: only the engine's thread reads.
_SCRATCH = bytearray(65536)
_SCRATCH_VIEW = memoryview(_SCRATCH)
_SCRATCH_LIST = [_SCRATCH]
# Arrival times come from the kernel: with SO_TIMESTAMPNS each read carries the time
# (CLOCK_REALTIME, as time.time()) its last segment reached the socket, so how late this
# process gets round to reading is not counted against the bridge, and the engine need
# not wake for every segment.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux's value; Python 3.11 does not name it
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)


def _arrival(ancillary: list[tuple[int, int, bytes]]) -> float:
    # The timestamp is the only control message these sockets are asked for.
    if ancillary:
        seconds, nanoseconds = _TIMESPEC.unpack_from(ancillary[0][2])
        return seconds + nanoseconds * 1e-9  # type: ignore[no-any-return]
    return time.time()


def stamp_arrivals(sock: socket.socket) -> None:
    """Have the kernel time each segment `sock` receives (see `_arrival`)."""
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


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
    """One call's two legs, their counters and their send times.

    Set-up threads fill in the sockets; from then on only the engine's thread touches the
    call, except for reading counters once sending has stopped.
    """

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
        self.vapi_ready = threading.Event()
        self.vapi_format = "pcm_s16le"
        self.up_frame_bytes = 640
        # One mask key for every frame this caller sends. RFC 6455 wants a fresh
        # unpredictable key per frame, to stop a page's script from steering bytes through
        # a proxy that misreads the stream; a test client on loopback has no such attacker,
        # and a server unmasks any key alike, so the per-frame work it does is the same.
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
        self.tw_closed = False
        self.vapi_closed = False
        self.vapi_calls = 0
        self._tw_rx = bytearray()  # a frame's start that has not all arrived yet
        self._vapi_rx = bytearray()
        self._tw_out = b""  # bytes the socket did not take yet (the bridge is not reading)
        self._vapi_out = b""
        self._media_head = b'{"event":"media","sequenceNumber":"'
        self._media_tail = b'"},"streamSid":"' + self.stream_sid.encode() + b'"}'
        self._mark_head = b'{"event":"mark","sequenceNumber":"'
        self._mark_mid = b'","streamSid":"' + self.stream_sid.encode() + b'","mark":{"name":"'

    def fail(self, why: str) -> None:
        if self.error is None and not self.stopping:
            self.error = why

    # Sending (the engine's tick) ------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Frame k of the caller's audio, and of the assistant's when it is talking; due mark echoes.

        The echoes go in the same send as the media frame (one syscall, and the bridge reads
        them together as it would have anyway: they were sent microseconds apart).
        """
        up_sent = self.up_sent
        k = len(up_sent)
        pos = (k + self.phase) % _CYCLE
        duplex = self.duplex
        sequence = self.sequence + 1
        text = b"%s%d\",\"media\":{\"track\":\"inbound\",\"chunk\":\"%d\",\"timestamp\":\"%d\",\"payload\":\"%s%s" % (
            self._media_head, sequence, k + 1, k * 20,
            CALLER_SPEECH[pos] if pos < _SPEECH_FRAMES and not duplex else CALLER_QUIET[k % _ANSWER_FRAMES],
            self._media_tail,
        )
        key = self.key
        # A media message is always 126 bytes or more: the 16-bit length form.
        frame = _TEXT_HEAD16(0x80 | OP_TEXT, 0x80 | 126, len(text)) + key + XorMaskerSimple(key).process(text)
        marks = self.marks
        if marks and marks[0][0] <= now:
            parts = [frame]
            while marks and marks[0][0] <= now:
                sequence += 1
                parts.append(client_frame(
                    b"%s%d%s%s\"}}" % (self._mark_head, sequence, self._mark_mid, marks.popleft()[1]), OP_TEXT, key))
            frame = b"".join(parts)
        self.sequence = sequence
        up_sent.append(now)
        self._send_tw(frame)
        if duplex or _ANSWER_AT <= pos < _ANSWER_AT + _ANSWER_FRAMES:
            down_sent = self.down_sent
            down_sent.append(now)
            self._send_vapi(ASSISTANT[self.vapi_format][(len(down_sent) - 1) % _ANSWER_FRAMES])

    def _send_tw(self, frame: bytes) -> None:
        tw = self.tw
        if tw is None or self.tw_closed:
            return
        try:
            if self._tw_out:
                frame = self._tw_out + frame
            sent = tw.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.fail(f"send failed: {exc}")
            self.sending = False
            return
        # The bridge is behind reading: the rest goes with the next send (20 ms on).
        self._tw_out = frame[sent:] if sent < len(frame) else b""

    def _send_vapi(self, frame: bytes) -> None:
        vapi = self.vapi
        if vapi is None or self.vapi_closed:
            return
        try:
            if self._vapi_out:
                frame = self._vapi_out + frame
            sent = vapi.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.fail(f"send failed: {exc}")
            self.sending = False
            return
        self._vapi_out = frame[sent:] if sent < len(frame) else b""

    @property
    def unsent(self) -> int:
        """Bytes still waiting in this process for the bridge to read them."""
        return len(self._tw_out) + len(self._vapi_out)

    def send_stop(self) -> None:
        self.stopping = True
        self.sending = False
        self.sequence += 1
        text = json.dumps({
            "event": "stop", "sequenceNumber": str(self.sequence), "streamSid": self.stream_sid,
            "stop": {"accountSid": _ACCOUNT_SID, "callSid": self.call_sid},
        }).encode()
        self._send_tw(client_frame(text, OP_TEXT, self.key))
        self._send_tw(client_frame(b"\x03\xe8", OP_CLOSE, self.key))

    # Reading the Twilio side (the bridge's frames to Twilio) ------------------------------

    def read_twilio(self) -> bool:
        """Read what the socket has; False once it is closed (the engine stops watching it)."""
        assert self.tw is not None
        got = self._receive(self.tw, "Twilio")
        if got is None:
            self.tw_closed = True
            return False
        return not got[0] or self.feed_twilio(*got)

    def _receive(self, sock: socket.socket, side: str) -> tuple[memoryview, float] | None:
        """What one socket has (an empty view when nothing), with its arrival; None once closed."""
        try:
            got, ancillary, _flags, _address = sock.recvmsg_into(_SCRATCH_LIST, _ANCILLARY_SPACE)
        except BlockingIOError:
            return _SCRATCH_VIEW[:0], 0.0
        except OSError as exc:
            self.fail(f"{side} socket: {exc}")
            return None
        if not got:
            self.fail(f"the bridge dropped the {side} socket")
            return None
        return _SCRATCH_VIEW[:got], _arrival(ancillary)

    def feed_twilio(self, data: bytes | memoryview, now: float) -> bool:
        buf = self._tw_rx
        if buf:
            buf += data
        else:
            buf = data  # type: ignore[assignment]  # parsed in place; the rest is copied out below
        window = self.window
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
                frame = bytes(buf[start:end])
                if frame.startswith(_MEDIA_PREFIX):
                    at = frame.find(_PAYLOAD_KEY) + _PAYLOAD_KEY_LEN
                    close = frame.find(b'"', at)
                    got = (close - at) // 4 * 3 - (frame[close - 1] == 61) - (frame[close - 2] == 61)
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
                    play_until = self.play_until
                    self.play_until = (play_until if play_until > now else now) + got / 8000.0
                elif frame.startswith(_MARK_PREFIX):
                    at = frame.find(_NAME_KEY) + len(_NAME_KEY)
                    name = frame[at : frame.find(b'"', at)]
                    self.marks.append((max(self.play_until, now), name))
                elif frame.startswith(_CLEAR_PREFIX):
                    self.clears += 1
                    self.play_until = 0.0
                    self.marks = collections.deque((0.0, name) for _, name in self.marks)
            elif opcode == OP_CLOSE:
                self.fail("the bridge closed the Twilio socket")
                self.tw_closed = True
                return False
            elif opcode == OP_PING:
                self._send_tw(client_frame(bytes(buf[start:end]), OP_PONG, self.key))
        if buf is self._tw_rx:
            del buf[:pos]
        elif pos < n:
            self._tw_rx = bytearray(buf[pos:n])
        return True

    # Reading the VAPI side (the bridge's frames to VAPI) ----------------------------------

    def read_vapi(self) -> bool:
        """Read what the socket has; False once it is closed (the engine stops watching it)."""
        assert self.vapi is not None
        got = self._receive(self.vapi, "VAPI")
        if got is None:
            self.vapi_closed = True
            return False
        return not got[0] or self.feed_vapi(*got)

    def feed_vapi(self, data: bytes | memoryview, now: float) -> bool:
        buf = self._vapi_rx
        if buf:
            buf += data
        else:
            buf = data  # type: ignore[assignment]
        window = self.window
        fb = self.up_frame_bytes
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
            if opcode == OP_BINARY:  # counted, never unmasked
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
                self._send_vapi(server_frame(unmask(bytes(buf[pos + head : end]),
                                                    bytes(buf[pos + head - 4 : pos + head])), OP_PONG))
            elif opcode == OP_CLOSE:
                self.fail("the bridge closed the VAPI socket")
                self._send_vapi(server_frame(b"\x03\xe8", OP_CLOSE))
                self.vapi_closed = True
                return False
            pos = end
        if buf is self._vapi_rx:
            del buf[:pos]
        elif pos < n:
            self._vapi_rx = bytearray(buf[pos:n])
        return True

    def close(self) -> None:
        for sock in (self.tw, self.vapi):
            if sock is not None:
                sock.close()
        self.tw_closed = self.vapi_closed = True


class VapiFront:
    """VAPI's REST `POST /call` and `vapi.websocket` transport, on one loopback port.

    A thread accepts, and each connection's request is answered by a thread of its own
    (a few per call, all at set-up). An open transport is handed to the engine.

    Calls are matched to the load's calls in order: the load sets calls up one at a time,
    so the next `POST /call` belongs to the call being set up (`expect`).
    """

    def __init__(self, api_key: str, engine: Engine) -> None:
        self.api_key = api_key
        self._engine = engine
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self._thread = threading.Thread(target=self._accept, name="vapi-front", daemon=True)
        self._expected: collections.deque[LoadCall] = collections.deque()
        self._by_id: dict[str, LoadCall] = {}
        self._lock = threading.Lock()
        self.unexpected = 0  # POST /call with no call being set up: a VAPI link was replaced

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone would not.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=2.0)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def expect(self, call: LoadCall) -> None:
        self._expected.append(call)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(sock,), daemon=True).start()

    def _handle(self, sock: socket.socket) -> None:
        sock.settimeout(_SOCKET_TIMEOUT_S)
        handed_over = False
        try:
            head, rest = read_http_head(sock)
            line, fields = headers_of(head)
            method, path = line.split(b" ")[:2]
            if method == b"POST" and path == b"/call":
                self._create(sock, fields, rest)
            elif method == b"GET" and path.endswith(b"/transport"):
                handed_over = self._transport(sock, path.split(b"/")[1].decode(), fields, rest)
            else:
                sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except (OSError, WireError, ValueError):
            pass
        finally:
            if not handed_over:
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
        with self._lock:
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

    def _transport(self, sock: socket.socket, call_id: str, fields: dict[bytes, bytes], rest: bytes) -> bool:
        with self._lock:
            call = self._by_id.pop(call_id, None)
        key = fields.get(b"sec-websocket-key")
        if call is None or key is None:
            sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return False
        sock.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n"
        )
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stamp_arrivals(sock)
        self._engine.add_vapi(call, sock, rest)
        return True


def setup_call(call: LoadCall, front: VapiFront, engine: Engine, server_url: str, auth_token: str,
               timeout_s: float) -> None:
    """Webhook, media socket, `connected` and `start`, and the call's VAPI leg; raises on failure.

    Blocking: run it outside the engine's thread. The call starts streaming (its first
    tick) once both legs are open.
    """
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
    try:
        sock.sendall(
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key.decode()}\r\nUser-Agent: Twilio.TmeWs/1.0\r\n"
            f"X-Twilio-Signature: {validator.compute_signature(stream_url, {})}\r\n\r\n".encode()
        )
        head, rest = read_http_head(sock)
        line, fields = headers_of(head)
        if b" 101 " not in line + b" " or fields.get(b"sec-websocket-accept") != accept_key(key):
            raise WireError(f"media socket refused: {line.decode(errors='replace')}")
        for message in (
            {"event": "connected", "protocol": "Call", "version": "1.0.0"},
            {"event": "start", "sequenceNumber": "1", "streamSid": call.stream_sid, "start": {
                "accountSid": _ACCOUNT_SID, "streamSid": call.stream_sid, "callSid": call.call_sid,
                "tracks": ["inbound"], "customParameters": parameters,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}},
        ):
            sock.sendall(client_frame(json.dumps(message).encode(), OP_TEXT, call.key))
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    stamp_arrivals(sock)
    engine.add_twilio(call, sock, rest)
    if not call.vapi_ready.wait(timeout_s):
        raise WireError("the bridge did not open the VAPI leg in time")
    engine.start_sending(call)
