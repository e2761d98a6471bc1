"""The barge-in bench's matrix of conditions, and its tables and verdicts from the trials' results."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from bench._bargein_trial import Condition, TrialResult

__all__ = ["MATRIX_GROUPS", "Group", "SideResult", "format_report", "format_summary", "matrix"]

LEVELS = (-35.0, -30.0, -24.0, -18.0, -12.0)
ECHOES: tuple[float | None, ...] = (None, -20.0, -10.0, -6.0)
PACES = ("burst", "realtime")
BACKGROUNDS = ("pink-45", "tv-40", "tv-38", "tv-32", "babble-40", "pink-45+tv-38")
# Done-when (b): speakerphone echo, pink noise and a TV, a silent caller.
ROOM_B = "pink-45+tv-38"
DONE_LATENCY_MS = 300.0
DONE_FIRST_FRAME_MS = 400.0
DONE_FALSE_MINUTES = 10.0


@dataclass(frozen=True)
class Group:
    key: str
    title: str
    conditions: tuple[Condition, ...]
    reps: int


def matrix(*, quick: bool, reps: int | None, false_minutes: float, call_minutes: float) -> list[Group]:
    """The groups of conditions a run covers; `quick` is a small subset for a smoke run."""
    if quick:
        return [
            Group("during", "Caller speaks over the assistant", tuple(
                Condition("during", pace, -24.0, echo) for pace in PACES for echo in (None, -10.0)
            ), reps or 1),
            Group("start", "Caller already speaking when the assistant starts", tuple(
                Condition("first-frame", pace, -24.0, -10.0) for pace in PACES
            ), reps or 1),
            Group("silent", "Silent caller: false barge-ins", tuple(
                Condition("silent", pace, None, -10.0, ROOM_B, silent_s=20.0) for pace in PACES
            ), 1),
        ]
    calls_b = max(1, round(false_minutes / call_minutes))
    return [
        Group("during", "Caller speaks over the assistant (starts 0.6-2.5 s into its turn)", tuple(
            Condition("during", pace, level, echo) for pace in PACES for echo in ECHOES for level in LEVELS
        ), reps or 3),
        Group("start", "Caller already speaking when the assistant starts (first frame; or 1 s before)", tuple(
            Condition(timing, pace, level, echo)
            for timing in ("first-frame", "before") for pace in PACES for level in (-30.0, -18.0)
            for echo in (None, -10.0)
        ), reps or 3),
        Group("room", "Caller at -24 dBFS over the assistant, echo -10 dB, sounds in the room", tuple(
            Condition("during", pace, -24.0, -10.0, background) for background in BACKGROUNDS for pace in PACES
        ), reps or 3),
        Group("after", "Caller speaks only after the assistant's turn (nothing to clear)", tuple(
            Condition("after", pace, -24.0, echo) for pace in PACES for echo in (None, -10.0)
        ), reps or 3),
        Group("silent", "Silent caller while the assistant speaks: false barge-ins", tuple(
            Condition("silent", pace, None, echo, room, silent_s=30.0)
            for room, echo in (("none", -6.0), ("tv-32", None), ("babble-40", -10.0)) for pace in PACES
        ), 1),
        Group("done-b", f"Done-when (b): silent caller, echo -10 dB, {ROOM_B}", tuple(
            Condition("silent", pace, None, -10.0, ROOM_B, silent_s=call_minutes * 60.0) for pace in PACES
        ), max(1, calls_b // 2)),
    ]


MATRIX_GROUPS = ("during", "start", "room", "after", "silent", "done-b")


@dataclass
class SideResult:
    label: str
    results: list[TrialResult]
    server_cpu_s: float
    wall_s: float
    log_levels: dict[str, int] = field(default_factory=dict)

    def of(self, condition: Condition) -> list[TrialResult]:
        return [r for r in self.results if r.plan.condition == condition and r.error is None]

    @property
    def errors(self) -> list[TrialResult]:
        return [r for r in self.results if r.error is not None]

    @property
    def call_s(self) -> float:
        return sum(r.stream_s for r in self.results)


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _latency_cell(results: Sequence[TrialResult]) -> tuple[str, str]:
    """"detected/expected" (with how many a false barge-in had cut short first), and p50 / p95 ms."""
    expected = len(results)
    latencies = [lat for r in results if (lat := r.latency_ms) is not None]
    detected = f"{len(latencies)}/{expected}"
    # A false barge-in before the caller spoke drops the rest of the turn: nothing left to clear.
    early = sum(1 for r in results if r.latency_ms is None and r.false_clears)
    if early:
        detected += f" ({early} cut early)"
    if not latencies:
        return detected, "–"
    return detected, f"{_pct(latencies, 50):.0f} / {_pct(latencies, 95):.0f}"


def _false_cell(results: Sequence[TrialResult]) -> str:
    false = sum(r.false_clears for r in results)
    minutes = sum(r.assistant_s for r in results) / 60.0
    if minutes <= 0:
        return "–"
    return f"{false} in {minutes:.1f} min ({false / minutes:.2f}/min)"


def _level(condition: Condition) -> str:
    return "silent" if condition.level_dbfs is None else f"{condition.level_dbfs:g}"


def _echo(condition: Condition) -> str:
    return "none" if condition.echo_db is None else f"{condition.echo_db:g} dB"


def _summary_rows(groups: Sequence[Group]) -> list[tuple[str, list[Condition], str]]:
    """(title, conditions pooled, kind) for the short table: "latency" or "false" rows."""
    conditions = [c for g in groups for c in g.conditions]

    def pick(
        timing: str, pace: str, background: str | None = None,
        levels: tuple[float, ...] | None = None, echoes: tuple[float | None, ...] | None = None,
    ) -> list[Condition]:
        return [
            c for c in conditions
            if c.timing == timing and c.pace == pace
            and (background is None or c.background == background)
            and (levels is None or c.level_dbfs in levels)
            and (echoes is None or c.echo_db in echoes)
        ]

    loud = (-30.0, -24.0, -18.0, -12.0)
    rows: list[tuple[str, list[Condition], str]] = []
    for pace in PACES:
        rows.append((f"over the assistant, {pace}: caller -30 to -12 dBFS, echo none to -10 dB",
                     pick("during", pace, background="none", levels=loud, echoes=(None, -20.0, -10.0)),
                     "latency"))
    for pace in PACES:
        rows.append((f"over the assistant, {pace}: caller -35 dBFS, echo none to -10 dB",
                     pick("during", pace, background="none", levels=(-35.0,), echoes=(None, -20.0, -10.0)),
                     "latency"))
    for pace in PACES:
        rows.append((f"over the assistant, {pace}: echo -6 dB, caller -35 to -12 dBFS",
                     pick("during", pace, background="none", echoes=(-6.0,)), "latency"))
    for pace in PACES:
        rows.append((f"over the assistant, {pace}: -24 dBFS, echo -10 dB, TV / babble / pink noise",
                     [c for c in pick("during", pace) if c.background != "none"], "latency"))
    for timing, title in (("first-frame", "talking from the first frame"), ("before", "talking from 1 s before")):
        for pace in PACES:
            rows.append((f"{title}, {pace} (from the assistant's first audio)",
                         pick(timing, pace), "latency"))
    for pace in PACES:
        rows.append((f"silent caller, {pace}: echo -10 dB + {ROOM_B}",
                     pick("silent", pace, background=ROOM_B), "false"))
    for pace in PACES:
        rows.append((f"silent caller, {pace}: echo -6 dB; TV -32; babble + echo -10 dB",
                     [c for c in pick("silent", pace) if c.background != ROOM_B], "false"))
    rows.append(("every silent stretch (silent callers, and before each caller's onset)",
                 [c for c in conditions if c.timing in ("silent", "during", "after")], "false"))
    return [row for row in rows if row[1]]


def format_summary(groups: Sequence[Group], sides: Sequence[SideResult]) -> list[str]:
    """Markdown: the matrix pooled into a few rows, the sides side by side."""
    names = [side.label for side in sides]
    header = ["condition"]
    for n in names:
        header += [f"{n}: detected", f"{n}: onset → clear p50 / p95 ms"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * 2 * len(names)]
    for title, pooled, kind in _summary_rows(groups):
        cells = [title]
        for side in sides:
            runs = [r for c in pooled for r in side.of(c)]
            if kind == "latency":
                cells += list(_latency_cell(runs))
            else:
                cells += ["false barge-ins:", _false_cell(runs)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def format_report(groups: Sequence[Group], sides: Sequence[SideResult]) -> list[str]:
    """Markdown: one table per group, the sides side by side, then the Done-when verdicts."""
    lines: list[str] = []
    names = [side.label for side in sides]
    for group in groups:
        lines += ["", f"**{group.title}**", ""]
        if group.key in ("silent", "done-b"):
            header = ["pace", "echo", "room"] + [f"{n}: false barge-ins" for n in names]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * len(names)]
            for condition in group.conditions:
                cells = [condition.pace, _echo(condition), condition.background]
                cells += [_false_cell(side.of(condition)) for side in sides]
                lines.append("| " + " | ".join(cells) + " |")
            continue
        if group.key == "after":
            header = ["pace", "echo"] + [f"{n}: clears after the turn" for n in names]
            header += [f"{n}: false barge-ins during the turn" for n in names]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * 2 * len(names)]
            for condition in group.conditions:
                cells = [condition.pace, _echo(condition)]
                for side in sides:
                    runs = side.of(condition)
                    cells.append(f"{sum(r.clears_after_turn for r in runs)} of {len(runs)}")
                cells += [_false_cell(side.of(condition)) for side in sides]
                lines.append("| " + " | ".join(cells) + " |")
            continue
        lead = ["start"] if group.key == "start" else []
        lead += ["pace", "caller dBFS", "echo"] + (["room"] if group.key == "room" else [])
        header = list(lead)
        for n in names:
            header += [f"{n}: detected", f"{n}: p50 / p95 ms"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(lead) + "---:|" * 2 * len(names)]
        for condition in group.conditions:
            cells = [condition.timing] if group.key == "start" else []
            cells += [condition.pace, _level(condition), _echo(condition)]
            cells += [condition.background] if group.key == "room" else []
            for side in sides:
                cells += list(_latency_cell(side.of(condition)))
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "**Done when**", ""]
    header = ["check", *names]
    lines += ["| " + " | ".join(header) + " |", "|---|" + "---|" * len(names)]
    for title, cell in _verdicts(groups):
        lines.append("| " + " | ".join([title] + [cell(side) for side in sides]) + " |")
    lines += ["", "| run | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines.append("| trials (failed) | " + " | ".join(f"{len(s.results)} ({len(s.errors)})" for s in sides) + " |")
    lines.append("| call time s / wall s | " + " | ".join(f"{s.call_s:.0f} / {s.wall_s:.0f}" for s in sides) + " |")
    lines.append(
        "| server CPU ms per call-second | "
        + " | ".join(f"{1000 * s.server_cpu_s / max(s.call_s, 1e-9):.1f}" for s in sides) + " |"
    )
    lines.append(
        "| server log lines: warning / error | "
        + " | ".join(f"{s.log_levels.get('warning', 0)} / {s.log_levels.get('error', 0)}" for s in sides) + " |"
    )
    lines.append(
        "| caller frames late, worst ms | "
        + " | ".join(f"{max((r.send_lag_ms for r in s.results), default=0.0):.0f}" for s in sides) + " |"
    )
    return lines


def _verdicts(groups: Sequence[Group]) -> list[tuple[str, Callable[[SideResult], str]]]:
    conditions = [c for g in groups for c in g.conditions]
    during_a = [
        c for c in conditions
        if c.timing == "during" and c.background == "none" and c.level_dbfs is not None and c.level_dbfs >= -30
        and (c.echo_db is None or c.echo_db <= -10)
    ]
    first = [c for c in conditions if c.timing == "first-frame"]
    silent_b = [c for c in conditions if c.timing == "silent" and c.background == ROOM_B and c.echo_db == -10.0]
    false_all = [c for c in conditions if c.timing in ("silent", "during", "after")]

    def latency_a(side: SideResult) -> str:
        runs = [r for c in during_a for r in side.of(c)]
        if not runs:
            return "not run"
        lats = [lat for r in runs if (lat := r.latency_ms) is not None]
        missed = len(runs) - len(lats)
        p95 = _pct(lats, 95) if lats else float("inf")
        ok = missed == 0 and p95 <= DONE_LATENCY_MS
        p50 = _pct(lats, 50) if lats else float("inf")
        early = sum(1 for r in runs if r.latency_ms is None and r.false_clears)
        cut = f" ({early} cut early by a false barge-in)" if early else ""
        return f"{'PASS' if ok else 'FAIL'}: p95 {p95:.0f} ms (p50 {p50:.0f}), {missed} of {len(runs)} missed{cut}"

    def first_frame(side: SideResult) -> str:
        runs = [r for c in first for r in side.of(c)]
        if not runs:
            return "not run"
        lats = [lat for r in runs if (lat := r.latency_ms) is not None]
        missed = len(runs) - len(lats)
        worst = max(lats) if lats else float("inf")
        p95 = _pct(lats, 95) if lats else float("inf")
        ok = missed == 0 and worst <= DONE_FIRST_FRAME_MS
        return f"{'PASS' if ok else 'FAIL'}: worst {worst:.0f} ms (p95 {p95:.0f}), {missed} of {len(runs)} missed"

    def false_b(side: SideResult) -> str:
        runs = [r for c in silent_b for r in side.of(c)]
        if not runs:
            return "not run"
        false = sum(r.false_clears for r in runs)
        minutes = sum(r.assistant_s for r in runs) / 60.0
        ok = false == 0 and minutes >= DONE_FALSE_MINUTES
        return f"{'PASS' if ok else 'FAIL'}: {false} in {minutes:.1f} min"

    def false_any(side: SideResult) -> str:
        runs = [r for c in false_all for r in side.of(c)]
        return _false_cell(runs)

    return [
        ("(a) onset → clear p95 ≤ 300 ms, caller ≥ -30 dBFS, echo ≤ -10 dB, burst and real time", latency_a),
        ("(a) first-frame caller: clear ≤ 400 ms after the assistant's first audio", first_frame),
        (f"(b) zero false barge-ins over ≥ 10 min, echo -10 dB + {ROOM_B}", false_b),
        ("false barge-ins over every silent stretch of the run", false_any),
    ]
