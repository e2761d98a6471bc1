"""CallRegistry: the live calls of this process, and how recent ones ended.

The web layer asks it to admit a call when Twilio asks for TwiML: it creates the VAPI
call early (bounded; the first turn is no later for it) and seals a ticket for the stream.
It starts the call's actors only when a media socket presents that ticket, on whichever
node the socket landed: the ticket is checked, the call claimed in the fleet's directory
(first claim wins), and only then does the actor tree start here, with the ticket's VAPI
call. Each call runs as a temporary child of the root supervisor: a call that ends or
gives up is never restarted, and never touches another call.

A live phone call can move to another node (calls/handoff.py): `hand_off` publishes the
call's hand-off and ends it here without an outcome (Outcome.HANDED_OFF, neither published
nor recorded: the call goes on); `after_stream` decides what Twilio does once a stream has
ended (hang up, fallback, or a new stream for a moving or orphaned call); `take_stream` of
a resumed call takes the hand-off and starts the call greeted, with its conversation, so
the new VAPI call waits for the caller and is given the turns so far.

The webhook's node also opens the VAPI call's socket at once and parks it (one process
always; a fleet node when it has a relay URL, NODE_URL): the stream that lands here uses
it, and one that lands on another node reaches it through this node's relay
(`relay_refusal`, `relay`; docs/vapi-relay.md), since VAPI takes one socket per call. A
parked socket whose stream never comes is closed when the ticket expires (counted,
logged once); VAPI ends a call whose transport never connects on its own
(docs/vapi-websocket-transport.md).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.event
import pykka
from pykka import ActorDeadError

from actors.call import CallContext, CallSettings, PreparedVapi
from actors.controller import finish_call
from actors.fleet import HEARTBEAT_S, FleetNode
from actors.messages import EventNoted, InjectFault
from actors.supervisor import CallSupervisor
from calls.conversation import Conversation
from calls.directory import ALREADY_STREAMING, ENDED, NOT_ADMITTED, MemoryDirectory
from calls.handoff import DEPLOY, Handoff, resume_allowed
from calls.outcome import Outcome
from links.errors import VapiUnavailable
from links.relay import Relay, RelayEnd
from links.twilio import TwilioSocket
from links.vapi import VapiConnector, VapiLink
from observability.metrics import Metrics
from protocols.ticket import TicketError, TicketSealer, relay_socket_url, ticket_from_parameters
from protocols.vapi import MULAW8K, PCM16K, CreatedCall
from records import CallRecord, CostRates, RecordsError, RecordStore, estimate_cost, percentile
from records.recordings import RecordingWriter
from settings import Settings
from supervision import Backoff, ChildSpec, Exit, Restart
from supervision.supervisor import StartChild

__all__ = ["AfterStream", "CallRegistry", "StreamRefused", "call_settings"]

# How many ended calls we remember for /voice/after-stream, which Twilio asks within
# seconds of the stream ending; bounded so months of calls cost no memory.
_FINISHED_CAPACITY = 10_000
# The root supervisor answers StartChild in microseconds; this only bounds a wedged one.
_START_TIMEOUT_S = 5.0
# A failed call supervisor comes back at once: the caller is on the line.
_CALL_BACKOFF = Backoff(min_s=0.01, max_s=0.5, jitter=0.2, reset_after_s=10.0)
# After-stream waits this long for a live call's fate: its outcome, its hand-off, or its
# owner's heartbeats to stop (a crash shows as a missed beat, up to two beats late).
_AFTER_STREAM_WAIT_S = 2 * HEARTBEAT_S + 1.5
_AFTER_STREAM_STEP_S = 0.05
# A stream that ends while the call's previous socket on this node is still letting go.
_LEAVING_WAIT_S = 2.0


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
        barge_in_resume_ms=settings.barge_in_resume_ms,
        media_connect_timeout_s=settings.media_connect_timeout_s,
    )


# Why a media socket did not get its call, as counted (bridge_malformed_inputs_total{source="media"}).
_CLAIM_REFUSALS = {ENDED: "call_ended", ALREADY_STREAMING: "duplicate_socket", NOT_ADMITTED: "not_admitted"}


class StreamRefused(Exception):
    """A media socket that may not take its call; `kind` is the counter's label."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class AfterStream:
    """What Twilio does once a call's stream ended: `outcome` decided it, or `resume` with a new stream."""

    outcome: Outcome | None = None
    resume: Handoff | None = None
    refused_resume: bool = False  # a resume was due, but the call was resumed too often


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
        relay_url: str | None = None,
    ) -> None:
        """`relay_url`: this node's NODE_URL, for a fleet node to park VAPI sockets and relay them."""
        self._tickets = tickets
        self._relay_url = relay_url
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
        # VAPI sockets opened at the webhook, waiting for their stream (by CallSid), and the
        # ones relayed to another node's stream now.
        self._parked: dict[str, tuple[PreparedVapi, gevent.Greenlet[[str], None]]] = {}
        self._relays: dict[str, Relay] = {}
        self._finished: OrderedDict[str, Outcome] = OrderedDict()
        # Live calls that resumed here (their hand-off, with the earlier hops), and calls handed off from here.
        self._resumed: dict[str, Handoff] = {}
        self._leaving: dict[str, Handoff] = {}

    @property
    def node_id(self) -> str:
        return self.fleet.node_id

    def admit(self, call_sid: str, *, resume: bool = False) -> str:
        """The webhook answers this call: create its VAPI call (bounded) and seal its stream's ticket.

        If VAPI cannot be reached now, the ticket carries no VAPI call and the stream's node
        creates one as it starts, with its outage retries and hold sound. A `resume` (a live
        call's new stream) gets no VAPI call here either: the stream's node creates it for a
        greeted call (it waits for the caller and is given the conversation before the
        replayed audio, actors/vapi.py), which only that node can do.
        """
        created: CreatedCall | None = None
        audio_format = PCM16K if self._settings.audio_format == "pcm_s16le" else MULAW8K
        try:
            if not resume:
                created = self._connector.create_call(audio_format, None)
        except VapiUnavailable as exc:
            self._metrics.vapi_links.labels(event="refused").inc()
            self._log.warning("vapi_create_deferred", call_sid=call_sid, actor="webhook", kind=exc.kind.value,
                              detail=str(exc))
        self.fleet.admit(call_sid)
        # A draining node is about to close its listener: the stream's node could not reach its relay.
        relayed = created is not None and self.fleet.shared and self._relay_url is not None and not self.fleet.draining
        if created is not None and (relayed or not self.fleet.shared):
            self._park(call_sid, created)
        return self._tickets.seal(
            call_sid=call_sid,
            node_id=self.node_id,
            now=time.time(),
            vapi_call_id=created.call_id if created is not None else None,
            vapi_websocket_url=created.websocket_url if created is not None else None,
            resume=resume,
            relay_url=self._relay_url if relayed else None,
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
        leaving = self._live.get(call_sid) if call_sid in self._leaving else None
        if leaving is not None and ticket.resume:
            leaving.ended.wait(_LEAVING_WAIT_S)  # its own stream broke a moment ago: it is letting go
        if call_sid in self._live:
            raise StreamRefused("duplicate_socket")
        if call_sid in self._finished:
            raise StreamRefused("call_ended")
        refusal = self.fleet.claim(call_sid)
        if refusal is not None:
            raise StreamRefused(_CLAIM_REFUSALS.get(refusal, "not_admitted"))
        resumed: Handoff | None = None
        if ticket.resume:
            now = time.time()
            # None: the directory lost it (or is down): still a greeted call, with no turns to give.
            taken = self.fleet.take_moving(call_sid) or Handoff(call_sid=call_sid, left_at=0.0, started_at=now)
            resumed = taken.taken_by(self.node_id, at=now)
        prepared = self._unpark(call_sid)
        if prepared is None and ticket.vapi_call_id is not None and ticket.vapi_websocket_url is not None:
            relay = ticket.relay_url if ticket.node_id != self.node_id else None
            prepared = PreparedVapi(
                CreatedCall(ticket.vapi_call_id, ticket.vapi_websocket_url),
                relay_url=relay_socket_url(relay, call_sid) if relay is not None else None,
                relay_token=self._tickets.relay_token(call_sid, now=time.time()) if relay is not None else None,
            )
        try:
            return self.start_call(call_sid, socket=socket, prepared=prepared, resumed=resumed)
        except Exception:
            self.fleet.finished(call_sid, Outcome.FAILED)
            raise

    def _park(self, call_sid: str, created: CreatedCall) -> None:
        """Open the VAPI call's socket now, for the stream that can only come to this process.

        Today's latency for one process: the socket (and VAPI's greeting, held in its
        buffer) is ready while Twilio connects the stream. Nothing reads it meanwhile: the
        greeting waits in the kernel's buffer (bounded; VAPI's sends wait when it is full),
        so the link or the relay that takes it gets every byte. Closed, with a goodbye, if
        the stream has not come when the ticket expires.
        """
        opening: gevent.event.AsyncResult[VapiLink] = gevent.event.AsyncResult()

        def connect() -> None:
            try:
                opening.set(self._connector.connect(created.websocket_url))
            except VapiUnavailable as exc:
                opening.set_exception(exc)

        self._release_parked(call_sid)  # a retried webhook: the newer VAPI call wins
        gevent.spawn(connect)
        expiry = gevent.spawn_later(self._tickets.ttl_s, self._parked_expired, call_sid)
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

    def _parked_expired(self, call_sid: str) -> None:
        if call_sid in self._parked:
            self._metrics.vapi_links.labels(event="parked_expired").inc()
            self._log.info("vapi_parked_expired", call_sid=call_sid, actor="registry",
                           after_s=self._tickets.ttl_s)
        self._release_parked(call_sid)

    def release_parked(self) -> None:
        """Close every VAPI socket still waiting for its stream, and end the relays (the server is stopping)."""
        for call_sid in list(self._parked):
            self._release_parked(call_sid)
        for relay in list(self._relays.values()):
            relay.stop()

    def relay_refusal(self, call_sid: str, authorization: str) -> str | None:
        """None when a relay handshake may take this call's parked VAPI socket; else why not.

        Asked before the 101 (web/server.py): the token must be the fleet's for this CallSid
        and unexpired, and the socket parked here and open. The socket itself goes to the
        first handshake that gets through (`relay`).
        """
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return "bad_relay_token"
        if self._relay_url is None:
            return "relay_not_parked"  # this node relays nothing (one process)
        refusal = self._tickets.relay_refusal(token.strip(), call_sid=call_sid, now=time.time())
        if refusal is not None:
            return refusal
        parked = self._parked.get(call_sid)
        if parked is None or parked[0].link is None:
            return "relay_not_parked"
        try:
            parked[0].link.get()  # opened at the webhook, normally long ago; bounded by the connector
        except VapiUnavailable:
            return "relay_not_parked"
        return None

    def relay(self, call_sid: str, peer: Any) -> RelayEnd | None:
        """Splice the call's parked VAPI socket to `peer` (a socket) until either side ends; None if it is gone.

        Blocks for the VAPI call's life, in the relay handshake's greenlet.
        """
        prepared = self._unpark(call_sid)
        try:
            link = prepared.link.get() if prepared is not None and prepared.link is not None else None
        except VapiUnavailable:
            return None
        sock = link.detach() if link is not None else None
        if sock is None:
            if link is not None:
                link.close(goodbye=True)  # unparked, so nothing else would close it
            return None
        relay = self._relays[call_sid] = Relay(sock, peer)
        self._metrics.vapi_links.labels(event="relayed").inc()
        try:
            return relay.run()
        finally:
            self._relays.pop(call_sid, None)

    def start_call(
        self, call_sid: str, *, socket: TwilioSocket | None = None, prepared: PreparedVapi | None = None,
        resumed: Handoff | None = None,
    ) -> CallContext:
        """Start the call's actor tree around its socket, or return the live one.

        `resumed`: the call continues a phone call from another stream: greeted, with its
        conversation, its start time and its hops.
        """
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
        if resumed is not None:
            state = call.state  # not started yet: the registry sets it up, then the actors own their fields
            state.vapi_greeted = resumed.greeted
            state.conversation = Conversation.from_json(resumed.conversation_json)
            if resumed.started_at:
                state.started_at = resumed.started_at
            hop = resumed.hops[-1] if resumed.hops else None
            silence = f", {hop.silence_ms:.0f} ms after the old stream ended" if hop and hop.silence_ms else ""
            state.event("resumed", f"from {resumed.from_node or '?'} ({resumed.reason}){silence}")
            self._resumed[call_sid] = resumed
            self._metrics.resumes.labels(reason=resumed.reason).inc()
            call.log.info("call_resumed", actor="registry", from_node=resumed.from_node, reason=resumed.reason,
                          resumes=resumed.resumes, turns=len(state.conversation),
                          silence_ms=round(hop.silence_ms) if hop and hop.silence_ms else None)
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
            self._resumed.pop(call_sid, None)
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

    def peers_take_calls(self) -> bool:
        """Whether another node of the fleet takes new calls now (never without a shared directory)."""
        return bool(self.fleet.peers_taking_calls())

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
        """This node's live calls as the admin API shows them, each with this node's id.

        Each carries what a resume needs (`handoff`: its conversation, greeted, hops), so
        the heartbeat that publishes it lets another node resume the call if this one dies;
        a call being handed off shows as `moving`.
        """
        snapshots = []
        for call in list(self._live.values()):
            leaving = self._leaving.get(call.call_sid)
            handoff = leaving or self._handoff_of(call, reason=DEPLOY)
            snapshots.append({**call.snapshot(), "node": self.node_id, "moving": leaving is not None,
                              "resumes": handoff.resumes, "handoff": handoff.to_dict()})
        return snapshots

    def _handoff_of(self, call: CallContext, *, reason: str) -> Handoff:
        """The hand-off that would let another node carry on with the call now."""
        resumed = self._resumed.get(call.call_sid)
        state = call.state
        return Handoff(
            call_sid=call.call_sid, conversation_json=state.conversation.to_json(), greeted=state.vapi_greeted,
            resumes=resumed.resumes if resumed is not None else 0, from_node=self.node_id, reason=reason,
            left_at=time.time(), started_at=state.started_at, hops=resumed.hops if resumed is not None else (),
        )

    def hand_off(self, call: CallContext, reason: str) -> bool:
        """Let the live call go to another node: publish its hand-off, then end it here (its VAPI call, its socket).

        Twilio then asks the action URL and any node answers with a new stream. False (the
        call is left as it is) without a shared directory, or when it cannot be reached.
        """
        if not self.fleet.shared or call.ended.is_set() or call.state.end_request is not None:
            return False
        handoff = self._handoff_of(call, reason=reason)
        if not self.fleet.mark_moving(handoff):
            return False
        self._leaving[call.call_sid] = handoff
        self._metrics.handoffs.labels(reason=reason).inc()
        call.log.info("call_handed_off", actor="registry", reason=reason, turns=len(handoff.conversation_json),
                      resumes=handoff.resumes)
        call.end(Outcome.HANDED_OFF, f"handed off ({reason})")
        return True

    def hand_off_all(self, reason: str) -> int:
        """Hand every live call to the fleet; returns how many were handed off."""
        return sum(self.hand_off(call, reason) for call in list(self._live.values()))

    def after_stream(self, call_sid: str) -> AfterStream:
        """What Twilio does now that the call's stream ended (it asks at once, perhaps this node).

        A decided outcome wins. A moving call resumes; so does a call whose owner died (its
        last snapshot is the hand-off) or, on this node, whose socket broke. The wait is
        bounded: the owner's outcome or hand-off may be a moment behind, and a crash shows
        only as a missed heartbeat. A call resumed too often recently gets the fallback.
        """
        now = time.time()
        deadline = time.monotonic() + _AFTER_STREAM_WAIT_S
        while True:
            outcome = self._finished.get(call_sid) or self.fleet.outcome(call_sid)
            if outcome is not None:
                return AfterStream(outcome=outcome)
            handoff = self.fleet.moving(call_sid)
            if handoff is None and call_sid not in self._live:
                owner, handoff = self.fleet.orphan(call_sid, now=time.time(), left_at=now)
                if handoff is not None and not self.fleet.mark_moving(handoff):
                    handoff = None
                elif handoff is None and owner is None:
                    return AfterStream()  # no node holds it: unknown here
            if handoff is not None:
                if resume_allowed(handoff, now=now):
                    return AfterStream(resume=handoff)
                self.fleet.take_moving(call_sid)
                self.fleet.finished(call_sid, Outcome.GAVE_UP)
                self._log.warning("resume_refused", call_sid=call_sid, actor="webhook", resumes=handoff.resumes)
                return AfterStream(outcome=Outcome.GAVE_UP, refused_resume=True)
            if time.monotonic() >= deadline:
                return AfterStream()
            gevent.sleep(_AFTER_STREAM_STEP_S)

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
        if self._leaving.pop(call.call_sid, None) is not None:
            # Not the phone call's end: it goes on elsewhere, whose node writes its outcome and record.
            self._resumed.pop(call.call_sid, None)
            if call.recorder is not None:
                call.recorder.close()
            return
        outcome = self._finished[call.call_sid] = call.state.outcome or Outcome.COMPLETED
        self.fleet.finished(call.call_sid, outcome)  # never blocks: queued for the directory
        while len(self._finished) > _FINISHED_CAPACITY:
            self._finished.popitem(last=False)
        if call.recorder is not None:
            call.recorder.close()  # never blocks: the rest of the recording is queued for its writer
        if self._records is not None:
            # Never blocks: the store queues it for its own writer greenlet.
            self._records.submit(self._record(call))
        self._resumed.pop(call.call_sid, None)

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
            handoffs=resumed.hops if (resumed := self._resumed.get(call.call_sid)) is not None else (),
        )
