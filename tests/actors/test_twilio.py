"""TwilioActor alone: the stream's start and stop, gap filling, paced playback, barge-in, hold."""

from __future__ import annotations

from base64 import b64decode
from dataclasses import replace
from typing import Any

import pykka
import pytest

from actors.call import CallContext
from actors.messages import (
    AssistantTurnStarted,
    AssistantUlaw,
    CallerAudio,
    CallerSpeechStarted,
    EndCall,
    EventNoted,
    FarEndLevel,
    HoldCaller,
    StatsReported,
    StreamStarted,
    TwilioFrameReceived,
)
from actors.twilio import TwilioActor
from audio.mulaw import ULAW_SILENCE
from tests.actors.conftest import CALL_SID, STREAM_SID
from tests.actors.fakes import (
    FakeClock,
    FakeTwilioSocket,
    ProbeParent,
    twilio_mark,
    twilio_media,
    twilio_start,
    twilio_stop,
)

FRAME = 160  # 20 ms of 8 kHz mu-law
SILENT = bytes([ULAW_SILENCE]) * FRAME


def frame(ref: pykka.ActorRef[Any], clock: FakeClock, text: str) -> None:
    """What the socket's reader does with each frame from Twilio."""
    ref.tell(TwilioFrameReceived(text, clock.monotonic_ns()))


def started(parent: ProbeParent, clock: FakeClock) -> pykka.ActorRef[Any]:
    ref = parent.start(TwilioActor)
    frame(ref, clock, twilio_start(STREAM_SID, CALL_SID))
    parent.wait_for("supervisor", StreamStarted)
    return ref


def assistant(ref: pykka.ActorRef[Any], clock: FakeClock, frames: int, fill: int = 0x10) -> bytes:
    ulaw = bytes((fill + i) % 0x7F for i in range(frames * FRAME))
    ref.tell(AssistantUlaw(ulaw, -20.0, clock.monotonic_ns()))
    return ulaw


def media_payloads(socket: FakeTwilioSocket) -> list[bytes]:
    return [b64decode(m["media"]["payload"]) for m in socket.messages if m["event"] == "media"]


def lead_of(epoch: int, first_ms: int, last_ms: int) -> list[str]:
    """What one pump sends: two media frames, then a mark named for the audio sent so far."""
    out: list[str] = []
    for ms in range(first_ms, last_ms + 1, 40):
        out += ["media", "media", f"mark:{epoch}:{ms}"]
    return out


def test_start_records_the_stream_and_tells_the_controller(
    call: CallContext, parent: ProbeParent, clock: FakeClock
) -> None:
    assert call.state.stream_sid is None
    started(parent, clock)
    assert call.state.stream_sid == STREAM_SID
    assert parent.of("supervisor", StreamStarted) == [StreamStarted(STREAM_SID)]


def test_a_gap_in_media_timestamps_is_filled_with_silence_and_a_stale_frame_is_dropped(
    call: CallContext, parent: ProbeParent, clock: FakeClock
) -> None:
    ref = started(parent, clock)
    for timestamp_ms, marker in ((0, 1), (20, 2), (80, 5), (40, 3), (100, 6)):  # 40 and 60 lost; 40 late
        frame(ref, clock, twilio_media(STREAM_SID, timestamp_ms, bytes([marker]) * FRAME))
    audio = parent.wait_for("codec", CallerAudio, count=6)
    parent.settle()
    assert [(a.stream_ms, a.ulaw) for a in parent.of("codec", CallerAudio)] == [
        (0, bytes([1]) * FRAME),
        (20, bytes([2]) * FRAME),
        (40, SILENT),
        (60, SILENT),
        (80, bytes([5]) * FRAME),
        (100, bytes([6]) * FRAME),
    ]
    assert len(audio) == 6
    assert call.metrics.value("bridge_gap_frames_filled_total") == 2
    assert call.metrics.value("bridge_frames_dropped_total", reason="stale") == 1

    ref.stop(block=True)  # its last counts reach the controller as it stops
    assert parent.of("supervisor", StatsReported) == [StatsReported(frames_in=5, frames_dropped=1)]


def test_assistant_audio_goes_out_a_lead_ahead_of_what_twilio_has_played(
    call: CallContext, parent: ProbeParent, clock: FakeClock, socket: FakeTwilioSocket
) -> None:
    ref = started(parent, clock)
    ulaw = assistant(ref, clock, frames=50)  # a second of speech, faster than real time
    parent.settle()
    # 200 ms of lead: ten frames, a mark after every second one.
    assert socket.events() == lead_of(0, 40, 200)
    assert media_payloads(socket) == [ulaw[i * FRAME : (i + 1) * FRAME] for i in range(10)]
    assert parent.of("vad", FarEndLevel) == [FarEndLevel(-20.0)]  # its echo is what the VAD must ignore

    frame(ref, clock, twilio_mark(STREAM_SID, "0:40"))  # Twilio played the first 40 ms
    parent.settle()
    assert socket.events() == lead_of(0, 40, 240)
    assert media_payloads(socket)[10:] == [ulaw[i * FRAME : (i + 1) * FRAME] for i in (10, 11)]


def test_audio_before_the_start_waits_for_it(
    call: CallContext, parent: ProbeParent, clock: FakeClock, socket: FakeTwilioSocket
) -> None:
    ref = parent.start(TwilioActor)
    assistant(ref, clock, frames=4)
    parent.settle()
    assert socket.sent == []
    frame(ref, clock, twilio_start(STREAM_SID, CALL_SID))
    parent.settle()
    assert socket.events() == lead_of(0, 40, 80)


def test_caller_speech_over_audible_assistant_clears_twilio_and_reports_a_barge_in(
    call: CallContext, parent: ProbeParent, clock: FakeClock, socket: FakeTwilioSocket
) -> None:
    ref = started(parent, clock)
    ref.tell(CallerSpeechStarted(0))  # nothing playing: no barge-in
    parent.settle()
    assert socket.sent == []
    assert parent.of("supervisor", EventNoted) == []

    assistant(ref, clock, frames=50)
    frame(ref, clock, twilio_mark(STREAM_SID, "0:40"))
    parent.settle()
    sent_before = len(socket.sent)
    ref.tell(CallerSpeechStarted(500))
    parent.wait_for("supervisor", StatsReported)
    parent.settle()

    assert socket.messages[sent_before:] == [{"event": "clear", "streamSid": STREAM_SID}]
    assert parent.of("supervisor", EventNoted) == [EventNoted("barge_in", "caller_speech")]
    [stats] = parent.of("supervisor", StatsReported)
    assert (stats.barge_ins, stats.frames_out, stats.frames_dropped) == (1, 12, 38)  # 38 never left
    assert parent.of("vad", FarEndLevel)[-1] == FarEndLevel(None)  # nothing plays any more
    assert call.metrics.value("bridge_barge_ins_total") == 1

    # The interrupted turn's audio still arriving is dropped, until VAPI starts a new turn.
    assistant(ref, clock, frames=5)
    parent.settle()
    assert len(socket.sent) == sent_before + 1
    ref.tell(AssistantTurnStarted(2))
    assistant(ref, clock, frames=4)
    parent.settle()
    assert socket.events()[sent_before + 1 :] == lead_of(1, 40, 80)  # a new clear epoch


@pytest.mark.parametrize("hangover_ms", [300])
def test_caller_speech_over_real_time_assistant_audio_clears_by_the_send_clock(
    call: CallContext, parent: ProbeParent, clock: FakeClock, socket: FakeTwilioSocket, hangover_ms: int
) -> None:
    # Real-time delivery: one frame at a time, each played (its mark echoed) before the
    # next comes. Marks say nothing is in flight; the caller hears the assistant all along.
    call.settings = replace(call.settings, playback_hangover_ms=hangover_ms)
    ref = started(parent, clock)
    for k in range(10):
        frame(ref, clock, twilio_media(STREAM_SID, 20 * k, SILENT))
        assistant(ref, clock, frames=1)
        parent.settle()
        frame(ref, clock, twilio_mark(STREAM_SID, f"0:{20 * (k + 1)}"))
        clock.advance(0.020)
    parent.settle()
    sent_before = len(socket.sent)
    ref.tell(CallerSpeechStarted(200))
    parent.wait_for("supervisor", EventNoted)
    parent.settle()
    assert socket.messages[sent_before:] == [{"event": "clear", "streamSid": STREAM_SID}]
    assert parent.of("supervisor", EventNoted) == [EventNoted("barge_in", "caller_speech")]


def test_the_assistant_stops_being_audible_a_hangover_after_its_last_audio(
    call: CallContext, parent: ProbeParent, clock: FakeClock, socket: FakeTwilioSocket
) -> None:
    ref = started(parent, clock)
    frame(ref, clock, twilio_media(STREAM_SID, 0, SILENT))
    assistant(ref, clock, frames=1)
    parent.settle()
    frame(ref, clock, twilio_mark(STREAM_SID, "0:20"))
    clock.advance(0.020 + call.settings.playback_hangover_ms / 1000 + 0.001)
    ref.tell(CallerSpeechStarted(400))
    parent.settle()
    assert parent.of("supervisor", EventNoted) == []  # nothing to interrupt any more

    ref.tell(AssistantTurnStarted(3))  # VAPI says the assistant speaks: audible before its audio
    ref.tell(CallerSpeechStarted(420))
    parent.wait_for("supervisor", EventNoted)
    assert parent.of("supervisor", EventNoted) == [EventNoted("barge_in", "caller_speech")]


def test_a_stop_frame_does_not_end_the_call_by_itself(
    call: CallContext, parent: ProbeParent, clock: FakeClock, socket: FakeTwilioSocket
) -> None:
    ref = started(parent, clock)
    frame(ref, clock, twilio_stop(STREAM_SID, CALL_SID))
    parent.settle()
    # The socket's reader reports the hang-up (web/media.py); the actor only notes it.
    assert ref.is_alive()
    assert call.state.end_request is None
    assert parent.of("supervisor", EndCall) == []
    assert socket.close_codes == []
    assert parent.exits == []


@pytest.mark.parametrize("speech_during_hold", [False, True])
def test_the_hold_sound_plays_during_an_outage_and_is_cut_when_vapi_is_back(
    call: CallContext, parent: ProbeParent, clock: FakeClock, socket: FakeTwilioSocket, speech_during_hold: bool
) -> None:
    hold = b"\x55" * (FRAME * 10)
    call.settings = replace(call.settings, hold_ulaw=hold)
    ref = started(parent, clock)
    ref.tell(HoldCaller(True))
    parent.settle()
    assert socket.events() == lead_of(0, 40, 200)
    assert set(media_payloads(socket)) == {b"\x55" * FRAME}
    if speech_during_hold:
        ref.tell(CallerSpeechStarted(100))  # talking over hold music is no barge-in
        parent.settle()
        assert parent.of("supervisor", EventNoted) == []

    ref.tell(HoldCaller(False))
    ulaw = assistant(ref, clock, frames=2)
    parent.settle()
    assert socket.events()[15:] == ["clear", *lead_of(1, 40, 40)]
    assert media_payloads(socket)[10:] == [ulaw[:FRAME], ulaw[FRAME:]]


def test_a_greeting_sent_at_start_is_timed_by_the_streams_own_clock_once_its_first_frame_comes(
    call: CallContext, parent: ProbeParent, clock: FakeClock, socket: FakeTwilioSocket
) -> None:
    # The greeting waited for the stream and goes out at `start`, timed by its arrival. The
    # first media frame, stamped 60 ms and arriving at once, says the stream began 80 ms
    # before: the greeting plays from 80 ms on the stream's clock, as the echo canceller
    # must see it (a later turn is timed by that clock; media/playback.py).
    ref = parent.start(TwilioActor)
    assistant(ref, clock, frames=20)
    frame(ref, clock, twilio_start(STREAM_SID, CALL_SID))
    parent.settle()
    assert call.far_end.read(0, FRAME).min() != 0
    frame(ref, clock, twilio_media(STREAM_SID, 60, SILENT))
    parent.settle()
    assert call.far_end.read(0, 80 * 8).max() == 0
    assert call.far_end.read(80 * 8, 200 * 8).min() != 0


def test_a_restarted_twilio_actor_goes_on_with_the_streams_clock(
    call: CallContext, parent: ProbeParent, clock: FakeClock, socket: FakeTwilioSocket
) -> None:
    # The stream's clock outlives the actor, like the far-end track it times: a new
    # incarnation sending audio before the next media frame times it right, not from zero.
    ref = started(parent, clock)
    frame(ref, clock, twilio_media(STREAM_SID, 0, SILENT))
    parent.settle()
    clock.advance(1.0)
    ref.stop(block=True)
    ref = parent.start(TwilioActor)
    assistant(ref, clock, frames=5)
    parent.settle()
    assert call.far_end.read(0, 960 * 8).max() == 0
    assert call.far_end.read(1000 * 8, 100 * 8).min() != 0  # from 1,000 ms: now, on the stream's clock
