"""First assistant audio after the stream starts: where the VAPI socket is opened, and what it costs.

    python -m bench.first_audio --calls 20 --baseline <git rev> [--vapi-rtt-ms 0,60] [--twilio-setup-ms 150]

Servers side by side in one run, calls alternating between them:

- **baseline**: the project at `--baseline` (a git revision, checked out in a temp dir), which
  started each call's actors at the webhook, so the VAPI socket opened while Twilio was
  still connecting the stream;
- **one process**: this tree with its default in-memory call directory: the webhook
  creates the VAPI call and, as the stream can only come to this process, opens its socket
  at once (the greeting waits in the socket's buffer);
- **fleet**: this tree with a shared directory (an SQLite file, as the workers of one
  machine or, with Redis, a fleet): the webhook creates the VAPI call and seals it into
  the ticket; the node that takes the stream opens the VAPI socket when `start` arrives.

Each call: the simulated Twilio posts the webhook, waits `--twilio-setup-ms` (Twilio
fetching the TwiML and opening its media socket), opens the stream and sends `start`; the
figure is from `start` sent to the first `media` frame back (the assistant's greeting),
on the caller's clock. VAPI is the simulator (it greets as soon as the socket opens)
behind a TCP proxy that delays every byte by half of `--vapi-rtt-ms` each way, so POST
/call, the socket's handshake and the audio all pay the round trips a real network would.
Run it under `flock -x /tmp/cpu.lock` on a quiet machine.
"""

from __future__ import annotations

if __name__ == "__main__":  # patch before anything imports sockets
    from gevent import monkey

    monkey.patch_all()

import argparse
import contextlib
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

from bench._checkout import old_tree
from bench._server import ServerProcess
from sims.caller import CallerConfig, CallerError, SimulatedCaller
from sims.vapi import VapiSimConfig, VapiSimulator

__all__ = ["main"]

_ROOT = Path(__file__).resolve().parents[1]
_TOKEN = "first-audio-bench-token-0123456789"
_API_KEY = "first-audio-bench-key"
_FIRST_AUDIO_TIMEOUT_S = 10.0


class DelayProxy:
    """A TCP proxy to `upstream` that holds every chunk `one_way_s` before passing it on, in order."""

    def __init__(self, upstream: tuple[str, int], one_way_s: float) -> None:
        self._upstream = upstream
        self._delay = one_way_s
        self._server = gevent.server.StreamServer(("127.0.0.1", 0), self._handle)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

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


def _one_call(server: ServerProcess, setup_s: float) -> float | None:
    """Seconds from `start` to the first assistant audio; None if none came."""
    caller = SimulatedCaller(CallerConfig(server_url=server.url, public_url=server.url, auth_token=_TOKEN))
    try:
        status, _ = caller.post_webhook()
        if status != 200:
            return None
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


def _servers(workdir: Path, vapi_url: str, baseline: Path | None) -> dict[str, ServerProcess]:
    env = {"TWILIO_AUTH_TOKEN": _TOKEN, "VAPI_API_KEY": _API_KEY, "VAPI_BASE_URL": vapi_url, "LOG_LEVEL": "WARNING"}
    servers = {}
    configurations = [
        ("baseline", baseline, {}),
        ("one process", None, {}),
        ("fleet", None, {"DIRECTORY_PATH": str(workdir / "directory.db")}),
    ]
    for name, root, extra in configurations:
        if name == "baseline" and root is None:
            continue
        (workdir / name.replace(" ", "-")).mkdir()
        servers[name] = ServerProcess(workdir=workdir / name.replace(" ", "-"), chaos_rate=0, seed=0,
                                      extra_env={**env, **extra}, root=root)
    return servers


def _figures(samples: list[float]) -> str:
    if not samples:
        return "– / –"
    ms = np.array(samples) * 1000
    return f"{np.percentile(ms, 50):.0f} / {np.percentile(ms, 95):.0f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.first_audio", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20, help="calls per server and per RTT")
    parser.add_argument("--baseline", help="git revision to compare with (omit: this tree alone)")
    parser.add_argument("--vapi-rtt-ms", default="0,60", help="round trips to VAPI to try, comma-separated")
    parser.add_argument("--twilio-setup-ms", type=float, default=150.0,
                        help="from the webhook's answer to Twilio's stream start")
    args = parser.parse_args(argv)
    rtts = [float(v) for v in args.vapi_rtt_ms.split(",")]
    rows: list[tuple[float, str, list[float], int]] = []
    with tempfile.TemporaryDirectory(prefix="first-audio-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        baseline = stack.enter_context(old_tree(args.baseline)) if args.baseline else None
        for rtt in rtts:
            sim = VapiSimulator(VapiSimConfig(api_key=_API_KEY, record=False))
            sim.start()
            proxy = DelayProxy(("127.0.0.1", sim._port), rtt / 2000)  # noqa: SLF001 - the sim's real port
            proxy.start()
            sim._port = proxy.port  # noqa: SLF001 - its websocketCallUrl must go through the proxy too
            run_dir = work / f"rtt-{rtt:g}"
            run_dir.mkdir()
            servers = _servers(run_dir, f"http://127.0.0.1:{proxy.port}", baseline)
            samples: dict[str, list[float]] = {name: [] for name in servers}
            lost = dict.fromkeys(servers, 0)
            try:
                for server in servers.values():
                    server.start()
                for _ in range(args.calls):
                    for name, server in servers.items():
                        figure = _one_call(server, args.twilio_setup_ms / 1000)
                        if figure is None:
                            lost[name] += 1
                        else:
                            samples[name].append(figure)
            finally:
                for server in servers.values():
                    server.stop()
                proxy.stop()
                sim.stop()
            rows.extend((rtt, name, samples[name], lost[name]) for name in servers)
    print(f"first assistant audio after `start` (Twilio setup {args.twilio_setup_ms:g} ms, {args.calls} calls each)")
    print("| VAPI RTT ms | server | p50 / p95 ms | calls without audio |")
    print("|---:|---|---:|---:|")
    for rtt, name, figures, missing in rows:
        print(f"| {rtt:g} | {name} | {_figures(figures)} | {missing} |")
    return 0 if all(missing == 0 for *_, missing in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
