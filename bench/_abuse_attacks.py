"""The attacks of the abuse bench, one function per attack, grouped into cases (see CASES).

Every attack runs until `ctx.deadline` and then records its findings; every loop is
bounded in count and in time. "Signed" means a valid X-Twilio-Signature computed with
the server's auth token, as an attacker who captured one would have it: Twilio's
handshake signature covers only the URL, so one capture is valid forever. "Admitted"
means a call the server accepted through a properly signed webhook before the window
(its VAPI call is part of the baseline, not counted as the attack's).
"""

from __future__ import annotations

import secrets
import struct
import time
from statistics import median
from typing import Any

import gevent

from bench._abuse_case import (
    ACCOUNT_SID,
    LOUD_ULAW,
    Admitted,
    Case,
    CaseContext,
    WsPeer,
    new_call_sid,
)
from bench._abuse_rogue import RogueHost
from bench._abuse_wire import (
    LOOPBACK,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    client_frame,
    read_head,
    server_frame_header,
    twilio_connected,
    twilio_media,
    twilio_start,
    twilio_stop,
)
from sims.caller import CallerError
from sims.webhook import stream_from_twiml

__all__ = ["CASES", "case_by_name"]

_MIB = 1024 * 1024
# Twilio's largest frame is a few hundred bytes; the server's cap is 64 KiB.
_FLOOD_MEDIA_ULAW_BYTES = 45_900  # base64 61,200 chars: a ~60 KiB media message, just under the cap
_OVERSIZE_BYTES = 64 * 1024 + 1024
_OVERSIZE_COUNT = 2_000
_MALFORMED_VAPI_EVENTS = 100_000
_MALFORMED_VAPI_BATCH = 100
_MALFORMED_VAPI = ("{not json", '{"type": 42}', "[1, 2, 3]", '{"type": "speech-update", "status": 7}')
# HTTP bodies.
_HUGE_FORM_BYTES = 256 * _MIB
_MULTIPART_ANNOUNCED = 1024 * _MIB
_MULTIPART_SENT_CAP = 256 * _MIB  # per upload: what we actually send at most (disk and time)
_MULTIPART_UPLOADS = 4
_FIELDS = 400_000  # "k000000=v&" is 10 bytes: 4,000,000 bytes, 3.8 MiB
_FIELDS_ROUNDS = 50
_EARLY_ANSWER_BYTES = 16 * _MIB  # kernel buffers hold a few MiB; an answer before this is "early"
_UPLOAD_CHUNK = _MIB
# Slowloris.
_SLOW_SILENT = 400
_SLOW_TRICKLE = 100
_SLOW_TRICKLE_EVERY_S = 2.0
_IDLE_KEEPALIVE = 50
_SLOWLORIS_WINDOW_S = 30.0
# Amplification.
_AMP_FRAMES_PER_S = 495
_AMP_JUMP_MS = 1000
_AMP_LIMIT = 2.0  # VAPI may get at most this many times the 20 ms each frame carries
# VAPI side.
_VAPI_BIG_FRAME = 50 * _MIB
_VAPI_FRAGMENTED = 30 * _MIB
_VAPI_FRAGMENT = 4 * 1024
_VAPI_WRITE_CHUNK = 256 * 1024


# ---- helpers -----------------------------------------------------------------------------


def _forged_parameters(ctx: CaseContext, call_sid: str) -> dict[str, str]:
    """The legit call's <Parameter> names with made-up values (its callSid: ours)."""
    assert ctx.legit is not None
    forged = {}
    for name, value in ctx.legit.caller.custom_parameters.items():
        forged[name] = call_sid if value == ctx.legit.call_sid else secrets.token_urlsafe(max(8, len(value) * 3 // 4))
    return forged or {"callSid": call_sid}


def _admitted_peer(ctx: CaseContext, label: str, admitted: Admitted, **kwargs: Any) -> WsPeer:
    return ctx.peer(label, admitted.path, signature=admitted.handshake_signature, **kwargs)


def _blast(peer: WsPeer, chunk: bytes, deadline: float) -> int:
    """Send `chunk` over and over until `deadline` or the socket fails; chunks sent whole."""
    sent = 0
    while time.monotonic() < deadline and not peer.send_failed:
        if not peer.send(chunk, deadline):
            break
        sent += 1
        gevent.sleep(0)
    return sent


def _seconds(value: float | None) -> Any:
    return "still held at the end" if value is None else round(value, 2)


def _admin_call(ctx: CaseContext, call_sid: str) -> dict[str, Any] | None:
    try:
        call: dict[str, Any] | None = ctx.server.admin_or_none(f"/admin/calls/{call_sid}")
        return call
    except Exception:  # noqa: BLE001 - an admin read failing is reported as unknown
        return None


# ---- 0. baseline -------------------------------------------------------------------------


def no_attack(ctx: CaseContext) -> None:
    """Nothing: the legit call alone, for the gap and CPU figures without an attack."""
    ctx.sleep_until_deadline()


# ---- 1. unsigned upgrades on other path forms ----------------------------------------------

PATH_FORMS = (
    ("//media/<sid>", "//media/{sid}"),
    ("///media/<sid>", "///media/{sid}"),
    ("/%2Fmedia/<sid>", "/%2Fmedia/{sid}"),
    ("/media/<sid> unsigned", "/media/{sid}"),
    ("/healthz", "/healthz"),
    ("/dashboard", "/dashboard"),
    ("/nope", "/nope"),
)


def unsigned_path_forms(ctx: CaseContext) -> None:
    """Upgrade requests without a signature on each path form; any 101 is used like Twilio would."""
    peers = []
    for label, form in PATH_FORMS:
        call_sid = new_call_sid()
        peer = ctx.peer(f"upgrade {label}", form.format(sid=call_sid), signature=None)
        peer.open()
        if peer.got_101:
            peer.watch()
            stream_sid = peer.start_twilio(call_sid, {"callSid": call_sid})
            ctx.spawn(peer.talk, stream_sid, ctx.deadline)
        peers.append(peer)
    ctx.sleep_until_deadline()
    for peer in peers:
        peer.report(signed=False)


def borrowed_signature(ctx: CaseContext) -> None:
    """/media/<sid> carrying the legit call's (valid, but other URL's) signature."""
    assert ctx.legit is not None
    call_sid = new_call_sid()
    peer = ctx.peer("upgrade /media/<sid> with another call's signature", f"/media/{call_sid}",
                    signature=ctx.legit.handshake_signature)
    peer.open()
    if peer.got_101:
        peer.watch()
        peer.talk(peer.start_twilio(call_sid, {"callSid": call_sid}), ctx.deadline)
    ctx.sleep_until_deadline()
    peer.report(signed=False)


# ---- 2. a signed socket for a CallSid no webhook admitted ----------------------------------


def unadmitted_signed(ctx: CaseContext) -> None:
    call_sid = new_call_sid()
    peer = ctx.peer("signed /media/<sid>, never admitted", f"/media/{call_sid}",
                    signature=ctx.media_signature(call_sid))
    peer.open()
    if peer.got_101:
        peer.watch()
        peer.talk(peer.start_twilio(call_sid, _forged_parameters(ctx, call_sid)), ctx.deadline)
    ctx.sleep_until_deadline()
    peer.report(signed=True)


# ---- 3. floods -------------------------------------------------------------------------------


def _media_flood_frame(stream_sid: str) -> bytes:
    message = twilio_media(stream_sid, 2, 1, 72, secrets.token_bytes(_FLOOD_MEDIA_ULAW_BYTES))
    return client_frame(OP_TEXT, message) * 16  # about 1 MiB per send


def _flood_findings(ctx: CaseContext, peer: WsPeer, name: str) -> None:
    ctx.finding(name, "bytes sent (MiB)", round(peer.bytes_sent / _MIB, 1))
    ctx.finding(name, "server closed the socket after (s)", _seconds(peer.seconds_to_close()))


def flood_60k_unsigned(ctx: CaseContext) -> None:
    _flood_unadmitted(ctx, "60 KiB frames, unsigned", signed=False)


def flood_60k_unadmitted(ctx: CaseContext) -> None:
    _flood_unadmitted(ctx, "60 KiB frames, signed, never admitted", signed=True)


def _flood_unadmitted(ctx: CaseContext, name: str, *, signed: bool) -> None:
    call_sid = new_call_sid()
    peer = ctx.peer(name, f"/media/{call_sid}", signature=ctx.media_signature(call_sid) if signed else None)
    peer.open()
    peer.watch()
    if peer.got_101:
        stream_sid = peer.start_twilio(call_sid, _forged_parameters(ctx, call_sid))
        chunk = _media_flood_frame(stream_sid)
    else:
        chunk = ctx.state["flood_chunk_60k"]
    # Whatever the answer, keep sending frames: a refused socket must not be read on.
    _blast(peer, chunk, ctx.deadline)
    ctx.sleep_until_deadline()
    peer.report(signed=signed)  # with a 101, this says when the server closed it
    ctx.finding(name, "bytes sent (MiB)", round(peer.bytes_sent / _MIB, 1))
    if not peer.got_101:
        ctx.finding(name, "server closed the socket after (s)", _seconds(peer.seconds_to_close()))


def _admitted_flood(ctx: CaseContext, key: str, name: str, *, rcvbuf: int | None = None,
                    read: bool = True, first: bytes = b"") -> None:
    admitted: Admitted = ctx.state[key]
    chunk: bytes = ctx.state[f"{key}_chunk"]
    peer = _admitted_peer(ctx, name, admitted, rcvbuf=rcvbuf)
    peer.open()
    if peer.got_101:
        if read:
            peer.watch()
        peer.start_twilio(admitted.call_sid, admitted.parameters, stream_sid=_FLOOD_STREAM_SID)
        gevent.sleep(0.3)  # let the call take the socket
        if first:
            peer.send(first)
        _blast(peer, chunk, ctx.deadline)
    ctx.sleep_until_deadline()
    ctx.finding(name, "HTTP status", peer.status)
    _flood_findings(ctx, peer, name)


def flood_60k_admitted(ctx: CaseContext) -> None:
    _admitted_flood(ctx, "flood_60k", "60 KiB frames, admitted call")


def flood_fragments_admitted(ctx: CaseContext) -> None:
    # A text message that never ends: one byte, then one-byte continuations without FIN.
    _admitted_flood(ctx, "flood_fragments", "1-byte fragments, admitted call",
                    first=client_frame(OP_TEXT, b"{", fin=False))


def flood_pings_admitted(ctx: CaseContext) -> None:
    # A tiny receive buffer and no reading: the server's pongs have nowhere to go.
    _admitted_flood(ctx, "flood_pings", "pings, pongs never read, admitted call", rcvbuf=4096, read=False)


_FLOOD_STREAM_SID = "MZ" + "f100d" * 6 + "00"


def setup_floods(ctx: CaseContext) -> None:
    for key in ("flood_60k", "flood_fragments", "flood_pings"):
        ctx.state[key] = ctx.admit(key)
    # Frames are built before the window: building costs this process, not the server.
    ctx.state["flood_chunk_60k"] = _media_flood_frame("MZ" + "0" * 32)
    ctx.state["flood_60k_chunk"] = _media_flood_frame(_FLOOD_STREAM_SID)
    ctx.state["flood_fragments_chunk"] = b"".join(client_frame(OP_CONT, b"a", fin=False) for _ in range(8192))
    ctx.state["flood_pings_chunk"] = b"".join(client_frame(OP_PING, b"p" * 125) for _ in range(512))


# ---- 4. HTTP bodies ----------------------------------------------------------------------------


class _Upload:
    """One POST whose body we send as fast as the server takes it, watching for its answer."""

    def __init__(self, ctx: CaseContext, name: str, headers: dict[str, str], preamble: bytes,
                 announced: int, cap: int) -> None:
        self.ctx, self.name = ctx, name
        self.sock = ctx.raw()
        self.started = time.monotonic()
        self.sent = 0
        self.status: int | None = None
        self.answered_after: int | None = None
        self.answered_in: float | None = None
        self.closed = False
        lines = ["POST /voice/incoming HTTP/1.1", f"Host: {LOOPBACK}:{ctx.port}",
                 f"Content-Length: {announced}", *(f"{k}: {v}" for k, v in headers.items())]
        self.head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.preamble = preamble
        self.cap = cap

    def run(self, filler: bytes) -> None:
        watcher = self.ctx.spawn(self._watch)
        deadline = self.ctx.deadline
        try:
            self._send(self.head + self.preamble, deadline)
            while (time.monotonic() < deadline and self.status is None and not self.closed
                   and self.sent < self.cap):
                self._send(filler[: self.cap - self.sent], deadline)
                gevent.sleep(0)
        except OSError:
            self.closed = True
        watcher.join(timeout=max(0.0, deadline - time.monotonic()))

    def _send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view and time.monotonic() < deadline and self.status is None:
            try:
                n = self.sock.send(view)
            except TimeoutError:  # socket.timeout is TimeoutError
                continue
            self.sent += n
            view = view[n:]

    def _watch(self) -> None:
        head = read_head(self.sock, max(0.1, self.ctx.deadline - time.monotonic()))
        self.sock.settimeout(0.5)
        if head.status is not None:
            self.status = head.status
            self.answered_after = self.sent
            self.answered_in = time.monotonic() - self.started
        elif head.eof:
            self.closed = True
            self.answered_after = self.sent
            self.answered_in = time.monotonic() - self.started

    def report(self) -> None:
        ctx, name = self.ctx, self.name
        early = self.answered_after is not None and self.answered_after <= _EARLY_ANSWER_BYTES
        refused = self.closed or (self.status is not None and 400 <= self.status < 500)
        if self.status is not None:
            outcome: Any = (f"HTTP {self.status} after {(self.answered_after or 0) / _MIB:.1f} MiB, "
                            f"{self.answered_in or 0.0:.2f} s")
        elif self.closed:
            outcome = f"closed without an answer after {(self.answered_after or 0) / _MIB:.1f} MiB"
        else:
            outcome = f"no answer within the window, {self.sent / _MIB:.1f} MiB taken"
        ctx.finding(name, "server's answer", outcome, ok=early and refused,
                    want=f"4xx or close before {_EARLY_ANSWER_BYTES // _MIB} MiB of body")


def huge_form(ctx: CaseContext) -> None:
    upload = _Upload(ctx, "256 MiB form, unsigned", {"Content-Type": "application/x-www-form-urlencoded"},
                     b"Body=", _HUGE_FORM_BYTES, _HUGE_FORM_BYTES)
    upload.run(b"x" * _UPLOAD_CHUNK)
    ctx.sleep_until_deadline()
    upload.report()


def multipart_uploads(ctx: CaseContext) -> None:
    boundary = "abuse" + secrets.token_hex(8)
    preamble = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode()
    uploads = [
        _Upload(ctx, f"1 GiB multipart announced, unsigned (upload {n + 1} of {_MULTIPART_UPLOADS})",
                {"Content-Type": f"multipart/form-data; boundary={boundary}"}, preamble,
                _MULTIPART_ANNOUNCED, _MULTIPART_SENT_CAP)
        for n in range(_MULTIPART_UPLOADS)
    ]
    filler = b"\0" * _UPLOAD_CHUNK
    greenlets = [ctx.spawn(upload.run, filler) for upload in uploads]
    gevent.joinall(greenlets, timeout=ctx.remaining() + 1.0)
    ctx.sleep_until_deadline()
    for upload in uploads:
        upload.report()


def many_fields(ctx: CaseContext) -> None:
    """400,000 fields (3.8 MiB) with a bogus signature, again and again; each answer timed."""
    name = f"{_FIELDS:,} form fields (3.8 MiB), bogus signature"
    body: bytes = ctx.state["fields_body"]
    head = (f"POST /voice/incoming HTTP/1.1\r\nHost: {LOOPBACK}:{ctx.port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"X-Twilio-Signature: {secrets.token_urlsafe(20)}=\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    outcomes: list[Any] = []
    latencies: list[float] = []
    for _ in range(_FIELDS_ROUNDS):
        if ctx.remaining() <= 0.5:
            break
        started = time.monotonic()
        try:
            sock = ctx.raw(timeout_s=max(0.5, ctx.remaining()))
        except OSError as exc:
            outcomes.append(f"connect failed ({type(exc).__name__})")
            continue
        reset = False
        try:
            sock.sendall(head + body)
        except OSError:
            reset = True  # the server answered and closed before taking the whole body
        try:
            answer = read_head(sock, 1.0 if reset else ctx.remaining())
        except OSError:
            answer = None
        sock.close()
        if answer is not None and answer.status is not None:
            outcomes.append(answer.status)
        elif reset or (answer is not None and answer.eof):
            outcomes.append("closed before the whole body was sent" if reset else "closed without an answer")
        else:
            outcomes.append("no answer")
        latencies.append(time.monotonic() - started)
        gevent.sleep(0.1)
    ctx.sleep_until_deadline()
    summary = ", ".join(f"{o} x{outcomes.count(o)}" for o in dict.fromkeys(outcomes)) or "none sent"
    good = bool(outcomes) and all(
        (isinstance(o, int) and 400 <= o < 500) or o == "closed before the whole body was sent" for o in outcomes
    )
    worst = max(latencies, default=None)
    ctx.finding(name, "answers", summary, ok=good, want="4xx, or a close before the body was all sent, every time")
    ctx.finding(name, "slowest answer (s)", None if worst is None else round(worst, 2),
                ok=worst is not None and worst <= 2.0, want="<= 2 s")


def setup_http_bodies(ctx: CaseContext) -> None:
    ctx.state["fields_body"] = b"".join(b"k%06d=v&" % i for i in range(_FIELDS))


# ---- 5. slowloris and idle sockets -------------------------------------------------------------


def _hold(ctx: CaseContext, sock: Any, opened: float, trickle: bool, closes: list[float]) -> None:
    next_byte = opened + _SLOW_TRICKLE_EVERY_S
    while time.monotonic() < ctx.deadline:
        if trickle and time.monotonic() >= next_byte:
            next_byte += _SLOW_TRICKLE_EVERY_S
            try:
                sock.send(b"a")
            except TimeoutError:
                pass
            except OSError:
                closes.append(time.monotonic() - opened)
                return
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            data = b""
        if not data:
            closes.append(time.monotonic() - opened)
            return


def _held_findings(ctx: CaseContext, name: str, total: int, closes: list[float]) -> None:
    ctx.finding(name, "closed by the server", f"{len(closes)} of {total}", ok=len(closes) == total,
                want="all, within the window")
    if closes:
        ctx.finding(name, "seconds until closed (median / max)", f"{median(closes):.1f} / {max(closes):.1f}")


def _slow_headers(ctx: CaseContext, count: int, trickle: bool, name: str) -> None:
    closes: list[float] = []
    greenlets = []
    opened_count = 0
    for _ in range(count):
        if ctx.remaining() <= 0:
            break
        try:
            sock = ctx.raw(timeout_s=0.5)
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {LOOPBACK}:{ctx.port}\r\nX-Slow: ".encode())
        except OSError as exc:
            ctx.finding(name, "connect refused at", f"connection {opened_count + 1}: {exc}")
            break
        opened_count += 1
        greenlets.append(ctx.spawn(_hold, ctx, sock, time.monotonic(), trickle, closes))
    gevent.joinall(greenlets, timeout=ctx.remaining() + 2.0)
    ctx.sleep_until_deadline()
    _held_findings(ctx, name, opened_count, closes)


def slow_headers_silent(ctx: CaseContext) -> None:
    _slow_headers(ctx, _SLOW_SILENT, False, f"{_SLOW_SILENT} half-sent headers, then silence")


def slow_headers_trickle(ctx: CaseContext) -> None:
    _slow_headers(ctx, _SLOW_TRICKLE, True,
                  f"{_SLOW_TRICKLE} half-sent headers, one more byte every {_SLOW_TRICKLE_EVERY_S:g} s")


def idle_keepalive(ctx: CaseContext) -> None:
    name = f"{_IDLE_KEEPALIVE} idle keep-alive connections after one request"
    closes: list[float] = []
    greenlets = []
    for _ in range(_IDLE_KEEPALIVE):
        sock = ctx.raw(timeout_s=0.5)
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {LOOPBACK}:{ctx.port}\r\n\r\n".encode())
        head = read_head(sock, 3.0)
        length = int(head.headers.get("content-length", "0") or 0)
        rest = len(head.rest)
        while rest < length:  # the body, so what follows is only the close
            try:
                chunk = sock.recv(length - rest)
            except OSError:
                break
            if not chunk:
                break
            rest += len(chunk)
        sock.settimeout(0.5)
        greenlets.append(ctx.spawn(_hold, ctx, sock, time.monotonic(), False, closes))
    gevent.joinall(greenlets, timeout=ctx.remaining() + 2.0)
    ctx.sleep_until_deadline()
    _held_findings(ctx, name, _IDLE_KEEPALIVE, closes)


def media_never_starts(ctx: CaseContext) -> None:
    admitted: Admitted = ctx.state["never_start"]
    name = "admitted call's media socket, never sends start"
    peer = _admitted_peer(ctx, name, admitted)
    peer.open()
    if peer.got_101:
        peer.watch()
    ctx.sleep_until_deadline()
    _media_idle_findings(ctx, peer, name)


def media_silent_after_start(ctx: CaseContext) -> None:
    admitted: Admitted = ctx.state["silent_after_start"]
    name = "admitted call's media socket, start then silence"
    peer = _admitted_peer(ctx, name, admitted)
    peer.open()
    if peer.got_101:
        peer.watch()
        peer.start_twilio(admitted.call_sid, admitted.parameters)
    ctx.sleep_until_deadline()
    _media_idle_findings(ctx, peer, name)


def _media_idle_findings(ctx: CaseContext, peer: WsPeer, name: str) -> None:
    ctx.finding(name, "HTTP status", peer.status)
    if peer.got_101:
        closed = peer.seconds_to_close()
        ctx.finding(name, "server closed the socket after (s)", _seconds(closed), ok=closed is not None,
                    want="closed within the window")


def setup_slowloris(ctx: CaseContext) -> None:
    ctx.state["never_start"] = ctx.admit("never_start")
    ctx.state["silent_after_start"] = ctx.admit("silent_after_start")


# ---- 6. replays ----------------------------------------------------------------------------------


def setup_replay(ctx: CaseContext) -> None:
    """A complete call whose webhook and handshake are "captured", then ended with `stop`."""
    captured = ctx.admit("captured call")
    peer = _admitted_peer(ctx, "captured call", captured)
    if peer.open() != 101:
        raise RuntimeError(f"the captured call's own handshake answered HTTP {peer.status}")
    peer.watch()
    stream_sid = peer.start_twilio(captured.call_sid, captured.parameters)
    peer.talk(stream_sid, time.monotonic() + 1.0)
    peer.send_frame(OP_TEXT, twilio_stop(captured.call_sid, stream_sid, 99, ACCOUNT_SID))
    peer.wait_closed(time.monotonic() + 3.0)
    peer.close()
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        call = _admin_call(ctx, captured.call_sid)
        if call is not None and not call.get("live"):
            break
        gevent.sleep(0.2)
    ctx.state["captured"] = captured


def _replay_socket(ctx: CaseContext, name: str, path: str, signature: str, call_sid: str,
                   parameters: dict[str, str]) -> WsPeer:
    peer = ctx.peer(name, path, signature=signature)
    peer.open()
    if peer.got_101:
        peer.watch()
        peer.talk(peer.start_twilio(call_sid, parameters), min(ctx.deadline, time.monotonic() + 1.0))
    return peer


def replay_webhook(ctx: CaseContext) -> None:
    """The captured webhook again, byte for byte; if it offers a stream, the captured handshake with it."""
    captured: Admitted = ctx.state["captured"]
    name = "replayed webhook of an ended call"
    status, body = ctx.post_webhook(captured.webhook_params, captured.webhook_signature)
    stream = stream_from_twiml(body, ctx.url + "/voice/incoming") if status == 200 else None
    ctx.finding(name, "answer", f"HTTP {status}, " + ("TwiML offers a <Stream>" if stream else "no <Stream>"))
    peer = None
    if stream is not None:
        peer = _replay_socket(ctx, name + " + captured handshake", captured.path, captured.handshake_signature,
                              captured.call_sid, stream[1])
    ctx.sleep_until_deadline()
    if peer is not None:
        peer.report(signed=True)


def replay_captured_handshake(ctx: CaseContext) -> None:
    captured: Admitted = ctx.state["captured"]
    peers = [
        _replay_socket(ctx, f"captured handshake of the ended call, replay {n + 1}", captured.path,
                       captured.handshake_signature, captured.call_sid, captured.parameters)
        for n in range(3)
    ]
    ctx.sleep_until_deadline()
    for peer in peers:
        peer.report(signed=True)


def replay_legit_handshake(ctx: CaseContext) -> None:
    legit = ctx.legit
    assert legit is not None and legit.caller.stream_url is not None
    path = "/" + legit.caller.stream_url.split("/", 3)[3]
    peers = [
        _replay_socket(ctx, f"the live legit call's handshake, replay {n + 1}", path, legit.handshake_signature,
                       legit.call_sid, dict(legit.caller.custom_parameters))
        for n in range(3)
    ]
    ctx.sleep_until_deadline()
    for peer in peers:
        peer.report(signed=True)


# ---- 7. amplification ------------------------------------------------------------------------------


def _amplify(ctx: CaseContext, peer: WsPeer, call_sid: str, parameters: dict[str, str]) -> int:
    """495 frames a second, each one's timestamp 1 s after the previous; frames sent."""
    stream_sid = peer.start_twilio(call_sid, parameters)
    sent, timestamp, batch = 0, 52, 10
    started = time.monotonic()
    while time.monotonic() < ctx.deadline and not peer.send_failed and not peer.closed_by_server:
        frames = []
        for _ in range(batch):
            sent += 1
            timestamp += _AMP_JUMP_MS
            frames.append(client_frame(OP_TEXT, twilio_media(stream_sid, sent + 1, sent, timestamp, LOUD_ULAW)))
        if not peer.send(b"".join(frames), ctx.deadline):
            break
        gevent.sleep(max(0.0, started + sent / _AMP_FRAMES_PER_S - time.monotonic()))
    return sent


def amplify_admitted(ctx: CaseContext) -> None:
    admitted: Admitted = ctx.state["amplifier"]
    name = f"{_AMP_FRAMES_PER_S} frames/s, timestamps +{_AMP_JUMP_MS} ms each, admitted call"
    info = ctx.tracker.calls.get(admitted.sim_call_id or "")
    bytes_before = info.audio_bytes if info is not None else 0
    peer = _admitted_peer(ctx, name, admitted)
    peer.open()
    sent = 0
    if peer.got_101:
        peer.watch()
        sent = _amplify(ctx, peer, admitted.call_sid, admitted.parameters)
    ctx.sleep_until_deadline()
    ctx.finding(name, "HTTP status", peer.status)
    ctx.finding(name, "frames sent", sent)
    ctx.finding(name, "server closed the socket after (s)", _seconds(peer.seconds_to_close()))
    if info is None or peer.opened_at is None:
        ctx.finding(name, "its VAPI call", "never created")
        return
    # Seconds of audio VAPI got for this call, against the seconds the attacker's socket was
    # open: Twilio sends one second of audio per second.
    audio_s = (info.audio_bytes - bytes_before) / (8000.0 if info.audio_format == "mulaw" else 32000.0)
    open_s = max(0.02, (peer.server_closed_at or time.monotonic()) - peer.opened_at)
    ctx.finding(name, "audio VAPI received (s)", round(audio_s, 1))
    # The amplification: a 20 ms frame whose timestamp jumps 1 s must not become 1 s of audio.
    per_frame_ms = 1000.0 * audio_s / max(1, sent)
    ctx.finding(name, "audio VAPI received per frame sent (ms)", round(per_frame_ms, 1),
                ok=per_frame_ms <= _AMP_LIMIT * 20.0, want=f"<= {_AMP_LIMIT * 20.0:g} (each frame carries 20 ms)")
    # The rate: frames beyond Twilio's 50 a second, until the server stops taking them.
    ctx.finding(name, "audio VAPI received per second the socket was open (s)", round(audio_s / open_s, 1))


def amplify_unadmitted(ctx: CaseContext) -> None:
    name = f"{_AMP_FRAMES_PER_S} frames/s, timestamps +{_AMP_JUMP_MS} ms each, signed, never admitted"
    call_sid = new_call_sid()
    peer = ctx.peer(name, f"/media/{call_sid}", signature=ctx.media_signature(call_sid))
    peer.open()
    sent = 0
    if peer.got_101:
        peer.watch()
        sent = _amplify(ctx, peer, call_sid, _forged_parameters(ctx, call_sid))
    ctx.sleep_until_deadline()
    peer.report(signed=True)
    ctx.finding(name, "frames sent", sent)


def setup_amplification(ctx: CaseContext) -> None:
    ctx.state["amplifier"] = ctx.admit("amplifier")


# ---- 8. protocol laxness ---------------------------------------------------------------------------


def unmasked_frames(ctx: CaseContext) -> None:
    admitted: Admitted = ctx.state["unmasked"]
    name = "unmasked client frames, admitted call"
    peer = _admitted_peer(ctx, name, admitted)
    peer.open()
    accepted: Any = "n/a (no 101)"
    stop_ended_call: Any = "n/a"
    ok: bool | None = None
    if peer.got_101:
        peer.watch()
        first = time.monotonic()
        peer.send(client_frame(OP_TEXT, twilio_connected(), mask=False))
        peer.wait_closed(min(ctx.deadline, first + 1.0))
        if peer.server_closed_at is not None:
            accepted, ok = f"no: closed after {peer.server_closed_at - first:.2f} s, code {peer.close_code}", True
        else:
            stream_sid = "MZ" + secrets.token_hex(16)
            peer.send(client_frame(OP_TEXT, twilio_start(admitted.call_sid, stream_sid, admitted.parameters,
                                                         ACCOUNT_SID), mask=False))
            for n in range(50):
                peer.send(client_frame(OP_TEXT, twilio_media(stream_sid, n + 2, n + 1, 52 + 20 * n, LOUD_ULAW),
                                       mask=False))
            peer.send(client_frame(OP_TEXT, twilio_stop(admitted.call_sid, stream_sid, 60, ACCOUNT_SID), mask=False))
            gevent.sleep(min(1.0, ctx.remaining()))
            call = _admin_call(ctx, admitted.call_sid)
            stop_ended_call = "unknown" if call is None else ("yes" if not call.get("live") else "no")
            if peer.closed_by_server:
                accepted = f"connected, start, 50 media, stop all sent before the close (code {peer.close_code})"
            else:
                accepted = "yes: socket still open after connected, start, 50 media and stop, all unmasked"
            ok = False
    ctx.sleep_until_deadline()
    ctx.finding(name, "HTTP status", peer.status)
    ctx.finding(name, "unmasked frames accepted", accepted, ok=ok, want="the first one closes the socket (1002)")
    ctx.finding(name, "the unmasked stop ended the call", stop_ended_call)


def close_code_zero(ctx: CaseContext) -> None:
    admitted: Admitted = ctx.state["close0"]
    name = "close frame with code 0, admitted call"
    peer = _admitted_peer(ctx, name, admitted)
    peer.open()
    ok: bool | None = None
    answer: Any = "n/a (no 101)"
    if peer.got_101:
        peer.watch()
        peer.start_twilio(admitted.call_sid, admitted.parameters)
        gevent.sleep(0.5)
        sent_at = time.monotonic()
        peer.send_frame(OP_CLOSE, struct.pack("!H", 0))
        peer.wait_closed(min(ctx.deadline, sent_at + 3.0))
        code = peer.close_code
        ok = peer.closed_by_server and code is not None and code not in (0, 1004, 1005, 1006, 1015) and \
            1000 <= code <= 4999
        answer = "no close frame" if code is None else code
        if not peer.closed_by_server:
            answer = "socket still open 3 s later"
    ctx.sleep_until_deadline()
    ctx.finding(name, "HTTP status", peer.status)
    ctx.finding(name, "server's close code", answer, ok=ok, want="a valid code (1002)")


def bad_websocket_key(ctx: CaseContext) -> None:
    variants = (
        ("signed", "not base64", "!!!not-base64-at-all!!!!"),
        ("signed", "8 bytes of base64", "AAAAAAAAAAA="),
        ("unsigned", "not base64", "!!!not-base64-at-all!!!!"),
    )
    for signed, what, key in variants:
        call_sid = new_call_sid()
        name = f"Sec-WebSocket-Key {what}, {signed}"
        peer = ctx.peer(name, f"/media/{call_sid}", key=key,
                        signature=ctx.media_signature(call_sid) if signed == "signed" else None)
        status = peer.open()
        peer.close()
        if signed == "signed":  # all else is valid: the key alone is wrong
            ctx.finding(name, "HTTP status", status, ok=status == 400, want="400 (not 500, not 101)")
        else:  # a 403 for the missing signature is as good a refusal
            ctx.finding(name, "HTTP status", status, ok=status in (400, 403), want="400 or 403 (not 500, not 101)")
    ctx.sleep_until_deadline()


def oversize_messages(ctx: CaseContext) -> None:
    admitted: Admitted = ctx.state["oversize"]
    name = f"{_OVERSIZE_COUNT:,} messages of {_OVERSIZE_BYTES // 1024} KiB, admitted call"
    peer = _admitted_peer(ctx, name, admitted)
    peer.open()
    sent = 0
    if peer.got_101:
        peer.watch()
        peer.start_twilio(admitted.call_sid, admitted.parameters)
        gevent.sleep(0.3)
        frame = client_frame(OP_TEXT, b"x" * _OVERSIZE_BYTES)
        while sent < _OVERSIZE_COUNT and time.monotonic() < ctx.deadline and not peer.send_failed:
            if not peer.send(frame, ctx.deadline):
                break
            sent += 1
            if sent % 8 == 0:
                gevent.sleep(0)
    ctx.sleep_until_deadline()
    ctx.finding(name, "HTTP status", peer.status)
    ctx.finding(name, "messages sent", sent)
    ctx.finding(name, "server closed the socket after (s)", _seconds(peer.seconds_to_close()))


def malformed_vapi_events(ctx: CaseContext) -> None:
    """The legit call's VAPI peer sends 100,000 malformed text events (the log must stay small).

    Paced evenly over most of the window, in batches: the simulator's own audio for the
    call shares the socket and this process, and must not be held up by our sending,
    or the gaps measured would be the simulator's, not the server's.
    """
    assert ctx.legit is not None and ctx.legit.sim_call_id is not None
    name = f"{_MALFORMED_VAPI_EVENTS:,} malformed events from VAPI on the legit call"
    sim_call = ctx.tracker.sim_calls[ctx.legit.sim_call_id]
    started = time.monotonic()
    per_s = _MALFORMED_VAPI_EVENTS / max(0.5, 0.8 * ctx.remaining())
    sent = 0
    while sent < _MALFORMED_VAPI_EVENTS and time.monotonic() < ctx.deadline:
        for _ in range(min(_MALFORMED_VAPI_BATCH, _MALFORMED_VAPI_EVENTS - sent)):
            if not sim_call.send_text_raw(_MALFORMED_VAPI[sent % len(_MALFORMED_VAPI)]):
                break
            sent += 1
        else:
            gevent.sleep(max(0.0, started + sent / per_s - time.monotonic()))
            continue
        break  # the socket is gone
    ctx.sleep_until_deadline()
    ctx.finding(name, "events sent", sent)


def setup_protocol(ctx: CaseContext) -> None:
    for key in ("unmasked", "close0", "oversize"):
        ctx.state[key] = ctx.admit(key)


# ---- 9. the VAPI side -------------------------------------------------------------------------------


def setup_vapi_side(ctx: CaseContext) -> None:
    rogue = RogueHost(api_key=ctx.api_key)
    rogue.start()
    ctx.on_cleanup(rogue.stop)
    ctx.state["rogue"] = rogue
    for key in ("big_frame", "fragmented"):
        talker = ctx.talker(f"victim call ({key})", loud=True)
        talker.start(wait_audio=False)
        ctx.state[key] = talker


def vapi_redirect(ctx: CaseContext) -> None:
    """POST /call answers 302 to a rogue host while a new call starts: does the server follow?"""
    rogue: RogueHost = ctx.state["rogue"]
    name = "VAPI answers POST /call with a 302 to another host"
    ctx.sim.redirect_creates(f"{rogue.url}/call", 302)
    attempts_before = len(ctx.sim.create_attempts)
    victim_outcome = "webhook answered, stream started"
    try:
        victim = ctx.talker("victim call (redirected)", loud=True)
        try:
            victim.begin()
        except CallerError as exc:
            victim_outcome = f"failed: {exc}"
        ctx.sleep_until_deadline()
    finally:
        ctx.sim.redirect_creates(None)
    redirected = len(ctx.sim.create_attempts) - attempts_before
    ctx.finding(name, "the call placed meanwhile", victim_outcome)
    # Without a redirected POST /call the attack did not happen, and "nothing leaked" means nothing.
    ctx.finding(name, "POST /call attempts redirected", redirected, ok=redirected > 0,
                want=">= 1, else the attack was not exercised")
    ctx.finding(name, "requests the rogue host got", len(rogue.requests), ok=not rogue.requests, want="0")
    ctx.finding(name, "VAPI API key sent to the rogue host", "yes" if rogue.key_leaked else "no",
                ok=not rogue.key_leaked, want="no")
    ctx.finding(name, "caller audio streamed to the rogue host (bytes)", rogue.audio_bytes,
                ok=rogue.audio_bytes == 0, want="0")


def _write_frames(ctx: CaseContext, key: str, frames: Any, total: int, name: str) -> None:
    """Hand-built frames from the victim's VAPI peer; how much the server took, and what became of the link."""
    talker = ctx.state[key]
    sim_call = ctx.tracker.sim_calls[talker.sim_call_id]
    written = 0
    started = time.monotonic()
    error = None
    try:
        with gevent.Timeout(max(0.1, ctx.remaining()), TimeoutError("deadline")), sim_call.raw_writer() as write:
            for piece in frames:
                write(piece)
                written += len(piece)
                gevent.sleep(0)
    except Exception as exc:  # noqa: BLE001 - the server closing on us is one of the outcomes
        error = f"{type(exc).__name__}"
    took = time.monotonic() - started
    ctx.sleep_until_deadline()
    ctx.finding(name, "sent before the link failed or the window ended (MiB)",
                f"{written / _MIB:.1f} of {total / _MIB:.0f}" + (f" ({error} after {took:.1f} s)" if error else
                                                                   f" (all, in {took:.1f} s)"))
    ctx.finding(name, "VAPI link dropped by the server", "yes" if sim_call.ended.is_set() else "no")
    ctx.finding(name, "victim caller still connected", "no" if talker.caller.closed.is_set() else "yes")


def vapi_big_frame(ctx: CaseContext) -> None:
    def frames() -> Any:
        yield server_frame_header(OP_BINARY, _VAPI_BIG_FRAME)
        chunk = b"\0" * _VAPI_WRITE_CHUNK
        for _ in range(_VAPI_BIG_FRAME // _VAPI_WRITE_CHUNK):
            yield chunk

    _write_frames(ctx, "big_frame", frames(), _VAPI_BIG_FRAME, "a 50 MiB binary frame from VAPI (victim call)")


def vapi_fragmented(ctx: CaseContext) -> None:
    def frames() -> Any:
        payload = b"\0" * _VAPI_FRAGMENT
        count = _VAPI_FRAGMENTED // _VAPI_FRAGMENT
        for n in range(count):
            opcode = OP_BINARY if n == 0 else OP_CONT
            yield server_frame_header(opcode, _VAPI_FRAGMENT, fin=n == count - 1) + payload

    _write_frames(ctx, "fragmented", frames(), _VAPI_FRAGMENTED,
                  "a 30 MiB message in 4 KiB fragments from VAPI (victim call)")


# ---- the cases -------------------------------------------------------------------------------------

CASES: tuple[Case, ...] = (
    Case("0", "baseline", "no attack: the legit call alone", (no_attack,)),
    Case("1", "path-forms", "unsigned upgrades on other path forms and routes",
         (unsigned_path_forms, borrowed_signature)),
    Case("2", "unadmitted", "a signed media socket for a CallSid no webhook admitted", (unadmitted_signed,)),
    Case("3", "floods", "60 KiB frames (unsigned, signed, admitted), 1-byte fragments, unread pongs",
         (flood_60k_unsigned, flood_60k_unadmitted, flood_60k_admitted, flood_fragments_admitted,
          flood_pings_admitted), setup=setup_floods),
    Case("4", "http-bodies", "256 MiB form, 400k fields, 4 x 1 GiB multipart, at once, unsigned",
         (huge_form, many_fields, multipart_uploads), setup=setup_http_bodies),
    Case("5", "slowloris", "half-sent headers, idle keep-alives, media sockets that go quiet",
         (slow_headers_silent, slow_headers_trickle, idle_keepalive, media_never_starts, media_silent_after_start),
         setup=setup_slowloris, min_window_s=_SLOWLORIS_WINDOW_S),
    Case("6", "replay", "a captured webhook and handshakes replayed",
         (replay_webhook, replay_captured_handshake, replay_legit_handshake), setup=setup_replay),
    Case("7", "amplification", f"{_AMP_FRAMES_PER_S} frames/s with timestamps jumping +1 s",
         (amplify_admitted, amplify_unadmitted), setup=setup_amplification),
    Case("8", "protocol", "unmasked frames, close code 0, bad keys, 2,000 oversize, 100,000 bad VAPI events",
         (unmasked_frames, close_code_zero, bad_websocket_key, oversize_messages, malformed_vapi_events),
         setup=setup_protocol),
    Case("9", "vapi-side", "VAPI redirects POST /call, sends a 50 MiB frame, a 30 MiB fragmented message",
         (vapi_redirect, vapi_big_frame, vapi_fragmented), setup=setup_vapi_side),
)


def case_by_name(name: str) -> Case:
    """A case by number ("3") or name ("floods"); KeyError otherwise."""
    for case in CASES:
        if name in (case.key, case.name):
            return case
    raise KeyError(name)
