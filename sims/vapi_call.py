"""One call of the VAPI simulator: the assistant on the far end of a `vapi.websocket` transport.

It greets, finds the caller's utterances by level (in audio time, like an endpointer),
answers each after a delay, reports barge-in as `user-interrupted`, and records what it
saw for tests. Binary frames are raw audio in the call's format; text frames are flat JSON.

Like VAPI it keeps the call's conversation: `add-message`s join it, each utterance and each
thing it says is reported as a final `transcript`, and every change as a
`conversation-update` carrying the whole history. Its answers say how many earlier turns
it was given ("I remember 3 earlier turns"), so a test sees a replacement call's context arrive.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
import gevent.pool
import gevent.queue
import numpy as np
from geventwebsocket.exceptions import WebSocketError

from audio.mulaw import pcm16_to_ulaw, ulaw_to_pcm16
from audio.signals import level_dbfs, speech_like, tone
from sims._wsserver import send_close_frame

if TYPE_CHECKING:
    from geventwebsocket.websocket import WebSocket

    from sims.vapi import VapiSimConfig

__all__ = ["AddedMessage", "AssistantTurn", "SimCall"]

log = logging.getLogger(__name__)

FRAME_MS = 20
_FRAME_S = FRAME_MS / 1000.0
# The ClientInboundMessage union (docs/vapi-websocket-transport.md); anything else gets the socket closed.
_CLIENT_TYPES = frozenset({"say", "add-message", "control", "end-call", "transfer", "send-transport-message"})
# Two loud frames start an utterance: a single click is not speech.
_SPEECH_START_MS = 40
# VAPI's default stopSpeakingPlan: the assistant stops once the caller has voiced this long
# while it speaks (`voiceSeconds`, 0.2 s), also when the caller was already talking as the
# turn began, which the start of an utterance alone would miss.
_VOICE_STOPS_MS = 200
# In a burst, yield to the reader this often so a barge-in is seen mid-answer.
_BURST_YIELD_FRAMES = 5
# After our close frame, how long the peer gets to answer with its own.
_CLOSE_WAIT_S = 1.0
GREETING_TEXT = "Hello, this is the simulated assistant."
_SYSTEM_PROMPT = "You are the simulated assistant."
# History entries kept, as a bound for long soak calls (VAPI documents none).
_HISTORY_KEPT = 200
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008


class _Endpointer:
    """Utterance start/end from per-frame speech decisions, counted in audio time."""

    def __init__(self, end_of_utterance_ms: int) -> None:
        self._start_frames = _SPEECH_START_MS // FRAME_MS
        self._end_frames = max(1, end_of_utterance_ms // FRAME_MS)
        self._speaking = False
        self._run = 0

    @property
    def in_utterance(self) -> bool:
        return self._speaking

    def push(self, is_speech: bool) -> str | None:
        """Feed one 20 ms frame; returns "started", "ended" or None."""
        if not self._speaking:
            self._run = self._run + 1 if is_speech else 0
            if self._run >= self._start_frames:
                self._speaking, self._run = True, 0
                return "started"
            return None
        self._run = 0 if is_speech else self._run + 1
        if self._run >= self._end_frames:
            self._speaking, self._run = False, 0
            return "ended"
        return None


@dataclass(frozen=True, kw_only=True)
class _Speech:
    kind: str  # "greeting" | "answer" | "say"
    due: float  # monotonic time to start speaking
    ms: int
    utterance_gen: int = 0  # answers only: dropped if the caller spoke again before `due`
    end_call: bool = False
    pause_s: float = 0.0  # scripted turns: silence after the previous turn before this one
    audio: bytes | None = None  # scripted turns: what to say, in the call's format
    text: str = ""  # what its transcript says (answers: worked out when spoken)


@dataclass(frozen=True, kw_only=True)
class AssistantTurn:
    """A scripted assistant turn (benches): `pcm` int16 at the call's sample rate, spoken
    `pause_s` after the previous turn has played out (or after the socket opens)."""

    pcm: np.ndarray
    pause_s: float = 0.0


@dataclass(frozen=True)
class AddedMessage:
    """One `add-message` the call was given, and how much caller audio had arrived before it."""

    role: str
    content: str
    trigger_response: bool
    audio_bytes_before: int


class SimCall:
    """What the simulator saw and did for one call, for tests to assert on.

    Text frames that are not JSON objects with a `type` are recorded in `received_text` as
    `{"type": None, "raw": text}`. `answers_sent` counts answers begun (interrupted ones
    too); `peer_close_code` is the code of the client's close frame, if it sent one.
    The socket runs in the server's handler greenlet (`_serve`), which spawns a reader and
    a speaker into this call's own group; all of them end with the socket.
    """

    def __init__(
        self,
        *,
        call_id: str,
        assistant_id: str,
        audio_format: str,
        sample_rate: int,
        first_message_mode: str | None,
        config: VapiSimConfig,
    ) -> None:
        self.call_id = call_id
        self.assistant_id = assistant_id
        self.audio_format = audio_format
        self.sample_rate = sample_rate
        self.first_message_mode = first_message_mode
        self.connected = gevent.event.Event()
        self.ended = gevent.event.Event()
        self.received_audio = bytearray()
        self.received_text: list[dict[str, Any]] = []
        self.utterances = 0
        self.answers_sent = 0
        self.interruptions_sent = 0
        self.greeted = False
        self.ended_reason: str | None = None
        self.peer_close_code: int | None = None
        # Every add-message received, in order; `history_given` counts those that came as
        # history (no response triggered), `history` is the conversation as reported.
        self.added_messages: list[AddedMessage] = []
        self.history_given = 0
        self.history: list[tuple[str, str]] = []
        self.audio_bytes = 0
        # Opt-in hook (benches): called with (this call, the bytes) for every binary
        # message received, in the reader greenlet. None: nothing is called.
        self.on_audio: Callable[[SimCall, bytes], None] | None = None
        # How long this call's greeting is; a bench may change it before the socket opens.
        self.greeting_ms = config.greeting_ms
        # Benches may set these before the socket opens. `turns`: what the assistant says,
        # in place of the greeting (the first is spoken as the greeting). `send_realtime`:
        # this call's delivery pace (the config's by default).
        self.turns: list[AssistantTurn] | None = None
        self.send_realtime = config.send_realtime
        # (monotonic start, monotonic end, turn number) of every turn spoken, cut or not.
        self.turns_spoken: list[tuple[float, float, int]] = []

        self._config = config
        sample_bytes = 1 if audio_format == "mulaw" else 2
        self._frame_bytes = sample_rate * FRAME_MS // 1000 * sample_bytes
        self._group = gevent.pool.Group()
        self._ws: WebSocket | None = None
        self._finished = gevent.event.Event()  # the handler greenlet may return
        self._cut = gevent.event.Event()  # stop the speech in progress now
        self._requests: gevent.queue.Queue[_Speech] = gevent.queue.Queue()
        self._endpointer = _Endpointer(config.end_of_utterance_ms)
        self._pending = bytearray()
        self._utterance_gen = 0
        self._next_turn = 0
        self._answers_completed = 0
        self._speaking = False
        self._voiced_in_turn = 0  # frames of the caller's voice, mid-utterance, while the assistant speaks
        self._playout_end = 0.0
        self._close_deadline: float | None = None
        self._blackholed = False

    # ---- for tests -------------------------------------------------------------------

    def received_pcm16(self) -> np.ndarray:
        """All received audio decoded to int16 at the call's rate."""
        if self.audio_format == "mulaw":
            return ulaw_to_pcm16(bytes(self.received_audio))
        usable = len(self.received_audio) // 2 * 2
        return np.frombuffer(bytes(self.received_audio[:usable]), dtype="<i2").astype(np.int16)

    def blackhole(self) -> None:
        """Keep the TCP socket open but stop reading and sending: pings go unanswered."""
        self._blackholed = True
        self._cut.set()
        self._group.kill(timeout=1.0)
        log.info("vapi_sim_blackholed call_id=%s", self.call_id)

    def sever(self) -> None:
        """Drop the TCP connection without a close frame (no-op before it connects)."""
        if self._ws is None or self._finished.is_set():
            return
        self._blackholed = True
        self._cut.set()
        self._group.kill(timeout=1.0)
        sock = self._ws.handler.socket
        try:
            # Linger 0 makes the close a reset rather than an orderly FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._finished.set()
        log.info("vapi_sim_severed call_id=%s", self.call_id)

    def end_call(self, reason: str = "assistant-ended-call") -> None:
        """The assistant hangs up: `status-update` ended, then a close frame."""
        self._end(reason)

    # ---- misbehaving on purpose (abuse benches; never used by default) -----------------

    def send_text_raw(self, text: str) -> bool:
        """Send `text` as one text frame as-is (malformed events); False once the socket is gone."""
        return self._send(text, binary=False)

    @contextmanager
    def raw_writer(self) -> Iterator[Callable[[bytes], None]]:
        """Hold the send lock and yield a function writing bytes to the socket unframed.

        For hand-built frames (oversize, fragmented): nothing else of this call is sent
        meanwhile. The function raises OSError or WebSocketError once the peer is gone.
        """
        ws = self._ws
        if ws is None or ws.closed or ws.raw_write is None:
            raise WebSocketError("not connected")
        with ws.handler.send_lock:
            yield ws.raw_write

    # ---- the socket's life (handler greenlet) ----------------------------------------

    def _serve(self, ws: WebSocket) -> None:
        """Run the call on `ws`; blocks for the socket's life, as the view must."""
        self._ws = ws
        self.connected.set()
        log.debug("vapi_sim_connected call_id=%s format=%s", self.call_id, self.audio_format)
        try:
            self._group.spawn(self._read_loop)
            self._group.spawn(self._speak_loop)
            self._send_json({"type": "status-update", "status": "in-progress"})
            if self.turns is not None:
                self._queue_turns(self.turns)
            elif self.first_message_mode != "assistant-waits-for-user":
                greeting = _Speech(kind="greeting", due=time.monotonic(), ms=self.greeting_ms, text=GREETING_TEXT)
                self._requests.put(greeting)
            while not self._finished.wait(timeout=0.25):
                if self._close_deadline is not None and time.monotonic() > self._close_deadline:
                    break  # the peer never answered our close frame
        finally:
            self._finished.set()
            self._group.kill(timeout=1.0)
            self.peer_close_code = ws.handler.peer_close_code
            # We send our own close frames; stop gevent-websocket adding a code-less one.
            ws.closed = True
            self.ended.set()
            log.info("vapi_sim_ended call_id=%s reason=%s", self.call_id, self.ended_reason)

    def _queue_turns(self, turns: list[AssistantTurn]) -> None:
        for index, turn in enumerate(turns):
            pcm = np.asarray(turn.pcm, dtype=np.int16)
            audio = pcm16_to_ulaw(pcm) if self.audio_format == "mulaw" else pcm.astype("<i2").tobytes()
            self._requests.put(
                _Speech(
                    kind="greeting" if index == 0 else "say",
                    due=time.monotonic(),
                    ms=round(pcm.size * 1000 / self.sample_rate),
                    pause_s=turn.pause_s,
                    audio=audio,
                )
            )

    def _shutdown(self) -> None:
        """Simulator stopping: close with 1001 unless faulted, and let the handler return."""
        if self._ws is None:
            self.ended.set()
            return
        if not self._blackholed:
            self._close(CLOSE_GOING_AWAY)
        self._finished.set()

    def _read_loop(self) -> None:
        ws = self._ws
        if ws is None:  # _serve sets it before spawning this loop
            raise RuntimeError("read loop started without a socket")
        try:
            while True:
                try:
                    message = ws.receive()
                except WebSocketError:
                    message = None
                if message is None:
                    break
                if isinstance(message, str):
                    self._on_text(message)
                else:
                    self._on_audio(bytes(message))
        except Exception:
            log.exception("vapi_sim_reader_failed call_id=%s", self.call_id)
        # The peer closed, or answered our close frame. (A blackhole kills this greenlet
        # instead, so the socket stays open.)
        self._finished.set()

    # ---- inbound (reader greenlet) ---------------------------------------------------

    def _on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self.received_text.append({"type": None, "raw": text})
            self._close(CLOSE_POLICY, "invalid message")
            return
        self.received_text.append(message)
        kind = message["type"]
        if kind == "end-call":
            self._end("customer-ended-call")
        elif kind == "say":
            end_call = bool(message.get("endCallAfterSpoken", False))
            content = message.get("content")
            text = content if isinstance(content, str) else ""
            say = _Speech(kind="say", due=time.monotonic(), ms=self._config.reply_ms, end_call=end_call, text=text)
            self._requests.put(say)
        elif kind == "add-message":
            self._on_add_message(message)
        elif kind not in _CLIENT_TYPES:
            # VAPI is reported to close on an invalid type (docs/vapi-websocket-transport.md).
            log.info("vapi_sim_invalid_type call_id=%s type=%s", self.call_id, kind)
            self._close(CLOSE_POLICY, "invalid message type")

    def _on_add_message(self, message: dict[str, Any]) -> None:
        body = message.get("message")
        role = body.get("role") if isinstance(body, dict) else None
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(role, str) or not isinstance(content, str):
            log.info("vapi_sim_bad_add_message call_id=%s", self.call_id)
            return
        trigger = message.get("triggerResponseEnabled", True) is not False  # VAPI's default: true
        self.added_messages.append(AddedMessage(role, content, trigger, self.audio_bytes))
        if not trigger:
            self.history_given += 1
        self._remember(role, content)

    def _remember(self, role: str, text: str) -> None:
        """A turn joins the history; VAPI reports it with the whole history as it now stands."""
        self.history.append((role, text))
        del self.history[:-_HISTORY_KEPT]
        conversation = [{"role": "system", "content": _SYSTEM_PROMPT}]
        conversation += [{"role": r, "content": t} for r, t in self.history]
        self._send_json({"type": "conversation-update", "conversation": conversation})

    def _say_transcript(self, role: str, text: str) -> None:
        self._send_json({"type": "transcript", "role": role, "transcriptType": "final", "transcript": text})
        self._remember(role, text)

    def _on_audio(self, data: bytes) -> None:
        self.audio_bytes += len(data)
        if self.on_audio is not None:
            self.on_audio(self, data)
        if self._config.record:
            self.received_audio += data
        self._pending += data
        frame_bytes = self._frame_bytes
        threshold = self._config.speech_threshold_dbfs
        while len(self._pending) >= frame_bytes:
            frame = bytes(self._pending[:frame_bytes])
            del self._pending[:frame_bytes]
            voiced = level_dbfs(self._decode(frame)) > threshold
            event = self._endpointer.push(voiced)
            if event == "started":
                self._on_speech_started()
            elif event == "ended":
                self._on_speech_ended()
            elif voiced and self._endpointer.in_utterance and self._speaking:
                self._voiced_in_turn += 1
                if self._voiced_in_turn * FRAME_MS >= _VOICE_STOPS_MS:
                    self._interrupt()

    def _on_speech_started(self) -> None:
        self._utterance_gen += 1
        self._interrupt()

    def _interrupt(self) -> None:
        """The caller talks while the assistant speaks: stop the turn and say so (once a turn)."""
        if self._speaking and not self._cut.is_set() and self._config.interruptible:
            self.interruptions_sent += 1
            self._send_json({"type": "user-interrupted"})
            self._cut.set()
            # The bridge is expected to clear what the caller had buffered.
            self._playout_end = time.monotonic()

    def _on_speech_ended(self) -> None:
        self.utterances += 1
        if not self._config.answers:
            return
        self._say_transcript("user", f"utterance {self.utterances}")
        due = time.monotonic() + self._config.reply_delay_ms / 1000.0
        answer = _Speech(kind="answer", due=due, ms=self._config.reply_ms, utterance_gen=self._utterance_gen)
        self._requests.put(answer)

    # ---- outbound (speaker greenlet) -------------------------------------------------

    def _speak_loop(self) -> None:
        while self._close_deadline is None:
            try:
                speech = self._requests.get(timeout=1.0)
            except gevent.queue.Empty:
                continue
            delay = speech.due - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)
            if speech.pause_s > 0:
                # `_speak` returned once the previous turn had played out: the caller hears this silence.
                gevent.sleep(speech.pause_s)
            if self._close_deadline is not None:
                return
            if speech.kind == "answer" and speech.utterance_gen != self._utterance_gen:
                continue  # the caller went on talking: one longer utterance, answered at its end
            text = speech.text
            if speech.kind == "greeting":
                self.greeted = True
            elif speech.kind == "answer":
                self.answers_sent += 1
                text = f"Answer {self.answers_sent}."
                if self.history_given:
                    text += f" I remember {self.history_given} earlier turns."
            completed = self._speak(speech.ms, speech.audio)
            if self._close_deadline is None and text:
                self._say_transcript("assistant", text)
            if completed and speech.kind == "answer":
                self._answers_completed += 1
            limit = self._config.end_after_turns
            if completed and (speech.end_call or (speech.kind == "answer" and self._answers_completed == limit)):
                self._end("assistant-ended-call")
                return

    def _speak(self, ms: int, scripted: bytes | None = None) -> bool:
        """Send one spoken turn; True if it played out without being cut."""
        turn = self._next_turn
        self._next_turn += 1
        self._cut.clear()
        self._voiced_in_turn = 0
        self._speaking = True
        start = time.monotonic()
        try:
            self._send_json({"type": "speech-update", "status": "started", "role": "assistant", "turn": turn})
            audio = scripted if scripted is not None else self._speech_audio(ms, turn)
            start = time.monotonic()
            realtime = self.send_realtime
            self._playout_end = max(start, self._playout_end)
            for index, offset in enumerate(range(0, len(audio), self._frame_bytes)):
                if realtime:
                    wait = start + index * _FRAME_S - time.monotonic()
                    if wait > 0 and self._cut.wait(timeout=wait):
                        break
                elif index % _BURST_YIELD_FRAMES == 0:
                    gevent.sleep(0)
                if self._cut.is_set() or not self._send_audio(audio[offset : offset + self._frame_bytes]):
                    break
                self._playout_end = max(self._playout_end, time.monotonic()) + _FRAME_S
            else:
                # All sent; the caller is still hearing it until the play-out clock runs out.
                self._cut.wait(timeout=max(0.0, self._playout_end - time.monotonic()))
            return not self._cut.is_set()
        finally:
            self._speaking = False
            self.turns_spoken.append((start, time.monotonic(), turn))
            if self._close_deadline is None:
                self._send_json({"type": "speech-update", "status": "stopped", "role": "assistant", "turn": turn})

    def _speech_audio(self, ms: int, turn: int) -> bytes:
        config = self._config
        if config.reply_tone_hz is None:
            pcm = speech_like(ms, self.sample_rate, dbfs=config.reply_dbfs, seed=turn + 1)
        else:
            pcm = tone(config.reply_tone_hz, ms, self.sample_rate, dbfs=config.reply_dbfs)
        return pcm16_to_ulaw(pcm) if self.audio_format == "mulaw" else pcm.astype("<i2").tobytes()

    def _decode(self, frame: bytes) -> np.ndarray:
        if self.audio_format == "mulaw":
            return ulaw_to_pcm16(frame)
        return np.frombuffer(frame, dtype="<i2")

    # ---- writing and closing (any greenlet; the handler's send lock orders them) ------

    def _send_json(self, message: dict[str, Any]) -> bool:
        return self._send(json.dumps(message), binary=False)

    def _send_audio(self, frame: bytes) -> bool:
        return self._send(frame, binary=True)

    def _send(self, payload: str | bytes, *, binary: bool) -> bool:
        ws = self._ws
        if ws is None or self._blackholed or self._close_deadline is not None or ws.closed:
            return False
        try:
            ws.send(payload, binary=binary)
        except WebSocketError:
            self._finished.set()
            return False
        return True

    def _end(self, reason: str) -> None:
        if self._ws is None or self._close_deadline is not None or self._blackholed:
            return
        self.ended_reason = reason
        self._send_json({"type": "status-update", "status": "ended", "endedReason": reason})
        self._close(CLOSE_NORMAL)

    def _close(self, code: int, reason: str = "") -> None:
        ws = self._ws
        if ws is None or self._close_deadline is not None or self._blackholed:
            return
        self._close_deadline = time.monotonic() + _CLOSE_WAIT_S
        self._cut.set()
        try:
            send_close_frame(ws, code, reason)
        except WebSocketError:
            self._finished.set()
