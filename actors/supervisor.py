"""CallSupervisor: one per call; supervises the call's four actors and runs its controller.

The supervision itself is the generic Supervisor; this module supplies which children
and how each restarts. What a call is and how it ends is the CallController's
(actors/controller.py): the supervisor passes it the call's messages and its children's
exits. A call ends when any part of the process asks (CallContext.end): the caller hangs
up (Twilio's `stop`, or its socket closing), the assistant hangs up (VAPI's ended
status), or the bridge gives up (restart intensity exceeded, no media socket in time).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from actors.call import CallContext
from actors.codec import CodecActor
from actors.controller import CallController
from actors.messages import EndCall, InjectFault, TwilioSocketAttached
from actors.twilio import TwilioActor
from actors.vad import VadActor
from actors.vapi import VapiActor
from calls.outcome import Outcome
from chaos.suffer import suffer
from supervision import (
    Backoff,
    ChildHandle,
    ChildSpec,
    Exit,
    Strategy,
    Supervisor,
    SupervisorFlags,
)

__all__ = ["CALL_FLAGS", "CallSupervisor"]

# One for one: the four children hold independent state, and a codec hiccup is no
# reason to drop a healthy VAPI link. Five restarts in ten seconds: chaos runs inject
# faults on purpose and each recovers in well under a second, while a child that fails
# on every start (a bad API key, a bug) exhausts it within about three seconds of
# backoff and the caller hears the fallback instead of silence.
CALL_FLAGS = SupervisorFlags(
    strategy=Strategy.ONE_FOR_ONE,
    intensity=5,
    period_s=10.0,
    # Every caller frame crosses TwilioActor, CodecActor and VapiActor (and VadActor):
    # in one greenlet that is one wake-up per frame instead of four.
    shared_greenlet=True,
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
        self._controller = CallController(call, self._log)
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
        decided = self._controller.started(self._handle.incarnation if self._handle is not None else 1)
        if decided is not None:
            self._tell_self(EndCall(decided.outcome, decided.detail))
            return
        self._greenlets.spawn(self._await_media, self._call.settings.media_connect_timeout_s)
        self._log.info("call_started")

    def _await_media(self, timeout_s: float) -> None:
        self._call.clock.sleep(timeout_s)
        if self._call.socket is None:
            self._call.end(Outcome.GAVE_UP, f"no media stream within {timeout_s:g}s")

    # Messages ------------------------------------------------------------------------

    def handle_message(self, message: Any) -> Any:
        if self._controller.handle(message):
            return None
        match message:
            case TwilioSocketAttached():
                self._log.info("twilio_socket_attached")
            case EndCall():
                # The call's end request, not the message, says why: the first request wins.
                self._call.request_end(message.outcome, message.detail)
                self.actor_ref.stop(block=False)
            case InjectFault():
                suffer(self._log, message.fault)
            case _:
                return super().handle_message(message)
        return None

    # Supervision callbacks ------------------------------------------------------------

    def on_child_exited(self, child_id: str, exit_: Exit, restarting: bool) -> None:
        if restarting:
            self._controller.child_restarting(child_id, exit_)

    def on_give_up(self, child_id: str, exit_: Exit) -> None:
        self._controller.gave_up(child_id, exit_)

    def on_shutdown(self) -> None:
        exit_ = self._handle.exit if self._handle is not None else None
        if exit_ is not None and exit_.abnormal:
            # This incarnation failed: the root starts another for the same call, and
            # the caller's socket stays open for it.
            self._log.info("call_supervisor_failed", reason=exit_.kind.value, detail=exit_.reason)
            return
        self._controller.finish()
