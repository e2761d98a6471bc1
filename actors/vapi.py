"""VapiActor: the call's link to VAPI over its WebSocket transport.

On start it opens a VAPI call's socket in a greenlet of its own, so the mailbox keeps
draining meanwhile (the caller's audio waits in the call's uplink buffer). Its first link
joins the VAPI call the webhook created (the call's ticket carried it), through the
webhook node's relay when that node holds the call's socket open (docs/vapi-relay.md); if
there is none, or it cannot be joined, and on every later link, it creates a new VAPI
call first.
It sends the caller's audio as binary 20 ms frames, hands VAPI's audio to the codec
and acts on VAPI's JSON events. VAPI is an untrusted peer: the socket itself (framing,
size caps, send timeouts) is `links.vapi.VapiLink`'s business, and what it refuses is
counted and logged at a bounded rate. A keepalive pings the socket; a missing pong, a
closed socket, a refused frame or a failed send makes the actor fail, and its
supervisor starts a new one with backoff. The new one asks VAPI not to greet again,
gives it the conversation so far, then replays the caller audio VAPI had not answered:
the new link is a new VAPI call, which has heard none of it (media/uplink.py).

The conversation is kept as VAPI reports it: each link's final transcripts, until the
link sends a `conversation-update`, whose whole history then stands for that link. It
lives in the call's state (calls/conversation.py), so the next link, or another node
taking the call over, can hand it to the next VAPI call.
"""

from __future__ import annotations

import contextlib
from typing import Any

import gevent
import gevent.pool
from pykka import ActorDeadError

from actors.base import CallActor
from actors.call import CallContext
from actors.messages import (
    AssistantAudio,
    AssistantInterrupted,
    AssistantTurnEnded,
    AssistantTurnStarted,
    CallerPressedKey,
    EventNoted,
    HoldCaller,
    InjectFault,
    UplinkAudio,
    UplinkMeasured,
    UplinkRecovered,
    VapiActorMessage,
    VapiEventReceived,
    VapiGaveUp,
    VapiLinkLost,
    VapiLinkUp,
)
from calls.conversation import Turn
from calls.outcome import Outcome
from chaos.suffer import suffer
from links.errors import ErrorKind, VapiLinkDead, VapiUnavailable
from links.vapi import Signal, VapiLink
from observability.ratelimit import LogLimiter
from protocols.errors import ProtocolError
from protocols.vapi import (
    MULAW8K,
    PCM16K,
    ConversationUpdate,
    Hang,
    SpeechUpdate,
    StatusUpdate,
    Transcript,
    UserInterrupted,
    dtmf_message,
    encode_context_message,
    parse_event,
)
from supervision import Backoff, ChildHandle, backoff_delay_s

__all__ = ["VapiActor"]

# A restarted link must not greet the caller a second time.
_NO_SECOND_GREETING = "assistant-waits-for-user"
# Retrying VAPI call creation during an outage: first retry after about 0.25 s, doubling
# to 2 s. Jitter of +-25 % keeps many calls from retrying in lockstep after a blip, and
# never shrinks a gap below half its nominal length.
_RETRY_BACKOFF = Backoff(min_s=0.25, max_s=2.0, jitter=0.5, reset_after_s=60.0)

_LATENCY_SAMPLE_EVERY = 10
# The smoothed latency goes to the call's state about once a second.
_REPORT_EVERY = 50
# Messages waiting in a mailbox this link feeds, beyond which more are dropped and
# counted: the reader yields after each message, so only a stuck actor lets it fill.
_MAILBOX_LIMIT = 1000
# Messages the reader may hand on without yielding while nothing more is buffered.
_YIELD_EVERY = 8


class VapiActor(CallActor):
    role = "vapi"

    def __init__(self, handle: ChildHandle | None, call: CallContext) -> None:
        super().__init__(handle, call)
        self._greenlets = gevent.pool.Group()
        self._link: VapiLink | None = None
        self._ready = False  # link up and replay sent: live frames may go out
        self._continuing = False  # set as the link opens: see _open_link
        self._dead = False  # the link is known broken: no goodbye is possible
        self._link_id = call.state.vapi_links + 1
        self._latency_in_ms: float | None = None
        self._reported_fault: int | None = None  # the fault whose recovery was reported
        self._clock = call.clock
        self._last_pong = 0.0
        # The turns this link's VAPI call was given as history, and whether it reports its
        # own history (then its final transcripts are already in it).
        self._given: tuple[Turn, ...] = ()
        self._reports_history = False
        # VAPI is untrusted: it must not be able to flood the log with bad input.
        self._limiter = LogLimiter(self._log)

    # Lifecycle -----------------------------------------------------------------------

    def on_start(self) -> None:
        self._call.state.vapi_links += 1
        self._greenlets.spawn(self._open_link, self._link_id)

    def _close(self) -> None:
        self._greenlets.kill(block=True, timeout=1.0)
        self._limiter.flush()
        link, self._link = self._link, None
        if link is None:
            return
        goodbye = not (self._dead or link.dead)
        link.close(goodbye=goodbye)  # bounded however VAPI behaves (links.vapi.CLOSE_BUDGET_S)
        self._log.info("vapi_link_closed", link=self._link_id, goodbye=goodbye)

    # Messages ------------------------------------------------------------------------

    def on_receive(self, message: VapiActorMessage) -> None:
        match message:
            case UplinkAudio():
                self._on_uplink(message)
            case VapiEventReceived():
                if message.link_id == self._link_id:
                    self._on_event(message.text)
            case VapiLinkUp():
                if message.link_id == self._link_id:
                    self._on_link_up(message)
            case VapiGaveUp():
                self._tell("twilio", HoldCaller(False))
                self._call.end(Outcome.GAVE_UP, message.reason)
            case VapiLinkLost():
                if message.link_id == self._link_id:
                    self._dead = True
                    self._call.metrics.vapi_links.labels(event="lost").inc()
                    raise VapiLinkDead(message.reason)
            case CallerPressedKey():
                self._send_text(dtmf_message(message.digit))
                self._log.info("dtmf_forwarded", digit=message.digit)
            case InjectFault():
                self._on_fault(message)
            case _:
                self._unexpected_message(message)

    def _on_uplink(self, message: UplinkAudio) -> None:
        uplink = self._call.uplink
        if not self._ready or message.seq <= uplink.sent_seq:
            return  # not linked yet (the buffer keeps it), or already sent by the replay
        self._send_binary(message.data)
        uplink.mark_sent(message.seq)
        call = self._call
        if message.seq % _LATENCY_SAMPLE_EVERY == 0:
            # One frame in ten is timed: plenty for a histogram at 50 frames a second,
            # and the rest skip prometheus_client's per-update lock.
            latency = self._clock.monotonic_ns() - message.received_ns
            call.metrics.latency_in.observe(latency / 1e9)
            previous, ms = self._latency_in_ms, latency / 1e6
            self._latency_in_ms = ms if previous is None else previous + 0.1 * (ms - previous)
            if message.seq % _REPORT_EVERY == 0:
                call.tell_controller(UplinkMeasured(self._latency_in_ms))
        fault_at_ns = call.state.fault_at_ns
        if fault_at_ns is not None and fault_at_ns != self._reported_fault:
            # The controller owns the call's fault record; it measures the recovery.
            self._reported_fault = fault_at_ns
            call.tell_controller(UplinkRecovered(fault_at_ns, self._clock.monotonic_ns()))

    def _on_link_up(self, message: VapiLinkUp) -> None:
        call = self._call
        if self._continuing:
            # A new VAPI call for a conversation under way: the history first, so the
            # replayed audio is heard as the caller's next words in it.
            self._given = call.state.conversation.turns()
            link = self._link
            if link is not None:
                try:
                    for turn in self._given:
                        link.send_text(encode_context_message(role=turn.role, content=turn.text))
                except VapiLinkDead:
                    self._dead = True
                    raise
        replay = call.uplink.pending_replay()
        for seq, data in replay:
            self._send_binary(data)
            call.uplink.mark_sent(seq)
        self._ready = True
        if self._continuing:
            detail = f"VAPI link {self._link_id}, {len(self._given)} turns given, {len(replay) * 20} ms replayed"
            call.tell_controller(EventNoted("reconnect", detail))
        call.metrics.vapi_links.labels(event="created").inc()
        self._log.info("vapi_link_up", link=self._link_id, replayed_ms=len(replay) * 20, turns_given=len(self._given))

    def _on_event(self, text: str) -> None:
        try:
            event = parse_event(text)
        except ProtocolError as exc:
            self._call.metrics.malformed.labels(source="vapi", kind=exc.kind).inc()
            self._limiter.warning("vapi_event_malformed", source="vapi", kind=exc.kind)
            return
        match event:
            case SpeechUpdate(status="started", role="assistant"):
                self._tell("twilio", AssistantTurnStarted(event.turn))
            case SpeechUpdate(status="stopped", role="assistant"):
                self._tell("twilio", AssistantTurnEnded(event.turn))
            case UserInterrupted():
                self._tell("twilio", AssistantInterrupted())
            case StatusUpdate(status="ended"):
                reason = event.ended_reason or "ended"
                self._log.info("vapi_call_ended", reason=reason)
                self._call.end(Outcome.ASSISTANT_ENDED, reason)
            case Hang():
                # Only a slow model or voice: the call goes on.
                self._log.info("vapi_assistant_slow")
            case Transcript(transcript_type="final", role="user" | "assistant"):
                if not self._reports_history:
                    self._call.state.conversation.add(event.role, event.transcript)
            case ConversationUpdate():
                self._on_history(event)
        self._call.metrics.vapi_events.labels(type=type(event).__name__).inc()

    def _on_history(self, event: ConversationUpdate) -> None:
        """This VAPI call's whole history: it replaces what its transcripts had added."""
        self._reports_history = True
        if event.skipped:
            self._call.metrics.malformed.labels(source="vapi", kind="history_entry").inc(event.skipped)
        reported = [Turn(role, text) for role, text in event.turns]
        given = list(self._given)
        if reported[: len(given)] == given:
            turns = reported  # VAPI counts the history it was given as its own
        elif given[: len(reported)] == reported:
            turns = given  # still taking the given history in
        else:
            turns = given + reported
        self._call.state.conversation.replace(turns)

    def _on_fault(self, message: InjectFault) -> None:
        suffer(self._log, message.fault, sever=self._sever, blackhole=self._blackhole)

    def _sever(self) -> None:
        """Chaos: the socket closes under the link, as a network failure would close it."""
        if self._link is not None:
            self._link.shutdown()

    def _blackhole(self) -> None:
        """Chaos: swallow everything from VAPI, pongs included; the keepalive must notice."""
        self._link_id = -self._link_id
        self._greenlets.spawn(self._keepalive, self._link_id)

    # Sending (the actor's greenlet) ----------------------------------------------------

    def _send_binary(self, data: bytes) -> None:
        link = self._link
        if link is not None:
            try:
                link.send_audio(data)
            except VapiLinkDead:
                self._dead = True
                raise

    def _send_text(self, text: str) -> None:
        link = self._link
        if link is not None and self._ready:  # control messages only to a call that is up
            try:
                link.send_text(text)
            except VapiLinkDead:
                self._dead = True
                raise

    # The link's own greenlets ------------------------------------------------------------

    def _open_link(self, link_id: int) -> None:
        """Create the VAPI call and open its socket, retrying through an outage within the budget."""
        call = self._call
        audio_format = PCM16K if call.settings.audio_format == "pcm_s16le" else MULAW8K
        deadline: float | None = None
        attempt = 0
        prepared, call.prepared_vapi = call.prepared_vapi, None  # joined once at most, by the first link
        # Taken before this link can say anything: whether it continues a conversation the
        # assistant has already spoken in (then it gets the history and must not greet).
        self._continuing = call.state.vapi_greeted
        created = prepared.call if prepared is not None else None
        if prepared is not None:
            try:
                # Bounded: the connector's own deadline ends the opening either way.
                if prepared.link is not None:
                    opened = prepared.link.get()
                elif prepared.relay_url is not None and prepared.relay_token is not None:
                    # The webhook's node holds the call's one socket: through it, or a new VAPI
                    # call (a socket it held and lost ended its VAPI call).
                    opened = call.connector.connect_relay(prepared.relay_url, prepared.relay_token)
                else:
                    opened = call.connector.connect(prepared.call.websocket_url)
                if opened is None:
                    raise VapiUnavailable(ErrorKind.CONNECTIVITY, "call socket did not open")
                link = opened
            except VapiUnavailable as exc:
                # The webhook's VAPI call is not to be had (it timed out waiting, say): a new one.
                self._log.info("vapi_prepared_call_lost", kind=exc.kind.value, detail=str(exc))
                created = None
        while created is None:
            mode = _NO_SECOND_GREETING if call.state.vapi_greeted else None
            try:
                created = call.connector.create_call(audio_format, mode)
                link = call.connector.connect(created.websocket_url)
            except VapiUnavailable as exc:
                call.metrics.vapi_links.labels(event="refused").inc()
                now = self._clock.monotonic_ns() / 1e9
                if deadline is None:
                    deadline = now + call.settings.retry_budget_s
                    self._log.warning("vapi_outage_started", kind=exc.kind.value, detail=str(exc))
                    call.tell_controller(EventNoted("outage", str(exc)))
                    self._tell("twilio", HoldCaller(True))
                delay = backoff_delay_s(_RETRY_BACKOFF, attempt, call.rng)
                attempt += 1
                if exc.kind.is_permanent or now + delay > deadline:
                    reason = f"VAPI unavailable after {attempt} attempts: {exc}"
                    self._log.error("vapi_gave_up", attempts=attempt, kind=exc.kind.value, detail=str(exc))
                    self._post(VapiGaveUp(reason))
                    return
                self._log.info("vapi_retry", attempt=attempt, delay_s=round(delay, 3), kind=exc.kind.value)
                self._clock.sleep(delay)
                created = None
        if deadline is not None:
            self._log.info("vapi_outage_ended", attempts=attempt + 1)
            self._tell("twilio", HoldCaller(False))
        self._link = link
        self._last_pong = self._clock.monotonic_ns() / 1e9
        self._post(VapiLinkUp(link_id, created.call_id))
        self._greenlets.spawn(self._keepalive, link_id)
        self._read(link, link_id)

    def _read(self, link: VapiLink, link_id: int) -> None:
        uplink = self._call.uplink
        children = self._call.children
        state = self._call.state
        unyielded = 0
        try:
            while True:
                item = link.recv()
                # A burst from VAPI is read from the link's buffer without waiting: let the
                # codec (and every other call) run between its messages. With nothing more
                # buffered the next read waits on the socket, which yields anyway.
                unyielded += 1
                if link.buffered or unyielded >= _YIELD_EVERY:
                    unyielded = 0
                    gevent.sleep(0)
                if self._link_id != link_id:
                    continue  # blackholed: read and drop, as a silent network would
                if type(item) is bytes:
                    # VAPI speaks: it has taken in the caller's audio sent so far (once
                    # this link carries the uplink; before, there is nothing of ours to vouch for).
                    if self._ready:
                        uplink.mark_answered()
                    if not state.vapi_greeted:
                        # The caller has heard the assistant: a later VAPI call must not greet
                        # again. (A link that dies before a word leaves the next one to greet.)
                        state.vapi_greeted = True
                    if children is not None and not children.tell_bounded(
                        "codec", AssistantAudio(item, self._clock.monotonic_ns()), _MAILBOX_LIMIT
                    ):
                        self._call.metrics.dropped.labels(reason="undelivered").inc()
                elif type(item) is str:
                    # An event (a transcript, say) vouches for nothing: the VAPI call may die
                    # before it answers, and the next one must hear the caller's words again.
                    if self.actor_inbox.qsize() < _MAILBOX_LIMIT:
                        self._post(VapiEventReceived(link_id, item))
                    else:
                        self._call.metrics.malformed.labels(source="vapi", kind="event_flood").inc()
                elif item is Signal.PONG:
                    # The link is alive; the audio it carried is answered only when VAPI speaks.
                    self._last_pong = self._clock.monotonic_ns() / 1e9
                else:
                    self._post(VapiLinkLost(link_id, "closed by VAPI"))
                    return
        except VapiLinkDead as exc:
            if exc.fault.is_peer_misbehaving:
                kind = exc.fault.value
                self._call.metrics.malformed.labels(source="vapi", kind=kind).inc()
                self._limiter.warning("vapi_link_refused", source="vapi", kind=kind, detail=str(exc))
            self._post(VapiLinkLost(link_id, str(exc)))

    def _keepalive(self, link_id: int) -> None:
        settings = self._call.settings
        while True:
            self._clock.sleep(settings.keepalive_interval_s)
            link = self._link
            if link is None:
                return
            sent_at = self._clock.monotonic_ns() / 1e9
            try:
                link.ping()
            except VapiLinkDead as exc:
                self._post(VapiLinkLost(link_id, f"ping failed: {exc}"))
                return
            self._clock.sleep(settings.pong_timeout_s)
            if self._last_pong < sent_at:
                self._post(VapiLinkLost(link_id, f"no pong within {settings.pong_timeout_s:g}s"))
                return

    def _post(self, message: Any) -> None:
        # The actor is stopping: its link goes with it.
        with contextlib.suppress(ActorDeadError):
            self.actor_ref.tell(message)
