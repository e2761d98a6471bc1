"""What this process holds for a call, around the call's plain state (calls/state.py).

The Twilio socket, the caller audio kept for replay, the current supervisor and its
child table must outlive the restart of any actor, so they live here, next to the
call's `CallState`. Actors get this object at start and use only the parts their role
needs. Who writes what:

| field | writer |
|---|---|
| state | see calls/state.py: one writer per field |
| socket | the registry, once, at the call's start: the socket that presented the call's ticket |
| prepared_vapi | the registry, at the call's start (from the ticket); VapiActor takes it for its first link |
| uplink | its frames: CodecActor; its sent/answered marks: VapiActor (its greenlets included) |
| children, supervisor, child_states, flags | each CallSupervisor incarnation, when it starts |
| last_supervisor_exit | the registry, told by the root that the call's supervisor failed |
| held_reports | appended by any reporter while no supervisor can take a message; emptied by the controller |
| recorder | the registry, once, at the call's start (None: recordings off); fed only by TwilioActor |
| far_end | TwilioActor (its Playback): assistant audio sent, at the time it plays; read by the echo canceller |
| stream_origin_ns | TwilioActor: when the stream began, as its media frames say; kept for its next incarnation |
| ended | finish_call, once |
"""

from __future__ import annotations

import contextlib
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gevent.event
from pykka import ActorDeadError

from actors.clock import SYSTEM_CLOCK, Clock
from actors.messages import EndCall
from audio.echo import FarEndTrack, track_keep_ms
from calls.outcome import EndRequest, Outcome
from calls.state import CallState
from media.playback import RESUME_AFTER_MS
from media.uplink import UplinkBuffer

if TYPE_CHECKING:
    from pykka import ActorRef

    from links.twilio import TwilioSocket
    from links.vapi import VapiConnector, VapiLink
    from observability.logging import BoundLogger
    from observability.metrics import Metrics
    from protocols.vapi import CreatedCall
    from records.recordings import CallRecorder
    from supervision import ChildTable, Exit, SupervisorFlags
    from supervision.supervisor import ChildState

__all__ = ["CallContext", "CallSettings", "PreparedVapi"]

# A call's reports held between supervisor incarnations: a few seconds' worth at most.
_HELD_REPORTS = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class CallSettings:
    """The slice of Settings a call's actors use."""

    audio_format: str  # "pcm_s16le" or "mulaw"
    replay_ms: int
    keepalive_interval_s: float
    pong_timeout_s: float
    outbound_max_frames: int
    playback_lead_ms: int
    vad_threshold_db: float
    vad_min_level_dbfs: float
    vad_min_speech_ms: int
    vad_hangover_ms: int
    vad_echo_margin_db: float
    media_connect_timeout_s: float
    retry_budget_s: float = 15.0
    vad_engine: str = "energy"
    vad_silero_threshold: float = 0.5
    echo_canceller: bool = False
    echo_max_delay_ms: int = 400
    playback_hangover_ms: int = 300
    barge_in_resume_ms: int = RESUME_AFTER_MS
    hold_ulaw: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class PreparedVapi:
    """A VAPI call made before the call's actors started, for the first VAPI link to join.

    `call` is what the webhook created (the ticket carries it). `link` is its socket, when
    this node answered the webhook and opened it at once: opening, or open with VAPI's
    greeting waiting in the socket's buffer. `relay_url` and `relay_token`: another node
    answered the webhook and holds that socket open; the link goes through its relay
    (docs/vapi-relay.md).
    """

    call: CreatedCall
    link: gevent.event.AsyncResult[VapiLink] | None = None
    relay_url: str | None = None
    relay_token: str | None = field(default=None, repr=False)


@dataclass(slots=True, eq=False)
class CallContext:
    """One call's state and the resources this process holds for it."""

    call_sid: str
    settings: CallSettings
    log: BoundLogger  # bound with call_sid
    metrics: Metrics
    connector: VapiConnector
    on_finished: Callable[[CallContext], None] = lambda call: None
    state: CallState = field(init=False)
    socket: TwilioSocket | None = None
    # The VAPI call the webhook created (from the ticket), not yet joined; None once taken.
    prepared_vapi: PreparedVapi | None = field(default=None, repr=False)
    recorder: CallRecorder | None = None  # the call's recording (RECORDINGS_DIR), outliving actor restarts
    uplink: UplinkBuffer = field(init=False)
    far_end: FarEndTrack = field(init=False)  # outlives actor restarts, like the uplink
    # Monotonic ns at the stream's time 0, as its media frames say (None before the first):
    # a restarted TwilioActor goes on with it instead of guessing until the next frame.
    stream_origin_ns: int | None = None
    ended: gevent.event.Event = field(default_factory=gevent.event.Event)
    children: ChildTable | None = None  # the current CallSupervisor's children, by role
    supervisor: ActorRef[Any] | None = None  # the current CallSupervisor's ref
    flags: SupervisorFlags | None = None  # the CallSupervisor's
    child_states: dict[str, ChildState] = field(default_factory=dict)  # its view of the children, read-only here
    last_supervisor_exit: Exit | None = None  # why the previous supervisor incarnation failed (the registry's)
    # Reports for the controller sent while no supervisor could take them; bounded like a
    # mailbox (the oldest go first), emptied by the controller.
    held_reports: deque[Any] = field(default_factory=lambda: deque(maxlen=_HELD_REPORTS))
    clock: Clock = SYSTEM_CLOCK  # what the actors read and wait on (a test's, in tests)
    rng: random.Random = field(default_factory=random.Random)  # retry jitter (seeded in tests)

    def __post_init__(self) -> None:
        self.state = CallState(call_sid=self.call_sid)
        self.uplink = UplinkBuffer(self.settings.replay_ms // 20)
        self.far_end = FarEndTrack(track_keep_ms(self.settings.echo_max_delay_ms, self.settings.playback_lead_ms))

    def snapshot(self) -> dict[str, Any]:
        """Plain data about the live call, for the admin API and the dashboard."""
        state, flags = self.state, self.flags
        return {
            "call_sid": self.call_sid,
            "stream_sid": state.stream_sid,
            "started_at": state.started_at,
            "live": True,
            "supervisor": {
                "strategy": flags.strategy.value if flags else None,
                "intensity": flags.intensity if flags else None,
                "period_s": flags.period_s if flags else None,
                "restarts": state.supervisor_restarts,
            },
            "actors": {
                child_id: {"state": child.state, "restarts": state.restarts.get(child_id, 0)}
                for child_id, child in list(self.child_states.items())
            },
            "vapi_links": state.vapi_links,
            "barge_ins": state.stats.barge_ins,
            "turns": state.stats.turns,
            "latency": {
                "bridge_in_ms": _round(state.latency_in_ms),
                "bridge_out_ms": _round(state.latency_out_ms),
                "turn_ms": _round(state.stats.turn_ms[-1] if state.stats.turn_ms else None),
            },
            "events": list(state.events),
        }

    def end(self, outcome: Outcome, detail: str = "") -> None:
        """Ask the call to end: the one way any part of the process ends a call.

        The request is kept in the call's state before the controller is told, so a
        message lost with a failing supervisor loses nothing: its successor finds the
        request when it starts. The first request wins; later ones are consequences of it.
        """
        self.request_end(outcome, detail)
        supervisor = self.supervisor
        if supervisor is not None and not self.ended.is_set():
            # Restarting: the next incarnation reads the end request when it starts.
            with contextlib.suppress(ActorDeadError):
                supervisor.tell(EndCall(outcome, detail))

    def request_end(self, outcome: Outcome, detail: str = "") -> None:
        """Record why the call must end, without telling anyone (the controller's own use)."""
        if self.state.end_request is None:
            self.state.end_request = EndRequest(outcome, detail)

    def tell_controller(self, message: Any) -> None:
        """Send the call's controller a report; kept for it while no incarnation can take it.

        A supervisor that is restarting or stopping (its children report as they stop)
        has no mailbox; the report waits here, and the controller takes it when it next
        starts or when it finishes the call, so no count is lost.
        """
        supervisor = self.supervisor
        if supervisor is not None:
            try:
                supervisor.tell(message)
            except ActorDeadError:  # between incarnations, or stopping
                pass
            else:
                return
        self.held_reports.append(message)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
