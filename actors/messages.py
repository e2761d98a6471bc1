"""Every message the call's actors exchange. Immutable: pykka does not copy messages.

Events are in the past tense, commands in the imperative. Audio crosses actors as
`bytes`, never as a numpy array (a frozen dataclass is only shallowly frozen).
Each docstring reads "sender → receiver: meaning".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from calls.outcome import Outcome

__all__ = [
    "AssistantAudio",
    "AssistantInterrupted",
    "AssistantTurnEnded",
    "AssistantTurnStarted",
    "AssistantUlaw",
    "CallerAudio",
    "CallerPcm",
    "CallerPressedKey",
    "CallerSpeechStarted",
    "CallerSpeechStopped",
    "CodecActorMessage",
    "ControllerMessage",
    "EndCall",
    "EventNoted",
    "FarEndLevel",
    "HoldCaller",
    "InjectFault",
    "StatsReported",
    "StreamStarted",
    "TwilioActorMessage",
    "TwilioFrameReceived",
    "TwilioSocketAttached",
    "UplinkAudio",
    "UplinkMeasured",
    "UplinkRecovered",
    "VadActorMessage",
    "VapiActorMessage",
    "VapiEventReceived",
    "VapiGaveUp",
    "VapiLinkLost",
    "VapiLinkUp",
]

#
# From the Twilio media socket (the web layer's reader greenlet).
#


@dataclass(frozen=True, slots=True)
class TwilioFrameReceived:
    """socket reader → TwilioActor: one WebSocket message from Twilio, undecoded."""

    frame: str | bytes
    received_ns: int


@dataclass(frozen=True, slots=True)
class TwilioSocketAttached:
    """web → CallSupervisor: Twilio's media socket for this call is open."""



#
# Caller audio, inbound.
#


@dataclass(frozen=True, slots=True)
class CallerAudio:
    """TwilioActor → CodecActor: 20 ms of caller mu-law, gaps already filled."""

    ulaw: bytes
    stream_ms: int
    received_ns: int


@dataclass(frozen=True, slots=True)
class UplinkAudio:
    """CodecActor → VapiActor: one 20 ms frame in VAPI's format, numbered in the call's uplink buffer."""

    seq: int
    data: bytes
    received_ns: int


@dataclass(frozen=True, slots=True)
class CallerPcm:
    """CodecActor → VadActor: the same 20 ms decoded to 8 kHz int16."""

    pcm8k: bytes
    stream_ms: int


@dataclass(frozen=True, slots=True)
class CallerSpeechStarted:
    """VadActor → TwilioActor: the caller started speaking."""

    stream_ms: int


@dataclass(frozen=True, slots=True)
class CallerSpeechStopped:
    """VadActor → TwilioActor: the caller stopped speaking."""

    stream_ms: int


@dataclass(frozen=True, slots=True)
class CallerPressedKey:
    """TwilioActor → VapiActor: a DTMF digit from the caller."""

    digit: str


@dataclass(frozen=True, slots=True)
class StreamStarted:
    """TwilioActor → CallSupervisor: Twilio's `start` arrived."""

    stream_sid: str


#
# Assistant audio, outbound.
#


@dataclass(frozen=True, slots=True)
class AssistantAudio:
    """VapiActor's link → CodecActor: audio from VAPI in VAPI's format, any length."""

    data: bytes
    received_ns: int


@dataclass(frozen=True, slots=True)
class AssistantUlaw:
    """CodecActor → TwilioActor: that audio as 8 kHz mu-law, with its level."""

    ulaw: bytes
    level_dbfs: float
    received_ns: int


@dataclass(frozen=True, slots=True)
class FarEndLevel:
    """TwilioActor → VadActor: level of the assistant audio now playing (None: silent)."""

    dbfs: float | None


@dataclass(frozen=True, slots=True)
class AssistantTurnStarted:
    """VapiActor → TwilioActor: VAPI began a new assistant turn."""

    turn: int | None


@dataclass(frozen=True, slots=True)
class AssistantTurnEnded:
    """VapiActor → TwilioActor: VAPI says the assistant stopped speaking (`speech-update` stopped)."""

    turn: int | None


@dataclass(frozen=True, slots=True)
class AssistantInterrupted:
    """VapiActor → TwilioActor: VAPI says the user interrupted; stop playing."""


@dataclass(frozen=True, slots=True)
class HoldCaller:
    """VapiActor → TwilioActor: VAPI is unreachable (on) or back (off): play or stop the hold sound."""

    on: bool


@dataclass(frozen=True, slots=True)
class VapiLinkUp:
    """link greenlet → VapiActor: the VAPI call exists and its socket is open."""

    link_id: int
    call_id: str


@dataclass(frozen=True, slots=True)
class VapiLinkLost:
    """link or keepalive greenlet → VapiActor: the link is dead; the actor must fail."""

    link_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class VapiGaveUp:
    """link greenlet → VapiActor: VAPI stayed unreachable for the whole retry budget."""

    reason: str


@dataclass(frozen=True, slots=True)
class VapiEventReceived:
    """link greenlet → VapiActor: one JSON event from VAPI, undecoded."""

    link_id: int
    text: str


#
# What the actors measure, for the call's state (its controller is the only writer).
#


@dataclass(frozen=True, slots=True)
class StatsReported:
    """TwilioActor → CallSupervisor: counts since its last report (about once a second)."""

    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0
    barge_ins: int = 0
    turn_ms: tuple[float, ...] = ()
    latency_out_ms: float | None = None  # smoothed, for the dashboard


@dataclass(frozen=True, slots=True)
class UplinkMeasured:
    """VapiActor → CallSupervisor: caller audio reaches VAPI this long after Twilio (smoothed)."""

    latency_in_ms: float


@dataclass(frozen=True, slots=True)
class UplinkRecovered:
    """VapiActor → CallSupervisor: caller audio reached VAPI again after the fault noted at `fault_at_ns`."""

    fault_at_ns: int
    at_ns: int


@dataclass(frozen=True, slots=True)
class EventNoted:
    """any → CallSupervisor: something an operator would want to see on the dashboard."""

    kind: str
    detail: str = ""


#
# Call control.
#


@dataclass(frozen=True, slots=True)
class EndCall:
    """CallContext.end → CallSupervisor: the call must end (its end_request says why)."""

    outcome: Outcome
    detail: str = ""


@dataclass(frozen=True, slots=True)
class InjectFault:
    """admin/chaos → any actor: fail in the named way (raise, kill, hang, slow, sever, blackhole)."""

    fault: str


#
# What each actor accepts: its on_receive handles exactly these; anything else is logged
# and counted as unexpected.
#

TwilioActorMessage: TypeAlias = (
    TwilioFrameReceived
    | AssistantUlaw
    | CallerSpeechStarted
    | CallerSpeechStopped
    | AssistantTurnStarted
    | AssistantTurnEnded
    | AssistantInterrupted
    | HoldCaller
    | InjectFault
)
CodecActorMessage: TypeAlias = CallerAudio | AssistantAudio | InjectFault
VadActorMessage: TypeAlias = CallerPcm | FarEndLevel | InjectFault
VapiActorMessage: TypeAlias = (
    UplinkAudio | VapiEventReceived | VapiLinkUp | VapiGaveUp | VapiLinkLost | CallerPressedKey | InjectFault
)
# The call's controller (its supervisor): the actors' reports and the call's end.
ControllerMessage: TypeAlias = (
    StatsReported | UplinkMeasured | UplinkRecovered | EventNoted | StreamStarted | TwilioSocketAttached | EndCall
    | InjectFault
)
