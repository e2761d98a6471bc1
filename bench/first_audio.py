"""First assistant audio after the stream starts: where the VAPI socket is opened, and what it costs.

    python -m bench.first_audio --calls 20 --baseline <git rev> [--before <git rev>] [--vapi-rtt-ms 0,60]
                                [--twilio-setup-ms 150] [--relay-cpu CALLS,SECONDS]

Servers side by side in one run, calls alternating between them:

- **baseline**: the project at `--baseline` (a git revision, checked out in a temp dir), which
  started each call's actors at the webhook, so the VAPI socket opened while Twilio was
  still connecting the stream;
- **one process**: this tree with its default in-memory call directory: the webhook
  creates the VAPI call and, as the stream can only come to this process, opens its socket
  at once (the greeting waits in the socket's buffer);
- **fleet, same node**: this tree with a shared directory (an SQLite file), one node: the
  stream lands on the node that answered the webhook, which opened the VAPI socket then;
- **fleet, other node**: two nodes of this tree sharing that directory, the webhook on
  node A and the stream on node B (nothing sticky): A opened the VAPI socket at the
  webhook and parks it; B reaches it through A's relay (docs/vapi-relay.md);
- **fleet, other node, before** (`--before <git rev>`, the commit before the relay): the
  same two nodes of that tree, where B opened the VAPI socket itself when `start` arrived.
- **WORKERS=2**: this tree as `run.py` with two gunicorn workers on one port, webhook and
  stream both sent to that port: the kernel hands each connection to a worker. The rows
  split the calls by whether the stream landed on the worker that answered the webhook
  (from the server's INFO log); one that did not reaches the VAPI socket its webhook's
  worker opened through that worker's relay port. `--before` runs the same for that tree.

Each call: the simulated Twilio posts the webhook, waits `--twilio-setup-ms` (Twilio
fetching the TwiML and opening its media socket), opens the stream and sends `start`; the
figure is from `start` sent to the first `media` frame back (the assistant's greeting),
on the caller's clock. VAPI is the simulator (it greets as soon as the socket opens)
behind a TCP proxy that delays every byte by half of `--vapi-rtt-ms` each way, so POST
/call, the socket's handshake and the audio all pay the round trips a real network would.
With `--relay-cpu CALLS,SECONDS` it then measures what relaying costs node A: CALLS
concurrent calls of SECONDS each, webhook on A and stream on B, the caller speaking
(600 ms of tone, 1400 ms of silence, over and over; the simulator answers each) in real
time, VAPI on loopback. A's CPU time (utime + stime from /proc) over the calls, less
its CPU over an idle window as long, per relayed call-second; B's beside it (B bridges
the calls: Twilio's protocol, codec, VAD, VAPI's events).

Run it under `flock -x /tmp/cpu.lock` on a quiet machine.
"""

from __future__ import annotations

if __name__ == "__main__":  # patch before anything imports sockets
    from gevent import monkey

    monkey.patch_all()

import argparse
import contextlib
import json
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import gevent
import gevent.queue
import gevent.server
import numpy as np

from audio.signals import silence, tone
from bench._abuse_measure import cpu_seconds
from bench._checkout import old_tree, short_name
from bench._server import ServerProcess
from sims.caller import CallerConfig, CallerError, SimulatedCaller
from sims.vapi import VapiSimConfig, VapiSimulator

__all__ = ["main"]

_ROOT = Path(__file__).resolve().parents[1]
_TOKEN = "first-audio-bench-token-0123456789"
_API_KEY = "first-audio-bench-key"
_FIRST_AUDIO_TIMEOUT_S = 10.0
# Two nodes behind one (imaginary) load balancer: Twilio signs what it sends to this URL.
_FLEET_PUBLIC_URL = "https://bridge.bench"
# --relay-cpu: CPU is counted from this long after the calls start (their set-up is over).
_SETTLE_S = 2.0


class Target:
    """Where a call's webhook goes and where its stream lands (the same server, or two nodes)."""

    def __init__(self, webhook: ServerProcess, stream: ServerProcess | None = None, *, workers: bool = False) -> None:
        self.webhook = webhook
        self.stream = stream or webhook
        self.servers = [webhook] if stream is None else [webhook, stream]
        self.workers = workers  # one port, several workers: the kernel chooses who takes each connection

    @property
    def public_url(self) -> str:
        return self.webhook.url if self.stream is self.webhook else _FLEET_PUBLIC_URL

    def callers(self) -> tuple[SimulatedCaller, SimulatedCaller]:
        """The webhook's caller and the stream's: one SimulatedCaller when both go to one server."""
        webhook = SimulatedCaller(CallerConfig(server_url=self.webhook.url, public_url=self.public_url,
                                               auth_token=_TOKEN))
        if self.stream is self.webhook:
            return webhook, webhook
        stream = SimulatedCaller(CallerConfig(server_url=self.stream.url, public_url=self.public_url,
                                              auth_token=_TOKEN, call_sid=webhook.call_sid))
        return webhook, stream


class DelayProxy:
    """A TCP proxy to `upstream` that holds every chunk `one_way_s` before passing it on, in order."""

    def __init__(self, upstream: tuple[str, int], one_way_s: float) -> None:
        self._upstream = upstream
        self._delay = one_way_s
        self._server = gevent.server.StreamServer(("127.0.0.1", 0), self._handle)

    @property
    def port(self) -> int:
        port = self._server.server_port
        if port is None:  # None only for a server on a non-TCP (e.g. Unix) socket
            raise RuntimeError("DelayProxy is not bound to a TCP port")
        return port

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(timeout=1)

    def _handle(self, client: socket.socket, _address: object) -> None:
        upstream = socket.create_connection(self._upstream, timeout=10)
        pumps = [gevent.spawn(self._pump, client, upstream), gevent.spawn(self._pump, upstream, client)]
        gevent.joinall(pumps, count=1)
        gevent.killall(pumps)
        for sock in (client, upstream):
            sock.close()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        queue: gevent.queue.Queue[tuple[float, bytes]] = gevent.queue.Queue()

        def deliver() -> None:
            while True:
                due, chunk = queue.get()
                gevent.sleep(max(0.0, due - time.monotonic()))
                if not chunk:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(chunk)

        sender = gevent.spawn(deliver)
        try:
            while True:
                chunk = source.recv(65536)
                queue.put((time.monotonic() + self._delay, chunk))
                if not chunk:
                    break
            sender.join()
        except OSError:
            pass
        finally:
            sender.kill()


def _one_call(target: Target, setup_s: float) -> tuple[str, float | None]:
    """The call's SID, and seconds from `start` to the first assistant audio (None if none came)."""
    webhook, caller = target.callers()
    return webhook.call_sid, _first_audio(webhook, caller, setup_s)


def _first_audio(webhook: SimulatedCaller, caller: SimulatedCaller, setup_s: float) -> float | None:
    try:
        status, _ = webhook.post_webhook()
        if status != 200:
            return None
        caller.stream_url, caller.custom_parameters = webhook.stream_url, dict(webhook.custom_parameters)
        gevent.sleep(setup_s)
        caller.connect()
        caller.start_stream()
        deadline = time.monotonic() + _FIRST_AUDIO_TIMEOUT_S
        while not caller.media_events and time.monotonic() < deadline:
            gevent.sleep(0.001)
        started = caller.stream_started_at
        first = caller.media_events[0][0] if caller.media_events else None
        caller.send_stop()
        return None if first is None or started is None else first - started
    except CallerError:
        return None
    finally:
        caller.close()
        webhook.close()


def _server(workdir: Path, name: str, env: dict[str, str], root: Path | None) -> ServerProcess:
    (workdir / name).mkdir()
    return ServerProcess(workdir=workdir / name, chaos_rate=0, seed=0, extra_env=env, root=root)


def _pair(workdir: Path, name: str, env: dict[str, str], root: Path | None) -> Target:
    """Two nodes sharing an SQLite directory and PUBLIC_URL: the webhook on the first, the stream on the second."""
    shared = {**env, "DIRECTORY_PATH": str(workdir / f"{name}-directory.db"), "PUBLIC_URL": _FLEET_PUBLIC_URL}
    return Target(_server(workdir, f"{name}-a", {**shared, "NODE_ID": "node-a"}, root),
                  _server(workdir, f"{name}-b", {**shared, "NODE_ID": "node-b"}, root))


def _workers(workdir: Path, name: str, env: dict[str, str], root: Path | None) -> Target:
    """Two workers on one port (their own SQLite directory): INFO logs say which took each request."""
    return Target(_server(workdir, name, {**env, "WORKERS": "2", "LOG_LEVEL": "INFO"}, root), workers=True)


def _by_worker(server: ServerProcess) -> dict[str, bool]:
    """CallSid -> whether its stream landed on another worker than its webhook, from the server's log."""
    webhook: dict[str, int] = {}
    stream: dict[str, int] = {}
    for line in server.log_path.read_text().splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("event") == "call_answered":
            webhook[entry["call_sid"]] = entry["pid"]
        elif entry.get("event") == "call_started":
            stream[entry["call_sid"]] = entry["pid"]
    return {sid: stream[sid] != pid for sid, pid in webhook.items() if sid in stream}


def _targets(workdir: Path, vapi_url: str, baseline: Path | None, before: Path | None) -> dict[str, Target]:
    env = {"TWILIO_AUTH_TOKEN": _TOKEN, "VAPI_API_KEY": _API_KEY, "VAPI_BASE_URL": vapi_url, "LOG_LEVEL": "WARNING"}
    targets = {}
    if baseline is not None:
        targets["baseline"] = Target(_server(workdir, "baseline", env, baseline))
    targets["one process"] = Target(_server(workdir, "one-process", env, None))
    targets["fleet, same node"] = Target(_server(
        workdir, "fleet-same", {**env, "DIRECTORY_PATH": str(workdir / "same-directory.db")}, None))
    if before is not None:
        targets["fleet, other node, before"] = _pair(workdir, "before", env, before)
    targets["fleet, other node (relay)"] = _pair(workdir, "relay", env, None)
    if before is not None:
        targets["WORKERS=2, before"] = _workers(workdir, "workers-before", env, before)
    targets["WORKERS=2"] = _workers(workdir, "workers", env, None)
    return targets


def _figures(samples: list[float]) -> str:
    if not samples:
        return "– / –"
    ms = np.array(samples) * 1000
    return f"{np.percentile(ms, 50):.0f} / {np.percentile(ms, 95):.0f}"


def _relayed_call(target: Target, seconds: float) -> bool:
    """One call of about `seconds`, webhook on A and stream on B; whether the caller heard the assistant."""
    webhook, caller = target.callers()
    try:
        if webhook.post_webhook()[0] != 200:
            return False
        caller.stream_url, caller.custom_parameters = webhook.stream_url, dict(webhook.custom_parameters)
        caller.connect()
        caller.start_stream()
        ends_at = time.monotonic() + seconds
        while time.monotonic() < ends_at:
            caller.send_audio(tone(440.0, 600, 8000, -20.0))
            caller.send_audio(silence(1400, 8000))
        heard = len(caller.received_ulaw) > 0
        caller.send_stop()
        return heard
    except CallerError:
        return False
    finally:
        caller.close()
        webhook.close()


def _cpu(server: ServerProcess) -> float:
    pid = server.pid
    used = cpu_seconds(pid) if pid is not None else None
    if used is None:
        raise RuntimeError(f"server {server.url} is gone")
    return used


def _relay_cpu(work: Path, calls: int, seconds: float) -> list[str]:
    """What relaying costs node A (and what bridging costs node B), per relayed call-second."""
    sim = VapiSimulator(VapiSimConfig(api_key=_API_KEY, record=False))
    sim.start()
    run_dir = work / "relay-cpu"
    run_dir.mkdir()
    env = {"TWILIO_AUTH_TOKEN": _TOKEN, "VAPI_API_KEY": _API_KEY, "VAPI_BASE_URL": sim.base_url,
           "LOG_LEVEL": "WARNING"}
    target = _pair(run_dir, "relay", env, None)
    a, b = target.servers
    try:
        for server in target.servers:
            server.start()
        gevent.sleep(1.0)  # start-up's own work done
        idle_from = (_cpu(a), _cpu(b), time.monotonic())
        gevent.sleep(seconds)
        idle = (_cpu(a) - idle_from[0], _cpu(b) - idle_from[1], time.monotonic() - idle_from[2])
        runs = [gevent.spawn(_relayed_call, target, seconds) for _ in range(calls)]
        # The steady part of the calls only: webhooks, VAPI creates and handshakes are over.
        gevent.sleep(_SETTLE_S)
        busy_from = (_cpu(a), _cpu(b), time.monotonic())
        gevent.sleep(seconds - _SETTLE_S - 1.0)
        busy = (_cpu(a) - busy_from[0], _cpu(b) - busy_from[1], time.monotonic() - busy_from[2])
        gevent.joinall(runs, timeout=60)
        heard = sum(1 for run in runs if run.value)
        relayed = _metric(a, 'bridge_vapi_links_total{event="relayed"}')
    finally:
        for server in target.servers:
            server.stop()
        sim.stop()
    call_s = calls * busy[2]
    a_ms = (busy[0] - idle[0] * busy[2] / idle[2]) * 1000 / call_s
    b_ms = (busy[1] - idle[1] * busy[2] / idle[2]) * 1000 / call_s
    return [
        f"relay CPU: {calls} calls x {seconds:g} s, webhook on A, stream on B; {heard} heard the assistant, "
        f"A relayed {relayed:g}; CPU over {busy[2]:.1f} s of the calls' steady part",
        "| node | CPU s during the window | CPU s idle, as long | CPU ms per call-second | % of one core per call |",
        "|---|---:|---:|---:|---:|",
        f"| A (webhook, relay) | {busy[0]:.2f} | {idle[0] * busy[2] / idle[2]:.2f} | {a_ms:.2f} | {a_ms / 10:.2f} % |",
        f"| B (stream, the call's actors) | {busy[1]:.2f} | {idle[1] * busy[2] / idle[2]:.2f} | {b_ms:.2f} | "
        f"{b_ms / 10:.2f} % |",
    ]


def _metric(server: ServerProcess, name: str) -> float:
    for line in server.metrics_text().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.first_audio", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20, help="calls per server and per RTT")
    parser.add_argument("--baseline", help="git revision to compare with (omit: this tree alone)")
    parser.add_argument("--before", help="git revision of the fleet before the relay, two nodes (omit: not run)")
    parser.add_argument("--vapi-rtt-ms", default="0,60", help="round trips to VAPI to try, comma-separated")
    parser.add_argument("--twilio-setup-ms", type=float, default=150.0,
                        help="from the webhook's answer to Twilio's stream start")
    parser.add_argument("--relay-cpu", help="CALLS,SECONDS: then measure node A's CPU per relayed call-second")
    args = parser.parse_args(argv)
    rtts = [float(v) for v in args.vapi_rtt_ms.split(",")]
    rows: list[tuple[float, str, list[float], int]] = []
    cpu_lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="first-audio-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        baseline = stack.enter_context(old_tree(args.baseline)) if args.baseline else None
        before = stack.enter_context(old_tree(args.before)) if args.before else None
        for rtt in rtts:
            sim = VapiSimulator(VapiSimConfig(api_key=_API_KEY, record=False))
            sim.start()
            proxy = DelayProxy(("127.0.0.1", sim._port), rtt / 2000)  # noqa: SLF001 - the sim's real port
            proxy.start()
            sim._port = proxy.port  # noqa: SLF001 - its websocketCallUrl must go through the proxy too
            run_dir = work / f"rtt-{rtt:g}"
            run_dir.mkdir()
            targets = _targets(run_dir, f"http://127.0.0.1:{proxy.port}", baseline, before)
            samples: dict[str, list[tuple[str, float | None]]] = {name: [] for name in targets}
            servers = [server for target in targets.values() for server in target.servers]
            try:
                gevent.joinall([gevent.spawn(server.start) for server in servers], raise_error=True)
                for _ in range(args.calls):
                    for name, target in targets.items():
                        samples[name].append(_one_call(target, args.twilio_setup_ms / 1000))
                crossed = {name: _by_worker(target.webhook) for name, target in targets.items() if target.workers}
            finally:
                for server in servers:
                    server.stop()
                proxy.stop()
                sim.stop()
            for name, taken in samples.items():
                if name not in crossed:
                    rows.append((rtt, name, [s for _, s in taken if s is not None], sum(s is None for _, s in taken)))
                    continue
                for label, other in ((", same worker", False), (", other worker", True)):
                    group = [s for sid, s in taken if crossed[name].get(sid, False) is other]
                    rows.append((rtt, name + label, [s for s in group if s is not None], sum(s is None for s in group)))
        if args.relay_cpu:
            calls, seconds = args.relay_cpu.split(",")
            cpu_lines = _relay_cpu(work, int(calls), float(seconds))
    print(f"first assistant audio after `start` (Twilio setup {args.twilio_setup_ms:g} ms, {args.calls} calls each"
          + (f"; baseline {short_name(args.baseline)}" if args.baseline else "")
          + (f"; before {short_name(args.before)}" if args.before else "") + ")")
    print("| VAPI RTT ms | server | p50 / p95 ms | calls without audio |")
    print("|---:|---|---:|---:|")
    for rtt, name, figures, missing in rows:
        print(f"| {rtt:g} | {name} | {_figures(figures)} | {missing} |")
    for line in cpu_lines:
        print(line)
    return 0 if all(missing == 0 for *_, missing in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
