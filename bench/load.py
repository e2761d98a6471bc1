"""Load: N concurrent calls, paced in real time both ways, against a real server process.

    python -m bench.load [--calls 100[,N2...]] [--seconds 10] [--sweep [--sweep-from 100[,N2...]]]
                         [--floor] [--ref COMMIT ...] [--side 'LABEL:KEY=VALUE,...' ...]
                         [--workers 1[,2...]] [--no-pin] [--json PATH]

The server under test is `python run.py` (this checkout, or `--ref COMMIT` checked out in
a temporary worktree and run with this venv) pointed by VAPI_BASE_URL at a VAPI stand-in
inside this process; `--floor` adds `bench/_floor.py`, a minimal forwarding bridge on
the same libraries, so its cost is beside ours in the same run. This process is both
ends of every call: it posts Twilio's signed webhook, opens the media socket, streams
20 ms mu-law frames, echoes marks as audio plays out, and as VAPI streams 20 ms of
assistant audio every 20 ms. Set-up is plain blocking code; the streaming is one thread
on one epoll loop (bench/_load_engine.py), kept lean because on a 2-core box the load
shares the cores with the server it measures. It must not be gevent monkey-patched.

Method, per target and N:
* Fresh server. Warm-up: a few calls for 2 s, ended (imports, caches, first-call
  allocations are start-up cost). Then the idle RSS is read.
* Ramp: calls are set up one after another (webhook, media socket, `start`, the
  bridge's VAPI call and socket), each paced from the moment its VAPI leg is open.
* Settle 2 s, then the measurement window (`--seconds`): latencies of frames sent
  inside it (bench/_load_calls.py says exactly what is timed), the server's CPU time
  from /proc/<pid>/stat (utime + stime, the process and its children, so WORKERS>1
  is counted whole) over the window, its RSS at the end.
* Sending stops; after at most 3 s for frames in flight, a frame not delivered is
  dropped (counted per direction from outside: frames sent minus frames received).
  Then every caller sends `stop` and closes; a call failed if any step of its set-up
  failed or the bridge closed either leg before the caller hung up.
* A call the server would not take (its webhook answered the fallback: full, draining,
  or overloaded) counts as failed and is shown as refused. "Loop late" is how much later
  than asked the server's event loop woke its 100 ms probe timer over the window (its
  bridge_event_loop_lag_seconds histogram, p50 / p99; OVERLOAD_LAG_MS acts on it).
  `--side 'LABEL:KEY=VALUE,...'` adds this checkout run with other settings.
* CPU per call is the server's CPU (percent of one core) over the window divided by N;
  RSS per call is (RSS at the end of the window - idle RSS) / N.
* With one worker, the server is pinned to CPU 0 and this process to CPU 1, so neither
  steals the other's core (`--no-pin` turns it off). With several, nothing is pinned:
  the workers and this process share the cores. This process's own CPU over the window
  is reported, in all and per call (what a second worker cannot have on a shared box).
* `--workers 1,2` runs each target with one worker, then two, side by side in one run
  (`--calls` and `--sweep-from` take one value, or one per worker count), and prints
  the ratio of the calls each held. The calls each worker holds (its established
  sockets on the port, from /proc/net/tcp and /proc/<pid>/fd) are read after the window.
* `--sweep` runs N = `--sweep-from`, then up by `--sweep-step` until a step fails (p99
  >= 10 ms either way, a drop or a failed call), then halves the gap between the last
  N held and the first that failed down to `--sweep-resolution` (default half a step);
  it reports the largest N that held.

Fairness notes: an old commit runs with this checkout's venv, so websocket-client masks
with wsaccel there too (it uses it whenever it is importable), which makes the old code
slightly cheaper than it was. The floor sets TCP_NODELAY on its media sockets as the
bridge does; without it Nagle's algorithm alone puts the downlink p99 near 20 ms.
Near one core CPU per call is clipped (a saturated server does more per wake-up and
falls behind): compare CPU per call where no target is saturated.

Exit status 0 when every run held (or the sweep found an N), 1 otherwise, 2 when a run
could not be carried out.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import resource
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bench._checkout import old_tree, short_name
from bench._load_calls import LoadCall, VapiFront, Window, setup_call
from bench._load_engine import Engine
from bench._load_wire import WireError
from bench._prom import Snapshot, bucket_quantile, histogram_delta, parse_snapshot
from bench._server import ServerError, ServerProcess

__all__ = ["THIS_CHECKOUT", "LoadResult", "Target", "format_table", "main", "run_load"]

_ROOT = Path(__file__).resolve().parents[1]
_P99_LIMIT_MS = 10.0
_WARMUP_CALLS = 4
_WARMUP_S = 2.0
_SETTLE_S = 2.0
_SETUP_TIMEOUT_S = 10.0
# The fallback TwiML (a refused call) carries no <Stream>: bench/_load_calls.py says so in its error.
_REFUSED = "without a <Stream>"
_LOOP_LAG = "bridge_event_loop_lag_seconds"
_DRAIN_S = 3.0
_HANGUP_S = 10.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_MIB = 1024 * 1024


@dataclass(frozen=True)
class Target:
    """What runs as the server: this checkout, an old commit's checkout, or the floor."""

    label: str
    root: Path
    argv: tuple[str, ...] = ("run.py",)
    env: tuple[tuple[str, str], ...] = ()  # settings of its own (`--side`)


THIS_CHECKOUT = Target("this checkout", _ROOT)


@dataclass
class LoadResult:
    target: str
    calls: int
    workers: int
    connected: int
    failed: int
    up_p50_ms: float
    up_p99_ms: float
    up_max_ms: float
    down_p50_ms: float
    down_p99_ms: float
    down_max_ms: float
    frames_up: int
    frames_down: int
    dropped_up: int
    dropped_down: int
    cpu_pct: float  # of one core, over the window
    cpu_per_call_pct: float
    sys_pct: float  # of cpu_pct, the kernel's share (socket syscalls, loopback TCP)
    rss_mb: float
    rss_per_call_mb: float
    load_cpu_pct: float
    pacer_late: int
    clears: int
    first_error: str | None
    load_cpu_per_call_pct: float = float("nan")
    load_sys_pct: float = float("nan")  # of load_cpu_pct, the kernel's share
    # Media sockets each server process held mid-window (one entry per worker), from /proc.
    calls_per_worker: list[int] = field(default_factory=list)
    vapi_legs_per_worker: list[int] = field(default_factory=list)  # the calls' VAPI sockets, likewise
    refused: int = 0  # of `failed`: the webhook answered the fallback (the server would not take the call)
    # How late the server's event loop ran over the window (bridge_event_loop_lag_seconds; None
    # where the server has no such histogram: the floor, an older commit).
    loop_late_p50_ms: float | None = None
    loop_late_p99_ms: float | None = None

    @property
    def held(self) -> bool:
        return (self.failed == 0 and self.dropped_up == 0 and self.dropped_down == 0
                and self.up_p99_ms < _P99_LIMIT_MS and self.down_p99_ms < _P99_LIMIT_MS)


# ---- /proc ---------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (worker processes)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return pids


def _cpu_s(pids: Sequence[int]) -> tuple[float, float]:
    """User and system CPU seconds of `pids`."""
    user = system = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])  # utime (field 14)
        system += int(fields[12])  # stime (field 15)
    return user / _CLK_TCK, system / _CLK_TCK


def _rss_bytes(pids: Sequence[int]) -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * _PAGE
        except OSError:
            continue
    return total


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(int(link[8:-1]))
    except OSError:
        pass
    return inodes


def _sockets_per_worker(server_pid: int, port: int, *, remote: bool = False) -> list[int]:
    """Established TCP connections each server process holds on local `port` (or remote).

    With one worker that is the server process; with several, each of the master's workers
    (the master only listens). Read from /proc/net/tcp: nothing of the server's is asked.
    A live call holds one connection on the server's port (its media socket) and one to
    the VAPI stand-in's port (its VAPI leg).
    """
    established: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                # local and remote address are HEX_IP:HEX_PORT; state 01 is ESTABLISHED; field 9 the inode.
                address = fields[2] if remote else fields[1]
                if fields[3] == "01" and int(address.rsplit(":", 1)[1], 16) == port:
                    established.add(int(fields[9]))
    pids = _tree(server_pid)
    workers = [p for p in pids if p != server_pid] if len(pids) > 1 else pids
    return [len(_socket_inodes(p) & established) for p in workers]


def _pin_workers(master_pid: int, timeout_s: float = 10.0) -> None:
    """Worker i on CPU i (mod the CPUs), once the master has forked them all: an experiment
    on what migrating between cores costs; this process stays free to run on any."""
    cpus = sorted(os.sched_getaffinity(0))
    deadline = time.monotonic() + timeout_s
    workers: list[int] = []
    while time.monotonic() < deadline:
        workers = [p for p in _tree(master_pid) if p != master_pid]
        if workers:
            break
        time.sleep(0.1)
    for i, pid in enumerate(sorted(workers)):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task), {cpus[i % len(cpus)]})


def _own_cpu_s() -> tuple[float, float]:
    """This process's user and system CPU seconds (every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


# ---- one run -------------------------------------------------------------------------


def _percentiles(values: Sequence[float]) -> tuple[float, float, float]:
    if not values:
        return float("nan"), float("nan"), float("nan")
    a = np.asarray(values, dtype=np.float64) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.max())


def _hang_up(engine: Engine, calls: Sequence[LoadCall], timeout_s: float) -> None:
    def stop() -> None:
        for call in calls:
            call.send_stop()
    engine.run(stop)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(call.tw_closed or call.tw is None for call in calls):
        time.sleep(0.05)
    engine.close_calls(list(calls))


def _delivered(calls: Sequence[LoadCall]) -> bool:
    return all(
        call.up_rx // call.up_frame_bytes >= len(call.up_sent) and call.down_rx // 160 >= len(call.down_sent)
        for call in calls if call.error is None
    )


def run_load(target: Target, calls: int, *, seconds: float, workers: int, pin: bool,
             log: Callable[[str], None], duplex: bool = False,
             warmup_s: float = _WARMUP_S, settle_s: float = _SETTLE_S, log_dir: Path | None = None,
             pin_workers: bool = False) -> LoadResult:
    """One target at `calls` concurrent calls; ServerError when the server cannot be run.

    Not in a gevent monkey-patched process: the engine needs real threads and select.epoll.
    """
    api_key = secrets.token_hex(8)
    engine = Engine()
    front = VapiFront(api_key, engine)
    workdir = Path(tempfile.mkdtemp(prefix="bench-load-"))
    env = {"VAPI_API_KEY": api_key, "VAPI_BASE_URL": front.base_url, **dict(target.env)}
    if workers > 1:
        env["WORKERS"] = str(workers)
    server = ServerProcess(workdir=workdir, chaos_rate=0.0, seed=1, extra_env=env, root=target.root,
                           argv=target.argv)
    live: list[LoadCall] = []
    try:
        server.start()
        assert server.pid is not None
        if pin and workers <= 1:
            os.sched_setaffinity(server.pid, {0})
            os.sched_setaffinity(0, {1})  # this thread; the engine's and the front's inherit it
        elif pin_workers and workers > 1:
            _pin_workers(server.pid)
        engine.start()
        front.start()
        # Warm-up.
        warm = [LoadCall(-1 - i, Window()) for i in range(min(_WARMUP_CALLS, calls))]
        for call in warm:
            _setup(call, front, engine, server)
        time.sleep(warmup_s)
        _hang_up(engine, warm, _HANGUP_S)
        time.sleep(min(1.0, warmup_s))
        pids = _tree(server.pid)
        rss_idle = _rss_bytes(pids)
        # Ramp.
        window = Window()
        started = time.monotonic()
        for i in range(calls):
            call = LoadCall(i, window, duplex=duplex)
            live.append(call)
            _setup(call, front, engine, server)
        log(f"  {target.label}: {calls} calls up in {time.monotonic() - started:.1f} s")
        time.sleep(settle_s)
        # The window.
        pids = _tree(server.pid)
        metrics0 = _metrics(server)
        (user0, sys0), own0, t0 = _cpu_s(pids), _own_cpu_s(), time.perf_counter()
        late0 = engine.late
        window.start = time.time()  # the engine's clock (its send times, the kernel's arrival times)
        time.sleep(seconds)
        window.end, t1 = time.time(), time.perf_counter()
        (user1, sys1), own1 = _cpu_s(pids), _own_cpu_s()
        metrics1 = _metrics(server)
        # After the window, so not in this process's CPU; the calls are still up.
        per_worker = _sockets_per_worker(server.pid, server.port)
        vapi_per_worker = _sockets_per_worker(server.pid, front.port, remote=True)
        load_sys_pct = (own1[1] - own0[1]) / (t1 - t0) * 100
        rss = _rss_bytes(pids)
        late = engine.late - late0
        # Drain, count, hang up.
        for call in live:
            call.sending = False
        deadline = time.monotonic() + _DRAIN_S
        while not _delivered(live) and time.monotonic() < deadline:
            time.sleep(0.05)
        ok = [c for c in live if c.error is None]
        dropped_up = sum(max(0, len(c.up_sent) - c.up_rx // c.up_frame_bytes) for c in ok)
        dropped_down = sum(max(0, len(c.down_sent) - c.down_rx // 160) for c in ok)
        frames_up = sum(len(c.up_sent) for c in ok)
        frames_down = sum(len(c.down_sent) for c in ok)
        _hang_up(engine, live, _HANGUP_S)
        failed = [c for c in live if c.error is not None]
        up, down = _percentiles(window.up), _percentiles(window.down)
        late_p50, late_p99 = _loop_late_ms(metrics0, metrics1)
        cpu_pct = (user1 + sys1 - user0 - sys0) / (t1 - t0) * 100
        load_cpu_pct = (sum(own1) - sum(own0)) / (t1 - t0) * 100
        return LoadResult(
            target=target.label, calls=calls, workers=workers, connected=calls - len(failed), failed=len(failed),
            up_p50_ms=up[0], up_p99_ms=up[1], up_max_ms=up[2],
            down_p50_ms=down[0], down_p99_ms=down[1], down_max_ms=down[2],
            frames_up=frames_up, frames_down=frames_down, dropped_up=dropped_up, dropped_down=dropped_down,
            cpu_pct=cpu_pct, cpu_per_call_pct=cpu_pct / calls, sys_pct=(sys1 - sys0) / (t1 - t0) * 100,
            rss_mb=rss / _MIB, rss_per_call_mb=(rss - rss_idle) / _MIB / calls,
            load_cpu_pct=load_cpu_pct, pacer_late=late,
            clears=sum(c.clears for c in live) + front.unexpected,
            first_error=failed[0].error if failed else None,
            load_cpu_per_call_pct=load_cpu_pct / calls, load_sys_pct=load_sys_pct, calls_per_worker=per_worker,
            vapi_legs_per_worker=vapi_per_worker,
            refused=sum(1 for c in failed if c.error is not None and _REFUSED in c.error),
            loop_late_p50_ms=late_p50, loop_late_p99_ms=late_p99,
        )
    finally:
        with contextlib.suppress(TimeoutError):
            engine.close_calls(live)
        engine.stop()
        server.stop(timeout_s=10.0)
        front.stop()
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        if log_dir is not None:
            with contextlib.suppress(OSError):
                log_dir.mkdir(parents=True, exist_ok=True)
                name = f"{target.label.replace(' ', '-')}-w{workers}-n{calls}.log"
                shutil.copyfile(server.log_path, log_dir / name)
        shutil.rmtree(workdir, ignore_errors=True)


def _setup(call: LoadCall, front: VapiFront, engine: Engine, server: ServerProcess) -> None:
    try:
        setup_call(call, front, engine, server.url, server.auth_token, _SETUP_TIMEOUT_S)
    except (WireError, OSError, http.client.HTTPException) as exc:
        call.fail(f"set-up: {exc}")


# ---- targets and the table -------------------------------------------------------------


def _side(spec: str) -> Target:
    """`LABEL:KEY=VALUE,...`: this checkout run with those settings."""
    label, _, settings = spec.partition(":")
    pairs = [item.partition("=") for item in settings.split(",") if item]
    if not label or not pairs or any(not key or not sep for key, sep, _ in pairs):
        raise SystemExit(f"--side wants LABEL:KEY=VALUE[,KEY=VALUE...], got {spec!r}")
    return Target(label, _ROOT, env=tuple((key, value) for key, _, value in pairs))


@contextlib.contextmanager
def ref_target(commit: str) -> Iterator[Target]:
    """An old commit as a target: its tree checked out for the run, removed afterwards."""
    with old_tree(commit) as root:
        yield Target(label=f"ref {short_name(commit)}", root=root)


def _metrics(server: ServerProcess) -> Snapshot | None:
    """The server's /metrics now, or None where it has none (the floor)."""
    try:
        return parse_snapshot(server.metrics_text())
    except (ServerError, OSError, ValueError):
        return None


def _loop_late_ms(before: Snapshot | None, after: Snapshot | None) -> tuple[float | None, float | None]:
    """p50 and p99 of how late the server's event loop ran between two snapshots (ms)."""
    if before is None or after is None:
        return None, None
    buckets = histogram_delta(before, after, _LOOP_LAG)
    figures = [bucket_quantile(q, buckets) for q in (0.5, 0.99)]
    if figures[0] is None or figures[1] is None:
        return None, None
    return figures[0][0] * 1000, figures[1][0] * 1000


def _ms(value: float) -> str:
    return "–" if value != value else f"{value:.1f}"


def _late(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def format_table(results: Sequence[LoadResult], floor: LoadResult | None = None) -> str:
    lines = [
        "| target | calls | failed | in p50 / p99 / max ms | out p50 / p99 / max ms | dropped in / out "
        "| server CPU | CPU per call | × floor | RSS per call | load CPU (per call) | calls per worker (VAPI legs) "
        "| loop late p50 / p99 ms | held |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = (f"{r.cpu_per_call_pct / floor.cpu_per_call_pct:.2f}"
                 if floor is not None and floor.calls == r.calls and floor.cpu_per_call_pct > 0 else "")
        workers = f" ({r.workers} workers)" if r.workers > 1 else ""
        lines.append(
            f"| {r.target}{workers} | {r.calls} | {r.failed}{f' ({r.refused} refused)' if r.refused else ''} "
            f"| {_ms(r.up_p50_ms)} / {_ms(r.up_p99_ms)} / {_ms(r.up_max_ms)} "
            f"| {_ms(r.down_p50_ms)} / {_ms(r.down_p99_ms)} / {_ms(r.down_max_ms)} "
            f"| {r.dropped_up} / {r.dropped_down} | {r.cpu_pct:.0f} % ({r.sys_pct:.0f} % sys) "
            f"| {r.cpu_per_call_pct:.3f} % | {ratio} "
            f"| {r.rss_per_call_mb:.2f} MB | {r.load_cpu_pct:.0f} % ({r.load_sys_pct:.0f} % sys; "
            f"{r.load_cpu_per_call_pct:.3f} %) "
            f"| {' / '.join(map(str, r.calls_per_worker))} ({' / '.join(map(str, r.vapi_legs_per_worker))}) "
            f"| {_late(r.loop_late_p50_ms)} / {_late(r.loop_late_p99_ms)} "
            f"| {'yes' if r.held else 'no'} |"
        )
    return "\n".join(lines)


def _sweep(run: Callable[[int], LoadResult], start: int, step: int, most: int,
           results: list[LoadResult], resolution: int | None = None, retries: int = 0) -> int | None:
    """Up by `step` from `start` until a run fails, then halve the gap down to `resolution`.

    With `retries`, a run that fails is run again (up to that many times) before N counts
    as failed: on a shared machine one stall from outside should not end a sweep.
    """
    resolution = max(1, step // 2) if resolution is None else max(1, resolution)

    def held(n: int) -> bool:
        for _ in range(retries + 1):
            result = run(n)
            results.append(result)
            if result.held:
                return True
        return False

    best: int | None = None
    failed: int | None = None
    n = start
    while n <= most:
        if not held(n):
            failed = n
            break
        best = n
        n += step
    while best is not None and failed is not None and failed - best > resolution:
        mid = (best + failed) // 2
        if held(mid):
            best = mid
        else:
            failed = mid
    return best


def _counts(text: str) -> list[int]:
    """`1,2` -> [1, 2]: one value, or one per worker count."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: whole numbers, comma-separated") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: each at least 1")
    return values


def _per_workers(values: list[int], workers: list[int], name: str) -> dict[int, int]:
    if len(values) == 1:
        return dict.fromkeys(workers, values[0])
    if len(values) != len(workers):
        raise SystemExit(f"{name}: one value, or one per worker count ({len(workers)})")
    return dict(zip(workers, values, strict=True))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=_counts, default=[100],
                        help="concurrent calls; with several worker counts, one or one per count (e.g. 80,150)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window")
    parser.add_argument("--sweep", action="store_true", help="find the largest N at p99 < 10 ms, no drops")
    parser.add_argument("--sweep-from", type=_counts, default=[100], help="one, or one per worker count")
    parser.add_argument("--sweep-step", type=int, default=50)
    parser.add_argument("--sweep-max", type=int, default=400)
    parser.add_argument("--sweep-resolution", type=int, default=None,
                        help="after the first failed step, halve the gap down to this (default: half a step)")
    parser.add_argument("--sweep-retries", type=int, default=0, help="run a failed N again up to this many times")
    parser.add_argument("--floor", action="store_true", help="also run the minimal forwarding bridge")
    parser.add_argument("--ref", action="append", default=[], metavar="COMMIT", help="also run an old commit")
    parser.add_argument("--duplex", action="store_true",
                        help="the assistant talks all the time (default: answers each utterance for 1 s)")
    parser.add_argument("--workers", type=_counts, default=[1],
                        help="WORKERS for the server (run.py); several (1,2) run side by side, per target")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and load to separate CPUs")
    parser.add_argument("--pin-workers", action="store_true",
                        help="with several workers, pin worker i to CPU i (this process is not pinned)")
    parser.add_argument("--warmup", type=float, default=_WARMUP_S, help=argparse.SUPPRESS)
    parser.add_argument("--settle", type=float, default=_SETTLE_S, help=argparse.SUPPRESS)
    parser.add_argument("--side", action="append", default=[], metavar="LABEL:KEY=VALUE[,KEY=VALUE...]",
                        help="also run this checkout with these settings, e.g. 'no guard:OVERLOAD_LAG_MS=0'")
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--log-dir", type=Path, help="keep each run's server log here")
    args = parser.parse_args(argv)
    calls_for = _per_workers(args.calls, args.workers, "--calls")
    sweep_from = _per_workers(args.sweep_from, args.workers, "--sweep-from")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    results: list[LoadResult] = []
    floor_result: LoadResult | None = None
    swept: dict[tuple[str, int], int | None] = {}
    # This checkout, then each old commit (checked out only while it runs), then the floor;
    # each with every worker count in turn.
    plan: list[Target | str] = [THIS_CHECKOUT, *(_side(spec) for spec in args.side), *args.ref]
    if args.floor:
        plan.append(Target("floor", _ROOT, ("-m", "bench._floor")))
    try:
        for entry in plan:
            with contextlib.ExitStack() as stack:
                target = stack.enter_context(ref_target(entry)) if isinstance(entry, str) else entry
                for workers in args.workers:

                    def run(n: int, target: Target = target, workers: int = workers) -> LoadResult:
                        log(f"{target.label}, {workers} worker(s): {n} calls ...")
                        result = run_load(target, n, seconds=args.seconds, workers=workers,
                                          pin=not args.no_pin, log=log, duplex=args.duplex,
                                          warmup_s=args.warmup, settle_s=args.settle, log_dir=args.log_dir,
                                          pin_workers=args.pin_workers)
                        log(format_table([result]).splitlines()[-1])
                        return result

                    if args.sweep:
                        swept[target.label, workers] = _sweep(run, sweep_from[workers], args.sweep_step,
                                                              args.sweep_max, results, args.sweep_resolution,
                                                              args.sweep_retries)
                    else:
                        result = run(calls_for[workers])
                        results.append(result)
                        if target.label == "floor":
                            floor_result = result
    except ServerError as exc:
        log(f"could not run: {exc}")
        return 2
    print(format_table(results, floor_result))
    for (label, workers), best in swept.items():
        print(f"\n{label}, {workers} worker(s): largest N held (p99 < {_P99_LIMIT_MS:g} ms both ways, "
              f"no drops, no failed call): {best}")
    _print_ratios(results, swept, args.workers)
    for r in results:
        if r.first_error:
            print(f"\n{r.target} at {r.calls}: {r.failed} failed, first: {r.first_error}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) | {"held": r.held} for r in results], indent=2))
    if args.sweep:
        return 0 if all(best is not None for best in swept.values()) else 1
    return 0 if all(r.held for r in results) else 1


def _print_ratios(results: Sequence[LoadResult], swept: dict[tuple[str, int], int | None],
                  workers: Sequence[int]) -> None:
    """Each worker count's calls held against the first count's, per target (issue 10's 1.8x)."""
    if len(workers) < 2:
        return
    base = workers[0]
    for label in dict.fromkeys(r.target for r in results):
        if swept:
            held = {w: swept.get((label, w)) for w in workers}
        else:
            held = {r.workers: r.calls if r.held else None for r in results if r.target == label}
        for w in workers[1:]:
            one, many = held.get(base), held.get(w)
            if one and many:
                print(f"\n{label}: {w} workers held {many} calls, {base} worker(s) {one}: {many / one:.2f}x")
            else:
                print(f"\n{label}: {w} workers against {base}: no ratio (a run did not hold)")


if __name__ == "__main__":
    sys.exit(main())
