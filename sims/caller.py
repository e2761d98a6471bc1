"""Simulated Twilio caller: the signed voice webhook, then a Media Stream over a real websocket.

It does what Twilio does (docs/twilio-media-streams.md): posts the webhook, follows
the TwiML to `<Connect><Stream>`, sends `connected`, `start` and 20 ms `media` frames on a
real-time clock, plays the server's audio on a play-out clock so `mark`s are echoed when
they would have played (all at once on `clear`), and records what Twilio would reject.
`python -m sims.caller` runs calls from the command line (see `main`); `--duration` makes
each call last that long, `--record` writes each call as the caller lived it to a WAV file.

With `follow_action` it also does what Twilio does when the server's side of the stream
ends (it closes the socket, or the socket breaks) before the caller hung up: it requests
the `<Connect action>` URL (signed, with the CallSid and the usual fields) and follows
the TwiML it gets. A new `<Connect><Stream>` continues the same call on a new stream
(new StreamSid, same CallSid, the new `<Parameter>`s); meanwhile what the caller says is
lost, as on the phone. Each such resume is kept in `resumes` with the silence it cost.
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m sims.caller`: patch before anything imports sockets.
    from gevent import monkey

    monkey.patch_all()

import argparse
import base64
import contextlib
import http.client
import itertools
import json
import logging
import os
import struct
import time
import uuid
import wave
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import gevent
import gevent.event
import gevent.lock
import gevent.monkey
import gevent.pool
import numpy as np
import websocket
from twilio.request_validator import RequestValidator

from audio.mulaw import ULAW_SILENCE, pcm16_to_ulaw, ulaw_to_pcm16
from audio.signals import silence
from media.recording import stereo_pcm
from sims.playback import BYTES_PER_S, TwilioPlayback
from sims.report import ANSWER_TIMEOUT_S, CallReport, SimDelays, judge_call, summarize
from sims.script import RATE_HZ, CallerScript, is_utterance
from sims.webhook import action_from_twiml, post_form, stream_from_twiml, voice_params

__all__ = ["CallReport", "CallerConfig", "CallerError", "Resume", "SimulatedCaller", "main", "write_caller_wav"]

log = logging.getLogger(__name__)

_FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law, what Twilio sends per media message
_FRAME_S = 0.020
# Twilio's first media timestamp is not 0 (52 in the MSR capture, docs/twilio-media-streams.md).
_FIRST_TIMESTAMP_MS = 52
# Socket timeout for the stream; the receiver loops on it, and a send blocked this long
# means the server stopped reading.
_SOCKET_TIMEOUT_S = 5.0
_CLOSE_WAIT_S = 2.0
# A send_audio() call starting this far behind the paced clock re-anchors it.
_REANCHOR_S = 0.1
# In an unpaced send, yield this often so the receiver can run.
_BURST_YIELD_FRAMES = 10
# Default tail: stop once the last answer has played and nothing arrived for this long...
_QUIET_TAIL_S = 0.7
# ...or, with no utterances to wait for, after this long.
_NO_UTTERANCE_TAIL_S = 3.0
_DEFAULT_ACCOUNT_SID = "AC" + "5e1f" * 8
# `--timeout` with `--duration`: the call's length plus this margin (the last answer, closing).
_DURATION_TIMEOUT_MARGIN_S = ANSWER_TIMEOUT_S + 20.0
_DATA_OPCODES = (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_CONT)


class CallerError(Exception):
    """A step of the simulated call failed; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _RunTimeout(Exception):
    pass


# A call resumed more often than this in one run is looping: the simulated Twilio stops following.
_MAX_RESUMES = 10


@dataclass(frozen=True, slots=True)
class Resume:
    """One new stream for the call after the old one ended (all times monotonic seconds, the caller's clock).

    `silence_s`: the caller's line carried nothing: from the old stream's end (its socket
    closed, or the last audio it had buffered finished playing, whichever is later) to the
    new stream's `start` (from then on the caller's audio reaches the bridge again).
    `first_audio_s`: from the same moment to the first media that arrived on the new stream
    (None if none came): it includes the assistant's own time to answer.
    """

    stream_sid: str
    ended_at: float
    started_at: float
    silence_s: float
    first_audio_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class CallerConfig:
    """Where to call and what to say. URLs are signed as built from `public_url`."""

    server_url: str
    public_url: str
    auth_token: str
    account_sid: str = _DEFAULT_ACCOUNT_SID
    call_sid: str | None = None
    script: CallerScript = field(default_factory=CallerScript.default)
    stop_after_ms: int | None = None
    # The call lasts about this long: the script repeats, the last round cut short with silence.
    duration_s: float | None = None
    # Write the call as the caller lived it to this stereo WAV when `run` ends (see write_caller_wav).
    record_path: str | None = None
    # Request the <Connect action> URL when the server's side of the stream ends, and follow it (as Twilio does).
    follow_action: bool = False


class SimulatedCaller:
    """One inbound call, driven step by step (tests) or end to end (`run`).

    Three greenlets may write to the socket: the media sender (the caller's own), the
    receiver (mark echoes on `clear`, pongs) and the mark clock. One lock orders them and
    the shared `sequenceNumber` counter. What arrives is judged and played by
    `TwilioPlayback`; its lists are exposed here as they fill.
    """

    def __init__(self, config: CallerConfig) -> None:
        self.config = config
        self.call_sid = config.call_sid or "CA" + uuid.uuid4().hex
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.stream_url: str | None = None
        self.custom_parameters: dict[str, str] = {}
        self.webhook_content_type = ""
        self.playback = TwilioPlayback(self.stream_sid, self._try_send_event, self.call_sid)
        self.received_ulaw = self.playback.received_ulaw
        self.media_events = self.playback.media_events
        self.clears = self.playback.clears
        self.marks_echoed = self.playback.marks_echoed
        self.errors = self.playback.errors
        # What the caller said, when `config.record_path` is set: (caller-clock time, mu-law) per frame.
        self.sent: list[tuple[float, bytes]] = []
        self.stream_started_at: float | None = None  # the origin of the caller's clock in a recording
        # (due on the caller's clock, media timestamp ms) of each frame `send_live` sent.
        self.frame_clock: list[tuple[float, int]] = []
        self.closed = gevent.event.Event()
        self.close_code: int | None = None
        self.closed_early = False  # the server closed (or dropped) the stream before our stop
        self.action_url: str | None = None  # the <Connect action> of the TwiML followed last
        self.action_twiml: list[str] = []  # every answer of the action URL, in order
        self.resumes: list[Resume] = []
        self.resuming = gevent.event.Event()  # set while the call is between two streams

        self._ws: websocket.WebSocket | None = None
        self._group = gevent.pool.Group()
        self._send_lock = gevent.lock.Semaphore()
        self._validator = RequestValidator(config.auth_token)
        self._sequence = 0
        self._chunk = 0
        self._stream_ms = _FIRST_TIMESTAMP_MS
        self._next_due: float | None = None
        self._receiving = False
        self._close_sent = False
        self._stop_sent = False
        self._hung_up = False

    # ---- the webhook ---------------------------------------------------------------

    def post_webhook(
        self,
        path: str = "/voice/incoming",
        extra_params: Mapping[str, str] | None = None,
        signature: str | None = "auto",
    ) -> tuple[int, str]:
        """POST the voice webhook, signed unless told otherwise; follow a 200 answer's TwiML.

        `signature`: "auto" signs properly, None omits the header, anything else is sent as-is.
        """
        params = voice_params(self.config.account_sid, self.call_sid, extra_params)
        public_url = self.config.public_url.rstrip("/") + path
        if signature == "auto":
            signature = self._validator.compute_signature(public_url, params)
        try:
            status, body, self.webhook_content_type = post_form(
                self.config.server_url, urlsplit(self.config.public_url).netloc, path, params, signature
            )
        except (OSError, http.client.HTTPException) as exc:
            raise CallerError(f"webhook POST failed: {exc}") from exc
        stream = stream_from_twiml(body, public_url) if status == 200 else None
        if stream is not None:
            self.stream_url, self.custom_parameters = stream
            self.action_url = action_from_twiml(body, public_url)
        return status, body

    # ---- the stream ------------------------------------------------------------------

    def connect(self, stream_url: str | None = None, signature: str | None = "auto") -> None:
        """Open the websocket to `server_url` with the Stream URL's path, signed like Twilio."""
        url = stream_url or self.stream_url
        if url is None:
            raise CallerError("no <Connect><Stream url>: post the webhook first or pass stream_url")
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise CallerError(f"Stream url {url!r} is not a websocket URL")
        target = urlsplit(self.config.server_url)
        connect_url = f"{'wss' if target.scheme == 'https' else 'ws'}://{target.netloc}{parts.path or '/'}"
        header = ["User-Agent: Twilio.TmeWs/1.0"]
        if signature == "auto":
            # Twilio signs the handshake: the wss:// URL as written in the TwiML, no params.
            header.append(f"X-Twilio-Signature: {self._validator.compute_signature(url, {})}")
        elif signature is not None:
            header.append(f"X-Twilio-Signature: {signature}")
        ws = websocket.WebSocket()
        try:
            ws.connect(
                connect_url, header=header, host=parts.netloc, suppress_origin=True, timeout=_SOCKET_TIMEOUT_S
            )
        except websocket.WebSocketBadStatusException as exc:
            status = exc.status_code
            raise CallerError(f"websocket handshake refused: HTTP {status}", status=status) from exc
        except (OSError, websocket.WebSocketException) as exc:
            raise CallerError(f"websocket connect failed: {exc}") from exc
        self._ws = ws
        self.stream_url = url

    def start_stream(self) -> None:
        """Send `connected` and `start`, then start receiving."""
        self.stream_started_at = time.monotonic()
        self._send_start()
        self._receiving = True
        self._group.spawn(self._receive_loop)
        self._group.spawn(self.playback.run_mark_clock, self.closed)

    def _send_start(self) -> None:
        self._send_text({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        self._send_event(
            lambda seq: {
                "event": "start",
                "sequenceNumber": seq,
                "start": {
                    "accountSid": self.config.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": dict(self.custom_parameters),
                },
                "streamSid": self.stream_sid,
            }
        )

    def send_audio(self, pcm8k: np.ndarray, realtime: bool = True) -> None:
        """Send 8 kHz audio as 20 ms media frames, paced on an absolute clock unless not `realtime`."""
        ulaw = pcm16_to_ulaw(np.asarray(pcm8k, dtype=np.int16))
        if len(ulaw) % _FRAME_BYTES:
            ulaw += bytes([ULAW_SILENCE]) * (_FRAME_BYTES - len(ulaw) % _FRAME_BYTES)
        now = time.monotonic()
        if self._next_due is None or now - self._next_due > _REANCHOR_S:
            # The caller was idle (between steps), not congested: start the clock again
            # rather than bursting to catch up. Within one call the clock is absolute.
            self._next_due = now
        keep = self.config.record_path is not None
        for index, offset in enumerate(range(0, len(ulaw), _FRAME_BYTES)):
            if self.closed.is_set():
                raise CallerError("stream closed by the server")
            if self.resuming.is_set():
                # Between two streams: the caller speaks into nothing, on the same clock.
                if realtime:
                    delay = self._next_due - time.monotonic()
                    if delay > 0:
                        gevent.sleep(delay)
                    self._next_due += _FRAME_S
                continue
            said_at = self._next_due
            if realtime:
                delay = self._next_due - time.monotonic()
                if delay > 0:
                    gevent.sleep(delay)
                self._next_due += _FRAME_S
            else:
                if index % _BURST_YIELD_FRAMES == _BURST_YIELD_FRAMES - 1:
                    gevent.sleep(0)
                said_at = time.monotonic()
            if keep:
                self.sent.append((said_at, ulaw[offset : offset + _FRAME_BYTES]))
            self._chunk += 1
            media = {
                "track": "inbound",
                "chunk": str(self._chunk),
                "timestamp": str(self._stream_ms),
                "payload": base64.b64encode(ulaw[offset : offset + _FRAME_BYTES]).decode("ascii"),
            }
            self._stream_ms += 20
            try:
                self._send_event(
                    lambda seq: {
                        "event": "media",
                        "sequenceNumber": seq,
                        "media": media,  # noqa: B023 - _send_event calls the builder before it returns
                        "streamSid": self.stream_sid,
                    }
                )
            except CallerError:
                if not self.config.follow_action or self.closed.is_set():
                    raise
                # The stream ended under the caller: the receiver follows the action URL; the caller talks on.
        if not realtime:
            self._next_due = None  # the next paced frame goes out now, not after the burst's length

    def send_live(self, frames: int, make_frame: Callable[[float], np.ndarray]) -> None:
        """Send `frames` 20 ms frames paced in real time, each made just before it goes out.

        `make_frame(due)` gets the monotonic time the frame is due on the caller's clock (it
        holds what the microphone picked up in the 20 ms before `due`) and returns 160 int16
        samples at 8 kHz. So a bench can mix in what the caller heard (`playback.heard`):
        echo made from the audio actually played, not from what was meant to be. Each
        frame's (due, media timestamp ms) is appended to `frame_clock`, which maps the
        caller's clock to stream time.
        """
        now = time.monotonic()
        if self._next_due is None or now - self._next_due > _REANCHOR_S:
            self._next_due = now  # as in send_audio: idle between steps, not congested
        for _ in range(frames):
            if self.closed.is_set():
                raise CallerError("stream closed by the server")
            delay = self._next_due - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)
            due = self._next_due
            self._next_due += _FRAME_S
            pcm = np.asarray(make_frame(due), dtype=np.int16)
            if pcm.size != _FRAME_BYTES:
                raise ValueError(f"make_frame returned {pcm.size} samples, not {_FRAME_BYTES}")
            ulaw = pcm16_to_ulaw(pcm)
            if self.config.record_path is not None:
                self.sent.append((due, ulaw))
            self.frame_clock.append((due, self._stream_ms))
            self._chunk += 1
            media = {
                "track": "inbound",
                "chunk": str(self._chunk),
                "timestamp": str(self._stream_ms),
                "payload": base64.b64encode(ulaw).decode("ascii"),
            }
            self._stream_ms += 20
            self._send_event(
                lambda seq: {
                    "event": "media",
                    "sequenceNumber": seq,
                    "media": media,  # noqa: B023 - _send_event calls the builder before it returns
                    "streamSid": self.stream_sid,
                }
            )

    def skip_ms(self, ms: int) -> None:
        """Twilio dropped `ms` of audio under congestion: the next frame's timestamp (and chunk) jump."""
        self._stream_ms += ms
        self._chunk += round(ms / 20)
        if self._next_due is not None:
            # The dropped audio took its time on the line too.
            self._next_due += ms / 1000.0

    def send_raw(self, frame: str | bytes) -> None:
        """Send `frame` as-is (bytes as a binary frame), for malformed-input tests."""
        ws = self._require_ws()
        with self._send_lock:
            try:
                if isinstance(frame, bytes):
                    ws.send_binary(frame)
                else:
                    ws.send(frame)
            except (OSError, websocket.WebSocketException) as exc:
                raise CallerError(f"send failed: {exc}") from exc

    def send_dtmf(self, digit: str) -> None:
        self._send_event(
            lambda seq: {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "sequenceNumber": seq,
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    def send_stop(self) -> None:
        self._stop_sent = True
        if self.resuming.is_set():
            return  # no stream to send it on: the caller hangs up between two streams
        self._send_event(
            lambda seq: {
                "event": "stop",
                "sequenceNumber": seq,
                "stop": {"accountSid": self.config.account_sid, "callSid": self.call_sid},
                "streamSid": self.stream_sid,
            }
        )

    def close(self) -> None:
        """Close the websocket (close handshake, bounded) and stop every greenlet. Idempotent."""
        self._hung_up = True
        ws = self._ws
        if ws is not None and not self.closed.is_set() and not self._close_sent:
            with self._send_lock:
                self._close_sent = True
                with contextlib.suppress(OSError, websocket.WebSocketException):
                    ws.send_close(websocket.STATUS_NORMAL)
            if self._receiving:
                self.closed.wait(timeout=_CLOSE_WAIT_S)  # the receiver reads the server's answering close
        self._group.kill(timeout=1.0)
        if ws is not None:
            ws.shutdown()
        self.closed.set()

    def __enter__(self) -> SimulatedCaller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- observations ----------------------------------------------------------------

    @property
    def cleared_bytes(self) -> int:
        """Received audio that a `clear` dropped before it played."""
        return self.playback.cleared_bytes

    def received_pcm16(self) -> np.ndarray:
        """Everything the server sent, decoded to 8 kHz int16."""
        return ulaw_to_pcm16(bytes(self.received_ulaw))

    def wait_for_audio(self, min_bytes: int, timeout_s: float) -> bool:
        """Wait until at least `min_bytes` of assistant audio arrived; False on timeout or close."""
        deadline = time.monotonic() + timeout_s
        while len(self.received_ulaw) < min_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed.is_set():
                return False
            self.playback.media_arrived.clear()
            self.playback.media_arrived.wait(timeout=remaining)
        return True

    # ---- one-shot --------------------------------------------------------------------

    def run(self, timeout_s: float = 60.0) -> CallReport:
        """Place the whole call and report it; call failures are reported, never raised."""
        started = time.monotonic()
        utterance_ends: list[float] = []
        failure: str | None = None
        try:
            with gevent.Timeout(timeout_s, _RunTimeout):
                failure = self._run_call(utterance_ends)
        except _RunTimeout:
            failure = f"call did not finish within {timeout_s:g} s"
        except CallerError as exc:
            failure = str(exc)
        finally:
            self.close()
        path = self.config.record_path
        if path is not None:
            try:
                self.write_recording(path, origin=self.stream_started_at or started)
            except (OSError, wave.Error) as exc:
                failure = failure or f"could not write the recording {path}: {exc}"
        return self._report(failure, utterance_ends, time.monotonic() - started)

    def write_recording(self, path: str, origin: float | None = None) -> None:
        """The call so far as the caller lived it, to a stereo WAV (see write_caller_wav)."""
        start = origin if origin is not None else self.stream_started_at or time.monotonic()
        write_caller_wav(path, start, self.sent, self.playback.played)

    def _run_call(self, utterance_ends: list[float]) -> str | None:
        status, _ = self.post_webhook()
        if status != 200:
            return f"webhook answered HTTP {status}"
        if "xml" not in self.webhook_content_type:
            return f"webhook answer is not XML (Content-Type {self.webhook_content_type!r})"
        if self.stream_url is None:
            return "webhook TwiML has no <Connect><Stream url>"
        self.connect()
        self.start_stream()
        try:
            if self.config.duration_s is not None:
                self._send_for(self.config.duration_s, utterance_ends)
            else:
                for segment, pcm in self.config.script.render():
                    self.send_audio(pcm)
                    if is_utterance(segment):
                        utterance_ends.append(time.monotonic())
                self._send_tail(utterance_ends)
            self.send_stop()
        except CallerError:
            if not self.closed_early:
                raise
        return None

    def _send_for(self, duration_s: float, utterance_ends: list[float]) -> None:
        """The script over and over for `duration_s` of stream time; what does not fit is silence.

        If the last utterance's answer has not begun to arrive by then, the caller listens on
        for it (at most ANSWER_TIMEOUT_S) before hanging up, so a turn is never cut off unjudged.
        """
        budget = round(duration_s * RATE_HZ)  # samples to send
        sent = 0
        rendered = list(self.config.script.render())
        if sum(pcm.size for _, pcm in rendered):
            for segment, pcm in itertools.cycle(rendered):
                if sent + pcm.size > budget:
                    break
                self.send_audio(pcm)
                sent += pcm.size
                if is_utterance(segment):
                    utterance_ends.append(time.monotonic())
        if budget > sent:
            self.send_audio(np.zeros(budget - sent, dtype=np.int16))
        if not utterance_ends:
            return
        last_end, quiet = utterance_ends[-1], silence(100, RATE_HZ)
        while not (self.media_events and self.media_events[-1][0] > last_end):
            if time.monotonic() - last_end >= ANSWER_TIMEOUT_S:
                return
            self.send_audio(quiet)

    def _send_tail(self, utterance_ends: list[float]) -> None:
        # Twilio keeps sending (silent) frames while the caller listens to the last answer.
        if self.config.stop_after_ms is not None:
            self.send_audio(silence(self.config.stop_after_ms, RATE_HZ))
            return
        tail_start = time.monotonic()
        quiet = silence(100, RATE_HZ)
        while True:
            now = time.monotonic()
            if not utterance_ends:
                if now - tail_start >= _NO_UTTERANCE_TAIL_S:
                    return
            else:
                last_end = utterance_ends[-1]
                last_arrival = self.media_events[-1][0] if self.media_events else 0.0
                # The answer came, has played out, and nothing more is arriving.
                heard = last_end < last_arrival <= now - _QUIET_TAIL_S and self.playback.playout_end <= now
                if heard or now - last_end >= ANSWER_TIMEOUT_S:
                    return
            self.send_audio(quiet)

    def _report(self, failure: str | None, utterance_ends: list[float], duration_s: float) -> CallReport:
        return judge_call(
            call_sid=self.call_sid,
            failure=failure,
            utterance_ends=utterance_ends,
            media_arrivals=[t for t, _ in self.media_events],
            closed_early=self.closed_early,
            close_code=self.close_code,
            protocol_errors=self.errors,
            audio_ms_received=len(self.received_ulaw) * 1000.0 / BYTES_PER_S,
            clears=len(self.clears),
            marks_echoed=len(self.marks_echoed),
            duration_s=duration_s,
            resume_silences_s=[resume.silence_s for resume in self.resumes],
        )

    # ---- sending (any greenlet) ------------------------------------------------------

    def _require_ws(self) -> websocket.WebSocket:
        if self._ws is None:
            raise CallerError("not connected")
        return self._ws

    def _send_text(self, message: dict[str, Any]) -> None:
        self.send_raw(json.dumps(message, separators=(",", ":")))

    def _send_event(self, build: Callable[[str], dict[str, Any]]) -> None:
        # The counter is shared by every event type (a real capture, docs/twilio-media-streams.md), so it is
        # taken under the same lock as the send: numbers reach the wire in order.
        ws = self._require_ws()
        with self._send_lock:
            self._sequence += 1
            text = json.dumps(build(str(self._sequence)), separators=(",", ":"))
            try:
                ws.send(text)
            except (OSError, websocket.WebSocketException) as exc:
                raise CallerError(f"send failed: {exc}") from exc

    def _try_send_event(self, build: Callable[[str], dict[str, Any]]) -> bool:
        try:
            self._send_event(build)
        except CallerError as exc:
            log.debug("caller_send_failed call_sid=%s error=%s", self.call_sid, exc)
            return False
        return True

    # ---- receiving (receiver greenlet) -----------------------------------------------

    def _receive_loop(self) -> None:
        ws = self._require_ws()
        try:
            while True:
                try:
                    frame = ws.recv_frame()
                except websocket.WebSocketTimeoutException:
                    continue
                opcode = frame.opcode
                if opcode in _DATA_OPCODES:
                    ws.cont_frame.validate(frame)
                    ws.cont_frame.add(frame)
                    if ws.cont_frame.is_fire(frame):
                        opcode, frame = ws.cont_frame.extract(frame)
                        if opcode == websocket.ABNF.OPCODE_BINARY:
                            self.playback.on_binary()
                        else:
                            self.playback.on_text(frame.data)
                elif opcode == websocket.ABNF.OPCODE_PING:
                    with self._send_lock:
                        ws.pong(frame.data)
                elif opcode == websocket.ABNF.OPCODE_CLOSE:
                    self._on_close_frame(ws, frame.data)
                    return
        except (OSError, websocket.WebSocketException) as exc:
            # Dropped without a close frame (or our own shutdown); close_code stays None.
            log.debug("caller_stream_lost call_sid=%s error=%s", self.call_sid, exc)
            self._note_closed()
        finally:
            if self._follows(ws):
                self.resuming.set()
                self._group.spawn(self._follow_action, time.monotonic())
            else:
                self.closed.set()
            self.playback.wake()

    # ---- after the stream (the follower greenlet) --------------------------------------

    def _follows(self, ws: websocket.WebSocket) -> bool:
        """Whether Twilio would now request the action URL: the server's side ended the stream."""
        return (self.config.follow_action and self.action_url is not None and ws is self._ws
                and not self._stop_sent and not self._hung_up and len(self.resumes) < _MAX_RESUMES)

    def _follow_action(self, socket_closed_at: float) -> None:
        ended_at = max(socket_closed_at, min(self.playback.playout_end, time.monotonic()))
        try:
            twiml = self._request_action()
            stream = stream_from_twiml(twiml, self.action_url or "") if twiml is not None else None
            if stream is None or self._hung_up or self._stop_sent:
                return
            old_ws, self._ws = self._ws, None
            if old_ws is not None:
                old_ws.shutdown()
            self.stream_url, self.custom_parameters = stream
            self.action_url = action_from_twiml(twiml or "", self.action_url or "") or self.action_url
            stream_sid = "MZ" + uuid.uuid4().hex
            self.connect()
            with self._send_lock:
                # A new stream numbers its messages, chunks and timestamps from the start again.
                self.stream_sid = stream_sid
                self._sequence = 0
                self._chunk = 0
                self._stream_ms = _FIRST_TIMESTAMP_MS
            self.playback.new_stream(stream_sid)
            arrivals_before = len(self.media_events)
            self.closed_early = False
            self.close_code = None
            self._close_sent = False
            self._send_start()
            started_at = time.monotonic()
            self.resumes.append(Resume(stream_sid, ended_at, started_at, started_at - ended_at))
            self._group.spawn(self._receive_loop)
            self.resuming.clear()
            self._group.spawn(self._await_first_audio, len(self.resumes) - 1, arrivals_before)
            return
        except CallerError as exc:
            log.info("caller_resume_failed call_sid=%s error=%s", self.call_sid, exc)
        finally:
            if self.resuming.is_set():
                self.resuming.clear()
                self.closed.set()
                self.playback.wake()

    def _request_action(self) -> str | None:
        """POST the action URL as Twilio does after `<Connect>`; its TwiML, or None if it did not answer 200."""
        url = self.action_url or ""
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        params = voice_params(self.config.account_sid, self.call_sid, {"CallStatus": "in-progress"})
        signature = self._validator.compute_signature(url, params)
        try:
            status, body, _ = post_form(self.config.server_url, parts.netloc, path, params, signature)
        except (OSError, http.client.HTTPException) as exc:
            raise CallerError(f"action URL POST failed: {exc}") from exc
        self.action_twiml.append(body if status == 200 else f"HTTP {status}")
        return body if status == 200 else None

    def _await_first_audio(self, index: int, arrivals_before: int) -> None:
        resume = self.resumes[index]
        while len(self.media_events) <= arrivals_before:
            if self.closed.is_set() or self.resuming.is_set():
                return
            self.playback.media_arrived.clear()
            self.playback.media_arrived.wait(timeout=1.0)
        first = self.media_events[arrivals_before][0]
        self.resumes[index] = Resume(resume.stream_sid, resume.ended_at, resume.started_at, resume.silence_s,
                                     first - resume.ended_at)

    def _on_close_frame(self, ws: websocket.WebSocket, data: bytes) -> None:
        self.close_code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
        self._note_closed()
        with self._send_lock:
            if not self._close_sent:
                self._close_sent = True
                try:
                    code = self.close_code if self.close_code not in (1005, 1006) else websocket.STATUS_NORMAL
                    ws.send_close(code)
                except (OSError, websocket.WebSocketException, ValueError):
                    pass

    def _note_closed(self) -> None:
        if not self._stop_sent and not self._close_sent:
            self.closed_early = True


def write_caller_wav(
    path: str, origin: float, said: Sequence[tuple[float, bytes]], heard: Sequence[tuple[float, bytes]]
) -> None:
    """A stereo 8 kHz 16-bit WAV of a call on the caller's clock, written with the `wave` module.

    Left: what the caller said, each frame where it was sent. Right: what the caller heard,
    each piece where the simulated Twilio played it (`TwilioPlayback.played`: after a `clear`,
    the audio Twilio dropped is not there). Times are monotonic seconds; `origin` is sample 0.
    Silence wherever nothing was said or heard.
    """

    def track(events: Sequence[tuple[float, bytes]], length: int) -> bytearray:
        audio = bytearray([ULAW_SILENCE]) * length
        for at, ulaw in events:
            start = max(0, round((at - origin) * BYTES_PER_S))
            audio[start : start + len(ulaw)] = ulaw
        return audio

    length = max(
        (max(0, round((at - origin) * BYTES_PER_S)) + len(ulaw) for at, ulaw in (*said, *heard)), default=0
    )
    with wave.open(path, "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(BYTES_PER_S)
        wav.writeframes(stereo_pcm(bytes(track(said, length)), bytes(track(heard, length))))


def _record_paths(path: str | None, calls: int) -> list[str | None]:
    """One file per call: `path` itself for one call, else `<stem>-<n><suffix>` for call n."""
    if path is None:
        return [None] * calls
    if calls == 1:
        return [path]
    stem, suffix = os.path.splitext(path)
    return [f"{stem}-{number}{suffix or '.wav'}" for number in range(1, calls + 1)]


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """`call` command: place simulated calls at a running bridge; 0 only if every call succeeded."""
    from sims.vapi import VapiSimConfig

    env = os.environ if env is None else env
    sim_default = VapiSimConfig()
    parser = argparse.ArgumentParser(prog="call", description="Place simulated Twilio calls at the bridge.")
    parser.add_argument("--server", default="http://127.0.0.1:3000", help="where to connect (default %(default)s)")
    parser.add_argument("--public-url", help="the bridge's PUBLIC_URL, which Twilio signs (default: --server)")
    parser.add_argument("--auth-token", default=env.get("TWILIO_AUTH_TOKEN"), help="default: $TWILIO_AUTH_TOKEN")
    parser.add_argument("--wav", help="mono 16-bit 8/16 kHz WAV to say instead of the built-in script")
    parser.add_argument("--calls", type=int, default=1, help="calls to run at once (default %(default)s)")
    parser.add_argument(
        "--duration", type=float, metavar="SECONDS",
        help="each call lasts about this long: the script repeats (cut short with silence), then the caller hangs up",
    )
    parser.add_argument(
        "--record", metavar="OUT.wav",
        help="write each call as the caller lived it: stereo 8 kHz 16-bit WAV, left what it said, right what it "
        "heard (after clears), on the caller's clock; with several calls OUT-1.wav, OUT-2.wav, ...",
    )
    parser.add_argument(
        "--timeout", type=float,
        help=f"seconds per call (default 60, or the duration + {_DURATION_TIMEOUT_MARGIN_S:g})",
    )
    parser.add_argument(
        "--sim-endpointing-ms", type=float, default=sim_default.end_of_utterance_ms,
        help="silence the bridge's VAPI simulator waits for before it takes an utterance as ended "
        "(its default, %(default)g); for the summary's split of turn latency; 0 against a real VAPI",
    )
    parser.add_argument(
        "--sim-reply-delay-ms", type=float, default=sim_default.reply_delay_ms,
        help="the VAPI simulator's delay before it answers (its default, %(default)g); 0 against a real VAPI",
    )
    args = parser.parse_args(argv)
    if not args.auth_token:
        parser.error("--auth-token (or TWILIO_AUTH_TOKEN) is required")
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    if args.duration is not None and not 0 < args.duration <= 86400:
        parser.error("--duration must be more than 0 and at most 86400 seconds")
    if args.timeout is None:
        args.timeout = 60.0 if args.duration is None else args.duration + _DURATION_TIMEOUT_MARGIN_S
    if not gevent.monkey.is_module_patched("socket"):
        parser.error("gevent.monkey.patch_all() must run before this (run.py and `python -m sims.caller` do it)")
    try:
        script = CallerScript.from_wav(args.wav) if args.wav else CallerScript.default()
    except (OSError, ValueError, EOFError) as exc:
        parser.error(f"--wav: {exc}")
    callers = [
        SimulatedCaller(
            CallerConfig(
                server_url=args.server,
                public_url=args.public_url or args.server,
                auth_token=args.auth_token,
                script=script,
                duration_s=args.duration,
                record_path=path,
                follow_action=True,
            )
        )
        for path in _record_paths(args.record, args.calls)
    ]
    group = gevent.pool.Group()
    runs = [group.spawn(caller.run, args.timeout) for caller in callers]
    # run() bounds itself; the margin covers its closing handshake.
    group.join(timeout=args.timeout + 10.0)
    group.kill(timeout=1.0)
    reports = [run.value for run in runs if run.successful() and run.value is not None]
    delays = SimDelays(endpointing_ms=args.sim_endpointing_ms, reply_delay_ms=args.sim_reply_delay_ms)
    for line in summarize(reports, delays):
        print(line)
    for caller in callers:
        if caller.config.record_path is not None:
            print(f"{caller.call_sid} recorded to {caller.config.record_path}")
    return 0 if len(reports) == len(callers) and all(report.ok for report in reports) else 1


if __name__ == "__main__":
    import sys

    sys.exit(main())
