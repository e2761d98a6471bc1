"""What Twilio does with the frames a server sends on a Media Stream (docs/twilio-media-streams.md).

It checks each frame the way Twilio does (ERR-31950/31951), plays `media` on a real-time
clock ("buffered and played in the order received"), echoes each `mark` when the play-out
clock reaches it (at once if nothing is buffered), and on `clear` drops what is buffered
and echoes every pending mark together.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import gevent.event

from audio.mulaw import ULAW_SILENCE

__all__ = ["BYTES_PER_S", "EventSender", "TwilioPlayback"]

log = logging.getLogger(__name__)

BYTES_PER_S = 8000  # mu-law at 8 kHz: one byte per sample

# Sends one event, False if the socket is gone. It gets a builder, not a message, so it
# can number the event (`sequenceNumber`) under its send lock.
EventSender = Callable[[Callable[[str], dict[str, Any]]], bool]

class TwilioPlayback:
    """The caller's ear: state written by the receiver greenlet and the mark clock greenlet."""

    def __init__(self, stream_sid: str, send_event: EventSender, call_sid: str) -> None:
        self.stream_sid = stream_sid
        self.received_ulaw = bytearray()
        self.media_events: list[tuple[float, int]] = []
        self.clears: list[float] = []
        self.cleared_bytes = 0
        self.marks_echoed: list[tuple[float, str]] = []
        # What the caller heard, in play-out order: (monotonic time it began playing, mu-law).
        # A `clear` cuts what had not played yet out of it.
        self.played: list[tuple[float, bytes]] = []
        self.errors: list[str] = []
        self.media_arrived = gevent.event.Event()
        self._send_event = send_event
        self._call_sid = call_sid
        self._playout_end = 0.0
        self._pending_marks: deque[tuple[float, str]] = deque()
        self._wakeup = gevent.event.Event()
        self._heard_cursor = 0

    @property
    def playout_end(self) -> float:
        """Monotonic time at which everything received so far will have played."""
        return self._playout_end

    def heard(self, start: float, samples: int) -> bytes:
        """The mu-law the caller heard from monotonic time `start` for `samples` samples.

        Silence where nothing played; audio a `clear` dropped was never heard. Calls must
        ask for non-decreasing `start` (a play-out cursor moves forward only) and for a
        time already past: a later `clear` can still cut what was due to play later.
        """
        out = bytearray([ULAW_SILENCE]) * samples
        played = self.played
        cursor = min(self._heard_cursor, len(played))
        # Skip what ended before `start`; entries start in play-out order.
        while cursor < len(played) and played[cursor][0] + len(played[cursor][1]) / BYTES_PER_S <= start:
            cursor += 1
        self._heard_cursor = cursor
        end = start + samples / BYTES_PER_S
        for at, audio in itertools.islice(played, cursor, None):
            if at >= end:
                break
            offset = round((at - start) * BYTES_PER_S)
            skip = max(0, -offset)
            piece = audio[skip : skip + samples - max(0, offset)]
            out[max(0, offset) : max(0, offset) + len(piece)] = piece
        return bytes(out)

    def error(self, problem: str) -> None:
        # A broken server may get every frame wrong: log the first, count the rest.
        level = logging.INFO if not self.errors else logging.DEBUG
        log.log(level, "caller_protocol_error call_sid=%s problem=%s", self._call_sid, problem)
        self.errors.append(problem)

    def on_binary(self) -> None:
        self.error("binary frame (Twilio ERR-31950: binary frames are not allowed)")

    def on_text(self, data: bytes) -> None:
        arrived = time.monotonic()
        try:
            message = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            self.error(f"non-JSON text frame {data[:60]!r} (Twilio ERR-31951)")
            return
        if not isinstance(message, dict):
            self.error(f"JSON that is not an object: {data[:60]!r} (Twilio ERR-31951)")
            return
        event = message.get("event")
        if event not in ("media", "mark", "clear"):
            self.error(f"unknown event {event!r} (Twilio ERR-31951)")
            return
        if message.get("streamSid") != self.stream_sid:
            self.error(f"{event}: streamSid {message.get('streamSid')!r} is not this stream's (Twilio ERR-31951)")
            return
        if event == "media":
            self._on_media(message, arrived)
        elif event == "mark":
            self._on_mark(message, arrived)
        else:
            self._on_clear(message, arrived)

    def new_stream(self, stream_sid: str) -> None:
        """The call went on on a new stream: the old one's pending marks are gone with its socket."""
        self.stream_sid = stream_sid
        self._pending_marks.clear()
        self._playout_end = min(self._playout_end, time.monotonic())
        self._wakeup.set()

    def run_mark_clock(self, closed: gevent.event.Event) -> None:
        """Echo each buffered mark when the play-out clock reaches it, until `closed`."""
        while not closed.is_set():
            self._wakeup.clear()
            while self._pending_marks and self._pending_marks[0][0] <= time.monotonic():
                self._echo_mark(self._pending_marks.popleft()[1])
            timeout = self._pending_marks[0][0] - time.monotonic() if self._pending_marks else 1.0
            self._wakeup.wait(timeout=max(0.0, timeout))

    def wake(self) -> None:
        """Let waiters re-check (the socket closed)."""
        self._wakeup.set()
        self.media_arrived.set()

    # ---- events ----------------------------------------------------------------------

    def _fields_ok(self, message: dict[str, Any], body: str | None, body_keys: set[str]) -> bool:
        # Twilio rejects missing *and* unexpected fields (ERR-31951).
        top = {"event", "streamSid"} | ({body} if body else set())
        inner = message.get(body) if body else None
        if set(message) != top or (body and (not isinstance(inner, dict) or set(inner) != body_keys)):
            shape = {k: sorted(v) if isinstance(v, dict) else type(v).__name__ for k, v in message.items()}
            self.error(f"{message['event']}: wrong fields {shape} (Twilio ERR-31951)")
            return False
        return True

    def _on_media(self, message: dict[str, Any], arrived: float) -> None:
        if not self._fields_ok(message, "media", {"payload"}):
            return
        try:
            audio = base64.b64decode(message["media"]["payload"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            self.error("media: payload is not base64 (Twilio ERR-31951)")
            return
        self.received_ulaw += audio
        self.media_events.append((arrived, len(audio)))
        self.played.append((max(arrived, self._playout_end), audio))
        # Played in the order received, in real time, from when the previous audio ends.
        self._playout_end = max(arrived, self._playout_end) + len(audio) / BYTES_PER_S
        self.media_arrived.set()

    def _on_mark(self, message: dict[str, Any], arrived: float) -> None:
        if not self._fields_ok(message, "mark", {"name"}) or not isinstance(message["mark"]["name"], str):
            return
        name = message["mark"]["name"]
        if not self._pending_marks and self._playout_end <= arrived:
            self._echo_mark(name)  # nothing buffered: Twilio answers at once
        else:
            self._pending_marks.append((self._playout_end, name))
            self._wakeup.set()

    def _on_clear(self, message: dict[str, Any], arrived: float) -> None:
        if not self._fields_ok(message, None, set()):
            return
        self.clears.append(arrived)
        self.cleared_bytes += round(max(0.0, self._playout_end - arrived) * BYTES_PER_S)
        self._playout_end = arrived
        self._cut_played(arrived)
        # Clearing the buffer sends back every mark still waiting in it.
        while self._pending_marks:
            self._echo_mark(self._pending_marks.popleft()[1])

    def _cut_played(self, at: float) -> None:
        """Nothing of what was due to play from `at` on was heard."""
        played = self.played
        while played:
            start, audio = played[-1]
            if start + len(audio) / BYTES_PER_S <= at:
                return
            heard = max(0, int((at - start) * BYTES_PER_S))
            if heard:
                played[-1] = (start, audio[:heard])
                return
            played.pop()

    def _echo_mark(self, name: str) -> None:
        sent = self._send_event(
            lambda seq: {
                "event": "mark",
                "sequenceNumber": seq,
                "streamSid": self.stream_sid,
                "mark": {"name": name},
            }
        )
        if sent:
            self.marks_echoed.append((time.monotonic(), name))
