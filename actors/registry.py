"""CallRegistry: the live calls of this process, and how recent ones ended.

The web layer asks it to start a call (when Twilio asks for TwiML) and finds the call
again when Twilio's media socket arrives. Each call runs as a temporary child of the
root supervisor: a call that ends or gives up is never restarted, and never touches
another call.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import pykka
from pykka import ActorDeadError

from actors.call import CallContext, CallSettings
from actors.controller import finish_call
from actors.messages import EventNoted, InjectFault
from actors.supervisor import CallSupervisor
from calls.outcome import Outcome
from links.vapi import VapiConnector
from observability.metrics import Metrics
from records import CallRecord, CostRates, RecordsError, RecordStore, estimate_cost, percentile
from records.recordings import RecordingWriter
from settings import Settings
from supervision import Backoff, ChildSpec, Exit, Restart
from supervision.supervisor import StartChild

__all__ = ["CallRegistry", "call_settings"]

# How many ended calls we remember for /voice/after-stream, which Twilio asks within
# seconds of the stream ending; bounded so months of calls cost no memory.
_FINISHED_CAPACITY = 10_000
# The root supervisor answers StartChild in microseconds; this only bounds a wedged one.
_START_TIMEOUT_S = 5.0
# A failed call supervisor comes back at once: the caller is on the line.
_CALL_BACKOFF = Backoff(min_s=0.01, max_s=0.5, jitter=0.2, reset_after_s=10.0)


def call_settings(settings: Settings, hold_ulaw: bytes = b"") -> CallSettings:
    """The slice of Settings a call's actors need."""
    return CallSettings(
        retry_budget_s=settings.vapi.retry_budget_s,
        hold_ulaw=hold_ulaw,
        audio_format=settings.vapi.audio_format,
        replay_ms=settings.vapi.replay_ms,
        keepalive_interval_s=settings.keepalive.interval_s,
        pong_timeout_s=settings.keepalive.pong_timeout_s,
        outbound_max_frames=settings.outbound_max_frames,
        playback_lead_ms=settings.playback_lead_ms,
        vad_threshold_db=settings.vad.threshold_db,
        vad_min_level_dbfs=settings.vad.min_level_dbfs,
        vad_min_speech_ms=settings.vad.min_speech_ms,
        vad_hangover_ms=settings.vad.hangover_ms,
        vad_echo_margin_db=settings.vad.echo_margin_db,
        vad_engine=settings.vad.engine,
        vad_silero_threshold=settings.vad.silero_threshold,
        echo_canceller=settings.echo.canceller,
        echo_max_delay_ms=settings.echo.max_delay_ms,
        playback_hangover_ms=settings.playback_hangover_ms,
        media_connect_timeout_s=settings.media_connect_timeout_s,
    )


class CallRegistry:
    """Live calls by CallSid, plus the outcomes of recently ended ones."""

    def __init__(
        self,
        *,
        root: pykka.ActorRef[Any],
        settings: CallSettings,
        connector: VapiConnector,
        metrics: Metrics,
        log: Any,
        records: RecordStore | None = None,
        rates: CostRates | None = None,
        recordings: RecordingWriter | None = None,
    ) -> None:
        self._records = records
        self._recordings = recordings
        self._rates = rates or CostRates()
        self._root = root
        self._settings = settings
        self._connector = connector
        self._metrics = metrics
        self._log = log
        self._live: dict[str, CallContext] = {}
        self._finished: OrderedDict[str, Outcome] = OrderedDict()

    def start_call(self, call_sid: str) -> CallContext:
        """Start the call's actor tree, or return the live one (Twilio may retry a webhook)."""
        existing = self._live.get(call_sid)
        if existing is not None:
            return existing
        call = CallContext(
            call_sid=call_sid,
            settings=self._settings,
            log=self._log.bind(call_sid=call_sid),
            metrics=self._metrics,
            connector=self._connector,
            on_finished=self._on_finished,
            recorder=self._recordings.open(call_sid) if self._recordings is not None else None,
        )
        self._live[call_sid] = call
        self._metrics.live_calls.set(len(self._live))
        spec = ChildSpec(
            id=call_sid,
            start=lambda handle: CallSupervisor.start(call, handle),
            restart=Restart.TRANSIENT,
            shutdown_s=10.0,
            backoff=_CALL_BACKOFF,
        )
        try:
            self._root.ask(StartChild(spec), timeout=_START_TIMEOUT_S)
        except Exception:
            self._live.pop(call_sid, None)
            self._metrics.live_calls.set(len(self._live))
            raise
        return call

    def get(self, call_sid: str) -> CallContext | None:
        return self._live.get(call_sid)

    def ended_before(self, call_sid: str) -> bool:
        """Whether this CallSid already had a call here that ended (so a new start is a replay).

        Recent calls are remembered in memory; older ones are found in the call records.
        If the records cannot be read, the call is taken as new: a replay needs a captured
        signed request, and refusing real calls during a database outage would be worse.
        """
        if call_sid in self._live:
            return False
        if call_sid in self._finished:
            return True
        if self._records is None:
            return False
        try:
            return self._records.get(call_sid) is not None
        except RecordsError:
            return False

    def media_refusal(self, call_sid: str) -> str | None:
        """None when a media socket may attach to this call now; otherwise why not."""
        call = self._live.get(call_sid)
        if call is None:
            return "ended" if call_sid in self._finished else "no call admitted"
        if call.ended.is_set() or call.state.end_request is not None:
            return "ended"
        if call.socket is not None:
            return "already has a media socket"
        return None

    def outcome(self, call_sid: str) -> Outcome | None:
        """How a call ended, if it ended recently; None for a live or unknown call."""
        return self._finished.get(call_sid)

    def live(self) -> list[CallContext]:
        return list(self._live.values())

    def inject(self, call_sid: str, actor: str, fault: str) -> bool:
        """Send a fault into one actor of a live call; False when the call or actor is absent."""
        call = self._live.get(call_sid)
        if call is None or call.children is None:
            return False
        message = InjectFault(fault)
        if actor == "supervisor":
            delivered = False
            if call.supervisor is not None:
                try:
                    call.supervisor.tell(message)
                    delivered = True
                except ActorDeadError:  # it is restarting right now
                    pass
        else:
            delivered = call.children.tell(actor, message)
        if delivered:  # a fault aimed at an actor mid-restart never happened
            call.tell_controller(EventNoted("fault", f"{actor}/{fault} injected"))
            self._metrics.chaos.labels(actor=actor, fault=fault).inc()
        return delivered

    def end_all(self, outcome: Outcome, detail: str) -> None:
        """Ask every live call to end (draining)."""
        for call in list(self._live.values()):
            call.end(outcome, detail)

    def supervisor_restarting(self, call_sid: str, exit_: Exit) -> None:
        """The root is restarting this call's supervisor."""
        call = self._live.get(call_sid)
        if call is not None:
            call.state.supervisor_restarts += 1
            call.last_supervisor_exit = exit_  # the next incarnation notes it in the call's events

    def call_lost(self, call_sid: str, exit_: Exit) -> None:
        """The root gave up on a call whose supervisor kept failing: end it for the caller."""
        call = self._live.get(call_sid)
        if call is not None:
            call.request_end(Outcome.FAILED, f"call supervisor kept failing: {exit_.reason}")
            finish_call(call, call.log)

    def _on_finished(self, call: CallContext) -> None:
        self._live.pop(call.call_sid, None)
        self._metrics.live_calls.set(len(self._live))
        self._finished[call.call_sid] = call.state.outcome or Outcome.COMPLETED
        while len(self._finished) > _FINISHED_CAPACITY:
            self._finished.popitem(last=False)
        if call.recorder is not None:
            call.recorder.close()  # never blocks: the rest of the recording is queued for its writer
        if self._records is not None:
            # Never blocks: the store queues it for its own writer greenlet.
            self._records.submit(self._record(call))

    def _record(self, call: CallContext) -> CallRecord:
        state = call.state
        ended_at = time.time()
        duration_s = max(0.0, ended_at - state.started_at)
        restarts = {child_id: state.restarts.get(child_id, 0) for child_id in ("codec", "twilio", "vad", "vapi")}
        restarts["supervisor"] = state.supervisor_restarts
        stats = state.stats
        return CallRecord(
            call_sid=call.call_sid,
            stream_sid=state.stream_sid,
            started_at=state.started_at,
            ended_at=ended_at,
            outcome=(state.outcome or Outcome.COMPLETED).value,
            outcome_detail=state.outcome_detail,
            restarts=tuple(sorted(restarts.items())),
            vapi_links=state.vapi_links,
            barge_ins=stats.barge_ins,
            turns=stats.turns,
            turn_latency_p50_ms=percentile(stats.turn_ms, 50),
            turn_latency_p95_ms=percentile(stats.turn_ms, 95),
            frames_in=stats.frames_in,
            frames_out=stats.frames_out,
            frames_dropped=stats.frames_dropped,
            # The VAPI call lives from the webhook to the end: the whole call.
            cost_usd=estimate_cost(duration_s, duration_s, self._rates),
            recording_path=recorder.path if (recorder := call.recorder) is not None and not recorder.failed else None,
        )
