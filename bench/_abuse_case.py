"""One abuse case end to end: a fresh server, one legit call beside the attack, measurements.

Timeline of `run_case`:
1. A VAPI simulator in this process (so every VAPI call the server creates is counted)
   and a fresh `python run.py` pointed at it, on loopback ports.
2. The legit call: a simulated Twilio caller that streams silence in real time while the
   simulated assistant speaks without pause (a greeting longer than the case, paced in
   real time; every other VAPI call greets for 3 s only). Silence from the caller means
   no barge-in, so assistant audio flows the whole time and every gap in it is a stall.
   Attackers and victim calls send loud audio, which is how their VAPI calls (and their
   re-links) are told from the legit call's.
3. The case's setup (calls it needs to exist beforehand), then 1.5 s of warm-up whose
   gaps are reported as the baseline.
4. The attack window: the case's attacks run at once until the deadline; each records
   findings. The server's RSS is sampled every 100 ms; its CPU time, its log file and
   the simulator's VAPI calls are read at both ends of the window.
5. The attackers' sockets are closed; 1.5 s of tail (the server may still be digesting),
   then the legit call is judged: alive, worst gap each way over window + tail.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import secrets
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import gevent.pool
import numpy as np
from twilio.request_validator import RequestValidator

import bench._server as _server_module
from audio.mulaw import ulaw_to_pcm16
from audio.signals import silence
from bench._abuse_measure import (
    CaseResult,
    Finding,
    LoopLag,
    ProcSampler,
    VapiTracker,
    count_log_lines,
    cpu_seconds,
    judge,
    worst_gap_ms,
)
from bench._abuse_wire import (
    LOOPBACK,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    client_frame,
    connect,
    read_head,
    twilio_connected,
    twilio_media,
    twilio_start,
    upgrade_request,
)
from bench._server import ServerError, ServerProcess
from sims.caller import CallerConfig, CallerError, SimulatedCaller
from sims.vapi import VapiSimConfig, VapiSimulator
from sims.webhook import post_form, stream_from_twiml, voice_params

__all__ = ["Case", "CaseContext", "Talker", "WsPeer", "run_case"]

ACCOUNT_SID = "AC" + "ab5e" * 8
WARMUP_S = 1.5
TAIL_S = 1.5
_SERVER_START_S = 30.0
_SETUP_S = 30.0
_ATTACK_GRACE_S = 10.0  # an attack still running this long after its deadline is killed
_LEGIT_READY_S = 15.0
_ALIVE_WITHIN_S = 1.0  # audio both ways within this much of the end: the call is alive
_HEALTH_EVERY_S = 1.0
_HEALTH_TIMEOUT_S = 3.0
_PEER_TIMEOUT_S = 0.5
_HANDSHAKE_TIMEOUT_S = 5.0
_SEND_DEFAULT_S = 5.0
# Everything of a case but its teardown (setup, legit call, window, grace, tail) within this
# much more than the window.
_CASE_MARGIN_S = 120.0
# A loud 20 ms mu-law frame (attackers and victims): tells their VAPI calls from the legit one's.
LOUD_ULAW = bytes([0x1F]) * 160


def new_call_sid() -> str:
    return "CA" + uuid.uuid4().hex


def new_stream_sid() -> str:
    return "MZ" + uuid.uuid4().hex


@dataclass(frozen=True)
class Case:
    """A case: attacks run at once in the window, after an optional setup."""

    key: str
    name: str
    title: str
    attacks: tuple[Callable[[CaseContext], None], ...]
    setup: Callable[[CaseContext], None] | None = None
    min_window_s: float = 0.0


# ---- an attacker's WebSocket -----------------------------------------------------------


class WsPeer:
    """One attacker socket: a hand-made upgrade, then raw frames; records what came of it."""

    def __init__(self, ctx: CaseContext, label: str, path: str, *, signature: str | None,
                 key: str | None = None, extra_headers: Mapping[str, str] | None = None,
                 rcvbuf: int | None = None) -> None:
        self.ctx = ctx
        self.label = label
        self.path = path
        self.signature = signature
        self.key = key
        self.extra_headers = extra_headers
        self.rcvbuf = rcvbuf
        self.sock: socket.socket | None = None
        self.status: int | None = None
        self.opened_at: float | None = None
        self.server_closed_at: float | None = None
        self.close_code: int | None = None  # the server's close frame's code (1005: none given)
        self.eof = False
        self.audio_bytes = 0
        self.media_frames = 0
        self.bytes_sent = 0
        self.send_failed = False
        self._reader: FrameReader | None = None
        self._we_closed = False

    @property
    def got_101(self) -> bool:
        return self.status == 101

    @property
    def closed_by_server(self) -> bool:
        return self.server_closed_at is not None

    def seconds_to_close(self) -> float | None:
        if self.server_closed_at is None or self.opened_at is None:
            return None
        return self.server_closed_at - self.opened_at

    def open(self) -> int | None:
        """Connect and send the upgrade; the HTTP status (None: no answer)."""
        try:
            self.sock = connect(self.ctx.port, timeout_s=_HANDSHAKE_TIMEOUT_S, rcvbuf=self.rcvbuf)
        except OSError as exc:
            self.ctx.problem(f"{self.label}: connect failed: {exc}")
            return None
        self.ctx.register(self.sock)
        self.opened_at = time.monotonic()
        host = f"{LOOPBACK}:{self.ctx.port}"
        try:
            self.sock.sendall(upgrade_request(self.path, host, key=self.key, signature=self.signature,
                                              extra_headers=self.extra_headers))
        except OSError:
            self.eof = True
            self._note_closed()
            return None
        head = read_head(self.sock, _HANDSHAKE_TIMEOUT_S)
        self.status = head.status
        self.sock.settimeout(_PEER_TIMEOUT_S)
        if head.status == 101:
            self._reader = FrameReader(self.sock, head.rest)
        elif head.eof:
            self.eof = True
        return head.status

    def send(self, data: bytes, deadline: float | None = None) -> bool:
        """Write all of `data` unless the socket fails or `deadline` passes; False then.

        Without a `deadline`: the end of the attack window, or 5 s from now if later.
        """
        sock = self.sock
        if sock is None or self.send_failed:
            return False
        if deadline is None:
            deadline = max(self.ctx.deadline, time.monotonic() + _SEND_DEFAULT_S)
        view = memoryview(data)
        while view:
            if deadline is not None and time.monotonic() > deadline:
                return False
            try:
                sent = sock.send(view)
            except TimeoutError:  # socket.timeout is TimeoutError
                continue
            except OSError:
                self.send_failed = True
                self._note_closed()
                return False
            self.bytes_sent += sent
            view = view[sent:]
        return True

    def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True,
                   deadline: float | None = None) -> bool:
        return self.send(client_frame(opcode, payload, fin=fin, mask=mask), deadline)

    def start_twilio(self, call_sid: str, parameters: Mapping[str, str], stream_sid: str | None = None) -> str:
        """`connected` and `start` as Twilio sends them; returns the streamSid."""
        stream_sid = stream_sid or new_stream_sid()
        self.send_frame(OP_TEXT, twilio_connected())
        self.send_frame(OP_TEXT, twilio_start(call_sid, stream_sid, parameters, ACCOUNT_SID))
        return stream_sid

    def talk(self, stream_sid: str, until: float, frame: bytes = LOUD_ULAW) -> int:
        """Loud 20 ms media frames in real time until `until` or the socket fails; frames sent."""
        sent = 0
        next_due = time.monotonic()
        while time.monotonic() < until and not self.send_failed and not self.closed_by_server:
            sent += 1
            message = twilio_media(stream_sid, sent + 1, sent, 52 + 20 * sent, frame)
            if not self.send_frame(OP_TEXT, message, deadline=until):
                break
            next_due += 0.02
            gevent.sleep(max(0.0, next_due - time.monotonic()))
        return sent

    def watch(self, answer_pings: bool = True) -> None:
        """Read in a greenlet of the case: count assistant audio, notice the server's close."""
        self.ctx.spawn(self._read_loop, answer_pings)

    def wait_closed(self, until: float) -> bool:
        """Wait (reading nothing ourselves) until the server closed the socket or `until`."""
        while time.monotonic() < until:
            if self.closed_by_server:
                return True
            gevent.sleep(0.05)
        return self.closed_by_server

    def close(self) -> None:
        self._we_closed = True
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()

    def _note_closed(self, code: int | None = None) -> None:
        if self.server_closed_at is None and not self._we_closed:
            self.server_closed_at = time.monotonic()
            if code is not None:
                self.close_code = code

    def _read_loop(self, answer_pings: bool) -> None:
        reader = self._reader
        if reader is None:
            self._watch_eof()
            return
        while not self._we_closed:  # until the server closes, or the case's cleanup kills us
            try:
                frame = reader.next(timeout_s=1.0)
            except TimeoutError:
                continue
            except OSError:
                self.eof = True
                self._note_closed()
                return
            if frame is None:
                self.eof = True
                self._note_closed()
                return
            if frame.opcode == OP_TEXT:
                self._on_text(frame.payload)
            elif frame.opcode == OP_PING and answer_pings:
                self.send_frame(OP_PONG, frame.payload)
            elif frame.opcode == OP_CLOSE:
                code = int.from_bytes(frame.payload[:2], "big") if len(frame.payload) >= 2 else 1005
                self._note_closed(code)
                self.send_frame(OP_CLOSE, frame.payload[:2])
                return

    def _watch_eof(self) -> None:
        sock = self.sock
        while sock is not None and not self._we_closed:
            try:
                data = sock.recv(65536)
            except TimeoutError:  # socket.timeout is TimeoutError
                continue
            except OSError:
                data = b""
            if not data:
                self.eof = True
                self._note_closed()
                return

    def _on_text(self, payload: bytes) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if isinstance(message, dict) and message.get("event") == "media":
            try:
                self.audio_bytes += len(base64.b64decode(message["media"]["payload"]))
                self.media_frames += 1
            except (KeyError, TypeError, ValueError):
                pass

    def report(self, *, signed: bool, attack: str | None = None) -> None:
        """The usual findings for this socket: status, audio received, how long it was held."""
        ctx = self.ctx
        name = attack or self.label
        if signed:
            ctx.finding(name, "HTTP status", self.status)
        else:
            ctx.finding(name, "HTTP status", self.status, ok=self.status != 101,
                        want="no 101 without a valid signature")
        if self.got_101:
            ctx.finding(name, "assistant audio received (bytes)", self.audio_bytes, ok=self.audio_bytes == 0,
                        want="0")
            held = not self.closed_by_server
            if signed:
                ctx.finding(name, "server closed the socket after (s)",
                            "still held at the end" if held else round(self.seconds_to_close() or 0.0, 2),
                            ok=not held, want="closed within the window")
            else:
                ctx.finding(name, "server closed the socket after (s)",
                            "still held at the end" if held else round(self.seconds_to_close() or 0.0, 2))


# ---- a well-behaved caller (the legit call, or a victim) -------------------------------


class Talker:
    """A SimulatedCaller in real time: silence (the legit call) or a loud frame (victims)."""

    def __init__(self, ctx: CaseContext, label: str, *, loud: bool) -> None:
        self.ctx = ctx
        self.label = label
        self.loud = loud
        self.caller = SimulatedCaller(CallerConfig(
            server_url=ctx.url, public_url=ctx.url, auth_token=ctx.auth_token, account_sid=ACCOUNT_SID,
        ))
        self.sim_call_id: str | None = None
        self.handshake_signature = ""
        self.error: str | None = None
        self._stop = False
        self._sender: gevent.Greenlet[[], None] | None = None

    @property
    def call_sid(self) -> str:
        return self.caller.call_sid

    def begin(self) -> None:
        """Webhook, handshake, `start`, then talk in a greenlet; raises CallerError."""
        self.ctx.tracker.long_greeting_next = not self.loud  # the legit call: the assistant talks all along
        status, _ = self.caller.post_webhook()
        if status != 200 or self.caller.stream_url is None:
            raise CallerError(f"{self.label}: webhook answered HTTP {status} without a <Stream>")
        self.handshake_signature = self.ctx.validator.compute_signature(self.caller.stream_url, {})
        self.caller.connect()
        self.caller.start_stream()
        self._sender = gevent.spawn(self._talk)

    def start(self, timeout_s: float = _LEGIT_READY_S, wait_audio: bool = True) -> None:
        """`begin`, then wait until audio flows both ways (or only to VAPI); raises CallerError."""
        tracker = self.ctx.tracker
        known = set(tracker.ids())
        self.begin()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            new = [call_id for call_id in tracker.ids() if call_id not in known]
            if new and self.sim_call_id is None:
                self.sim_call_id = new[0]
            info = tracker.calls.get(self.sim_call_id) if self.sim_call_id else None
            heard = info is not None and info.audio_bytes > 0
            if heard and (not wait_audio or self.caller.media_events):
                return
            if self.caller.closed.is_set():
                break
            gevent.sleep(0.05)
        raise CallerError(f"{self.label}: no audio both ways within {timeout_s:g} s "
                          f"(VAPI call {self.sim_call_id}, {len(self.caller.media_events)} frames heard)")

    def _talk(self) -> None:
        chunk = (np.tile(ulaw_to_pcm16(LOUD_ULAW), 5) if self.loud else silence(100, 8000))
        try:
            while not self._stop:
                self.caller.send_audio(chunk)
        except CallerError as exc:
            if not self._stop:
                self.error = str(exc)

    def outbound_arrivals(self) -> list[float]:
        return [t for t, _ in self.caller.media_events]

    def stop(self) -> None:
        self._stop = True
        if self._sender is not None:
            self._sender.kill(block=True, timeout=2.0)
        if not self.caller.closed.is_set():
            with contextlib.suppress(CallerError):
                self.caller.send_stop()
        self.caller.close()


# ---- an attacker-owned call admitted by a properly signed webhook ----------------------


@dataclass
class Admitted:
    call_sid: str
    stream_url: str
    path: str
    handshake_signature: str
    parameters: dict[str, str]
    webhook_params: dict[str, str]
    webhook_signature: str
    sim_call_id: str | None = None


# ---- the context attacks work in -------------------------------------------------------


@dataclass
class CaseContext:
    server: ServerProcess
    sim: VapiSimulator
    tracker: VapiTracker
    api_key: str
    window_s: float
    log: Callable[[str], None]
    findings: list[Finding] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    t0: float = 0.0
    deadline: float = 0.0
    legit: Talker | None = None
    state: dict[str, Any] = field(default_factory=dict)  # what a setup leaves for its attacks

    def __post_init__(self) -> None:
        self.group = gevent.pool.Group()
        self._sockets: list[socket.socket] = []
        self._closers: list[Callable[[], None]] = []
        self.validator = RequestValidator(self.server.auth_token)

    # -- addresses and signatures
    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def auth_token(self) -> str:
        return self.server.auth_token

    def wss_url(self, path: str) -> str:
        return f"wss://{LOOPBACK}:{self.port}{path}"

    def media_signature(self, call_sid: str) -> str:
        """The X-Twilio-Signature Twilio sends for /media/<call_sid> (as if captured)."""
        return str(self.validator.compute_signature(self.wss_url(f"/media/{call_sid}"), {}))

    # -- recording
    def finding(self, attack: str, metric: str, value: Any, ok: bool | None = None, want: str = "") -> None:
        self.findings.append(Finding(attack, metric, value, ok, want))

    def problem(self, text: str) -> None:
        self.problems.append(text)
        self.log(f"abuse: problem: {text}")

    # -- resources closed at the end of the window
    def register(self, sock: socket.socket) -> None:
        self._sockets.append(sock)

    def on_cleanup(self, close: Callable[[], None]) -> None:
        self._closers.append(close)

    def spawn(self, fn: Callable[..., Any], *args: Any) -> gevent.Greenlet[..., Any]:
        return self.group.spawn(fn, *args)

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def sleep_until_deadline(self) -> None:
        gevent.sleep(self.remaining())

    def peer(self, label: str, path: str, *, signature: str | None, **kwargs: Any) -> WsPeer:
        return WsPeer(self, label, path, signature=signature, **kwargs)

    def raw(self, rcvbuf: int | None = None, timeout_s: float = _PEER_TIMEOUT_S) -> socket.socket:
        sock = connect(self.port, timeout_s=_HANDSHAKE_TIMEOUT_S, rcvbuf=rcvbuf)
        sock.settimeout(timeout_s)
        self.register(sock)
        return sock

    def close_attackers(self) -> None:
        self.group.kill(block=True, timeout=5.0)
        for close in self._closers:
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - cleanup goes on
                self.log(f"abuse: cleanup failed: {exc!r}")
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._sockets.clear()
        self._closers.clear()

    # -- calls
    def post_webhook(self, params: Mapping[str, str], signature: str | None,
                     path: str = "/voice/incoming") -> tuple[int, str]:
        status, body, _ = post_form(self.url, f"{LOOPBACK}:{self.port}", path, params, signature)
        return status, body

    def admit(self, label: str, wait_vapi_s: float = 5.0) -> Admitted:
        """A call admitted by a properly signed webhook (its VAPI call exists before the window)."""
        call_sid = new_call_sid()
        known = set(self.tracker.ids())
        params = voice_params(ACCOUNT_SID, call_sid)
        signature = self.validator.compute_signature(self.url + "/voice/incoming", params)
        status, body = self.post_webhook(params, signature)
        stream = stream_from_twiml(body, self.url + "/voice/incoming") if status == 200 else None
        if stream is None:
            raise ServerError(f"{label}: signed webhook answered HTTP {status} without a <Stream>")
        stream_url, parameters = stream
        path = "/" + stream_url.split("/", 3)[3]
        admitted = Admitted(call_sid, stream_url, path, self.validator.compute_signature(stream_url, {}),
                            parameters, params, signature)
        deadline = time.monotonic() + wait_vapi_s
        while time.monotonic() < deadline and admitted.sim_call_id is None:
            new = [call_id for call_id in self.tracker.ids() if call_id not in known]
            admitted.sim_call_id = new[0] if new else None
            gevent.sleep(0.05)
        return admitted

    def talker(self, label: str, *, loud: bool = True) -> Talker:
        talker = Talker(self, label, loud=loud)
        self.on_cleanup(talker.stop)
        return talker


# ---- running one case ------------------------------------------------------------------


def _bench_cpu() -> float:
    times = os.times()
    return times.user + times.system


def _health_probe(ctx: CaseContext, result: CaseResult) -> None:
    worst = 0.0
    while True:
        started = time.monotonic()
        try:
            connection = http.client.HTTPConnection(LOOPBACK, ctx.port, timeout=_HEALTH_TIMEOUT_S)
            connection.request("GET", "/healthz", headers={"Connection": "close"})
            ok = connection.getresponse().status == 200
            connection.close()
        except (OSError, http.client.HTTPException):
            ok = False
        elapsed = (time.monotonic() - started) * 1000.0
        if ok:
            worst = max(worst, elapsed)
        else:
            result.healthz_failures += 1
        result.healthz_worst_ms = worst
        gevent.sleep(max(0.0, _HEALTH_EVERY_S - (time.monotonic() - started)))


def run_case(
    case: Case,
    *,
    seconds: float,
    workdir: Path,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    server_root: Path | None = None,
) -> CaseResult:
    """Run `case` against a fresh server for `seconds` (at least its minimum window)."""
    window = max(seconds, case.min_window_s)
    result = CaseResult(key=case.key, name=case.name, title=case.title, window_s=window, workdir=str(workdir))
    workdir.mkdir(parents=True, exist_ok=True)
    api_key = secrets.token_hex(12)
    tracker = VapiTracker()
    # The assistant greets for longer than the whole case, in real time: assistant audio
    # flows without a pause, so every gap the caller hears is a stall.
    greeting_ms = int((window + 120.0) * 1000)
    sim = VapiSimulator(VapiSimConfig(api_key=api_key, record=False, greeting_ms=greeting_ms, send_realtime=True))
    sim.on_call = tracker.on_call
    previous_root = _server_module._PROJECT_ROOT  # noqa: SLF001 - restored below
    if server_root is not None:
        # ServerProcess runs `python run.py` in this directory (e.g. an export of another commit).
        _server_module._PROJECT_ROOT = server_root  # noqa: SLF001 - ServerProcess has no parameter for it
    sim.start()
    server = ServerProcess(workdir=workdir, chaos_rate=0, seed=0,
                           extra_env={"VAPI_API_KEY": api_key, "VAPI_BASE_URL": sim.base_url})
    ctx = CaseContext(server=server, sim=sim, tracker=tracker, api_key=api_key, window_s=window, log=log)
    lag = LoopLag()
    samplers: list[ProcSampler] = []
    overrun = ServerError(f"case {case.name} took over {window + _CASE_MARGIN_S:g} s")
    try:
        with gevent.Timeout(window + _CASE_MARGIN_S, overrun):
            _run(case, ctx, result, lag=lag, window=window, on_sampler=lambda s: samplers.append(s))
    except (ServerError, CallerError, OSError, AssertionError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        log(f"abuse: case {case.key} {case.name} could not run: {result.error}")
    finally:
        ctx.close_attackers()
        if ctx.legit is not None:
            ctx.legit.stop()
        lag.stop()
        for sampler in samplers:
            sampler.stop()
        exit_status = server.stop(timeout_s=15.0)
        if result.ran and exit_status is None:
            ctx.problem("the server had to be killed: it did not exit within 15 s of SIGTERM")
        sim.stop()
        _server_module._PROJECT_ROOT = previous_root  # noqa: SLF001 - as it was
    result.findings = ctx.findings
    result.problems = ctx.problems
    judge(result)
    return result


def _run(case: Case, ctx: CaseContext, result: CaseResult, *, lag: LoopLag, window: float,
         on_sampler: Callable[[ProcSampler], None]) -> None:
    server, tracker, log = ctx.server, ctx.tracker, ctx.log
    server.start(timeout_s=_SERVER_START_S)
    assert server.pid is not None
    sampler = ProcSampler(server.pid)
    on_sampler(sampler)
    sampler.start()
    lag.start()
    legit = ctx.legit = Talker(ctx, "legit call", loud=False)
    legit.start()
    assert legit.sim_call_id is not None
    if case.setup is not None:
        with gevent.Timeout(_SETUP_S, ServerError(f"setup of {case.name} took over {_SETUP_S:g} s")):
            case.setup(ctx)
        gevent.sleep(0.5)  # what the setup did to this process's loop is not the warm-up's
    warm_from = time.monotonic()
    gevent.sleep(WARMUP_S)

    t0 = ctx.t0 = time.monotonic()
    ctx.deadline = t0 + window
    log_offset = server.log_path.stat().st_size
    cpu0, bench0 = cpu_seconds(server.pid), _bench_cpu()
    probe = gevent.spawn(_health_probe, ctx, result)
    log(f"abuse: case {case.key} {case.name}: attacking for {window:g} s")
    attacks = [ctx.group.spawn(_guarded, ctx, attack) for attack in case.attacks]
    gevent.joinall(attacks, timeout=window + _ATTACK_GRACE_S)
    for attack, greenlet in zip(case.attacks, attacks, strict=True):
        if not greenlet.dead:
            ctx.problem(f"{attack.__name__} still ran {_ATTACK_GRACE_S:g} s after its deadline")
    ctx.close_attackers()
    gevent.sleep(TAIL_S)
    t_end = time.monotonic()
    probe.kill(block=True, timeout=1.0)
    cpu1, bench1 = cpu_seconds(server.pid), _bench_cpu()

    # The legit call.
    inbound = tracker.legit_arrivals(legit.sim_call_id)
    outbound = legit.outbound_arrivals()
    result.inbound_gap_ms = worst_gap_ms(inbound, t0, t_end)
    result.outbound_gap_ms = worst_gap_ms(outbound, t0, t_end)
    result.warmup_inbound_gap_ms = worst_gap_ms(inbound, warm_from, t0)
    result.warmup_outbound_gap_ms = worst_gap_ms(outbound, warm_from, t0)
    result.legit_alive, result.legit_detail = _alive(legit, inbound, outbound, t_end)

    # The server.
    result.rss_before_bytes, result.rss_max_bytes = sampler.before_and_max(t0, t_end)
    if cpu0 is not None and cpu1 is not None:
        result.cpu_percent = 100.0 * (cpu1 - cpu0) / (t_end - t0)
    result.bench_cpu_percent = 100.0 * (bench1 - bench0) / (t_end - t0)
    result.bench_lag_ms = lag.worst_ms(t0, t_end)
    result.log_lines, events = count_log_lines(server.log_path, log_offset)
    result.log_events = dict(events)
    created = tracker.created_between(t0, t_end)
    result.vapi_fresh = sum(not info.relink for info in created)
    result.vapi_relinks = sum(info.relink for info in created)
    result.ran = True


def _guarded(ctx: CaseContext, attack: Callable[[CaseContext], None]) -> None:
    try:
        attack(ctx)
    except gevent.GreenletExit:
        raise
    except Exception as exc:  # noqa: BLE001 - one attack's failure is reported, the case goes on
        ctx.problem(f"{attack.__name__} failed: {exc!r}")
        traceback.print_exc(file=sys.stderr)


def _alive(legit: Talker, inbound: list[float], outbound: list[float], t_end: float) -> tuple[bool, str]:
    problems = []
    if legit.caller.closed.is_set():
        problems.append(f"the server closed its socket (close code {legit.caller.close_code})")
    if legit.error:
        problems.append(f"caller: {legit.error}")
    for what, arrivals in (("caller audio reached VAPI", inbound), ("assistant audio reached the caller", outbound)):
        if not arrivals:
            problems.append(f"no {what}")
        elif arrivals[-1] < t_end - _ALIVE_WITHIN_S:
            problems.append(f"{what} last {t_end - arrivals[-1]:.1f} s before the end")
    if problems:
        return False, "; ".join(problems)
    return True, f"audio both ways within the last {_ALIVE_WITHIN_S:g} s"
