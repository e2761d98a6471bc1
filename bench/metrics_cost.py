"""What measuring costs: the same load on the bridge with metrics off and on, side by side.

    python -m bench.metrics_cost [--calls 20] [--seconds 20] [--rounds 2] [--workers 1]

Method: one run starts a bridge server process per variant (METRICS=off, METRICS=on),
alternating off/on for `--rounds` rounds so drift in the machine's speed hits both. The
VAPI simulator and the simulated callers run in this process, so the server's own CPU
time (user + system, from /proc/<pid>/stat) is the bridge's alone. Each round: `--calls`
concurrent calls stream a speech-like script in real time for `--seconds`, the assistant
answering every utterance. Reported: server CPU milliseconds per call-second, per variant
(mean over rounds), and the overhead of metrics in percent.

`--workers N` runs the server with WORKERS=N, where every worker writes its metrics to
shared files (prometheus-client's multiprocess mode); the CPU is then that of the master
and all its workers together.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import gevent.pool  # noqa: E402
import requests  # noqa: E402

from sims.caller import CallerConfig, SimulatedCaller  # noqa: E402
from sims.script import CallerScript, Pause, Say  # noqa: E402
from sims.vapi import VapiSimConfig, VapiSimulator  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
API_KEY = "bench-key"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime + stime


def _tree_cpu_seconds(pid: int) -> float:
    """CPU time of `pid` and its child processes (the workers, with WORKERS > 1)."""
    total = _cpu_seconds(pid)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            if parent == pid:
                total += _cpu_seconds(int(entry))
        except (OSError, ValueError):  # it ended meanwhile
            continue
    return total


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _one_round(metrics: str, sim: VapiSimulator, calls: int, seconds: float, workers: int) -> float:
    """Server CPU ms per call-second for one variant."""
    port = _free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "TWILIO_AUTH_TOKEN": TOKEN,
        "VAPI_API_KEY": API_KEY,
        "VAPI_BASE_URL": sim.base_url,
        "METRICS": metrics,
        "DATABASE_PATH": ":memory:",
        "LOG_LEVEL": "WARNING",
        "WORKERS": str(workers),
    }
    server = subprocess.Popen([sys.executable, "run.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if requests.get(base + "/healthz", timeout=0.5).status_code == 200:
                    break
            except requests.RequestException:
                gevent.sleep(0.1)
            script = CallerScript((Pause(ms=500), Say(ms=1500), Pause(ms=2500)) * int(seconds // 4.5 + 1))
        callers = [
            SimulatedCaller(CallerConfig(server_url=base, public_url=base, auth_token=TOKEN, script=script))
            for _ in range(calls)
        ]
        pool = gevent.pool.Pool()
        for caller in callers:
            caller.post_webhook()
            caller.connect()
            caller.start_stream()
        gevent.sleep(0.5)  # let every call settle before measuring
        before = _tree_cpu_seconds(server.pid)
        started = time.monotonic()
        for caller in callers:
            pool.spawn(_talk, caller, seconds)
        pool.join(timeout=seconds + 10)
        elapsed = time.monotonic() - started
        used = _tree_cpu_seconds(server.pid) - before
        for caller in callers:
            caller.close()
        return used * 1000 / (calls * elapsed)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


def _talk(caller: SimulatedCaller, seconds: float) -> None:
    end = time.monotonic() + seconds
    for _, pcm in caller.config.script.render():
        if time.monotonic() >= end:
            return
        caller.send_audio(pcm)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.metrics_cost")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="the server's WORKERS")
    args = parser.parse_args(argv)
    sim = VapiSimulator(VapiSimConfig(api_key=API_KEY, reply_ms=1500, greeting_ms=0))
    sim.start()
    results: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for _ in range(args.rounds):
            for variant in ("off", "on"):
                results[variant].append(_one_round(variant, sim, args.calls, args.seconds, args.workers))
    finally:
        sim.stop()
    off = sum(results["off"]) / len(results["off"])
    on = sum(results["on"]) / len(results["on"])
    print(f"{args.calls} concurrent calls x {args.seconds:g} s, {args.rounds} rounds each, alternating, "
          f"WORKERS={args.workers}\n")
    print("| metrics | server CPU ms per call-second (each round) | mean | % of one core per call |")
    print("|---|---|---:|---:|")
    for name, mean in (("off", off), ("on", on)):
        rounds = ", ".join(f"{v:.2f}" for v in results[name])
        print(f"| {name} | {rounds} | {mean:.2f} | {mean / 10:.2f} % |")
    print(f"\nmetrics overhead: {100 * (on - off) / off:+.1f} % CPU per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
