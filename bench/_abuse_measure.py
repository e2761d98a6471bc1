"""What the abuse bench measures, and how it judges and prints a case: no sockets here.

The arithmetic (gaps, RSS, CPU, log lines) and the verdict are plain functions over
plain data, so they can be tested without a server.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import gevent
import numpy as np

__all__ = [
    "GAP_LIMIT_MS",
    "LOG_LINES_PER_EVENT",
    "RSS_LIMIT_MIB",
    "CaseResult",
    "Check",
    "Finding",
    "LoopLag",
    "ProcSampler",
    "VapiTracker",
    "count_log_lines",
    "cpu_seconds",
    "format_case",
    "format_summary",
    "judge",
    "read_rss_bytes",
    "worst_gap_ms",
]

# Pass criteria (the brief): no gap of the legit call longer than this, either way...
GAP_LIMIT_MS = 250.0
# ...the server's RSS grows by no more than this during a case...
RSS_LIMIT_MIB = 50.0
# ...and no single log event is written more often than this during a case: a flood is
# "a handful of lines plus a suppressed summary", never a line per bad input.
LOG_LINES_PER_EVENT = 25
# The bench's own event loop late by more than this: its gap figures may be its own.
BENCH_LAG_WARN_MS = 100.0
_MIB = 1024 * 1024
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The first audio frame of a VAPI call above this peak (int16) makes it a "loud" call:
# the legit caller sends digital silence, attackers and victims send loud audio.
_LOUD_PEAK = 64
_RELINK_MODE = "assistant-waits-for-user"
# One line per HTTP request served by design (the server's structured `http_request`, or
# gevent-websocket's plain line in older versions; refused requests write none): counted
# apart, and not held to the per-event cap, which is about lines per bad input.
ACCESS_LOGGERS = frozenset({"geventwebsocket.handler", "gevent.pywsgi"})
ACCESS_EVENTS = frozenset({"http_request"})
ACCESS_LOG = "<access log>"


# ---- /proc ---------------------------------------------------------------------------


def read_rss_bytes(pid: int) -> int | None:
    """VmRSS of `pid` from /proc/<pid>/status; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of `pid` from /proc/<pid>/stat, in seconds; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class ProcSampler:
    """Samples a process's RSS every `every_s` in a greenlet: (monotonic time, bytes)."""

    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        self.pid = pid
        self.every_s = every_s
        self.samples: list[tuple[float, int]] = []
        self._greenlet: gevent.Greenlet[[], None] | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=1.0)

    def _run(self) -> None:
        while True:
            rss = read_rss_bytes(self.pid)
            if rss is not None:
                self.samples.append((time.monotonic(), rss))
            gevent.sleep(self.every_s)

    def before_and_max(self, t0: float, t1: float) -> tuple[int | None, int | None]:
        """The last sample at or before `t0` (else the first after) and the peak within [t0, t1]."""
        return rss_before_and_max(self.samples, t0, t1)


def rss_before_and_max(samples: Sequence[tuple[float, int]], t0: float, t1: float) -> tuple[int | None, int | None]:
    before = [rss for t, rss in samples if t <= t0]
    during = [rss for t, rss in samples if t0 <= t <= t1]
    start = before[-1] if before else (during[0] if during else None)
    return start, (max(during) if during else start)


class LoopLag:
    """How late this process's own event loop runs: a greenlet that sleeps 5 ms and times it."""

    def __init__(self, every_s: float = 0.005) -> None:
        self.every_s = every_s
        self.samples: list[tuple[float, float]] = []
        self._greenlet: gevent.Greenlet[[], None] | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=1.0)

    def _run(self) -> None:
        while True:
            before = time.monotonic()
            gevent.sleep(self.every_s)
            now = time.monotonic()
            self.samples.append((now, now - before - self.every_s))

    def worst_ms(self, t0: float, t1: float) -> float:
        return max((lag for t, lag in self.samples if t0 <= t <= t1), default=0.0) * 1000.0


# ---- gaps ----------------------------------------------------------------------------


def worst_gap_ms(arrivals: Iterable[float], t0: float, t1: float) -> float:
    """The longest stretch of [t0, t1] without an arrival, in ms.

    The stretch before the first arrival counts from the last arrival before `t0` (or
    from `t0` if there was none), and the one after the last arrival runs to `t1`: a
    stream that stops for good has a gap as long as the rest of the window.
    """
    times = sorted(arrivals)
    before = [t for t in times if t < t0]
    edges = [before[-1] if before else t0, *(t for t in times if t0 <= t <= t1), t1]
    return max(b - a for a, b in pairwise(edges)) * 1000.0


# ---- the server's log ------------------------------------------------------------------


def count_log_lines(path: Path, offset: int, end: int | None = None) -> tuple[int, Counter[str]]:
    """Lines the server wrote from byte `offset` (to `end`) and how many of each event.

    JSON lines count under their "event"; anything else (tracebacks, stray prints)
    under "<not json>".
    """
    events: Counter[str] = Counter()
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            data = log.read() if end is None else log.read(max(0, end - offset))
    except OSError:
        return 0, events
    lines = [line for line in data.split(b"\n") if line.strip()]
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            events["<not json>"] += 1
            continue
        if not isinstance(record, dict):
            events["<not json>"] += 1
        elif record.get("logger") in ACCESS_LOGGERS or record.get("event") in ACCESS_EVENTS:
            events[ACCESS_LOG] += 1
        elif "logger" in record:
            # stdlib logging (a library): the message varies, the logger does not.
            events[f"[{record['logger']!s}] {record.get('level', '')!s}"] += 1
        else:
            events[str(record.get("event", "<no event>"))] += 1
    return len(lines), events


# ---- VAPI calls on the simulator ---------------------------------------------------------


@dataclass
class SimCallInfo:
    call_id: str
    created_at: float
    first_message_mode: str | None
    audio_format: str
    loud: bool | None = None  # decided on its first audio frame
    audio_bytes: int = 0

    @property
    def relink(self) -> bool:
        """A replacement link of a call that already greeted (the bridge asks for no second greeting)."""
        return self.first_message_mode == _RELINK_MODE


class VapiTracker:
    """Counts the VAPI calls the server creates on the simulator, and times the legit call's audio.

    Hooked into the simulator (`VapiSimulator.on_call`, `SimCall.on_audio`). Arrival
    times are kept only for quiet calls (the legit call and its re-links); byte counts
    for every call.
    """

    def __init__(self, other_greeting_ms: int = 3000) -> None:
        self.calls: dict[str, SimCallInfo] = {}
        self.sim_calls: dict[str, Any] = {}
        self.arrivals: dict[str, list[float]] = {}
        # The next call created keeps the simulator's (long) greeting: set just before the
        # legit call's webhook. Every other call greets briefly: rendering a long greeting
        # costs this process tens of ms per call, which would show up as gaps.
        self.long_greeting_next = False
        self._other_greeting_ms = other_greeting_ms

    def on_call(self, call: Any) -> None:
        self.calls[call.call_id] = SimCallInfo(
            call.call_id, time.monotonic(), call.first_message_mode, call.audio_format
        )
        self.sim_calls[call.call_id] = call
        call.on_audio = self._on_audio
        if self.long_greeting_next:
            self.long_greeting_next = False
        else:
            call.greeting_ms = min(call.greeting_ms, self._other_greeting_ms)

    def _on_audio(self, call: Any, data: bytes) -> None:
        now = time.monotonic()
        info = self.calls.get(call.call_id)
        if info is None:
            return
        info.audio_bytes += len(data)
        if info.loud is None:
            info.loud = is_loud(data, info.audio_format)
        if not info.loud:
            self.arrivals.setdefault(call.call_id, []).append(now)

    def ids(self) -> list[str]:
        return list(self.calls)

    def created_between(self, t0: float, t1: float) -> list[SimCallInfo]:
        return [info for info in self.calls.values() if t0 <= info.created_at <= t1]

    def legit_chain(self, legit_id: str) -> list[str]:
        """The legit call's VAPI call and its re-links: each a quiet re-link created after the
        previous link of the chain had ended (a re-link of another call does not qualify
        while the legit link is up)."""
        chain = [legit_id]
        for info in sorted(self.calls.values(), key=lambda i: i.created_at):
            if info.call_id == legit_id or not info.relink or info.loud is not False:
                continue
            previous = self.sim_calls.get(chain[-1])
            ended = getattr(previous, "ended", None)
            if info.created_at > self.calls[chain[-1]].created_at and ended is not None and ended.is_set():
                chain.append(info.call_id)
        return chain

    def legit_arrivals(self, legit_id: str) -> list[float]:
        """Arrivals of caller audio at the legit call's VAPI call and its re-links."""
        return sorted(t for call_id in self.legit_chain(legit_id) for t in self.arrivals.get(call_id, []))

    def audio_seconds(self, call_ids: Iterable[str]) -> float:
        total = 0.0
        for call_id in call_ids:
            info = self.calls.get(call_id)
            if info is not None:
                total += info.audio_bytes / (8000.0 if info.audio_format == "mulaw" else 32000.0)
        return total


def is_loud(data: bytes, audio_format: str) -> bool:
    if audio_format == "mulaw":
        from audio.mulaw import ulaw_to_pcm16

        pcm = ulaw_to_pcm16(data)
    else:
        pcm = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2")
    return bool(pcm.size) and int(np.max(np.abs(pcm.astype(np.int32)))) > _LOUD_PEAK


# ---- results ---------------------------------------------------------------------------


@dataclass
class Finding:
    """One thing an attack achieved (or did not). `ok`: True passes, False fails, None is information."""

    attack: str
    metric: str
    value: Any
    ok: bool | None = None
    want: str = ""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class CaseResult:
    key: str
    name: str
    title: str
    window_s: float = 0.0
    ran: bool = False
    error: str | None = None
    # the legit call
    legit_alive: bool = False
    legit_detail: str = ""
    inbound_gap_ms: float | None = None
    outbound_gap_ms: float | None = None
    warmup_inbound_gap_ms: float | None = None
    warmup_outbound_gap_ms: float | None = None
    # the server
    rss_before_bytes: int | None = None
    rss_max_bytes: int | None = None
    cpu_percent: float | None = None
    log_lines: int = 0
    log_events: dict[str, int] = field(default_factory=dict)
    vapi_fresh: int = 0
    vapi_relinks: int = 0
    healthz_worst_ms: float | None = None
    healthz_failures: int = 0
    # the bench itself
    bench_cpu_percent: float | None = None
    bench_lag_ms: float | None = None
    findings: list[Finding] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    workdir: str = ""
    checks: list[Check] = field(default_factory=list)

    @property
    def rss_growth_mib(self) -> float | None:
        if self.rss_before_bytes is None or self.rss_max_bytes is None:
            return None
        return (self.rss_max_bytes - self.rss_before_bytes) / _MIB

    @property
    def ok(self) -> bool:
        return self.ran and bool(self.checks) and all(check.ok for check in self.checks)


def judge(result: CaseResult) -> list[Check]:
    """The pass criteria, each with what was measured. Stored on the result and returned."""
    checks: list[Check] = []
    if not result.ran:
        checks.append(Check("case ran", False, result.error or "did not run"))
        result.checks = checks
        return checks
    failed = [f for f in result.findings if f.ok is False]
    checks.append(Check(
        "attack achieved nothing it should not", not failed,
        "; ".join(f"{f.attack}: {f.metric} = {_fmt(f.value)}" for f in failed) or
        f"{sum(f.ok is True for f in result.findings)} findings as wanted",
    ))
    checks.append(Check("no extra VAPI call", result.vapi_fresh == 0,
                        f"{result.vapi_fresh} new VAPI calls during the attack"))
    checks.append(Check("legit call alive", result.legit_alive, result.legit_detail))
    for name, gap in (("inbound", result.inbound_gap_ms), ("outbound", result.outbound_gap_ms)):
        checks.append(Check(
            f"legit {name} gap <= {GAP_LIMIT_MS:g} ms", gap is not None and gap <= GAP_LIMIT_MS,
            "not measured" if gap is None else f"{gap:.0f} ms",
        ))
    growth = result.rss_growth_mib
    checks.append(Check(
        f"server RSS growth <= {RSS_LIMIT_MIB:g} MiB", growth is not None and growth <= RSS_LIMIT_MIB,
        "not measured" if growth is None else f"{growth:+.1f} MiB",
    ))
    top = max(((e, n) for e, n in result.log_events.items() if e != ACCESS_LOG), key=lambda item: item[1],
              default=("-", 0))
    checks.append(Check(
        f"no log event > {LOG_LINES_PER_EVENT} lines", top[1] <= LOG_LINES_PER_EVENT,
        f"{result.log_lines} lines ({result.log_events.get(ACCESS_LOG, 0)} access log); "
        f"most: {top[0]} x{top[1]}",
    ))
    if result.problems:
        checks.append(Check("bench ran cleanly", False, "; ".join(result.problems)))
    result.checks = checks
    return checks


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _mark(ok: bool | None) -> str:
    return {True: "[ ok ]", False: "[FAIL]", None: "[info]"}[ok]


def _num(value: float | None, spec: str, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def format_case(result: CaseResult) -> str:
    """A readable block for one case; ends with its PASS/FAIL line."""
    if not result.checks:
        judge(result)
    lines = [f"== case {result.key} {result.name}: {result.title} ({result.window_s:g} s) =="]
    if result.ran:
        lines.append(
            f"legit call: alive {'yes' if result.legit_alive else 'NO'} ({result.legit_detail}); worst gap "
            f"inbound {_num(result.inbound_gap_ms, '.0f', ' ms')}, "
            f"outbound {_num(result.outbound_gap_ms, '.0f', ' ms')} "
            f"(warm-up before the attack: {_num(result.warmup_inbound_gap_ms, '.0f')} / "
            f"{_num(result.warmup_outbound_gap_ms, '.0f')} ms)"
        )
        before = None if result.rss_before_bytes is None else result.rss_before_bytes / _MIB
        top = ", ".join(f"{event} {count}" for event, count in
                        sorted(result.log_events.items(), key=lambda item: -item[1])[:5])
        lines.append(
            f"server: RSS {_num(before, '.1f')} MiB, growth {_num(result.rss_growth_mib, '+.1f')} MiB; "
            f"CPU {_num(result.cpu_percent, '.0f')} % of a core; {result.log_lines} log lines ({top or 'none'})"
        )
        lines.append(
            f"VAPI calls created during the attack: {result.vapi_fresh} new, {result.vapi_relinks} re-links; "
            f"/healthz worst {_num(result.healthz_worst_ms, '.0f', ' ms')}, {result.healthz_failures} failed"
        )
        lag = result.bench_lag_ms
        note = (f"  (bench lagged over {BENCH_LAG_WARN_MS:g} ms: gaps may be partly the bench's own)"
                if lag is not None and lag > BENCH_LAG_WARN_MS else "")
        lines.append(f"bench: CPU {_num(result.bench_cpu_percent, '.0f')} %, event loop late by at most "
                     f"{_num(lag, '.0f', ' ms')}{note}; server log {result.workdir}/server.log")
        lines.append("attack:")
        for f in result.findings:
            want = f" (want: {f.want})" if f.want else ""
            lines.append(f"  {_mark(f.ok)} {f.attack}: {f.metric} = {_fmt(f.value)}{want}")
    lines.append("checks:")
    for check in result.checks:
        lines.append(f"  {_mark(check.ok)} {check.name}: {check.detail}")
    lines.append(f"RESULT {result.key} {result.name}: {'PASS' if result.ok else 'FAIL'}")
    return "\n".join(lines)


def format_summary(results: Sequence[CaseResult]) -> str:
    """One markdown table over every case run."""
    rows = [
        "| case | result | legit alive | worst gap in / out ms | RSS growth MiB | CPU % | new VAPI calls | "
        "log lines (most of one event, access log aside) | failed checks |",
        "|---|---|---|---|---:|---:|---:|---|---|",
    ]
    for r in results:
        if not r.checks:
            judge(r)
        failed = ", ".join(c.name for c in r.checks if not c.ok) or "-"
        top = max((n for e, n in r.log_events.items() if e != ACCESS_LOG), default=0)
        rows.append(
            f"| {r.key} {r.name} | {'PASS' if r.ok else 'FAIL'} | {'yes' if r.legit_alive else 'no'} | "
            f"{_num(r.inbound_gap_ms, '.0f')} / {_num(r.outbound_gap_ms, '.0f')} | "
            f"{_num(r.rss_growth_mib, '+.1f')} | {_num(r.cpu_percent, '.0f')} | {r.vapi_fresh} | "
            f"{r.log_lines} ({top}) | {failed} |"
        )
    return "\n".join(rows)
