"""Barge-in bench: real speech over sockets through the real server, in a matrix of conditions.

    python -m bench.bargein [--quick] [--ref '[LABEL=]COMMIT[:KEY=VALUE,...]'] [--side 'LABEL:KEY=VALUE,...']
                            [--parallel 10] [--seed 1] [--reps N] [--false-minutes 10]
                            [--only GROUP,...] [--log-dir DIR]

For each side (a server version and its settings) it starts `python run.py` on a loopback
port, pointed at a VAPI simulator in this process, and places simulated Twilio calls at
it, several at once. In each call the assistant speaks real synthesised speech (espeak-ng,
shaped by sox; nothing recorded is committed), delivered in one burst or paced in real
time as a streaming text-to-speech delivers it, and never stops by itself: the simulator
is not interruptible and sends no `user-interrupted`, so only the bridge's own barge-in
clears what the caller hears. The caller's microphone is mixed as each 20 ms frame goes
out (bench/_bargein_trial.py): its own speech at a level, echo of what it actually heard
on its play-out clock (delayed 40-300 ms, a few dB down, telephone band), and the room.

Measured per condition, in the caller's stream time: barge-ins detected of those expected
(a `clear` within 3 s), speech onset -> `clear` p50/p95 (for a caller already speaking,
from the assistant's first audio instead), and false barge-ins per minute of assistant
speech heard by a caller who had said nothing (silent callers, and the stretch before a
caller's onset). Every side runs the same trials (same seed), one side after another.

Sides: by default this checkout with its settings. `--ref [LABEL=]COMMIT[:KEY=VALUE,...]`
adds that commit's server (checked out with `git worktree add --detach` in a temporary
directory, run with this checkout's virtualenv, removed afterwards), with those settings.
`--side 'LABEL:KEY=VALUE,...'` adds this checkout with extra settings (e.g.
`--side 'energy VAD:VAD_ENGINE=energy'`); with any `--side` (or `--no-this`), this
checkout's default side is only run if also asked for as `--side this`.

`--only` runs some groups of the matrix (during, start, room, after, silent, done-b).
`--log-dir DIR` keeps each side's server log (at INFO: every onset, with what the echo
canceller predicted, and every barge-in) and writes each trial's figures and call SID to
DIR/<side>-trials.jsonl, to match the two up when diagnosing.

Prints markdown tables and the issue's Done-when verdicts. Exit 0 when the run was carried
out (whatever the verdicts), 1 if more than 5 % of the calls failed, 2 if it could not run.
Run it alone on the machine (`flock -x /tmp/cpu.lock ...`): the figures are in real time.
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m bench.bargein`: patch before anything imports sockets.
    from gevent import monkey

    monkey.patch_all()

import argparse
import json
import os
import platform
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gevent
import gevent.pool

from bench._bargein_audio import Corpus, missing_tools
from bench._bargein_matrix import MATRIX_GROUPS, Group, SideResult, format_report, format_summary, matrix
from bench._bargein_trial import PAIRING, TrialPlan, TrialResult, plan_trial, run_trial
from bench._checkout import old_tree
from bench._server import ServerError, ServerProcess
from sims.vapi import VapiSimConfig, VapiSimulator

__all__ = ["Side", "main", "run_bench", "run_side"]

_PROJECT_ROOT = Path(__file__).resolve().parents[1]
_FAILED_SHARE = 0.05
_TICK_S = 30.0


@dataclass(frozen=True)
class Side:
    """A server to measure: a commit's tree (None: this checkout) and settings on top of the defaults."""

    label: str
    commit: str | None = None
    env: dict[str, str] = field(default_factory=dict)


def _clock_ticks() -> int:
    return int(os.sysconf("SC_CLK_TCK"))


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (Linux /proc); 0 where unreadable."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _clock_ticks()


def plan_all(groups: Sequence[Group], corpus: Corpus, seed: int) -> list[TrialPlan]:
    """Every trial of the run, in a shuffled order (conditions spread over the run's time)."""
    rng = random.Random(seed)
    plans = [
        plan_trial(condition, rep, corpus, rng)
        for group in groups for condition in group.conditions for rep in range(group.reps)
    ]
    rng.shuffle(plans)
    return plans


def run_side(
    side: Side, root: Path | None, plans: Sequence[TrialPlan], corpus: Corpus, sim: VapiSimulator, *,
    api_key: str, parallel: int, workdir: Path, log: Callable[[str], None], log_dir: Path | None = None,
) -> SideResult:
    """One server process for `side`, every trial through it, `parallel` calls at a time."""
    level = "INFO" if log_dir is not None else "WARNING"
    env = {"VAPI_API_KEY": api_key, "VAPI_BASE_URL": sim.base_url, "LOG_LEVEL": level, **side.env}
    server = ServerProcess(workdir=workdir, chaos_rate=0.0, seed=1, extra_env=env, root=root)
    server.start()
    results: list[TrialResult] = []
    started = time.monotonic()
    cpu_before = _cpu_s(server.pid)
    try:
        pool = gevent.pool.Pool(parallel)
        last_tick = started

        def one(plan: TrialPlan) -> None:
            nonlocal last_tick
            results.append(run_trial(server.url, server.auth_token, plan, corpus))
            if time.monotonic() - last_tick > _TICK_S:
                last_tick = time.monotonic()
                log(f"  {side.label}: {len(results)}/{len(plans)} calls, {last_tick - started:.0f} s")

        for plan in plans:
            pool.spawn(one, plan)
        pool.join()
        cpu = _cpu_s(server.pid) - cpu_before
    finally:
        status = server.stop()
    if status not in (0, None):
        log(f"  {side.label}: server exited with {status}; see {server.log_path}")
    if log_dir is not None:
        _keep_logs(log_dir, side.label, server.log_path, results)
    return SideResult(label=side.label, results=results, server_cpu_s=cpu, wall_s=time.monotonic() - started,
                      log_levels=_log_levels(server.log_path, log))


def _keep_logs(log_dir: Path, label: str, server_log: Path, results: Sequence[TrialResult]) -> None:
    """The server's log and one JSON line per trial (its call SID and figures) into `log_dir`."""
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
    log_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(server_log, log_dir / f"{name}-server.log")
    with (log_dir / f"{name}-trials.jsonl").open("w", encoding="utf-8") as out:
        for r in results:
            out.write(json.dumps({
                "call_sid": r.call_sid, "condition": r.plan.condition.label, "echo_delay_ms": r.plan.echo_delay_ms,
                "caller_clip": r.plan.caller_clip, "error": r.error, "first_audio_ms": r.first_audio_ms,
                "onset_ms": r.onset_ms,
                "reference_ms": r.reference_ms, "latency_ms": r.latency_ms, "false_clears": r.false_clears,
                "clears_ms": r.clears_ms, "assistant_s": r.assistant_s,
            }) + "\n")


def _log_levels(path: Path, log: Callable[[str], None] | None = None) -> dict[str, int]:
    """How many lines of each level the server logged (JSON lines; others count as "other").

    With `log`, the commonest warning and error events are told to it.
    """
    counts: dict[str, int] = {}
    events: dict[str, int] = {}
    try:
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                    level, event = str(record.get("level", "other")), str(record.get("event", "?"))
                except (ValueError, AttributeError):
                    level, event = "other", "?"
                counts[level] = counts.get(level, 0) + 1
                if level in ("warning", "error", "critical"):
                    events[f"{level} {event}"] = events.get(f"{level} {event}", 0) + 1
    except OSError:
        pass
    if log is not None:
        for name, count in sorted(events.items(), key=lambda item: -item[1])[:5]:
            log(f"  server log: {count} x {name}")
    return counts


def _describe(commit: str | None) -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=_PROJECT_ROOT, check=True, capture_output=True, text=True, timeout=30
        ).stdout.strip()

    if commit is not None:
        return git("rev-parse", "--short", commit)
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_bench(
    sides: Sequence[Side], groups: Sequence[Group], *, seed: int, parallel: int, log: Callable[[str], None],
    log_dir: Path | None = None,
) -> tuple[list[SideResult], list[str]]:
    """Make the sounds, run every side, and return the results with the run's description lines."""
    made = time.monotonic()
    rooms = any(c.background != "none" for group in groups for c in group.conditions)
    corpus = Corpus.make(seed, rooms=rooms)
    plans = plan_all(groups, corpus, seed)
    log(f"sounds made in {time.monotonic() - made:.1f} s; {len(plans)} calls per side")
    api_key = secrets.token_hex(8)
    sim = VapiSimulator(VapiSimConfig(api_key=api_key, record=False, interruptible=False, answers=False))
    sim.on_call = PAIRING.on_call
    sim.start()
    out: list[SideResult] = []
    described: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bargein-") as tmp:
            for number, side in enumerate(sides):
                workdir = Path(tmp) / f"side-{number}"
                workdir.mkdir()
                described.append(f"{side.label}: {_describe(side.commit)}"
                                 + (f", {', '.join(f'{k}={v}' for k, v in side.env.items())}" if side.env else ""))
                log(f"side {side.label} ({described[-1]})")
                if side.commit is None:
                    out.append(run_side(side, None, plans, corpus, sim, api_key=api_key, parallel=parallel,
                                        workdir=workdir, log=log, log_dir=log_dir))
                else:
                    with old_tree(side.commit) as root:
                        out.append(run_side(side, root, plans, corpus, sim, api_key=api_key, parallel=parallel,
                                            workdir=workdir, log=log, log_dir=log_dir))
    finally:
        sim.stop()
    return out, described


def _parse_side(text: str) -> Side:
    label, _, settings = text.partition(":")
    if label == "this" and not settings:
        return Side("this")
    env: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in settings.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--side {text!r}: settings are KEY=VALUE, comma-separated")
        env[key] = value
    if not label:
        raise argparse.ArgumentTypeError(f"--side {text!r}: give a label before the colon")
    return Side(label, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bargein", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small subset (about a minute per side)")
    parser.add_argument("--ref", action="append", default=[], metavar="[LABEL=]COMMIT[:KEY=VALUE,...]",
                        help="also measure the server of this commit, with these settings (first in the tables; "
                        "label default 'ref COMMIT'); repeatable")
    parser.add_argument("--side", action="append", type=_parse_side, default=[], metavar="'LABEL:KEY=VALUE,...'",
                        help="measure this checkout with these settings; repeatable ('this' alone: as configured)")
    parser.add_argument("--no-this", action="store_true",
                        help="without --side: measure the --ref sides only, not this checkout as configured")
    parser.add_argument("--parallel", type=int, default=10, help="calls at once (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="sounds and trials (default %(default)s)")
    parser.add_argument("--reps", type=int, help="trials per condition (default 3; --quick 1)")
    parser.add_argument("--false-minutes", type=float, default=10.0,
                        help="assistant speech for Done-when (b), split over calls (default %(default)g)")
    parser.add_argument("--call-minutes", type=float, default=1.0,
                        help="assistant speech per call of Done-when (b) (default %(default)g)")
    parser.add_argument("--only", metavar="GROUP,...",
                        help=f"run only these groups of the matrix ({', '.join(MATRIX_GROUPS)})")
    parser.add_argument("--log-dir", type=Path, metavar="DIR",
                        help="keep each side's server log (at INFO) and its trials' figures here")
    args = parser.parse_args(argv)
    if args.parallel < 1 or (args.reps is not None and args.reps < 1):
        parser.error("--parallel and --reps must be at least 1")
    if args.false_minutes <= 0 or args.call_minutes <= 0:
        parser.error("--false-minutes and --call-minutes must be positive")
    if reason := missing_tools():
        print(f"bench.bargein: cannot run: {reason}", file=sys.stderr)
        return 2

    sides = []
    for ref in args.ref:
        named, _, settings = ref.partition(":")
        label, _, commit = named.rpartition("=")
        env = _parse_side(f"x:{settings}").env if settings else {}
        sides.append(Side(label or f"ref {commit}", commit=commit, env=env))
    sides += args.side or ([] if args.no_this else [Side("this")])
    if not sides:
        parser.error("nothing to measure: --no-this needs a --ref")
    groups = matrix(quick=args.quick, reps=args.reps, false_minutes=args.false_minutes,
                    call_minutes=args.call_minutes)
    if args.only:
        wanted = {key.strip() for key in args.only.split(",") if key.strip()}
        if unknown := wanted - set(MATRIX_GROUPS):
            parser.error(f"--only: no group {', '.join(sorted(unknown))}; groups are {', '.join(MATRIX_GROUPS)}")
        groups = [group for group in groups if group.key in wanted]

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = time.monotonic()
    try:
        results, described = run_bench(sides, groups, seed=args.seed, parallel=args.parallel, log=log,
                                       log_dir=args.log_dir)
    except (ServerError, subprocess.SubprocessError, OSError) as exc:
        print(f"bench.bargein: cannot run: {exc}", file=sys.stderr)
        return 2
    print(f"Barge-in bench, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {_cpu_model()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}; seed {args.seed}, "
          f"{args.parallel} calls at once, {time.monotonic() - started:.0f} s in all.")
    for line in described:
        print(f"- {line}")
    print()
    print("**Summary** (each row pools the conditions it names; the tables below have every one)")
    print()
    for line in format_summary(groups, results):
        print(line)
    for line in format_report(groups, results):
        print(line)
    failed = sum(len(side.errors) for side in results)
    total = sum(len(side.results) for side in results)
    for side in results:
        for bad in side.errors[:5]:
            log(f"{side.label}: call failed: {bad.plan.condition.label}: {bad.error}")
    return 1 if total == 0 or failed > _FAILED_SHARE * total else 0


if __name__ == "__main__":
    sys.exit(main())
