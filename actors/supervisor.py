"""CallSupervisor: one per call; owns the call's four actors and decides how the call ends.

The supervision itself is the generic Supervisor; this module supplies the callback
data (which children, how each restarts) and the call's endings: the caller hangs up
(Twilio `stop` or its socket closing), the assistant hangs up (VAPI's ended status),
or the bridge gives up (restart intensity exceeded, no media socket in time).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gevent

from actors.call import CallContext
from actors.codec import CodecActor
from actors.base import inject_fault
from actors.messages import EndCall, InjectFault, StreamStarted, TwilioSocketAttached
from actors.twilio import TwilioActor
from actors.vad import VadActor
from actors.vapi import VapiActor
from calls.outcome import Outcome
from supervision import (
    Backoff,
    ChildHandle,
    ChildSpec,
    Exit,
    Strategy,
    Supervisor,
    SupervisorFlags,
)

__all__ = ["CALL_FLAGS", "CallSupervisor", "finish_call"]

# One for one: the four children hold independent state, and a codec hiccup is no
# reason to drop a healthy VAPI link. Five restarts in ten seconds: chaos runs inject
# faults on purpose and each recovers in well under a second, while a child that fails
# on every start (a bad API key, a bug) exhausts it within about three seconds of
# backoff and the caller hears the fallback instead of silence.
CALL_FLAGS = SupervisorFlags(
    strategy=Strategy.ONE_FOR_ONE,
    intensity=5,
    period_s=10.0,
)
# Local actors come back almost at once: their state is small and the caller is live.
_LOCAL_BACKOFF = Backoff(min_s=0.01, max_s=0.2, jitter=0.2, reset_after_s=5.0)
# A VAPI link retries a remote service: give it room, but never more than a breath.
_VAPI_BACKOFF = Backoff(min_s=0.1, max_s=2.0, jitter=0.2, reset_after_s=5.0)
# Stopping a child: the VAPI link says goodbye (end-call and a close handshake).
_SHUTDOWN_S = 2.0


class CallSupervisor(Supervisor):
    """Supervises TwilioActor, VapiActor, CodecActor and VadActor for one call.

    It is itself a transient child of the root: if it fails, the root starts a new one
    for the same call, which starts fresh children around the same Twilio socket.
    """

    # Its longest handler stops four children, well under a second; three means stuck.
    handler_deadline_s = 3.0

    def __init__(self, call: CallContext, handle: ChildHandle | None = None) -> None:
        super().__init__(CALL_FLAGS, handle=handle, log=call.log.bind(actor="supervisor"), name="call")
        self._call = call
        call.children = self.children
        call.supervisor = self.actor_ref
        call.child_states = self.child_states
        call.flags = CALL_FLAGS

    def init(self) -> tuple[SupervisorFlags, Sequence[ChildSpec]]:
        call = self._call

        def start(actor_class: Any) -> Any:
            return lambda handle: actor_class.start(handle, call)

        return CALL_FLAGS, [
            ChildSpec(id="codec", start=start(CodecActor), backoff=_LOCAL_BACKOFF, shutdown_s=_SHUTDOWN_S),
            ChildSpec(id="vad", start=start(VadActor), backoff=_LOCAL_BACKOFF, shutdown_s=_SHUTDOWN_S),
            ChildSpec(id="vapi", start=start(VapiActor), backoff=_VAPI_BACKOFF, shutdown_s=_SHUTDOWN_S),
            ChildSpec(id="twilio", start=start(TwilioActor), backoff=_LOCAL_BACKOFF, shutdown_s=_SHUTDOWN_S),
        ]

    def on_start(self) -> None:
        super().on_start()
        request = self._call.end_request
        if request is not None:
            # Decided while the previous incarnation was failing: its message may be lost
            # with it, the request in the call is not.
            self._log.info("call_end_already_decided", outcome=request.outcome.value)
            self._tell_self(EndCall(request.outcome, request.detail))
            return
        self._greenlets.spawn(self._await_media, self._call.settings.media_connect_timeout_s)
        self._log.info("call_started")

    def _await_media(self, timeout_s: float) -> None:
        gevent.sleep(timeout_s)
        if self._call.socket is None:
            self._call.end(Outcome.GAVE_UP, f"no media stream within {timeout_s:g}s")

    # Messages ------------------------------------------------------------------------

    def handle_message(self, message: Any) -> Any:
        match message:
            case StreamStarted():
                self._log.info("call_streaming", stream_sid=message.stream_sid)
            case TwilioSocketAttached():
                self._log.info("twilio_socket_attached")
            case EndCall():
                # The call's end_request, not the message, says why: the first request wins.
                self._call.request_end(message.outcome, message.detail)
                self.actor_ref.stop(block=False)
            case InjectFault():
                inject_fault(self._log, message.fault)
            case _:
                return super().handle_message(message)
        return None

    # Supervision callbacks ------------------------------------------------------------

    def on_child_exited(self, child_id: str, exit_: Exit, restarting: bool) -> None:
        if restarting:
            call = self._call
            call.metrics.restarts.labels(actor=child_id, reason=exit_.kind.value).inc()
            call.note_restart(child_id, exit_.kind.value, exit_.reason)

    def on_give_up(self, child_id: str, exit_: Exit) -> None:
        self._call.request_end(Outcome.GAVE_UP, f"{child_id} kept failing: {exit_.reason}")
        self._call.event("gave_up", f"{child_id} kept failing")

    def on_shutdown(self) -> None:
        exit_ = self._handle.exit if self._handle is not None else None
        if exit_ is not None and exit_.abnormal:
            # This incarnation failed: the root starts another for the same call, and
            # the caller's socket stays open for it.
            self._log.warning("call_supervisor_failed", reason=exit_.kind.value, detail=exit_.reason)
            return
        finish_call(self._call, self._log)


def finish_call(call: CallContext, log: Any) -> None:
    """Decide the outcome, record it, and release what the call holds outside its actors.

    The only writer of `call.outcome`: the call's controller (its supervisor's shutdown,
    or the registry when the root gave up on the supervisor).
    """
    if call.ended.is_set():
        return
    call.request_end(Outcome.COMPLETED, "supervisor stopped")
    request = call.end_request
    assert request is not None
    call.outcome, call.outcome_detail = request.outcome, request.detail
    call.event("ended", request.outcome.value)
    call.metrics.calls.labels(outcome=request.outcome.value).inc()
    log.info("call_ended", outcome=request.outcome.value, detail=request.detail)
    # Record the outcome before closing: Twilio asks /voice/after-stream at once.
    call.on_finished(call)
    call.ended.set()
    # When we end the call (assistant hung up, or we gave up), closing Twilio's socket
    # makes Twilio fetch <Connect action>, which answers per the outcome.
    if call.socket is not None:
        call.socket.close(1000)
