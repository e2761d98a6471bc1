"""The fleet soak (`python run.py soak --fleet`): live calls through nginx while the nodes restart in turn.

Method:
* bench/_fleet.py starts Redis, one VAPI simulator process, two nodes with the chaos
  monkey on (CHAOS_RATE; CHAOS_SEED, +1 on the second node) and nginx in front.
* `--calls` callers each place calls back to back through nginx (bench/_fleet_call.py)
  for `--minutes`: a conversation of 0.8-1.2x `--call-seconds`, then `stop`, then the
  next call. A stream the bridge closes under a live call goes where Twilio would take it:
  the action URL, and a new stream if the TwiML says so. A caller the webhook refused
  (the fallback) calls again after 2-5 s, as a person would, not in a burst at a node
  that is refusing.
* Every `--restart-every` seconds (from the first interval on, while calls are still
  being placed) one node is restarted, in turn, starting with the one holding more live
  calls: SIGTERM, wait for the process to exit, start it again on its port, wait for
  /readyz. nginx is not told.
* A phone call is lost when its caller heard the fallback (at the webhook or after a
  stream), a hang-up the assistant did not decide (the bridge's record of the call says
  who decided), a failed step, or a dead line (its last two utterances unanswered).
* RSS is sampled on each node every few seconds (peak per life of a node); ERROR lines
  are counted in the nodes' logs.
Exit 0 only if no call was lost, every planned restart was done and nothing else went
wrong; 1 otherwise; 2 if the fleet could not be started.
"""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import gevent
import gevent.pool

from bench._fleet import Fleet, FleetError, FleetNode, RestartDone
from bench._fleet_call import PhoneCall, drive_phone_call
from bench._fleet_result import FleetSoakResult, NodeReport
from bench._services import ServiceUnavailable

__all__ = ["FleetSoakAborted", "run_fleet_soak"]

_LENGTH_SPREAD = (0.8, 1.2)
_MIN_CALL_S = 3.0
# A call's bound beyond its script: webhook, connects, each resume's action URL, closing.
_CALL_MARGIN_S = 60.0
_SAMPLE_EVERY_S = 5.0
_REDIAL_PAUSE_S = (2.0, 5.0)  # after a call that never connected
_PROGRESS_EVERY_S = 30.0
_WATCHDOG_MARGIN_S = 300.0
_ROOT = Path(__file__).resolve().parents[1]


class FleetSoakAborted(Exception):
    """The fleet could not be started (a binary missing, a process that would not come up)."""


def _run_by() -> str:
    """Date, commit and machine, for the README's figures."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_ROOT, capture_output=True,
                                text=True, timeout=5, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_ROOT,
                               capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    return (f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit or '?'}{' (+ local changes)' if dirty else ''}, "
            f"{os.cpu_count()} CPUs {cpu}, Python {platform.python_version()}")


def run_fleet_soak(
    *,
    calls: int,
    seconds: float,
    chaos_rate: float,
    seed: int,
    call_seconds: float = 75.0,
    restart_every_s: float = 60.0,
    drain_timeout_s: float = 15.0,
    workers: int = 1,
    node_env: dict[str, dict[str, str]] | None = None,
    pass_on: bool = True,
    workdir: Path | None = None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> FleetSoakResult:
    """Run the fleet soak and return its result; FleetSoakAborted if the fleet could not start."""
    from bench.soak import conversation  # the single-node soak's script, so both soaks speak alike

    fleet = Fleet.create(chaos_rate=chaos_rate, seed=seed, drain_timeout_s=drain_timeout_s, workdir=workdir,
                         workers=workers, node_env=node_env, pass_on=pass_on)
    planned = max(0, int((seconds - 1e-9) // restart_every_s))
    budget_s = seconds + call_seconds * _LENGTH_SPREAD[1] + _CALL_MARGIN_S + _WATCHDOG_MARGIN_S
    log(f"fleet soak: {calls} live calls for {seconds:g} s, a restart every {restart_every_s:g} s ({planned}), "
        f"chaos {chaos_rate:g}/call-min seed {seed}; logs in {fleet.workdir}; bounded to {budget_s:.0f} s")
    run_by = _run_by()
    results: list[PhoneCall] = []
    restarts: list[RestartDone] = []
    problems: list[str] = []
    peak_live = [0]
    try:
        with gevent.Timeout(budget_s, FleetSoakAborted(f"the run exceeded its {budget_s:.0f} s bound")):
            try:
                fleet.start()
            except (ServiceUnavailable, FleetError, RuntimeError) as exc:
                raise FleetSoakAborted(str(exc)) from exc
            started = time.monotonic()
            end = started + seconds

            def sample() -> None:
                last_progress = started
                while True:
                    live = 0
                    for node in fleet.nodes:
                        answer = node.process_sample()
                        live += int(answer["live_calls"]) if answer else 0
                    peak_live[0] = max(peak_live[0], live)
                    if time.monotonic() - last_progress >= _PROGRESS_EVERY_S:
                        last_progress = time.monotonic()
                        lost = sum(c.ended != "hung-up" for c in results)
                        log(f"fleet soak: {last_progress - started:.0f} s: {live} live, {len(results)} ended "
                            f"({lost} not by the caller), {len(restarts)} restarts")
                    gevent.sleep(_SAMPLE_EVERY_S)

            def roll() -> None:
                first = 0
                for index in range(planned):
                    gevent.sleep(max(0.0, started + (index + 1) * restart_every_s - time.monotonic()))
                    if index == 0:
                        # nginx's round robin can put every stream on one node (webhook and stream
                        # requests alternate): the first restart takes the node with calls to move.
                        first = max(range(len(fleet.nodes)), key=lambda i: _live(fleet.nodes[i]))
                    node = fleet.nodes[(first + index) % len(fleet.nodes)]
                    try:
                        done = node.restart(started)
                    except FleetError as exc:
                        problems.append(f"restart of {node.name} failed: {exc}")
                        log(f"fleet soak: restart of {node.name} failed: {exc}")
                        return
                    restarts.append(done)
                    log(f"fleet soak: restarted {done.node} at {done.at_s:.0f} s ({done.live_before} live on it): "
                        f"exit {done.exit_status} after {done.stop_s:.1f} s, ready after {done.down_s:.1f} s")

            def caller(index: int) -> None:
                rng = random.Random(seed * 1_000 + index)
                gevent.sleep(min(5.0, call_seconds / 2) * index / calls)
                while (remaining := end - time.monotonic()) >= _MIN_CALL_S:
                    length = min(call_seconds * rng.uniform(*_LENGTH_SPREAD), remaining)
                    call = drive_phone_call(fleet.public_url, fleet.auth_token, conversation(length, rng),
                                            length + _CALL_MARGIN_S)
                    results.append(call)
                    if not call.connected:
                        # A refused caller calls again later, not 50 ms later: no burst at a refusing node.
                        gevent.sleep(rng.uniform(*_REDIAL_PAUSE_S))

            sampler = gevent.spawn(sample)
            roller = gevent.spawn(roll)
            group = gevent.pool.Group()
            for index in range(calls):
                group.spawn(caller, index).link_exception(lambda g: problems.append(f"caller crashed: {g.exception!r}"))
            group.join(timeout=seconds + call_seconds * _LENGTH_SPREAD[1] + _CALL_MARGIN_S + 10.0)
            group.kill(block=True, timeout=5.0)
            roller.join(timeout=drain_timeout_s + 60.0)
            roller.kill(block=True, timeout=5.0)
            sampler.kill(block=True, timeout=5.0)
            outcomes = _outcomes(fleet, [c for c in results if c.ended != "hung-up"])
    finally:
        fleet.stop()
    if len(restarts) < planned:
        problems.append(f"{len(restarts)} of {planned} restarts done")
    if not results:
        problems.append("no call ran")
    nodes = [_node_report(node.name, node.lives, [node.rss_peak[k] for k in sorted(node.rss_peak)],
                          node.error_lines(), node.faults_injected(), fleet.node_exits.get(node.name))
             for node in fleet.nodes]
    for node in nodes:
        if node.exit_status != 0:
            problems.append(f"{node.name} exit status {node.exit_status} on the final SIGTERM (None: killed)")
    return FleetSoakResult(
        calls=calls, seconds=seconds, chaos_rate=chaos_rate, seed=seed, call_seconds=call_seconds,
        restart_every_s=restart_every_s, drain_timeout_s=drain_timeout_s, restarts_planned=planned,
        phone_calls=results, outcomes=outcomes, restarts=restarts, nodes=nodes, peak_live_calls=peak_live[0],
        workdir=fleet.workdir, run_by=run_by, problems=problems, workers=workers,
        node_env=fleet.node_env, pass_on=pass_on,
    )


def _live(node: FleetNode) -> int:
    sample = node.process_sample()
    return int(sample["live_calls"]) if sample else -1


def _outcomes(fleet: Fleet, calls: list[PhoneCall]) -> dict[str, str]:
    """The recorded outcome of each call, from whichever node holds its record (each has its own)."""
    found: dict[str, str] = {}
    deadline = time.monotonic() + 10.0
    wanted = {c.call_sid for c in calls}
    while wanted - found.keys() and time.monotonic() < deadline:
        for call_sid in wanted - found.keys():
            for node in fleet.nodes:
                record = node.admin(f"/admin/calls/{call_sid}")
                if isinstance(record, dict) and record.get("outcome") and not record.get("live"):
                    found[call_sid] = str(record["outcome"])
                    break
        if wanted - found.keys():
            gevent.sleep(1.0)
    return found


def _node_report(
    name: str, lives: int, peaks: list[int], errors: list[str], faults: int, exit_status: int | None,
) -> NodeReport:
    events: Counter[str] = Counter()
    for line in errors:
        try:
            events[str(json.loads(line).get("event", "?"))] += 1
        except ValueError:
            events["(not JSON)"] += 1
    return NodeReport(name=name, lives=lives, rss_peaks=peaks, error_lines=len(errors), error_events=dict(events),
                      faults=faults, exit_status=exit_status)
