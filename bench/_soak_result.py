"""What a soak run found, and the markdown table that shows it (see bench/soak.py)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CallResult", "LostLeg", "ProcessSample", "SoakResult", "format_table"]

_MIB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class CallResult:
    """What one simulated caller saw."""

    call_sid: str
    connected: bool  # the media stream started
    stop_sent: bool
    closed_early: bool  # the server closed or dropped the socket before our stop
    close_code: int | None
    error: str | None
    stream_s: float  # from stream start to hang-up (or loss)
    ended_at: float  # unix time the caller's side ended, to compare with the server's record
    audio_s_received: float


@dataclass(frozen=True, kw_only=True)
class LostLeg:
    """A call the server dropped although it did not mean to end it."""

    call_sid: str
    caller_saw: str
    server_outcome: str | None
    server_detail: str


@dataclass(frozen=True, kw_only=True)
class ProcessSample:
    """One answer of the server's GET /admin/process."""

    rss_bytes: int
    greenlets: int
    actors: int
    live_calls: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessSample:
        return cls(
            rss_bytes=int(data["rss_bytes"]),
            greenlets=int(data["greenlets"]),
            actors=int(data["actors"]),
            live_calls=int(data["live_calls"]),
        )


@dataclass(kw_only=True)
class SoakResult:
    """Everything the table shows; `problems` lists why the run failed (empty: passed)."""

    calls: int
    seconds: float
    chaos_rate: float
    seed: int
    call_seconds: float
    call_spread: tuple[float, float]  # each call lasts call_seconds times a draw from this range
    call_results: list[CallResult]
    outcomes: dict[str, int]  # from the server's call records
    faults: dict[tuple[str, ...], int]  # (actor, fault) -> injected
    restarts: dict[tuple[str, ...], int]  # (actor, reason) -> restarts
    legs_lost: list[LostLeg]
    outlived: list[tuple[str, float, str]]  # (call_sid, seconds the call outlived its caller, outcome)
    gave_up: list[tuple[str, str, str]]  # (call_sid, outcome, detail)
    records_missing: int
    recovery_count: int
    recovery_p50: tuple[float, bool] | None
    recovery_p99: tuple[float, bool] | None
    long_lived_actors: int
    before: ProcessSample
    after: ProcessSample
    rss_trend: list[tuple[float, int]]  # (seconds into the run, RSS bytes), about 10 points
    peak_rss_bytes: int
    peak_live_calls: int
    server_exit: int | None
    log_path: Path
    problems: list[str] = field(default_factory=list)
    vapi_sim: str = "embedded"  # or "separate": the VAPI simulator's own process

    @property
    def calls_run(self) -> int:
        return len(self.call_results)

    @property
    def calls_connected(self) -> int:
        return sum(r.connected for r in self.call_results)

    @property
    def call_minutes(self) -> float:
        return sum(r.stream_s for r in self.call_results) / 60.0

    @property
    def call_actors_left(self) -> int:
        return self.after.actors - self.long_lived_actors

    @property
    def greenlet_growth(self) -> int:
        return self.after.greenlets - self.before.greenlets

    @property
    def ok(self) -> bool:
        return not self.problems


# ---- the table -------------------------------------------------------------------


def _seconds(q: tuple[float, bool] | None) -> str:
    if q is None:
        return "n/a"
    value, above = q
    return f"> {value:g} s" if above else f"{value:.3f} s"


def _by_first(counts: dict[tuple[str, ...], int]) -> list[tuple[str, str]]:
    """Rows of "second count, ..." grouped by the first label, for compact cells."""
    groups: dict[str, list[str]] = {}
    for (first, second), n in sorted(counts.items()):
        groups.setdefault(first, []).append(f"{second} {n}")
    return [(first, ", ".join(cells)) for first, cells in groups.items()]


def format_table(result: SoakResult) -> str:
    """One markdown table of the run, then the lost legs and problems, if any."""
    r = result
    rss_growth = (r.after.rss_bytes - r.before.rss_bytes) / _MIB
    rows: list[tuple[str, str]] = [
        ("concurrent calls x time", f"{r.calls} x {r.seconds / 60:g} min, calls of {r.call_seconds:g} s "
                                    f"(x{r.call_spread[0]:g}-{r.call_spread[1]:g}), peak live {r.peak_live_calls}"),
        ("chaos", f"CHAOS_RATE {r.chaos_rate:g} faults per live call-minute, CHAOS_SEED {r.seed}"),
        ("VAPI simulator", "embedded in the server (its memory counts in the server's RSS)"
         if r.vapi_sim == "embedded" else "separate process (not in the server's RSS)"),
        ("calls run (connected)", f"{r.calls_run} ({r.calls_connected})"),
        ("call-minutes", f"{r.call_minutes:.1f}"),
        ("faults injected", str(sum(r.faults.values()))),
    ]
    rows += [(f"faults: {actor}", cells) for actor, cells in _by_first(r.faults)]
    rows.append(("restarts", str(sum(r.restarts.values()))))
    rows += [(f"restarts: {actor}", cells) for actor, cells in _by_first(r.restarts)]
    rows += [
        ("outcomes (server records)", ", ".join(f"{k} {v}" for k, v in sorted(r.outcomes.items())) or "none"),
        ("**Twilio legs lost**", f"**{len(r.legs_lost)}**"),
        ("calls gave up (by the server, on purpose)", str(len(r.gave_up))),
    ]
    reasons = Counter(f"{outcome}: {detail}" for _, outcome, detail in r.gave_up)
    rows += [("  reason", f"{n} x {reason}") for reason, n in reasons.most_common()]
    rows.append(("**calls that outlived their caller**", f"**{len(r.outlived)}**"))
    rows += [
        ("fault -> audio again p50 / p99 (bucket-interpolated)",
         f"{_seconds(r.recovery_p50)} / {_seconds(r.recovery_p99)} (n={r.recovery_count})"),
        ("server RSS before -> after (MiB)",
         f"{r.before.rss_bytes / _MIB:.1f} -> {r.after.rss_bytes / _MIB:.1f} ({rss_growth:+.1f}; "
         f"peak {r.peak_rss_bytes / _MIB:.1f})"),
        ("server RSS over the run (MiB at s)", ", ".join(f"{rss / _MIB:.1f} @{t:.0f}" for t, rss in r.rss_trend)),
        ("server greenlets before -> after", f"{r.before.greenlets} -> {r.after.greenlets} ({r.greenlet_growth:+d})"),
        ("actors after (long-lived: the server's own, counted before any call)",
         f"{r.after.actors} ({r.long_lived_actors} long-lived)"),
        ("**actors left from calls**", f"**{r.call_actors_left}**"),
        ("server exit after SIGTERM", "killed" if r.server_exit is None else str(r.server_exit)),
        ("result", "PASS" if r.ok else "FAIL"),
    ]
    if r.records_missing:
        rows.insert(-1, ("calls without a server record", str(r.records_missing)))
    lines = ["| soak | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    for leg in r.legs_lost:
        lines.append(f"lost leg {leg.call_sid}: caller saw {leg.caller_saw}; server outcome "
                     f"{leg.server_outcome} ({leg.server_detail})")
    for call_sid, late_s, outcome in r.outlived:
        lines.append(f"outlived its caller: {call_sid} ended {late_s:.1f} s after the caller hung up ({outcome})")
    for problem in r.problems:
        lines.append(f"problem: {problem}")
    lines.append(f"server log: {r.log_path}")
    return "\n".join(lines)
