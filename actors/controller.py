"""CallController: the one place that decides how a call ends and keeps its state.

The call's supervisor runs it (actors/supervisor.py): the supervisor restarts actors,
the controller knows what a call is. It is the writer of the call state's controller
fields (calls/state.py): it sums what the actors report by message, notes restarts and
recoveries, and ends the call from its end request, exactly once.
"""

from __future__ import annotations

from typing import Any

from actors.call import CallContext
from actors.messages import EventNoted, StatsReported, StreamStarted, UplinkMeasured, UplinkRecovered
from calls.outcome import EndRequest, Outcome
from observability.logging import Logger
from supervision import Exit

__all__ = ["CallController", "finish_call"]


class CallController:
    """Call control for one incarnation of a call's supervisor; its state is the call's."""

    def __init__(self, call: CallContext, log: Logger) -> None:
        self._call = call
        self._log = log

    def started(self, incarnation: int) -> EndRequest | None:
        """The supervisor started; the end already decided, if one was (it must end at once)."""
        call, state = self._call, self._call.state
        if incarnation > 1:
            # The previous incarnation failed; the registry counted it (supervisor_restarts).
            reason = call.last_supervisor_exit
            self._note_fault("supervisor", reason.kind.value if reason else "", reason.reason if reason else "")
        self.take_held_reports()
        if state.end_request is not None:
            # Decided while the previous incarnation was failing: the message saying so may
            # have died with it; the request in the call's state did not.
            self._log.info("call_end_already_decided", outcome=state.end_request.outcome.value)
        return state.end_request

    def handle(self, message: Any) -> bool:
        """A report from the call's actors; False for anything else."""
        state = self._call.state
        match message:
            case StatsReported():
                state.stats.add(
                    frames_in=message.frames_in,
                    frames_out=message.frames_out,
                    frames_dropped=message.frames_dropped,
                    barge_ins=message.barge_ins,
                    turn_ms=message.turn_ms,
                )
                if message.latency_out_ms is not None:
                    state.latency_out_ms = message.latency_out_ms
            case UplinkMeasured():
                state.latency_in_ms = message.latency_in_ms
            case UplinkRecovered():
                if state.fault_at_ns == message.fault_at_ns:
                    recovery_s = (message.at_ns - message.fault_at_ns) / 1e9
                    state.fault_at_ns = None
                    self._call.metrics.recovery.observe(recovery_s)
                    state.event("recovered", f"caller audio reaches VAPI again after {recovery_s * 1000:.0f} ms")
            case EventNoted():
                state.event(message.kind, message.detail)
            case StreamStarted():
                self._log.info("call_streaming", stream_sid=message.stream_sid)
            case _:
                return False
        return True

    def child_restarting(self, child_id: str, exit_: Exit) -> None:
        state = self._call.state
        state.restarts[child_id] = state.restarts.get(child_id, 0) + 1
        self._call.metrics.restarts.labels(actor=child_id, reason=exit_.kind.value).inc()
        self._note_fault(child_id, exit_.kind.value, exit_.reason)

    def gave_up(self, child_id: str, exit_: Exit) -> None:
        self._call.request_end(Outcome.GAVE_UP, f"{child_id} kept failing: {exit_.reason}")
        self._call.state.event("gave_up", f"{child_id} kept failing")

    def take_held_reports(self) -> None:
        """Reports sent while no supervisor could take them (see CallContext.tell_controller)."""
        held = self._call.held_reports
        while held:
            self.handle(held.popleft())

    def finish(self) -> None:
        self.take_held_reports()
        finish_call(self._call, self._log)

    def _note_fault(self, actor: str, kind: str, reason: str) -> None:
        state = self._call.state
        state.event("restart", f"{actor}: {kind} {reason}".strip())
        if state.fault_at_ns is None:
            state.fault_at_ns = self._call.clock.monotonic_ns()


def finish_call(call: CallContext, log: Logger) -> None:
    """Decide the outcome, record it, and release what the call holds outside its actors.

    The only writer of the state's outcome: the call's controller (or the registry
    standing in for it when the root gave up on the call's supervisor).
    """
    if call.ended.is_set():
        return
    state = call.state
    request = state.end_request
    if request is None:  # stopped without a reason given: the supervisor's own stop
        request = state.end_request = EndRequest(Outcome.COMPLETED, "supervisor stopped")
    state.outcome, state.outcome_detail = request.outcome, request.detail
    state.event("ended", request.outcome.value)
    call.metrics.calls.labels(outcome=request.outcome.value).inc()
    log.info("call_ended", outcome=request.outcome.value, detail=request.detail)
    # Record the outcome before closing: Twilio asks /voice/after-stream at once.
    call.on_finished(call)
    call.ended.set()
    # When we end the call (assistant hung up, or we gave up), closing Twilio's socket
    # makes Twilio fetch <Connect action>, which answers per the outcome.
    if call.socket is not None:
        call.socket.close(1000)
