"""What one simulated call amounted to, how it is judged, and the summary `call` prints."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ANSWER_TIMEOUT_S", "CallReport", "SimDelays", "judge_call", "summarize"]

# An utterance with no assistant audio within this long failed its turn.
ANSWER_TIMEOUT_S = 10.0


@dataclass(frozen=True, kw_only=True)
class SimDelays:
    """What the VAPI simulator adds to every turn by design, before the bridge has any part in it.

    It takes an utterance as ended only after `endpointing_ms` of silence (heard in real
    time), then waits `reply_delay_ms` before it answers. Both 0: unknown (a real VAPI).
    """

    endpointing_ms: float = 0.0
    reply_delay_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return self.endpointing_ms + self.reply_delay_ms


@dataclass(frozen=True, kw_only=True)
class CallReport:
    """Outcome of `SimulatedCaller.run()`.

    `outcome` is "completed" (we sent stop), "assistant-ended" (the server closed the
    stream cleanly after every turn was answered) or "failed" (see `failure`). `turns`
    holds one latency per answered utterance, in ms: end of the utterance's last frame
    sent to the first assistant audio that arrived after it.
    """

    call_sid: str
    ok: bool
    outcome: str
    failure: str | None
    turns: tuple[float, ...]
    audio_ms_received: float
    clears: int
    marks_echoed: int
    duration_s: float
    protocol_errors: tuple[str, ...]
    # One entry per resume (a new stream after the server's side ended the old one): the
    # silence it cost, socket close to the new `start` (sims/caller.py's Resume), in seconds.
    resume_silences_s: tuple[float, ...] = ()


def judge_call(
    *,
    call_sid: str,
    failure: str | None,
    utterance_ends: Sequence[float],
    media_arrivals: Sequence[float],
    closed_early: bool,
    close_code: int | None,
    protocol_errors: Sequence[str],
    audio_ms_received: float,
    clears: int,
    marks_echoed: int,
    duration_s: float,
    resume_silences_s: Sequence[float] = (),
) -> CallReport:
    """Turn what the caller observed into a report; `failure` is a step that already failed.

    Times are monotonic seconds: when each utterance's last frame was sent, and when each
    media message arrived. `closed_early`: the server closed or dropped the stream before
    our stop; with a clean close code and every turn answered, the assistant hung up.
    """
    turns: list[float] = []
    unanswered: list[int] = []
    for number, end in enumerate(utterance_ends, start=1):
        first = next((t for t in media_arrivals if t > end), None)
        if first is None or first - end > ANSWER_TIMEOUT_S:
            unanswered.append(number)
        else:
            turns.append((first - end) * 1000.0)
    outcome = "completed"
    if failure is None and closed_early:
        if close_code in (1000, 1005) and not unanswered:
            outcome = "assistant-ended"
        else:
            failure = f"stream closed by the server before stop (close code {close_code})"
    if failure is None and unanswered:
        failure = f"no assistant audio within {ANSWER_TIMEOUT_S:g} s of utterance(s) {unanswered}"
    if failure is None and protocol_errors:
        failure = f"{len(protocol_errors)} protocol error(s) from the server, first: {protocol_errors[0]}"
    return CallReport(
        call_sid=call_sid,
        ok=failure is None,
        outcome="failed" if failure else outcome,
        failure=failure,
        turns=tuple(turns),
        audio_ms_received=audio_ms_received,
        clears=clears,
        marks_echoed=marks_echoed,
        duration_s=duration_s,
        protocol_errors=tuple(protocol_errors),
        resume_silences_s=tuple(resume_silences_s),
    )


def summarize(reports: Sequence[CallReport], sim: SimDelays | None = None) -> list[str]:
    """Lines for the console: each turn, each failure, then a small table that says what its figures mean.

    With `sim` (the VAPI simulator's own delays), turn latency is split into the simulator's
    share and the rest: the bridge's and the network's.
    """
    lines: list[str] = []
    for report in reports:
        for number, latency in enumerate(report.turns, start=1):
            lines.append(f"{report.call_sid} turn {number}: {latency:.0f} ms")
        if report.resume_silences_s:
            silences = ", ".join(f"{s * 1000:.0f} ms" for s in report.resume_silences_s)
            lines.append(f"{report.call_sid} resumed {len(report.resume_silences_s)}x, silence {silences}")
        if not report.ok:
            lines.append(f"{report.call_sid} FAILED: {report.failure}")
    latencies = np.array([t for report in reports for t in report.turns], dtype=np.float64)
    ok = sum(report.ok for report in reports)
    if latencies.size:
        p50, p95 = np.percentile(latencies, [50, 95])
        latency_line = f"p50 {p50:.0f} ms   p95 {p95:.0f} ms   max {latencies.max():.0f} ms   (n={latencies.size})"
    else:
        latency_line = "no answered turns"
    audio_s = sum(report.audio_ms_received for report in reports) / 1000.0
    lines += [
        "",
        f"calls          ok {ok}   failed {len(reports) - ok}",
        f"turn latency   {latency_line}",
        "               from the end of each caller utterance (its last frame sent) to the first assistant",
        "               audio back (the next media message to arrive).",
    ]
    if sim is not None and sim.total_ms > 0:
        lines += [
            "               Most of it is the VAPI simulator's own, by design: it waits"
            f" {sim.endpointing_ms:.0f} ms of silence",
            f"               to end the utterance, then its reply delay of {sim.reply_delay_ms:.0f} ms"
            f" ({sim.total_ms:.0f} ms a turn),",
            "               plus any wait for its previous speech to finish playing (it speaks in real time).",
        ]
        if latencies.size:
            rest = latencies - sim.total_ms
            p50, p95 = np.percentile(rest, [50, 95])
            lines.append(
                f"               The rest, the bridge's and the network's share: p50 {p50:.0f} ms   p95 {p95:.0f} ms"
            )
    gaps = np.array([s for report in reports for s in report.resume_silences_s], dtype=np.float64)
    if gaps.size:
        lines += [
            f"resumes        {gaps.size} in {sum(bool(r.resume_silences_s) for r in reports)} call(s)"
            f"   silence p50 {np.percentile(gaps, 50) * 1000:.0f} ms   max {gaps.max() * 1000:.0f} ms",
            "               a new stream for a live call after the bridge's side of the old one ended (a node",
            "               handed it off, died, or lost the socket); silence: the old socket's close (or the end",
            "               of the audio it had buffered) to the new stream's `start`, on the caller's clock.",
        ]
    lines += [
        f"audio received {audio_s:.1f} s   clears {sum(r.clears for r in reports)}"
        f"   marks echoed {sum(r.marks_echoed for r in reports)}",
        "               clears: Twilio `clear` messages received, one per barge-in (the bridge cut the",
        "               assistant off because the caller spoke over it; what it had not played was dropped).",
        "               marks echoed: marks the simulated Twilio sent back, each once the audio sent before",
        "               it had finished playing (or at once, when a clear dropped that audio).",
    ]
    return lines
