"""The reference topology as real processes on loopback, for the fleet soak.

redis-server, one VAPI simulator (`python -m sims.vapi_process`), two bridge nodes
(`python run.py`, each its own NODE_ID, port and SQLite records, the same REDIS_URL,
TWILIO_AUTH_TOKEN and FLEET_SECRET) and nginx running deploy/nginx.conf with the nodes'
loopback addresses put in. PUBLIC_URL is nginx's URL, so the simulated Twilio signs what
it sends through nginx and every node checks it alike.

`FleetNode.restart()` is one step of a rolling restart: SIGTERM, wait for the process to
exit (bounded by DRAIN_TIMEOUT_S and a margin), start it again on the same port, wait
for /readyz. nginx is never told: its passive checks skip a node that refuses
connections, as deploy/nginx.conf says.

Every child gets PR_SET_PDEATHSIG: a soak killed by SIGKILL leaves no process behind.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import gevent
import requests

from bench._nginx_conf import render, without_pass_on
from bench._services import NginxServer, RedisServer, die_with_parent, free_port
from sims.vapi_process import READY_PREFIX

__all__ = ["Fleet", "FleetError", "FleetNode", "RestartDone"]

_ROOT = Path(__file__).resolve().parents[1]
_START_S = 30.0  # a node or the simulator to come up on a loaded 2-core box
# Beyond DRAIN_TIMEOUT_S, what a node may take to end its calls and stop (service_workers.py's margin).
_STOP_MARGIN_S = 20.0
_HTTP_TIMEOUT_S = 5.0
_POLL_S = 0.05


class FleetError(Exception):
    """A process of the fleet did not start, or would not stop."""


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


class _Child:
    """A child process with its output appended to a file (a restarted node keeps one log)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it; our copy is closed below
        try:
            # In the work dir: run.py reads .env from its working directory, never the checkout's.
            self.process = subprocess.Popen(
                self.argv, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=die_with_parent(signal.SIGTERM),
            )
        finally:
            log.close()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def terminate(self, timeout_s: float) -> int | None:
        """SIGTERM and wait; SIGKILL after `timeout_s`. The exit status, None if it had to be killed."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            # Polled, not process.wait(): the soak's greenlets keep running meanwhile.
            while process.poll() is None and time.monotonic() < deadline:
                gevent.sleep(_POLL_S)
            if process.poll() is None:
                process.kill()
                process.wait(5.0)
                return None
        return process.returncode

    def log(self) -> str:
        return _tail(self.log_path, 1 << 30)


@dataclass(frozen=True, kw_only=True)
class RestartDone:
    """One step of a rolling restart, as it went."""

    node: str
    at_s: float  # seconds into the run when SIGTERM was sent
    exit_status: int | None  # None: it did not exit in time and was killed
    stop_s: float  # SIGTERM -> process gone
    down_s: float  # SIGTERM -> /readyz answers 200 again
    live_before: int  # the node's live calls just before SIGTERM (-1: it did not answer)


@dataclass(kw_only=True)
class FleetNode:
    """One bridge node; `restart()` keeps its name, port and log."""

    name: str
    port: int
    child: _Child
    admin_token: str
    drain_timeout_s: float
    lives: int = 1
    rss_peak: dict[int, int] = field(default_factory=dict)  # life -> peak RSS seen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.child.spawn()
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + _START_S
        while time.monotonic() < deadline:
            status = self.child.exited()
            if status is not None:
                raise FleetError(f"{self.name} exited with {status} at start:\n{_tail(self.child.log_path)}")
            try:
                if requests.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except requests.RequestException:
                pass
            gevent.sleep(0.1)
        raise FleetError(f"{self.name} not ready within {_START_S:g} s:\n{_tail(self.child.log_path)}")

    def stop(self) -> int | None:
        return self.child.terminate(self.drain_timeout_s + _STOP_MARGIN_S)

    def restart(self, run_started: float) -> RestartDone:
        """SIGTERM, wait for the exit, start again on the same port, wait for /readyz."""
        live = self.process_sample()
        started = time.monotonic()
        status = self.stop()
        stopped = time.monotonic()
        self.lives += 1
        self.start()
        return RestartDone(
            node=self.name, at_s=started - run_started, exit_status=status, stop_s=stopped - started,
            down_s=time.monotonic() - started, live_before=int(live["live_calls"]) if live else -1,
        )

    def admin(self, path: str) -> Any:
        """GET an admin endpoint on this node itself (not through nginx); None if it did not answer 200."""
        try:
            response = requests.get(
                self.url + path, headers={"Authorization": f"Bearer {self.admin_token}", "Connection": "close"},
                timeout=_HTTP_TIMEOUT_S,
            )
        except requests.RequestException:
            return None
        if response.status_code != 200:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    def process_sample(self) -> dict[str, Any] | None:
        """/admin/process (RSS, greenlets, live calls); the peak RSS of this life is kept."""
        sample = self.admin("/admin/process")
        if sample is not None:
            rss = int(sample.get("rss_bytes", 0))
            self.rss_peak[self.lives] = max(self.rss_peak.get(self.lives, 0), rss)
        return sample if isinstance(sample, dict) else None

    def faults_injected(self) -> int:
        """The chaos monkey's injections over every life of this node (its chaos_injected lines)."""
        return self.child.log().count('"event": "chaos_injected"')

    def error_lines(self) -> list[str]:
        """The ERROR lines of every life of this node (JSON logs: "level": "error")."""
        return [line for line in self.child.log().splitlines() if '"level": "error"' in line
                or '"level":"error"' in line]


@dataclass(kw_only=True)
class Fleet:
    """Everything the fleet soak runs; `start()` brings it all up, `stop()` takes it down in order."""

    workdir: Path
    chaos_rate: float
    seed: int
    drain_timeout_s: float
    workers: int = 1  # WORKERS of each node
    node_env: dict[str, dict[str, str]] = field(default_factory=dict)  # more variables, by node name
    pass_on: bool = True  # False: nginx never says it can pass a call on (X-Bridge-Pass-On)
    auth_token: str = field(default_factory=lambda: secrets.token_hex(16))
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    fleet_secret: str = field(default_factory=lambda: secrets.token_hex(24))
    api_key: str = field(default_factory=lambda: secrets.token_hex(8))
    nodes: list[FleetNode] = field(default_factory=list)
    redis: RedisServer | None = None
    nginx: NginxServer | None = None
    simulator: _Child | None = None
    node_exits: dict[str, int | None] = field(default_factory=dict)

    @classmethod
    def create(cls, *, chaos_rate: float, seed: int, drain_timeout_s: float, workdir: Path | None = None,
               workers: int = 1, node_env: dict[str, dict[str, str]] | None = None, pass_on: bool = True) -> Fleet:
        return cls(workdir=workdir or Path(tempfile.mkdtemp(prefix="soak-fleet-")), chaos_rate=chaos_rate,
                   seed=seed, drain_timeout_s=drain_timeout_s, workers=workers, node_env=node_env or {},
                   pass_on=pass_on)

    @property
    def public_url(self) -> str:
        if self.nginx is None:
            raise FleetError("the fleet is not started")
        return self.nginx.url

    def start(self) -> None:
        """Redis, the simulator, both nodes, then nginx in front. FleetError (or ServiceUnavailable)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer()
        self.nginx = NginxServer()
        self.redis.start()
        base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(_ROOT),
                    "PYTHONUNBUFFERED": "1"}
        self.simulator = _Child(
            "vapi_sim", [sys.executable, "-m", "sims.vapi_process", "--api-key", self.api_key], base_env, self.workdir
        )
        self.simulator.spawn()
        vapi_url = self._simulator_url()
        nginx_port = free_port()
        public_url = f"http://127.0.0.1:{nginx_port}"
        for index, name in enumerate(("node-a", "node-b")):
            port = free_port()
            env = {
                **base_env,
                "NODE_ID": name,
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "PUBLIC_URL": public_url,
                "TWILIO_AUTH_TOKEN": self.auth_token,
                "FLEET_SECRET": self.fleet_secret,
                "VAPI_API_KEY": self.api_key,
                "VAPI_BASE_URL": vapi_url,
                "REDIS_URL": self.redis.url,
                "DATABASE_PATH": str(self.workdir / f"{name}.db"),
                "ADMIN_TOKEN": self.admin_token,
                "CHAOS_RATE": f"{self.chaos_rate:g}",
                "CHAOS_SEED": str(self.seed + index),
                "DRAIN_TIMEOUT_S": f"{self.drain_timeout_s:g}",
                "LOG_FORMAT": "json",
                "LOG_LEVEL": "INFO",
                "WORKERS": str(self.workers),
                **self.node_env.get(name, {}),
            }
            child = _Child(name, [sys.executable, str(_ROOT / "run.py")], env, self.workdir)
            self.nodes.append(FleetNode(name=name, port=port, child=child, admin_token=self.admin_token,
                                        drain_timeout_s=self.drain_timeout_s))
        for node in self.nodes:
            node.child.spawn()
        for node in self.nodes:
            node.wait_ready()
        config = render([node.address for node in self.nodes], nginx_port)
        self.nginx.start(config if self.pass_on else without_pass_on(config), nginx_port)

    def _simulator_url(self) -> str:
        assert self.simulator is not None
        deadline = time.monotonic() + _START_S
        while time.monotonic() < deadline:
            text = _tail(self.simulator.log_path)
            if READY_PREFIX in text:
                return text.split(READY_PREFIX, 1)[1].split()[0]
            if self.simulator.exited() is not None:
                raise FleetError(f"the VAPI simulator exited at start:\n{text}")
            gevent.sleep(0.1)
        raise FleetError(f"the VAPI simulator did not say where it listens within {_START_S:g} s")

    def stop(self) -> None:
        """The nodes (their exit statuses are kept), then nginx, the simulator and Redis. Idempotent."""
        for node in self.nodes:
            if node.child.exited() is None and node.child.process is not None:
                self.node_exits[node.name] = node.stop()
        if self.nginx is not None:
            self.nginx.stop()
            for name in ("access.log", "error.log"):  # kept with the nodes' logs; the rest goes
                if (self.nginx.dir / name).exists():
                    shutil.copy(self.nginx.dir / name, self.workdir / f"nginx-{name}")
            self.nginx.remove()
        if self.simulator is not None:
            self.simulator.terminate(10.0)
        if self.redis is not None:
            self.redis.stop()
            self.redis.remove()
