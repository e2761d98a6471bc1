"""TwilioActor: speaks Twilio Media Streams for the call.

Inbound it parses each frame, keeps the caller's audio continuous in stream time and
passes it to the codec. Outbound it queues the assistant's audio, sends a shallow lead
of it with marks, and on barge-in clears Twilio's buffer: the rest of the turn is dropped
when VAPI says the caller interrupted it, and goes on from where the caller stopped
hearing it when VAPI lets the caller's speech pass (see _PAUSE_GIVE_UP_NS).
It is the only writer of the call's Twilio socket; the socket itself belongs to the call.
"""

from __future__ import annotations

from actors.base import CallActor
from actors.call import CallContext
from actors.messages import (
    AssistantInterrupted,
    AssistantTurnEnded,
    AssistantTurnStarted,
    AssistantUlaw,
    CallerAudio,
    CallerPressedKey,
    CallerSpeechStarted,
    CallerSpeechStopped,
    EventNoted,
    FarEndLevel,
    HoldCaller,
    InjectFault,
    StatsReported,
    StreamStarted,
    TwilioActorMessage,
    TwilioFrameReceived,
)
from audio.mulaw import ULAW_SILENCE
from media.playback import FRAME_BYTES, MarkResult, Playback
from media.stream_clock import FRAME_MS, StreamClock
from protocols.errors import ProtocolError
from protocols.twilio import (
    Connected,
    Dtmf,
    Mark,
    Media,
    MediaEncoder,
    Start,
    Stop,
    encode_clear,
    encode_mark,
    parse_event,
)
from supervision import ChildHandle

__all__ = ["TwilioActor"]

_SILENT_FRAME = bytes([ULAW_SILENCE]) * FRAME_BYTES
# After a barge-in the interrupted turn's audio keeps arriving until VAPI notices; it is
# dropped until VAPI starts a new turn. If VAPI never says so, a pause this long in its
# audio is taken as the end of the old turn, so a reply is never lost for good.
_DISCARD_GIVE_UP_NS = 1_500_000_000
# A barge-in of the bridge's own pauses the assistant's turn rather than dropping it. VAPI
# hears the caller too and decides whether that was an interruption (its stopSpeakingPlan:
# a backchannel, a cough, a TV or some echo left over may not be one): it says so with
# `user-interrupted`, and the paused turn is dropped (as a new turn drops it). If it has
# said nothing BARGE_IN_RESUME_MS after the caller stopped, the turn goes on from where the
# caller stopped hearing it; dropped, it would leave the caller in silence while VAPI
# believes they heard every word. A pause this long is dropped whatever happens: stale.
_PAUSE_GIVE_UP_NS = 5_000_000_000
# While holding, the hold sound is topped up whenever less than this much is queued.
_HOLD_REFILL_FRAMES = 25
# Its level for echo handling: the default chime's, and a fair guess for a WAV.
_HOLD_LEVEL_DBFS = -24.0
# Per-frame metrics are what the hot path pays for measuring (prometheus_client takes a
# lock per update): frame counts go to Prometheus in batches of a second's worth, and one
# frame in ten is timed, plenty for a latency histogram at 50 frames a second.
_METRICS_BATCH = 50
_LATENCY_SAMPLE_EVERY = 10
# Marks come back within the lead (200 ms) plus the network. Three seconds without one
# while audio is out means Twilio stopped echoing them (it should not): the actor then
# paces by the inbound frames' clock until echoes return, rather than holding the
# assistant's audio forever. Checked every 200 ms, on inbound frames.
_MARKS_OVERDUE_NS = 3_000_000_000
_MARK_CHECK_EVERY = 10
# How fast the stream's origin may creep later (1 ms a second): far above any clock drift,
# far below the jitter it must not follow.
_STREAM_DRIFT_NS = 20_000
# Far-end level changes smaller than this are not worth a message to the VAD.
_LEVEL_STEP_DB = 3.0
# Malformed frames: log the first few per call, then one in this many (the counter has all).
_LOG_FIRST_MALFORMED = 10
_LOG_EVERY_MALFORMED = 1000


class TwilioActor(CallActor):
    role = "twilio"

    def __init__(self, handle: ChildHandle | None, call: CallContext) -> None:
        super().__init__(handle, call)
        self._now_ns = call.clock.monotonic_ns
        settings = call.settings
        self._playback = Playback(
            lead_ms=settings.playback_lead_ms,
            max_frames=settings.outbound_max_frames,
            hangover_ms=settings.playback_hangover_ms,
            far_end=call.far_end,
        )
        self._clock = StreamClock()
        self._discarding = False
        self._last_discard_ns = 0
        self._resume_ns = settings.barge_in_resume_ms * 1_000_000
        self._paused_ns = 0  # when the barge-in paused the turn
        self._pause_ends_ns: int | None = None  # while paused: when to resume (or give up)
        self._far_end: float | None = None
        self._malformed = 0
        # Monotonic ns at stream time 0: the earliest any frame could have been sent. A frame
        # that comes late (jitter) does not move it; it creeps later by _STREAM_DRIFT_NS a
        # frame so clock drift is followed.
        # Until a media frame says (call.stream_origin_ns, kept across this actor's restarts),
        # the origin is a guess.
        known = call.stream_origin_ns
        self._stream_origin_ns = self._now_ns() if known is None else known
        if known is not None:
            self._playback.clock_known(0.0)
        self._vapi_speaking = False  # between VAPI's speech-update started and stopped (or our clear)
        self._hangover_ns = call.settings.vad_hangover_ms * 1_000_000
        self._speech_end_ns: int | None = None  # caller stopped speaking; no answer sent yet
        self._turn_mark: str | None = None  # the mark after a turn's first frame
        self._turn_sent_ns = 0
        self._holding = False
        self._last_echo_ns = self._now_ns()
        self._clock_paced = False  # marks stopped coming: playback is timed by inbound frames
        self._unflushed_in = 0
        self._unflushed_out = 0
        self._frames_in = 0  # since this incarnation started
        self._frames_out = 0
        self._reported_in = 0
        self._reported_out = 0
        self._unreported_dropped = 0
        self._unreported_barge_ins = 0
        self._unreported_turns: list[float] = []
        self._latency_out_ms: float | None = None
        self._flushed_played = 0
        self._flushed_cancelled = 0
        self._media: MediaEncoder | None = None  # for the stream in the call's state
        # Bound once: the hot path calls these 50 times a second.
        self._send_media = self._send_media_frame
        self._send_mark = self._send_mark_frame

    def on_receive(self, message: TwilioActorMessage) -> None:
        match message:
            case TwilioFrameReceived():
                self._on_frame(message)
            case AssistantUlaw():
                self._on_assistant_audio(message)
            case CallerSpeechStarted():
                self._on_caller_speech(message)
            case CallerSpeechStopped():
                # The VAD decides after its hangover; the caller fell silent that much earlier.
                self._speech_end_ns = self._now_ns() - self._hangover_ns
                self._turn_mark = None
                if self._playback.paused:
                    self._pause_ends_ns = min(self._now_ns() + self._resume_ns, self._paused_ns + _PAUSE_GIVE_UP_NS)
            case AssistantTurnStarted():
                if self._playback.paused:
                    self._drop_paused("new_turn")
                self._discarding = False
                self._vapi_speaking = True
            case AssistantTurnEnded():
                self._vapi_speaking = False
            case AssistantInterrupted():
                self._barge_in("vapi_user_interrupted")
            case HoldCaller():
                self._on_hold(message.on)
            case InjectFault():
                self._inject(message)
            case _:
                self._unexpected_message(message)

    # Inbound -------------------------------------------------------------------------

    def _on_frame(self, message: TwilioFrameReceived) -> None:
        try:
            event = parse_event(message.frame)
        except ProtocolError as exc:
            self._count_malformed(exc)
            return
        match event:
            case Media():
                self._on_media(event, message.received_ns)
            case Mark():
                self._on_mark(event.name)
            case Start():
                self._call.state.stream_sid = event.stream_sid
                self._log.info("stream_started", stream_sid=event.stream_sid, tracks=list(event.tracks))
                self._call.tell_controller(StreamStarted(event.stream_sid))
                self._stream_origin_ns = self._now_ns()
                self._call.stream_origin_ns = None
                self._playback.clock_guessed()
                self._pump()  # audio that arrived before the stream (hold sound, greeting)
            case Connected():
                self._log.info("stream_connected", protocol=event.protocol, version=event.version)
            case Dtmf():
                self._log.info("dtmf_received", digit=event.digit)
                self._call.metrics.dtmf.inc()
                self._tell("vapi", CallerPressedKey(event.digit))
            case Stop():
                # The socket's reader has reported the hang-up to the call (web/media.py).
                self._log.info("stream_stopped")

    def _on_media(self, media: Media, received_ns: int) -> None:
        call = self._call
        self._frames_in += 1
        self._unflushed_in += 1
        if self._unflushed_in >= _METRICS_BATCH:
            self._flush_frame_counts()
        gap = self._clock.admit(
            media.timestamp_ms, max(1, len(media.payload) * FRAME_MS // FRAME_BYTES), received_ns / 1e9
        )
        if gap is None:
            call.metrics.dropped.labels(reason="stale").inc()
            self._unreported_dropped += 1
            return
        if gap:
            self._call.metrics.filled.inc(gap)
            for n in range(gap, 0, -1):
                self._tell("codec", CallerAudio(_SILENT_FRAME, media.timestamp_ms - n * FRAME_MS, received_ns))
        # The frame ends at timestamp + 20 ms; it cannot have been sent before then.
        origin = received_ns - (media.timestamp_ms + FRAME_MS) * 1_000_000
        if call.stream_origin_ns is not None:
            self._stream_origin_ns = min(origin, self._stream_origin_ns + _STREAM_DRIFT_NS)
        else:
            # The first frame: until now the origin was a guess, and so were the times of
            # the frames sent meanwhile (media/playback.py).
            self._playback.clock_known((self._stream_origin_ns - origin) / 1e6)
            self._stream_origin_ns = origin
        call.stream_origin_ns = self._stream_origin_ns
        if self._pause_ends_ns is not None and self._now_ns() >= self._pause_ends_ns:
            self._end_pause()
        self._tell("codec", CallerAudio(media.payload, media.timestamp_ms, received_ns))
        if call.recorder is not None:
            call.recorder.caller(media.payload, gap)
        if self._clock_paced:
            # Inbound frames arrive in real time: each one is 20 ms of playback.
            self._playback.advance(FRAME_MS)
            self._pump()
        elif self._frames_in % _MARK_CHECK_EVERY == 0:
            self._check_marks(received_ns)

    def _count_malformed(self, exc: ProtocolError) -> None:
        self._malformed += 1
        self._call.metrics.malformed.labels(source="twilio", kind=exc.kind).inc()
        if self._malformed <= _LOG_FIRST_MALFORMED or self._malformed % _LOG_EVERY_MALFORMED == 0:
            self._log.warning("twilio_frame_malformed", kind=exc.kind, detail=str(exc), seen=self._malformed)

    # Outbound ------------------------------------------------------------------------

    def _on_assistant_audio(self, message: AssistantUlaw) -> None:
        if self._discarding:
            if message.received_ns - self._last_discard_ns < _DISCARD_GIVE_UP_NS:
                self._last_discard_ns = message.received_ns
                self._call.metrics.dropped.labels(reason="interrupted_turn").inc()
                self._unreported_dropped += 1
                return
            self._discarding = False
        dropped = self._playback.enqueue(message.ulaw, message.level_dbfs, message.received_ns)
        if dropped:
            self._call.metrics.dropped.labels(reason="outbound_overflow").inc(dropped)
            self._unreported_dropped += dropped
            self._log.warning("outbound_overflow", dropped=dropped, bound=self._call.settings.outbound_max_frames)
        self._pump()

    def _pump(self) -> None:
        if self._holding and self._playback.queued_frames < _HOLD_REFILL_FRAMES:
            self._playback.enqueue(self._call.settings.hold_ulaw, _HOLD_LEVEL_DBFS)
        if self._call.state.stream_sid is None or self._call.socket is None:
            return  # nothing to send to yet; the audio waits in the queue
        self._playback.pump(self._send_media, self._send_mark, self._stream_now_ms())
        self._update_far_end()

    def _flush_frame_counts(self) -> None:
        metrics = self._call.metrics
        playback = self._playback
        if playback.marks_played > self._flushed_played:
            metrics.marks.labels(result=MarkResult.PLAYED).inc(playback.marks_played - self._flushed_played)
            self._flushed_played = playback.marks_played
        if playback.marks_cancelled > self._flushed_cancelled:
            metrics.marks.labels(result=MarkResult.CANCELLED).inc(playback.marks_cancelled - self._flushed_cancelled)
            self._flushed_cancelled = playback.marks_cancelled
        if self._unflushed_in:
            metrics.frames_in.inc(self._unflushed_in)
            self._unflushed_in = 0
        if self._unflushed_out:
            metrics.frames_out.inc(self._unflushed_out)
            self._unflushed_out = 0
        self._report_stats()

    def _report_stats(self) -> None:
        """What the call's record needs, to its controller (the only writer of the call's stats)."""
        frames_in, frames_out = self._frames_in - self._reported_in, self._frames_out - self._reported_out
        if not (frames_in or frames_out or self._unreported_dropped or self._unreported_barge_ins
                or self._unreported_turns):
            return
        self._call.tell_controller(StatsReported(
            frames_in=frames_in,
            frames_out=frames_out,
            frames_dropped=self._unreported_dropped,
            barge_ins=self._unreported_barge_ins,
            turn_ms=tuple(self._unreported_turns),
            latency_out_ms=self._latency_out_ms,
        ))
        self._reported_in, self._reported_out = self._frames_in, self._frames_out
        self._unreported_dropped = self._unreported_barge_ins = 0
        self._unreported_turns.clear()

    def _close(self) -> None:
        self._flush_frame_counts()

    def _on_hold(self, on: bool) -> None:
        if on == self._holding or not self._call.settings.hold_ulaw:
            return
        self._holding = on
        self._log.info("hold_started" if on else "hold_stopped")
        if on:
            if self._playback.paused:
                self._drop_paused("hold")  # the link it came on is gone
            self._pump()
            return
        # The assistant is back: cut the hold sound at once, and let its first words through.
        socket, stream_sid = self._call.socket, self._call.state.stream_sid
        if self._playback.audible and socket is not None and stream_sid is not None:
            socket.send_text(encode_clear(stream_sid))
            if self._call.recorder is not None:
                self._call.recorder.clear()
        self._playback.clear(self._stream_now_ms())
        self._discarding = False
        self._update_far_end()

    def _send_media_frame(self, ulaw: bytes, received_ns: int) -> None:
        call = self._call
        socket = call.socket
        if socket is None:
            return
        media = self._media
        if media is None or media.stream_sid != call.state.stream_sid:
            media = self._media = MediaEncoder(call.state.stream_sid or "")
        socket.send_utf8(media.encode(ulaw))
        if call.recorder is not None:
            call.recorder.assistant(ulaw)
        self._frames_out += 1
        metrics = call.metrics
        self._unflushed_out += 1
        if self._unflushed_out >= _METRICS_BATCH:
            self._flush_frame_counts()
        timed = received_ns and self._frames_out % _LATENCY_SAMPLE_EVERY == 0
        if not timed and self._speech_end_ns is None:
            return  # most frames: nothing to measure
        now = self._now_ns()
        if timed:
            latency = now - received_ns
            metrics.latency_out.observe(latency / 1e9)
            previous = self._latency_out_ms
            ms = latency / 1e6
            self._latency_out_ms = ms if previous is None else previous + 0.1 * (ms - previous)
        if self._speech_end_ns is not None:
            # The first assistant audio after the caller stopped: one turn.
            turn_s = (now - self._speech_end_ns) / 1e9
            metrics.turn_sent.observe(turn_s)
            self._unreported_turns.append(turn_s * 1000)
            self._report_stats()
            self._turn_sent_ns = self._speech_end_ns
            self._speech_end_ns = None
            self._turn_mark = ""  # the next mark tells when the caller heard it

    def _send_mark_frame(self, name: str) -> None:
        socket = self._call.socket
        if socket is not None:
            socket.send_text(encode_mark(self._call.state.stream_sid or "", name))
            if self._turn_mark == "":
                self._turn_mark = name

    def _check_marks(self, now_ns: int) -> None:
        """Twilio echoes every mark; if echoes stop while audio is out, stop waiting for them."""
        playback = self._playback
        if not playback.audible or playback.sent_ms == playback.played_ms:
            self._last_echo_ns = now_ns
            return
        if now_ns - self._last_echo_ns > _MARKS_OVERDUE_NS:
            self._log.warning("marks_overdue", sent_ms=playback.sent_ms, played_ms=playback.played_ms)
            self._call.metrics.malformed.labels(source="twilio", kind="marks_overdue").inc()
            self._clock_paced = True
            self._pump()

    def _on_mark(self, name: str) -> None:
        self._last_echo_ns = self._now_ns()
        self._clock_paced = False  # echoes are back: they are the better clock
        result = self._playback.on_mark(name)
        if result == MarkResult.UNKNOWN:
            self._call.metrics.malformed.labels(source="twilio", kind="unknown_mark").inc()
        else:
            if result == MarkResult.PLAYED and name == self._turn_mark:
                self._call.metrics.turn_heard.observe((self._now_ns() - self._turn_sent_ns) / 1e9)
                self._turn_mark = None
        self._pump()

    def _stream_now_ms(self) -> float:
        """The inbound stream's time now, on the clock of its earliest-arriving frames."""
        return (self._now_ns() - self._stream_origin_ns) / 1e6

    def _audible(self) -> bool:
        """The caller hears the assistant: by marks, the send clock, or VAPI's own word."""
        return self._vapi_speaking or self._playback.audible_at(self._stream_now_ms())

    def _update_far_end(self) -> None:
        if self._call.settings.echo_canceller:
            return  # the VAD judges what the canceller leaves, not the assistant's level
        level = self._playback.far_end_dbfs
        previous = self._far_end
        if (level is None) != (previous is None) or (
            level is not None and previous is not None and abs(level - previous) >= _LEVEL_STEP_DB
        ):
            self._far_end = level
            self._tell("vad", FarEndLevel(level))

    # Barge-in ------------------------------------------------------------------------

    def _on_caller_speech(self, message: CallerSpeechStarted) -> None:
        if self._playback.paused:
            self._pause_ends_ns = self._paused_ns + _PAUSE_GIVE_UP_NS  # talking again: not yet
        elif not self._holding and self._audible():  # talking over hold music is no barge-in
            self._barge_in("caller_speech")

    def _barge_in(self, cause: str) -> None:
        if cause != "caller_speech" and self._playback.paused:
            self._drop_paused(cause)  # VAPI: the turn the bridge paused was interrupted after all
            return
        if not self._audible():
            return
        socket, stream_sid = self._call.socket, self._call.state.stream_sid
        if socket is not None and stream_sid is not None:
            socket.send_text(encode_clear(stream_sid))
            if self._call.recorder is not None:
                self._call.recorder.clear()
        pause = cause == "caller_speech" and self._resume_ns > 0
        dropped = self._playback.clear(self._stream_now_ms(), pause=pause)
        if pause and not self._playback.paused_frames and not self._vapi_speaking:
            # The caller spoke in the hangover after the turn's last word: nothing is left to go on with.
            self._playback.drop_paused()
            pause = False
        self._vapi_speaking = False  # VAPI's turn is over for the caller, whatever VAPI says next
        if dropped:
            self._call.metrics.dropped.labels(reason="barge_in").inc(dropped)
            self._unreported_dropped += dropped
        if pause:
            self._paused_ns = self._now_ns()
            self._pause_ends_ns = self._paused_ns + _PAUSE_GIVE_UP_NS
        else:
            self._discarding = True
            self._last_discard_ns = self._now_ns()
        self._turn_mark = None
        self._call.metrics.barge_ins.inc()
        self._unreported_barge_ins += 1
        self._call.tell_controller(EventNoted("barge_in", cause))
        self._report_stats()
        self._log.info("barge_in", cause=cause, dropped_frames=dropped, paused=pause)
        self._update_far_end()

    def _end_pause(self) -> None:
        """The caller stopped and VAPI let it pass: go on with the turn (or, left too long, drop it)."""
        now = self._now_ns()
        if now - self._paused_ns >= _PAUSE_GIVE_UP_NS:
            self._drop_paused("stale")
            return
        self._pause_ends_ns = None
        frames = self._playback.resume()
        if not frames:
            return  # VAPI sent nothing more of the turn: it had ended
        self._call.metrics.barge_ins_resumed.inc()
        self._call.tell_controller(EventNoted("barge_in_resumed", f"{frames * FRAME_MS} ms of the turn left"))
        self._log.info("barge_in_resumed", frames=frames, paused_ms=(now - self._paused_ns) // 1_000_000)
        self._pump()

    def _drop_paused(self, cause: str) -> None:
        dropped = self._playback.drop_paused()
        self._pause_ends_ns = None
        if dropped:
            self._call.metrics.dropped.labels(reason="barge_in").inc(dropped)
            self._unreported_dropped += dropped
        if cause != "new_turn":
            # The rest of the interrupted turn may still be on its way from VAPI.
            self._discarding = True
            self._last_discard_ns = self._now_ns()
        self._log.info("paused_turn_dropped", cause=cause, dropped_frames=dropped)
