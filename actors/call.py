"""What belongs to a call rather than to any one of its actors.

The Twilio socket, the caller audio kept for replay and the stream's identity must
outlive the restart of any actor, so they live here. Actors get this object at start
and use only the parts their role needs; the supervisor owns it.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gevent.event

from actors.messages import EndCall
from calls.outcome import EndRequest, Outcome
from media.uplink import UplinkBuffer

if TYPE_CHECKING:
    from links.vapi import VapiConnector
    from observability.metrics import Metrics
    from supervision import ChildTable
    from links.twilio import TwilioSocket

__all__ = ["CallContext", "CallSettings"]

_EVENTS_KEPT = 20  # recent events per call, for the dashboard
# Turn latencies kept per call for its record's percentiles; a long call keeps the latest.
_TURNS_KEPT = 1000


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
    hold_ulaw: bytes = field(default=b"", repr=False)


@dataclass(slots=True, eq=False)
class CallContext:
    """One call's shared resources and identity."""

    call_sid: str
    settings: CallSettings
    log: Any  # structlog logger bound with call_sid
    metrics: Metrics
    connector: VapiConnector
    on_finished: Callable[[CallContext], None] = lambda call: None
    started_at: float = field(default_factory=time.time)
    # Given to Twilio in the TwiML; the media socket must present it in `start`. Written
    # once here, read by the webhook and the media view; never logged.
    admission_token: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    stream_sid: str | None = None
    socket: TwilioSocket | None = None
    uplink: UplinkBuffer = field(init=False)
    vapi_greeted: bool = False  # a VAPI call of ours has already greeted the caller
    vapi_links: int = 0
    # Why the call must end: the first request wins (request_end, any part of the call).
    end_request: EndRequest | None = None
    # How it ended: written once, by finish_call (the call's controller), from end_request.
    outcome: Outcome | None = None
    outcome_detail: str = ""
    ended: gevent.event.Event = field(default_factory=gevent.event.Event)
    children: ChildTable | None = None  # the current CallSupervisor's children, by role
    supervisor: Any = None  # the current CallSupervisor's ref
    supervisor_restarts: int = 0
    flags: Any = None  # the CallSupervisor's SupervisorFlags
    # What a call record and the dashboard show; plain counters the actors bump.
    barge_ins: int = 0
    turns: int = 0
    turn_ms: list[float] = field(default_factory=list)
    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0
    latency_in_ms: float | None = None  # smoothed, for the dashboard
    latency_out_ms: float | None = None
    fault_at_ns: int | None = None  # an actor failed; cleared when caller audio reaches VAPI again
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=_EVENTS_KEPT))
    child_states: dict[str, Any] = field(default_factory=dict)  # its view of the children, read-only here

    def __post_init__(self) -> None:
        self.uplink = UplinkBuffer(self.settings.replay_ms // 20)

    def event(self, kind: str, detail: str = "") -> None:
        """Note something an operator would want to see on the dashboard."""
        self.events.append({"t": time.time(), "kind": kind, "detail": detail})

    def note_restart(self, actor: str, kind: str, reason: str) -> None:
        """An actor of this call (or its supervisor) failed and is being restarted."""
        self.event("restart", f"{actor}: {kind} {reason}".strip())
        if self.fault_at_ns is None:
            self.fault_at_ns = time.monotonic_ns()

    def add_turn(self, latency_ms: float) -> None:
        self.turns += 1
        self.turn_ms.append(latency_ms)
        if len(self.turn_ms) > _TURNS_KEPT:
            del self.turn_ms[0]

    def snapshot(self) -> dict[str, Any]:
        """Plain data about the live call, for the admin API and the dashboard."""
        flags = self.flags
        return {
            "call_sid": self.call_sid,
            "stream_sid": self.stream_sid,
            "started_at": self.started_at,
            "live": True,
            "supervisor": {
                "strategy": flags.strategy.value if flags else None,
                "intensity": flags.intensity if flags else None,
                "period_s": flags.period_s if flags else None,
                "restarts": self.supervisor_restarts,
            },
            "actors": {
                child_id: {"state": state.state, "restarts": state.restarts}
                for child_id, state in list(self.child_states.items())
            },
            "vapi_links": self.vapi_links,
            "barge_ins": self.barge_ins,
            "turns": self.turns,
            "latency": {
                "bridge_in_ms": _round(self.latency_in_ms),
                "bridge_out_ms": _round(self.latency_out_ms),
                "turn_ms": _round(self.turn_ms[-1] if self.turn_ms else None),
            },
            "events": list(self.events),
        }

    def end(self, outcome: Outcome, detail: str = "") -> None:
        """Ask the call to end: the one way any part of the process ends a call.

        The request is kept in the call before the controller is told, so a message lost
        with a failing supervisor loses nothing: its successor finds the request when it
        starts. The first request wins; later ones are consequences of it.
        """
        self.request_end(outcome, detail)
        supervisor = self.supervisor
        if supervisor is not None and not self.ended.is_set():
            try:
                supervisor.tell(EndCall(outcome, detail))
            except Exception:  # noqa: BLE001 - restarting: the next incarnation reads end_request
                pass

    def request_end(self, outcome: Outcome, detail: str = "") -> None:
        """Record why the call must end, without telling anyone (the controller's own use)."""
        if self.end_request is None:
            self.end_request = EndRequest(outcome, detail)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
