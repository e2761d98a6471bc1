"""Stand-ins for what surrounds one call actor: virtual time, the two links, and its family.

A test starts ONE real actor against these, with no socket and no real sleep:

- FakeClock: the call's Clock. `sleep` blocks the calling greenlet until the test moves
  virtual time past its deadline with `advance`.
- FakeTwilioSocket, FakeConnector, FakeVapiLink: record what the actor sends, and give
  it what the test scripts (refusals, VAPI's audio, events, pongs, a closed socket).
- ProbeParent: the call's supervisor and the actor's siblings, as probe actors that keep
  every message they are told, reached by role through a real ChildTable.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
from base64 import b64encode
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.queue
import pykka
from pykka import ActorDeadError

from actors.call import CallContext
from links.errors import ErrorKind, VapiLinkDead, VapiUnavailable
from links.vapi import Received, Signal
from protocols.vapi import AudioFormat, CreatedCall
from supervision import ChildHandle, ChildTable, Exit, SupervisedActor

__all__ = [
    "ROLES",
    "FakeClock",
    "FakeConnector",
    "FakeTwilioSocket",
    "FakeVapiLink",
    "Probe",
    "ProbeParent",
    "settle",
    "twilio_mark",
    "twilio_media",
    "twilio_start",
    "twilio_stop",
    "wait_until",
]

ROLES = ("codec", "vad", "vapi", "twilio")
# Real seconds: only a bound on waiting for greenlets that are already runnable. Nothing
# under test reads real time, so a bound reached is a failure, never a slow machine's luck.
WAIT_S = 2.0
_SETTLE_YIELDS = 10


def settle(yields: int = _SETTLE_YIELDS) -> None:
    """Let every runnable greenlet run a few slices (no real time is waited for)."""
    for _ in range(yields):
        gevent.sleep(0)


def wait_until(predicate: Callable[[], object], timeout: float = WAIT_S) -> bool:
    """Yield until `predicate()` is truthy or `timeout` real seconds pass; its last value."""
    with gevent.Timeout(timeout, False):  # type: ignore[arg-type]  # False: just end the block
        while not predicate():
            gevent.sleep(0.001)
    return bool(predicate())


#
# Time.
#


class FakeClock:
    """actors.clock.Clock in virtual time: nothing sleeps until the test says time passed."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self._now_ns = round(start_s * 1e9)
        self._sleepers: list[tuple[int, int, gevent.event.Event]] = []  # (deadline ns, order, wake)
        self._order = itertools.count()
        self.sleeps: list[float] = []  # every duration asked for, in order

    def monotonic_ns(self) -> int:
        return self._now_ns

    @property
    def now_s(self) -> float:
        return self._now_ns / 1e9

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds <= 0:
            gevent.sleep(0)
            return
        wake = gevent.event.Event()
        entry = (self._now_ns + round(seconds * 1e9), next(self._order), wake)
        heapq.heappush(self._sleepers, entry)
        try:
            wake.wait()
        finally:
            if not wake.is_set():  # killed while asleep: forget it
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)

    @property
    def pending(self) -> list[float]:
        """Seconds left for each sleeping greenlet, soonest first."""
        return [(deadline - self._now_ns) / 1e9 for deadline, _, _ in sorted(self._sleepers)]

    def advance(self, seconds: float) -> None:
        """Move time on by `seconds`, waking each sleeper due on the way at its own deadline.

        A sleeper woken here runs (and may sleep again, from its deadline) before the next
        one is considered, so a chain of sleeps inside `seconds` all complete.
        """
        target = self._now_ns + round(seconds * 1e9)
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, wake = heapq.heappop(self._sleepers)
            self._now_ns = max(self._now_ns, deadline)
            wake.set()
            settle()
        self._now_ns = target
        settle()


#
# The Twilio media socket.
#


class FakeTwilioSocket:
    """What TwilioActor and finish_call use of links.twilio.TwilioSocket."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.close_codes: list[int] = []

    def send_text(self, text: str) -> bool:
        self.sent.append(text)
        return True

    def send_utf8(self, data: bytes) -> bool:
        self.sent.append(data.decode("utf-8"))
        return True

    def close(self, code: int = 1000) -> None:
        self.close_codes.append(code)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(text) for text in self.sent]

    def events(self) -> list[str]:
        """What was sent, compactly: "media", "mark:<name>", "clear"."""
        out = []
        for message in self.messages:
            event = message["event"]
            out.append(f"mark:{message['mark']['name']}" if event == "mark" else event)
        return out


def twilio_start(stream_sid: str, call_sid: str) -> str:
    return json.dumps({
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": stream_sid,
        "start": {
            "streamSid": stream_sid,
            "accountSid": "AC" + "0" * 32,
            "callSid": call_sid,
            "tracks": ["inbound"],
            "customParameters": {},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    })


def twilio_media(stream_sid: str, timestamp_ms: int, ulaw: bytes, chunk: int = 1) -> str:
    return json.dumps({
        "event": "media",
        "sequenceNumber": "2",
        "streamSid": stream_sid,
        "media": {
            "track": "inbound",
            "chunk": str(chunk),
            "timestamp": str(timestamp_ms),
            "payload": b64encode(ulaw).decode("ascii"),
        },
    })


def twilio_mark(stream_sid: str, name: str) -> str:
    return json.dumps({"event": "mark", "sequenceNumber": "3", "streamSid": stream_sid, "mark": {"name": name}})


def twilio_stop(stream_sid: str, call_sid: str) -> str:
    return json.dumps({
        "event": "stop",
        "sequenceNumber": "4",
        "streamSid": stream_sid,
        "stop": {"accountSid": "AC" + "0" * 32, "callSid": call_sid},
    })


#
# VAPI.
#


class FakeVapiLink:
    """links.vapi.VapiLink without a socket: recv() hands out what the test feeds it."""

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self._inbox: gevent.queue.Queue[Received | BaseException] = gevent.queue.Queue()
        self.audio_sent: list[bytes] = []
        self.text_sent: list[str] = []
        self.sent: list[bytes | str] = []  # audio and text together, in the order sent
        self.pings = 0
        self.closed_with: list[bool] = []  # the goodbye flag of each close()
        self.shutdowns = 0
        self._dead = False

    @property
    def dead(self) -> bool:
        return self._dead

    def feed(self, *items: Received | BaseException) -> None:
        """What recv() returns next, in order; an exception is raised from recv()."""
        for item in items:
            self._inbox.put(item)

    @property
    def unread(self) -> int:
        return self._inbox.qsize()

    @property
    def buffered(self) -> bool:
        """As VapiLink.buffered: more is waiting to be read."""
        return not self._inbox.empty()

    def recv(self) -> Received:
        if self._dead:
            raise VapiLinkDead("link is closed")
        item = self._inbox.get()
        if isinstance(item, BaseException):
            self._dead = True
            raise item
        if item is Signal.CLOSED:
            self._dead = True
        return item

    def _check(self) -> None:
        if self._dead:
            raise VapiLinkDead("link is closed")

    def send_audio(self, data: bytes) -> None:
        self._check()
        self.audio_sent.append(data)
        self.sent.append(data)

    def send_text(self, text: str) -> None:
        self._check()
        self.text_sent.append(text)
        self.sent.append(text)

    def ping(self) -> None:
        self._check()
        self.pings += 1

    def close(self, goodbye: bool) -> None:
        self.closed_with.append(goodbye)
        self._dead = True

    def shutdown(self) -> None:
        self.shutdowns += 1
        self._dead = True
        self._inbox.put(VapiLinkDead("read failed: shut down"))


class FakeConnector:
    """links.vapi.VapiConnector as scripted: each create or connect takes the next outcome.

    An outcome is None (it works) or the VapiUnavailable to raise; once a script runs out,
    calls work, unless `refuse_forever` says otherwise.
    """

    def __init__(self) -> None:
        self.create_script: list[VapiUnavailable | None] = []
        self.connect_script: list[VapiUnavailable | None] = []
        self.refuse_forever: VapiUnavailable | None = None
        self.creates: list[tuple[AudioFormat, str | None]] = []  # (audio format, first message mode)
        self.create_times: list[float] = []  # virtual time of each create, if a clock is given
        self.links: list[FakeVapiLink] = []
        self.clock: FakeClock | None = None

    def refuse(self, times: int, kind: ErrorKind = ErrorKind.SERVER) -> None:
        self.create_script.extend(VapiUnavailable(kind, f"POST /call answered {_status(kind)}") for _ in range(times))

    def create_call(self, audio_format: AudioFormat, first_message_mode: str | None) -> CreatedCall:
        self.creates.append((audio_format, first_message_mode))
        if self.clock is not None:
            self.create_times.append(self.clock.now_s)
        outcome = self.create_script.pop(0) if self.create_script else self.refuse_forever
        if outcome is not None:
            raise outcome
        n = len(self.creates)
        return CreatedCall(call_id=f"vapi-call-{n}", websocket_url=f"wss://vapi.invalid/call/{n}")

    def connect(self, websocket_url: str) -> FakeVapiLink:
        outcome = self.connect_script.pop(0) if self.connect_script else None
        if outcome is not None:
            raise outcome
        link = FakeVapiLink(websocket_url.rsplit("/", 1)[-1])
        self.links.append(link)
        return link

    @property
    def link(self) -> FakeVapiLink:
        """The link opened last."""
        assert self.links, "no link was opened"
        return self.links[-1]


def _status(kind: ErrorKind) -> int:
    return {ErrorKind.SERVER: 503, ErrorKind.AUTHENTICATION: 401, ErrorKind.RATE_LIMITED: 429}.get(kind, 400)


#
# The family: the call's supervisor and the actor's siblings.
#


class Probe(SupervisedActor):
    """Keeps every message it is told, in a list the test reads."""

    def __init__(self, received: list[Any]) -> None:
        super().__init__(None)
        self._received = received

    def on_receive(self, message: Any) -> None:
        self._received.append(message)


class ProbeParent:
    """Stands in for a call's supervisor around the one real actor a test starts.

    `call.supervisor` is a probe (the controller's reports, EndCall), and `call.children`
    a ChildTable whose roles are probes, except the role of the actor under test, which
    points at it, as the real supervisor's table would.
    """

    def __init__(self, call: CallContext) -> None:
        self.call = call
        self.received: dict[str, list[Any]] = {role: [] for role in (*ROLES, "supervisor")}
        self.probes: dict[str, pykka.ActorRef[Any]] = {}
        self.table = ChildTable()
        self.exits: list[Exit] = []  # how each actor started by start() ended
        self.started: list[pykka.ActorRef[Any]] = []
        for role in ("supervisor", *ROLES):
            self.probes[role] = Probe.start(self.received[role])
            if role != "supervisor":
                self.table._set(role, self.probes[role])
        call.supervisor = self.probes["supervisor"]
        call.children = self.table

    def start(self, actor_class: Any) -> pykka.ActorRef[Any]:
        """Start one real actor of the call in its role (a new incarnation if it ran before)."""
        role = actor_class.role
        handle = ChildHandle(role, len(self.started) + 1, on_exit=self.exits.append)
        ref: pykka.ActorRef[Any] = actor_class.start(handle, self.call)
        self.started.append(ref)
        self.table._set(role, ref)
        return ref

    def of(self, role: str, kind: type | None = None) -> list[Any]:
        """What the probe in `role` received (of one message type, if given)."""
        return [m for m in self.received[role] if kind is None or isinstance(m, kind)]

    def wait_for(self, role: str, kind: type, count: int = 1) -> list[Any]:
        """The messages of `kind` the probe in `role` received, once there are at least `count`."""
        assert wait_until(lambda: len(self.of(role, kind)) >= count), (
            f"{role} got {len(self.of(role, kind))} {kind.__name__}, wanted {count}: {self.received[role]}"
        )
        return self.of(role, kind)

    def settle(self) -> None:
        """Wait until every actor here has taken all its mail, and let them finish with it."""
        refs = [*self.probes.values(), *self.started]
        assert wait_until(lambda: all(_idle(ref) for ref in refs)), "an actor did not drain its mailbox"
        settle()

    def stop(self) -> None:
        """Stop the actors under test first (they may report as they stop), then the probes."""
        for ref in [*reversed(self.started), *self.probes.values()]:
            with contextlib.suppress(ActorDeadError):
                ref.stop(block=True, timeout=WAIT_S)


def _idle(ref: pykka.ActorRef[Any]) -> bool:
    return not ref.is_alive() or ref.actor_inbox.empty()
