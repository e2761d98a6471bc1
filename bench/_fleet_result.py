"""What a fleet soak run found, and the markdown table that shows it (see bench/_fleet_soak.py)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench._fleet import RestartDone
from bench._fleet_call import PhoneCall

__all__ = ["FleetSoakResult", "NodeReport", "format_fleet_table", "lost_reason", "nearest_rank"]

_MIB = 1024 * 1024
# The assistant's own decision to end the call: its <Hangup/> is no loss.
_ASSISTANT_ENDED = "assistant-ended"


def lost_reason(call: PhoneCall, outcome: str | None) -> str | None:
    """Why this phone call counts as lost, or None if the caller got what a caller should.

    Lost: the caller heard the fallback (at the webhook or after a stream), a hang-up the
    assistant did not decide, a step that failed, or a line gone dead (audio stopped).
    """
    if call.ended == "hung-up":
        return "audio stopped (last two utterances unanswered)" if call.audio_stopped else None
    if call.ended == "hangup":
        return None if outcome == _ASSISTANT_ENDED else f"hung up by the bridge (outcome {outcome or 'unknown'})"
    if call.ended == "refused":
        return "fallback at the webhook"
    if call.ended == "fallback":
        return f"fallback after the stream ended (outcome {outcome or 'unknown'})"
    return f"failed: {call.detail}"


def nearest_rank(values: list[float], q: float) -> float | None:
    """The q-quantile by nearest rank (a value that occurred); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(frozen=True, kw_only=True)
class NodeReport:
    name: str
    lives: int
    rss_peaks: list[int]  # peak RSS seen in each life, in order
    error_lines: int
    error_events: dict[str, int]  # event -> ERROR lines
    faults: int  # the chaos monkey's injections (its chaos_injected lines)
    exit_status: int | None  # on the final SIGTERM (None: killed)


@dataclass(kw_only=True)
class FleetSoakResult:
    calls: int
    seconds: float
    chaos_rate: float
    seed: int
    call_seconds: float
    restart_every_s: float
    drain_timeout_s: float
    restarts_planned: int
    phone_calls: list[PhoneCall]
    outcomes: dict[str, str]  # call_sid -> the bridge's recorded outcome, where one was found
    restarts: list[RestartDone]
    nodes: list[NodeReport]
    peak_live_calls: int
    workdir: Path
    run_by: str = ""  # date, commit, machine
    problems: list[str] = field(default_factory=list)
    workers: int = 1  # each node's WORKERS
    node_env: dict[str, dict[str, str]] = field(default_factory=dict)
    pass_on: bool = True

    @property
    def lost(self) -> list[tuple[PhoneCall, str]]:
        found = []
        for call in self.phone_calls:
            reason = lost_reason(call, self.outcomes.get(call.call_sid))
            if reason is not None:
                found.append((call, reason))
        return found

    @property
    def silences(self) -> list[float]:
        return [r.silence_s for call in self.phone_calls for r in call.resumes]

    @property
    def ok(self) -> bool:
        return not self.problems and not self.lost


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def format_fleet_table(r: FleetSoakResult) -> str:
    """One markdown table of the run, then the lost calls and problems, if any."""
    calls = r.phone_calls
    ended = Counter(call.ended for call in calls)
    lost = r.lost
    silences = r.silences
    lost_by_restart = Counter(reason.split(" (")[0] for _, reason in lost)
    rows: list[tuple[str, str]] = []
    if r.run_by:
        rows.append(("run", r.run_by))
    rows += [
        ("topology", "nginx (deploy/nginx.conf) -> 2 nodes (`python run.py`"
                     + (f", WORKERS={r.workers} each" if r.workers > 1 else "")
                     + "), Redis, one VAPI simulator process"
                     + "".join(f"; {name}: " + ", ".join(f"{k}={v}" for k, v in env.items())
                               for name, env in sorted(r.node_env.items()))
                     + ("" if r.pass_on else "; busy nodes NOT passing calls on (no X-Bridge-Pass-On)")),
        ("live calls x time", f"{r.calls} x {r.seconds / 60:g} min, calls of {r.call_seconds:g} s (x0.8-1.2), "
                              f"peak live {r.peak_live_calls}"),
        ("chaos", f"CHAOS_RATE {r.chaos_rate:g} faults per live call-minute, CHAOS_SEED {r.seed} (+1 on node-b)"),
        ("rolling restarts (done / planned)",
         f"{len(r.restarts)} / {r.restarts_planned}, one node every {r.restart_every_s:g} s "
         f"(SIGTERM, exit, start on the same port; DRAIN_TIMEOUT_S {r.drain_timeout_s:g})"),
        ("node stop after SIGTERM p50 / max", f"{_s(nearest_rank([x.stop_s for x in r.restarts], 0.5))} / "
                                              f"{_s(max((x.stop_s for x in r.restarts), default=None))}"),
        ("node exit statuses on restart", ", ".join(str(x.exit_status) for x in r.restarts) or "n/a"),
        ("phone calls started (connected)", f"{len(calls)} ({sum(c.connected for c in calls)})"),
        ("phone calls completed (caller hung up)", str(ended.get("hung-up", 0))),
        ("call-minutes", f"{sum(c.stream_s for c in calls) / 60:.1f}"),
        ("faults injected (chaos, both nodes)", str(sum(n.faults for n in r.nodes)) if r.nodes else "n/a"),
        ("**phone calls lost**", f"**{len(lost)}**"),
    ]
    rows += [(f"lost: {reason}", str(n)) for reason, n in sorted(lost_by_restart.items())]
    rows += [
        ("hand-offs (streams resumed)", f"{len(silences)} in {sum(bool(c.resumes) for c in calls)} calls"),
        ("silence per hand-off p50 / p95 / max",
         f"{_s(nearest_rank(silences, 0.5))} / {_s(nearest_rank(silences, 0.95))} / {_s(max(silences, default=None))}"),
        ("utterances answered", f"{sum(c.utterances_judged - c.unanswered for c in calls)} of "
                                f"{sum(c.utterances_judged for c in calls)}"),
    ]
    for node in r.nodes:
        peaks = " -> ".join(f"{p / _MIB:.0f}" for p in node.rss_peaks) or "n/a"
        rows.append((f"{node.name}: peak RSS per life (MiB)", peaks))
    for node in r.nodes:
        events = ", ".join(f"{event} {n}" for event, n in sorted(node.error_events.items()))
        rows.append((f"{node.name}: ERROR lines", f"{node.error_lines}" + (f" ({events})" if events else "")))
    rows.append(("node exits on the final SIGTERM", ", ".join(f"{n.name} {n.exit_status}" for n in r.nodes)))
    rows.append(("result", "PASS" if r.ok else "FAIL"))
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'fleet soak'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    for call, reason in lost[:20]:
        lines.append(f"lost: {call.call_sid}: {reason} after {len(call.resumes)} resumes")
    if len(lost) > 20:
        lines.append(f"lost: ... and {len(lost) - 20} more")
    for restart in r.restarts:
        lines.append(f"restart: {restart.node} at {restart.at_s:.0f} s with {restart.live_before} live calls: "
                     f"exit {restart.exit_status} after {restart.stop_s:.1f} s, "
                     f"ready again after {restart.down_s:.1f} s")
    for problem in r.problems:
        lines.append(f"problem: {problem}")
    lines.append(f"logs: {r.workdir}")
    return "\n".join(lines)
