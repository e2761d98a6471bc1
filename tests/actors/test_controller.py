"""CallController as a plain object: the call's bookkeeping, without a supervisor around it."""

from __future__ import annotations

from actors.call import CallContext
from actors.controller import CallController
from actors.messages import EventNoted, StatsReported, UplinkMeasured, UplinkRecovered
from calls.outcome import EndRequest, Outcome
from supervision import Exit, ExitKind
from tests.actors.fakes import FakeClock


def controller(call: CallContext) -> CallController:
    return CallController(call, call.log)


def kinds(call: CallContext) -> list[str]:
    return [event["kind"] for event in call.state.events]


def test_stats_reports_are_summed_into_the_call_state(call: CallContext) -> None:
    control = controller(call)
    assert control.handle(StatsReported(frames_in=50, frames_out=40, frames_dropped=1, turn_ms=(420.0,),
                                        latency_out_ms=12.5))
    assert control.handle(StatsReported(frames_in=50, frames_out=10, barge_ins=1, turn_ms=(380.0, 510.0)))
    assert control.handle(UplinkMeasured(3.25))

    stats = call.state.stats
    assert (stats.frames_in, stats.frames_out, stats.frames_dropped, stats.barge_ins) == (100, 50, 1, 1)
    assert (stats.turns, stats.turn_ms) == (3, [420.0, 380.0, 510.0])
    assert call.state.latency_out_ms == 12.5  # a report without a latency keeps the last one
    assert call.state.latency_in_ms == 3.25
    assert not control.handle("not a report")


def test_uplink_recovered_clears_only_the_fault_it_names(call: CallContext, clock: FakeClock) -> None:
    control = controller(call)
    control.child_restarting("vapi", Exit(ExitKind.FAILED, "VapiLinkDead: closed by VAPI"))
    fault = call.state.fault_at_ns
    assert fault == clock.monotonic_ns()
    assert call.state.restarts == {"vapi": 1}

    # A recovery from an older fault (its report crossed a newer failure) changes nothing.
    control.handle(UplinkRecovered(fault - 1, fault + 400_000_000))
    assert call.state.fault_at_ns == fault
    assert "recovered" not in kinds(call)

    control.handle(UplinkRecovered(fault, fault + 250_000_000))
    assert call.state.fault_at_ns is None
    assert call.state.events[-1]["kind"] == "recovered"
    assert call.state.events[-1]["detail"] == "caller audio reaches VAPI again after 250 ms"
    assert call.metrics.value("bridge_fault_recovery_seconds_count") == 1
    assert call.metrics.value("bridge_fault_recovery_seconds_sum") == 0.25


def test_a_restarted_supervisor_notes_the_fault_takes_held_reports_and_returns_the_decided_end(
    call: CallContext, clock: FakeClock
) -> None:
    # What the failed incarnation left: why it failed, an end already decided, a report in flight.
    call.last_supervisor_exit = Exit(ExitKind.FAILED, "ChaosError: injected failure")
    call.end(Outcome.ASSISTANT_ENDED, "customer-ended-call")  # no supervisor: kept in the state
    call.tell_controller(EventNoted("barge_in", "caller_speech"))
    call.tell_controller(StatsReported(barge_ins=1))
    clock.advance(2.0)

    decided = controller(call).started(incarnation=2)

    assert decided == EndRequest(Outcome.ASSISTANT_ENDED, "customer-ended-call")
    assert kinds(call) == ["restart", "barge_in"]
    assert call.state.events[0]["detail"] == "supervisor: failed ChaosError: injected failure"
    assert call.state.fault_at_ns == clock.monotonic_ns()
    assert call.state.stats.barge_ins == 1
    assert not call.held_reports


def test_a_first_start_notes_no_fault_and_has_nothing_decided(call: CallContext) -> None:
    assert controller(call).started(incarnation=1) is None
    assert kinds(call) == []
    assert call.state.fault_at_ns is None
