"""CallRegistry: the live calls of this process, and how recent ones ended.

The web layer asks it to admit a call when Twilio asks for TwiML: it creates the VAPI
call early (bounded; the first turn is no later for it) and seals a ticket for the stream.
It starts the call's actors only when a media socket presents that ticket, on whichever
node the socket landed: the ticket is checked, the call claimed in the fleet's directory
(first claim wins), and only then does the actor tree start here, with the ticket's VAPI
call. Each call runs as a temporary child of the root supervisor: a call that ends or
gives up is never restarted, and never touches another call.

A VAPI call created at the webhook whose stream never comes leaves nothing here (no
actors, no socket); its admission expires, and VAPI ends a call whose transport never
connects on its own (docs/vapi-websocket-transport.md).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import gevent
import gevent.event
import pykka
from pykka import ActorDeadError

from actors.call import CallContext, CallSettings, PreparedVapi
from actors.controller import finish_call
from actors.fleet import FleetNode
from actors.messages import EventNoted, InjectFault
from actors.supervisor import CallSupervisor
from calls.directory import ALREADY_STREAMING, ENDED, NOT_ADMITTED, MemoryDirectory
from calls.outcome import Outcome
from links.errors import VapiUnavailable
from links.twilio import TwilioSocket
from links.vapi import VapiConnector, VapiLink
from observability.metrics import Metrics
from protocols.ticket import TicketError, TicketSealer, ticket_from_parameters
from protocols.vapi import MULAW8K, PCM16K, CreatedCall
from records import CallRecord, CostRates, RecordsError, RecordStore, estimate_cost, percentile
from records.recordings import RecordingWriter
from settings import Settings
from supervision import Backoff, ChildSpec, Exit, Restart
from supervision.supervisor import StartChild

__all__ = ["CallRegistry", "StreamRefused", "call_settings"]

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


# Why a media socket did not get its call, as counted (bridge_malformed_inputs_total{source="media"}).
_CLAIM_REFUSALS = {ENDED: "call_ended", ALREADY_STREAMING: "duplicate_socket", NOT_ADMITTED: "not_admitted"}


class StreamRefused(Exception):
    """A media socket that may not take its call; `kind` is the counter's label."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


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
        tickets: TicketSealer,
        fleet: FleetNode | None = None,
        records: RecordStore | None = None,
        rates: CostRates | None = None,
        recordings: RecordingWriter | None = None,
    ) -> None:
        self._tickets = tickets
        self.fleet = fleet or FleetNode(
            MemoryDirectory(), node_id="local", metrics=metrics, log=log, admit_ttl_s=tickets.ttl_s
        )
        self._records = records
        self._recordings = recordings
        self._rates = rates or CostRates()
        self._root = root
        self._settings = settings
        self._connector = connector
        self._metrics = metrics
        self._log = log
        self._live: dict[str, CallContext] = {}
        # One process: VAPI sockets opened at the webhook, waiting for their stream (by CallSid).
        self._parked: dict[str, tuple[PreparedVapi, gevent.Greenlet[[str], None]]] = {}
        self._finished: OrderedDict[str, Outcome] = OrderedDict()

    @property
    def node_id(self) -> str:
        return self.fleet.node_id

    def admit(self, call_sid: str) -> str:
        """The webhook answers this call: create its VAPI call (bounded) and seal its stream's ticket.

        If VAPI cannot be reached now, the ticket carries no VAPI call and the stream's node
        creates one as it starts, with its outage retries and hold sound.
        """
        created: CreatedCall | None = None
        audio_format = PCM16K if self._settings.audio_format == "pcm_s16le" else MULAW8K
        try:
            created = self._connector.create_call(audio_format, None)
        except VapiUnavailable as exc:
            self._metrics.vapi_links.labels(event="refused").inc()
            self._log.warning("vapi_create_deferred", call_sid=call_sid, actor="webhook", kind=exc.kind.value,
                              detail=str(exc))
        self.fleet.admit(call_sid)
        if created is not None and not self.fleet.shared:
            self._park(call_sid, created)
        return self._tickets.seal(
            call_sid=call_sid,
            node_id=self.node_id,
            now=time.time(),
            vapi_call_id=created.call_id if created is not None else None,
            vapi_websocket_url=created.websocket_url if created is not None else None,
        )

    def take_stream(self, call_sid: str, parameters: dict[str, str], socket: TwilioSocket) -> CallContext:
        """Start the call on this node for the socket whose `start` presented these parameters.

        The ticket must be ours, unexpired and for this CallSid; the call must not have
        ended or have a socket already, here or (through the directory) on any node; the
        claim in the directory is atomic, so of two sockets presenting one ticket only the
        first gets the call.

        Raises:
            StreamRefused: with the reason as a counter label.
        """
        try:
            ticket = self._tickets.open(ticket_from_parameters(parameters), call_sid=call_sid, now=time.time())
        except TicketError as exc:
            raise StreamRefused(exc.kind) from None
        if call_sid in self._live:
            raise StreamRefused("duplicate_socket")
        if call_sid in self._finished:
            raise StreamRefused("call_ended")
        refusal = self.fleet.claim(call_sid)
        if refusal is not None:
            raise StreamRefused(_CLAIM_REFUSALS.get(refusal, "not_admitted"))
        prepared = self._unpark(call_sid)
        if prepared is None and ticket.vapi_call_id is not None and ticket.vapi_websocket_url is not None:
            prepared = PreparedVapi(CreatedCall(ticket.vapi_call_id, ticket.vapi_websocket_url))
        try:
            return self.start_call(call_sid, socket=socket, prepared=prepared)
        except Exception:
            self.fleet.finished(call_sid, Outcome.FAILED)
            raise

    def _park(self, call_sid: str, created: CreatedCall) -> None:
        """Open the VAPI call's socket now, for the stream that can only come to this process.

        Today's latency for one process: the socket (and VAPI's greeting, held in its
        buffer) is ready while Twilio connects the stream. Closed, with a goodbye, if the
        stream has not come when the ticket expires.
        """
        opening: gevent.event.AsyncResult[VapiLink] = gevent.event.AsyncResult()

        def connect() -> None:
            try:
                opening.set(self._connector.connect(created.websocket_url))
            except VapiUnavailable as exc:
                opening.set_exception(exc)

        self._release_parked(call_sid)  # a retried webhook: the newer VAPI call wins
        gevent.spawn(connect)
        expiry = gevent.spawn_later(self._tickets.ttl_s, self._release_parked, call_sid)
        self._parked[call_sid] = (PreparedVapi(created, opening), expiry)

    def _unpark(self, call_sid: str) -> PreparedVapi | None:
        parked = self._parked.pop(call_sid, None)
        if parked is None:
            return None
        prepared, expiry = parked
        expiry.kill(block=False)
        return prepared

    def _release_parked(self, call_sid: str) -> None:
        prepared = self._unpark(call_sid)
        if prepared is None or prepared.link is None:
            return
        try:
            link = prepared.link.get()  # bounded by the connector's deadline
        except VapiUnavailable:
            return
        if link is not None:
            link.close(goodbye=True)

    def release_parked(self) -> None:
        """Close every VAPI socket still waiting for its stream (the server is stopping)."""
        for call_sid in list(self._parked):
            self._release_parked(call_sid)

    def start_call(
        self, call_sid: str, *, socket: TwilioSocket | None = None, prepared: PreparedVapi | None = None
    ) -> CallContext:
        """Start the call's actor tree around its socket, or return the live one."""
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
            socket=socket,
            prepared_vapi=prepared,
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
        if call_sid in self._finished or self.fleet.outcome(call_sid) is not None:
            return True
        if self._records is None:
            return False
        try:
            return self._records.get(call_sid) is not None
        except RecordsError:
            return False

    def media_refusal(self, call_sid: str) -> str | None:
        """None when a media socket may try to take this call now; otherwise why not.

        Only a pre-check before the 101 (the ticket, at `start`, decides): what this node
        knows first, then the fleet's directory.
        """
        if call_sid in self._live:
            return ALREADY_STREAMING
        if call_sid in self._finished:
            return ENDED
        return self.fleet.refusal(call_sid)

    def outcome(self, call_sid: str) -> Outcome | None:
        """How a call ended, if it ended recently, here or on another node; None for a live or unknown call."""
        outcome = self._finished.get(call_sid)
        if outcome is None and call_sid not in self._live:
            outcome = self.fleet.settled_outcome(call_sid)
        return outcome

    def live(self) -> list[CallContext]:
        return list(self._live.values())

    def snapshots(self) -> list[dict[str, Any]]:
        """This node's live calls as the admin API shows them, each with this node's id."""
        return [{**call.snapshot(), "node": self.node_id} for call in list(self._live.values())]

    def fleet_snapshots(self) -> list[dict[str, Any]]:
        """Every live call of the fleet: this node's, fresh, then the other nodes' last published ones."""
        calls = self.snapshots()
        for view in self.fleet.other_nodes():
            calls.extend({**call, "node": view.node_id} for call in view.calls if isinstance(call, dict))
        return calls

    def inject_anywhere(self, call_sid: str, actor: str, fault: str) -> str | None:
        """Inject a fault into a live call of the fleet: here, or queued for the node that holds it.

        Returns that node's id, or None when no node holds the call (or, here, the actor is
        restarting, or the directory is down).
        """
        if call_sid in self._live:
            return self.node_id if self.inject(call_sid, actor, fault) else None
        owner = self.fleet.owner(call_sid)
        if owner is None or owner == self.node_id:
            return None
        return owner if self.fleet.send_chaos(owner, call_sid, actor, fault) else None

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
        outcome = self._finished[call.call_sid] = call.state.outcome or Outcome.COMPLETED
        self.fleet.finished(call.call_sid, outcome)  # never blocks: queued for the directory
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
            node_id=self.node_id,
        )
