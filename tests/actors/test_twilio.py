"""TwilioActor alone: the stream's start and stop, gap filling, paced playback, barge-in, hold."""

from __future__ import annotations

from base64 import b64decode
from dataclasses import replace
from typing import Any

import pykka
import pytest

from actors.call import CallContext
from actors.messages import (
    AssistantInterrupted,
    AssistantTurnStarted,
    AssistantUlaw,
    CallerAudio,
    CallerSpeechStarted,
    CallerSpeechStopped,
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
    call.settings = replace(call.settings, barge_in_resume_ms=0)  # a barge-in drops the turn at once
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


def _paused_turn(
    parent: ProbeParent, clock: FakeClock, socket: FakeTwilioSocket
) -> tuple[pykka.ActorRef[Any], bytes, int]:
    """A call 1 s into a 2 s burst, paused by the caller's speech at stream time 1000 ms:
    (the actor, the turn's audio, how much of the socket's output came before the clear)."""
    ref = started(parent, clock)
    turn = assistant(ref, clock, frames=100)
    for k in range(50):  # a second of the caller's stream, Twilio echoing each mark as it plays
        frame(ref, clock, twilio_media(STREAM_SID, 20 * k, SILENT))
        if k % 2:
            frame(ref, clock, twilio_mark(STREAM_SID, f"0:{20 * (k + 1)}"))
        parent.settle()
        clock.advance(0.020)
    sent_before = len(socket.sent)
    ref.tell(CallerSpeechStarted(1000))
    parent.wait_for("supervisor", EventNoted)
    parent.settle()
    assert socket.messages[sent_before:] == [{"event": "clear", "streamSid": STREAM_SID}]
    return ref, turn, sent_before + 1


def _tick(ref: pykka.ActorRef[Any], parent: ProbeParent, clock: FakeClock, from_ms: int, ms: int) -> None:
    for at in range(from_ms, from_ms + ms, 20):
        frame(ref, clock, twilio_media(STREAM_SID, at, SILENT))
        parent.settle()
        clock.advance(0.020)


def _media_sent(socket: FakeTwilioSocket, since: int) -> list[bytes]:
    return [b64decode(m["media"]["payload"]) for m in socket.messages[since:] if m["event"] == "media"]


def test_a_turn_paused_by_a_barge_in_vapi_lets_pass_goes_on_from_where_the_caller_stopped_hearing_it(
    call: CallContext, parent: ProbeParent, clock: FakeClock, socket: FakeTwilioSocket
) -> None:
    ref, turn, since = _paused_turn(parent, clock, socket)
    assistant(ref, clock, frames=5, fill=0x60)  # VAPI talks on: it did not take it for an interruption
    _tick(ref, parent, clock, 1000, 400)  # the caller's "mm-hmm"
    assert _media_sent(socket, since) == []  # the caller hears nothing while the turn is paused
    ref.tell(CallerSpeechStopped(1400))
    _tick(ref, parent, clock, 1400, call.settings.barge_in_resume_ms - 20)
    assert _media_sent(socket, since) == []  # VAPI still has time to say it was an interruption
    _tick(ref, parent, clock, 1400 + call.settings.barge_in_resume_ms - 20, 40)
    resumed = _media_sent(socket, since)
    # From the frame that was playing at the clear (the 50th of the burst), in a new clear epoch.
    assert resumed[0] == turn[50 * FRAME : 51 * FRAME]
    assert f"mark:1:{20 * 2}" in socket.events()[since:]
    assert call.metrics.value("bridge_barge_ins_resumed_total") == 1
    # 50 frames of the burst the caller had not heard, and the 5 that came during the pause.
    assert EventNoted("barge_in_resumed", "1100 ms of the turn left") in parent.of("supervisor", EventNoted)
    assert call.metrics.value("bridge_frames_dropped_total", reason="barge_in") == 0


@pytest.mark.parametrize("vapi_says", ["user-interrupted", "a new turn"])
def test_a_paused_turn_is_dropped_once_vapi_says_it_was_interrupted(
    call: CallContext, parent: ProbeParent, clock: FakeClock, socket: FakeTwilioSocket, vapi_says: str
) -> None:
    ref, _, since = _paused_turn(parent, clock, socket)
    _tick(ref, parent, clock, 1000, 200)
    ref.tell(AssistantInterrupted() if vapi_says == "user-interrupted" else AssistantTurnStarted(5))
    ref.tell(CallerSpeechStopped(1400))
    _tick(ref, parent, clock, 1200, 1000)
    assert _media_sent(socket, since) == []  # never resumed
    assert call.metrics.value("bridge_frames_dropped_total", reason="barge_in") == 50
    assert call.metrics.value("bridge_barge_ins_resumed_total") == 0
    assistant(ref, clock, frames=2, fill=0x60)
    parent.settle()
    if vapi_says == "user-interrupted":  # the rest of the interrupted turn, still on its way
        assert _media_sent(socket, since) == []
    else:  # the new turn's audio
        assert _media_sent(socket, since) == [bytes((0x60 + i) % 0x7F for i in range(2 * FRAME))[:FRAME],
                                              bytes((0x60 + i) % 0x7F for i in range(2 * FRAME))[FRAME:]]


def test_a_caller_who_talks_on_keeps_the_turn_paused_and_a_pause_left_too_long_is_dropped(
    call: CallContext, parent: ProbeParent, clock: FakeClock, socket: FakeTwilioSocket
) -> None:
    ref, _, since = _paused_turn(parent, clock, socket)
    ref.tell(CallerSpeechStopped(1200))
    _tick(ref, parent, clock, 1000, 200)
    ref.tell(CallerSpeechStarted(1200))  # a pause between two words, not the end
    _tick(ref, parent, clock, 1200, 1000)
    assert _media_sent(socket, since) == []
    _tick(ref, parent, clock, 2200, 4000)  # talking on for 5 s: the old turn is stale
    ref.tell(CallerSpeechStopped(6200))
    _tick(ref, parent, clock, 6200, 1000)
    assert _media_sent(socket, since) == []
    assert call.metrics.value("bridge_frames_dropped_total", reason="barge_in") == 50
    assert call.metrics.value("bridge_barge_ins_resumed_total") == 0


def test_a_barge_in_in_the_hangover_after_a_finished_turn_has_nothing_to_pause(
    call: CallContext, parent: ProbeParent, clock: FakeClock, socket: FakeTwilioSocket
) -> None:
    ref = started(parent, clock)
    frame(ref, clock, twilio_media(STREAM_SID, 0, SILENT))
    assistant(ref, clock, frames=1)  # the turn's last word; VAPI says nothing more
    parent.settle()
    frame(ref, clock, twilio_mark(STREAM_SID, "0:20"))
    clock.advance(0.100)  # within the hangover: still audible
    ref.tell(CallerSpeechStarted(120))
    parent.wait_for("supervisor", EventNoted)
    ref.tell(CallerSpeechStopped(400))
    _tick(ref, parent, clock, 120, 1000)
    assert parent.of("supervisor", EventNoted) == [EventNoted("barge_in", "caller_speech")]  # never "resumed"
    assert call.metrics.value("bridge_barge_ins_resumed_total") == 0


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
