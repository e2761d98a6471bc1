"""Soak: simulated calls against a real server process under the chaos monkey.

    python -m bench.soak --calls 20 --minutes 10 --chaos-rate 2 --seed 42
                         [--call-seconds 75] [--port P] [--vapi-sim embedded|separate]
    python -m bench.soak --fleet --calls 20 --minutes 6 --chaos-rate 1 --seed 42
                         [--call-seconds 75] [--restart-every 60] [--drain-timeout 15]

`--fleet` runs two nodes behind nginx with Redis and restarts them in turn while the
calls go on: bench/_fleet_soak.py says how. Without it, what follows.

Starts `python run.py` (embedded VAPI simulator, CHAOS_RATE and CHAOS_SEED as given) on a
loopback port and keeps `--calls` simulated Twilio callers talking to it for `--minutes`:
each speaks a conversation (speech-like utterances and pauses, continuous 20 ms frames)
for 0.8-1.2x `--call-seconds`, sends `stop`, and a new call takes its place. Then it
lets the last calls end, reads the server's leftovers, sends SIGTERM, and prints one
markdown table. Exit 0 only if no Twilio leg was lost, no call outlived its caller, no
actor of a call was left, the server's greenlets did not grow, every call connected, and
the server exited 0 on SIGTERM; 1 otherwise, 2 if the run could not be carried out.

Method:
* Warm-up. Before "before" is recorded, one round of `--calls` concurrent short calls
  runs and ends: first-call imports, caches, the allocator's high-water mark for that
  many calls and chaos's code paths are start-up cost, not a leak.
* Long-lived actors (the root supervisor, the chaos monkey, the embedded VAPI
  simulator's service actor) are counted once the server answers /healthz, before any
  call; "actors left from calls" is the count after the run minus that.
* A Twilio leg is lost when the server closed or dropped a caller's socket (or stopped
  reading it) before the caller's `stop`, and the server's record of that call does not
  say it ended the call on purpose (gave-up, failed, assistant-ended).
* A call outlived its caller when the server's record of it ends more than
  10 s after the caller hung up: its actors lived on with nobody on the line.
* Counters and the recovery histogram are the change between the snapshot after warm-up
  and the one after the run. Fault -> audio again is the server's
  `bridge_fault_recovery_seconds` (actor failure -> caller audio reaching VAPI again);
  its p50/p99 are interpolated inside histogram buckets.
* The server's RSS, greenlets and actors include the embedded VAPI simulator's. `--vapi-sim
  separate` runs the simulator in a process of its own, so they measure the bridge alone.
* Every wait is bounded; the run cannot outlive `seconds + 1.2 * call_seconds + 300 s`.
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m bench.soak`: patch before anything imports sockets.
    from gevent import monkey

    monkey.patch_all()

import argparse
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import gevent.monkey
import gevent.pool

from bench._prom import Snapshot, bucket_quantile, counter_delta, histogram_delta, parse_snapshot
from bench._server import ServerError, ServerProcess, free_port
from bench._soak_result import CallResult, LostLeg, ProcessSample, SoakResult, format_table
from bench._vapi_sim import VapiSimProcess
from sims.caller import CallerConfig, CallerError, SimulatedCaller
from sims.script import CallerScript, Pause, Say

__all__ = ["CallResult", "SoakAborted", "SoakResult", "drive_call", "format_table", "main", "run_soak"]

VAPI_SIM_MODES = ("embedded", "separate")
# Endings the server chose on purpose: its socket close is the policy, not a lost leg.
DELIBERATE_ENDINGS = frozenset({"gave-up", "failed", "assistant-ended"})
_GREETING_MS = 1500  # the caller listens to the greeting first
_SAY_MS = (700, 2800)
_PAUSE_MS = (1500, 4500)
_LENGTH_SPREAD = (0.8, 1.2)  # call length as a fraction of --call-seconds
_MIN_CALL_S = 3.0  # less time than this left: start no new call
# A call's own bound beyond its script: webhook, connect, a send blocked for the
# caller's 5 s socket timeout, and the closing handshake.
_CALL_MARGIN_S = 30.0
_WARMUP_S = 5.0
_SERVER_START_S = 30.0
_DRAIN_WAIT_S = 30.0  # live_calls to reach 0 once every caller has hung up
_SETTLE_S = 20.0  # greenlets and actors to come back down
_RECORDS_WAIT_S = 10.0
_STOP_WAIT_S = 20.0
_SAMPLE_EVERY_S = 5.0
_PROGRESS_EVERY_S = 30.0
# The watchdog's allowance beyond the calls themselves: more than the sum of the other
# bounded phases (start, warm-up and its drain, drain, settle, records, stop, HTTP timeouts).
_WATCHDOG_MARGIN_S = 300.0
_MIB = 1024 * 1024
# A call the server ends this long after its caller hung up had lost track of the hang-up.
_OUTLIVED_S = 10.0


class SoakAborted(Exception):
    """The run could not be carried out (the server did not start or stopped answering)."""


# ---- one call ----------------------------------------------------------------------


class _CallTimeout(Exception):
    pass


def conversation(length_s: float, rng: random.Random) -> CallerScript:
    """Greeting, then utterances and pauses of random length, `length_s` in all."""
    target = int(length_s * 1000)
    segments: list[Say | Pause] = [Pause(ms=min(_GREETING_MS, target))]
    total = segments[0].ms
    while total < target:
        say = min(rng.randint(*_SAY_MS), target - total)
        segments.append(Say(ms=say))
        total += say
        if total < target:
            pause = min(rng.randint(*_PAUSE_MS), target - total)
            segments.append(Pause(ms=pause))
            total += pause
    return CallerScript(tuple(s for s in segments if s.ms >= 20))


def drive_call(server: ServerProcess, script: CallerScript, timeout_s: float) -> CallResult:
    """Place one call, speak `script` in real time, hang up with `stop`. Never raises CallerError."""
    caller = SimulatedCaller(
        CallerConfig(server_url=server.url, public_url=server.url, auth_token=server.auth_token, script=script)
    )
    connected = stop_sent = False
    error: str | None = None
    started = time.monotonic()
    try:
        with gevent.Timeout(timeout_s, _CallTimeout):
            status, _ = caller.post_webhook()
            if status != 200 or caller.stream_url is None:
                raise CallerError(f"webhook answered HTTP {status} without a <Stream>")
            caller.connect()
            caller.start_stream()
            connected, started = True, time.monotonic()
            for _, pcm in script.render():
                caller.send_audio(pcm)
            caller.send_stop()
            stop_sent = True
    except _CallTimeout:
        error = f"call did not finish within {timeout_s:g} s"
    except CallerError as exc:
        error = str(exc)
    finally:
        ended, ended_at = time.monotonic(), time.time()
        caller.close()  # bounded: a 2 s close handshake, then its greenlets are killed
    return CallResult(
        call_sid=caller.call_sid,
        connected=connected,
        stop_sent=stop_sent,
        closed_early=caller.closed_early,
        close_code=caller.close_code,
        error=error,
        stream_s=ended - started if connected else 0.0,
        ended_at=ended_at,
        audio_s_received=len(caller.received_ulaw) / 8000.0,
    )


# ---- the run -----------------------------------------------------------------------


def _stats(server: ServerProcess) -> ProcessSample:
    return ProcessSample.from_json(server.admin("/admin/process"))


def _wait_for(server: ServerProcess, done: Callable[[ProcessSample], bool], timeout_s: float) -> ProcessSample:
    """Poll /admin/process until `done` (or the timeout); the last sample either way."""
    deadline = time.monotonic() + timeout_s
    sample = _stats(server)
    while not done(sample) and time.monotonic() < deadline:
        gevent.sleep(0.5)
        sample = _stats(server)
    return sample


def _run_calls(
    server: ServerProcess, *, calls: int, seconds: float, call_seconds: float, seed: int,
    results: list[CallResult], log: Callable[[str], None],
) -> None:
    """`calls` workers, each placing calls back to back until `seconds` have passed."""
    end = time.monotonic() + seconds
    stagger_s = min(5.0, call_seconds / 2)

    def worker(index: int) -> None:
        rng = random.Random(seed * 1_000 + index)
        gevent.sleep(stagger_s * index / calls)
        while (remaining := end - time.monotonic()) >= _MIN_CALL_S:
            length = min(call_seconds * rng.uniform(*_LENGTH_SPREAD), remaining)
            results.append(drive_call(server, conversation(length, rng), length + _CALL_MARGIN_S))

    group = gevent.pool.Group()
    for index in range(calls):
        group.spawn(worker, index).link_exception(lambda g: log(f"soak worker crashed: {g.exception!r}"))
    # Each call bounds itself; this bounds the workers should one not.
    group.join(timeout=seconds + call_seconds * _LENGTH_SPREAD[1] + _CALL_MARGIN_S + 10.0)
    group.kill(block=True, timeout=5.0)


def _records(server: ServerProcess, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """The server's call records for `wanted` SIDs (it writes them a moment after each call)."""
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + _RECORDS_WAIT_S
    while True:
        history = server.admin(f"/admin/history?limit={min(1000, len(wanted) + 100)}")
        found.update({r["call_sid"]: r for r in history["calls"] if r["call_sid"] in wanted})
        for call_sid in wanted - found.keys():
            record = server.admin_or_none(f"/admin/calls/{call_sid}")
            if record is not None and not record.get("live"):
                found[call_sid] = record
        if found.keys() >= wanted or time.monotonic() > deadline:
            return found
        gevent.sleep(1.0)


def _still_live(server: ServerProcess, results: list[CallResult]) -> list[str]:
    """One line per call the server still holds although its caller is gone: what each side saw."""
    ours = {r.call_sid: r for r in results}
    lines = []
    for call in server.admin("/admin/calls")["calls"]:
        r = ours.get(call["call_sid"])
        caller = "unknown" if r is None else ("hung up with stop" if r.stop_sent else _caller_saw(r))
        events = "; ".join(f"{e['kind']} {e['detail']}" for e in call.get("events", [])[-6:])
        lines.append(f"still live: {call['call_sid']} (caller: {caller}); last events: {events}")
    return lines


def _trend(samples: list[tuple[float, ProcessSample]], points: int = 10) -> list[tuple[float, int]]:
    """About `points` evenly spaced RSS samples, first and last included.

    A leak climbs, a high-water mark levels off.
    """
    step = max(1, round((len(samples) - 1) / (points - 1))) if len(samples) > 1 else 1
    picked = samples[::step]
    if picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    return [(t, s.rss_bytes) for t, s in picked]


def _caller_saw(result: CallResult) -> str:
    if result.closed_early:
        return f"server closed the socket before stop (close code {result.close_code})"
    return result.error or "no stop sent"


def run_soak(
    *,
    calls: int,
    seconds: float,
    chaos_rate: float,
    seed: int,
    call_seconds: float = 75.0,
    port: int | None = None,
    workdir: Path | None = None,
    warmup_s: float = _WARMUP_S,
    drain_wait_s: float = _DRAIN_WAIT_S,
    vapi_sim: str = "embedded",
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> SoakResult:
    """Run the soak and return its result. SoakAborted if the server could not be used.

    `workdir` gets the server's log and call records (default: a new /tmp/soak-* kept
    after the run). `warmup_s`: length of the warm-up calls. `drain_wait_s`: how long
    calls may stay live after their callers hung up before that is a problem.
    `vapi_sim`: "embedded" (the server's own, as `python run.py` runs without a VAPI
    key) or "separate" (its own process, so its memory is not in the server's RSS).
    """
    if not gevent.monkey.is_module_patched("socket"):
        raise RuntimeError("gevent.monkey.patch_all() must run first (python -m bench.soak does it)")
    if vapi_sim not in VAPI_SIM_MODES:
        raise ValueError(f"vapi_sim must be one of {', '.join(VAPI_SIM_MODES)}, not {vapi_sim!r}")
    workdir = workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    simulator = None
    extra_env: dict[str, str] = {}
    if vapi_sim == "separate":
        simulator = VapiSimProcess(workdir=workdir, port=free_port(), api_key=secrets.token_hex(8))
        extra_env = {"VAPI_API_KEY": simulator.api_key, "VAPI_BASE_URL": simulator.base_url}
    server = ServerProcess(workdir=workdir, chaos_rate=chaos_rate, seed=seed, port=port, extra_env=extra_env)
    budget_s = seconds + call_seconds * _LENGTH_SPREAD[1] + _WATCHDOG_MARGIN_S
    log(f"soak: {calls} calls for {seconds:g} s, chaos {chaos_rate:g}/call-min seed {seed}; "
        f"server log {server.log_path}; bounded to {budget_s:.0f} s")
    try:
        with gevent.Timeout(budget_s, SoakAborted(f"the run exceeded its {budget_s:.0f} s bound")):
            if simulator is not None:
                simulator.start()
            result = _soak(server, calls=calls, seconds=seconds, chaos_rate=chaos_rate, seed=seed,
                           call_seconds=call_seconds, warmup_s=warmup_s, drain_wait_s=drain_wait_s, log=log)
            result.vapi_sim = vapi_sim
            return result
    except ServerError as exc:
        raise SoakAborted(str(exc)) from exc
    finally:
        server.kill()  # no-op when it already exited
        if simulator is not None:
            simulator.stop()


def _soak(
    server: ServerProcess, *, calls: int, seconds: float, chaos_rate: float, seed: int,
    call_seconds: float, warmup_s: float, drain_wait_s: float, log: Callable[[str], None],
) -> SoakResult:
    problems: list[str] = []
    server.start(timeout_s=_SERVER_START_S)
    long_lived = _stats(server).actors  # nothing but the server's own parts exist yet

    # Warm-up: `calls` short calls at once, so "before" has seen that many live calls.
    rng = random.Random(seed - 1)
    warmup_group = gevent.pool.Group()
    warmups = [warmup_group.spawn(drive_call, server, conversation(warmup_s, rng), warmup_s + _CALL_MARGIN_S)
               for _ in range(calls)]
    warmup_group.join(timeout=warmup_s + _CALL_MARGIN_S + 10.0)
    warmup_group.kill(block=True, timeout=5.0)
    warmup = [g.value for g in warmups if g.successful() and g.value is not None]
    sample = _wait_for(server, lambda s: s.live_calls == 0 and s.actors <= long_lived, drain_wait_s)
    if sample.live_calls or sample.actors > long_lived:
        problems.append(f"after warm-up: {sample.live_calls} live calls, {sample.actors - long_lived} call actors")
        problems += _still_live(server, warmup)
    gevent.sleep(1.0)  # let closing connections' greenlets finish before counting
    before = _stats(server)
    metrics_before = parse_snapshot(server.metrics_text())
    log(f"soak: warm-up done ({len(warmup)} calls); before: rss {before.rss_bytes / _MIB:.1f} MiB, "
        f"{before.greenlets} greenlets, {before.actors} actors")

    results: list[CallResult] = []
    started = time.monotonic()
    samples: list[tuple[float, ProcessSample]] = [(0.0, before)]

    def watch() -> None:
        last_progress = started
        while True:
            gevent.sleep(_SAMPLE_EVERY_S)
            try:
                samples.append((time.monotonic() - started, _stats(server)))
            except ServerError as exc:
                log(f"soak: /admin/process failed: {exc}")
                continue
            if time.monotonic() - last_progress >= _PROGRESS_EVERY_S:
                last_progress = time.monotonic()
                s = samples[-1][1]
                log(f"soak: {last_progress - started:.0f} s: {s.live_calls} live, {len(results)} ended, "
                    f"rss {s.rss_bytes / _MIB:.1f} MiB, {s.greenlets} greenlets, {s.actors} actors")

    watcher = gevent.spawn(watch)
    try:
        _run_calls(server, calls=calls, seconds=seconds, call_seconds=call_seconds, seed=seed,
                   results=results, log=log)
    finally:
        watcher.kill(block=True, timeout=5.0)

    sample = _wait_for(server, lambda s: s.live_calls == 0, drain_wait_s)
    if sample.live_calls:
        problems.append(f"{sample.live_calls} calls still live {drain_wait_s:g} s after every caller hung up")
        problems += _still_live(server, warmup + results)
    after = _wait_for(
        server, lambda s: s.greenlets <= before.greenlets and s.actors <= long_lived, _SETTLE_S
    )
    metrics_after = parse_snapshot(server.metrics_text())
    records = _records(server, {r.call_sid for r in results if r.connected})
    server_exit = server.stop(timeout_s=_STOP_WAIT_S)
    log(f"soak: server stopped, exit {server_exit}")

    result = _build_result(
        calls=calls, seconds=seconds, chaos_rate=chaos_rate, seed=seed, call_seconds=call_seconds,
        results=results, records=records, metrics=(metrics_before, metrics_after),
        long_lived=long_lived, before=before, after=after,
        samples=[*samples, (time.monotonic() - started, after)],
        server_exit=server_exit, log_path=server.log_path, problems=problems,
    )
    return result


def _build_result(
    *, calls: int, seconds: float, chaos_rate: float, seed: int, call_seconds: float,
    results: list[CallResult], records: dict[str, dict[str, Any]], metrics: tuple[Snapshot, Snapshot],
    long_lived: int, before: ProcessSample, after: ProcessSample, samples: list[tuple[float, ProcessSample]],
    server_exit: int | None, log_path: Path, problems: list[str],
) -> SoakResult:
    legs_lost: list[LostLeg] = []
    gave_up: list[tuple[str, str, str]] = []
    outlived: list[tuple[str, float, str]] = []
    for r in results:
        record = records.get(r.call_sid)
        outcome = record["outcome"] if record else None
        detail = record.get("outcome_detail", "") if record else "no call record"
        if record and r.connected and float(record["ended_at"]) - r.ended_at > _OUTLIVED_S:
            outlived.append((r.call_sid, float(record["ended_at"]) - r.ended_at, f"{outcome}: {detail}"))
        if outcome in DELIBERATE_ENDINGS:
            gave_up.append((r.call_sid, str(outcome), str(detail)))
        elif r.connected and (r.closed_early or not r.stop_sent):
            legs_lost.append(LostLeg(call_sid=r.call_sid, caller_saw=_caller_saw(r),
                                     server_outcome=outcome, server_detail=str(detail)))
    m_before, m_after = metrics
    buckets = histogram_delta(m_before, m_after, "bridge_fault_recovery_seconds")
    result = SoakResult(
        calls=calls, seconds=seconds, chaos_rate=chaos_rate, seed=seed, call_seconds=call_seconds,
        call_spread=_LENGTH_SPREAD, call_results=results,
        outcomes=dict(Counter(str(rec["outcome"]) for rec in records.values())),
        faults=counter_delta(m_before, m_after, "bridge_chaos_faults_total", ("actor", "fault")),
        restarts=counter_delta(m_before, m_after, "bridge_actor_restarts_total", ("actor", "reason")),
        legs_lost=legs_lost,
        outlived=outlived,
        gave_up=gave_up,
        records_missing=sum(r.connected for r in results) - len(records),
        recovery_count=round(buckets[-1][1]) if buckets else 0,
        recovery_p50=bucket_quantile(0.50, buckets),
        recovery_p99=bucket_quantile(0.99, buckets),
        long_lived_actors=long_lived,
        before=before,
        after=after,
        rss_trend=_trend(samples),
        peak_rss_bytes=max(s.rss_bytes for _, s in samples),
        peak_live_calls=max(s.live_calls for _, s in samples),
        server_exit=server_exit,
        log_path=log_path,
        problems=problems,
    )
    not_connected = [r for r in results if not r.connected]
    if not results:
        problems.append("no call ran")
    if not_connected:
        problems.append(f"{len(not_connected)} calls never connected, first: {not_connected[0].error}")
    if legs_lost:
        problems.append(f"{len(legs_lost)} Twilio legs lost")
    if outlived:
        problems.append(f"{len(outlived)} calls outlived their caller by more than {_OUTLIVED_S:g} s")
    if result.call_actors_left > 0:
        problems.append(f"{result.call_actors_left} actors of calls left after every call ended")
    if result.greenlet_growth > 0:
        problems.append(f"server greenlets grew by {result.greenlet_growth}")
    if server_exit != 0:
        problems.append(f"server exit status {server_exit} after SIGTERM (None: killed)")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20, help="concurrent calls (default %(default)s)")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to keep placing calls")
    parser.add_argument("--chaos-rate", type=float, default=2.0, help="faults per live call-minute")
    parser.add_argument("--seed", type=int, default=1, help="CHAOS_SEED, and the call lengths' seed")
    parser.add_argument("--call-seconds", type=float, default=75.0, help="mean call length (default %(default)s)")
    parser.add_argument("--port", type=int, help="server port (default: a free one)")
    parser.add_argument(
        "--vapi-sim", choices=VAPI_SIM_MODES, default="embedded",
        help="embedded: the server's own simulator (default); separate: in its own process, so the "
             "simulator's memory and greenlets are not counted as the server's",
    )
    fleet = parser.add_argument_group("fleet mode (bench/_fleet_soak.py)")
    fleet.add_argument("--fleet", action="store_true",
                       help="two nodes behind nginx with Redis, restarted in turn while the calls go on")
    fleet.add_argument("--restart-every", type=float, default=60.0, metavar="SECONDS",
                       help="restart one node this often (default %(default)s)")
    fleet.add_argument("--drain-timeout", type=float, default=15.0, metavar="SECONDS",
                       help="the nodes' DRAIN_TIMEOUT_S (default %(default)s)")
    fleet.add_argument("--workers", type=int, default=1, metavar="N",
                       help="each node's WORKERS: its workers relay VAPI sockets among themselves too (default 1)")
    fleet.add_argument("--node-env", action="append", default=[], metavar="NODE:KEY=VALUE",
                       help="a variable for one node, e.g. node-a:MAX_CALLS=4 (repeatable)")
    fleet.add_argument("--no-pass-on", action="store_true",
                       help="nginx never tells a node it can pass a new call on: a busy node answers the fallback")
    args = parser.parse_args(argv)
    if args.fleet:
        return _main_fleet(parser, args)
    if args.calls < 1 or args.minutes <= 0 or args.call_seconds < _MIN_CALL_S or not 0 <= args.chaos_rate <= 600:
        parser.error("need --calls >= 1, --minutes > 0, --call-seconds >= 3, 0 <= --chaos-rate <= 600")
    try:
        result = run_soak(calls=args.calls, seconds=args.minutes * 60, chaos_rate=args.chaos_rate,
                          seed=args.seed, call_seconds=args.call_seconds, port=args.port,
                          vapi_sim=args.vapi_sim)
    except SoakAborted as exc:
        print(f"soak aborted: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    return 0 if result.ok else 1


def _main_fleet(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from bench._fleet_result import format_fleet_table
    from bench._fleet_soak import FleetSoakAborted, run_fleet_soak

    if args.port is not None or args.vapi_sim != "embedded":
        parser.error("--port and --vapi-sim are for the single-node soak (the fleet picks its ports and runs "
                     "its own simulator process)")
    if (args.calls < 1 or args.minutes <= 0 or args.call_seconds < _MIN_CALL_S or not 0 <= args.chaos_rate <= 600
            or args.restart_every <= 0 or args.drain_timeout <= 0):
        parser.error("need --calls >= 1, --minutes > 0, --call-seconds >= 3, 0 <= --chaos-rate <= 600, "
                     "--restart-every > 0, --drain-timeout > 0")
    node_env: dict[str, dict[str, str]] = {}
    for item in args.node_env:
        node, _, setting = item.partition(":")
        key, equals, value = setting.partition("=")
        if node not in ("node-a", "node-b") or not key or not equals:
            parser.error(f"--node-env {item!r}: want node-a:KEY=VALUE or node-b:KEY=VALUE")
        node_env.setdefault(node, {})[key] = value
    try:
        result = run_fleet_soak(calls=args.calls, seconds=args.minutes * 60, chaos_rate=args.chaos_rate,
                                seed=args.seed, call_seconds=args.call_seconds, restart_every_s=args.restart_every,
                                drain_timeout_s=args.drain_timeout, workers=args.workers, node_env=node_env,
                                pass_on=not args.no_pass_on)
    except FleetSoakAborted as exc:
        print(f"soak aborted: {exc}", file=sys.stderr)
        return 2
    print(format_fleet_table(result))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
