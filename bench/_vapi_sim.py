"""The VAPI simulator in a process of its own, for soaks that measure the bridge's memory alone.

    python -m bench._vapi_sim PORT API_KEY     serves until SIGTERM

Embedded, the simulator's memory, greenlets and actor count as the server's; here they do not.
"""

from __future__ import annotations

if __name__ == "__main__":  # patch before anything imports sockets
    from gevent import monkey

    monkey.patch_all()

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import gevent
import gevent.event

from bench._server import ServerError

__all__ = ["VapiSimProcess"]

_PROJECT_ROOT = Path(__file__).resolve().parents[1]


class VapiSimProcess:
    """`python -m bench._vapi_sim` as a child process on `port`; `start()` returns once it listens."""

    def __init__(self, *, workdir: Path, port: int, api_key: str) -> None:
        self.port = port
        self.api_key = api_key
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / "vapi_sim.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout_s: float = 20.0) -> None:
        """Spawn it and wait until its port accepts; ServerError if it exits or never listens."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench._vapi_sim", str(self.port), self.api_key],
            cwd=_PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServerError(f"VAPI simulator exited with {self._process.returncode}; see {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
                return
            except OSError:
                gevent.sleep(0.1)
        raise ServerError(f"VAPI simulator not listening within {timeout_s:g} s; see {self.log_path}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout_s`. Idempotent."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5.0)
        if self._log is not None:
            self._log.close()
            self._log = None


def main(argv: list[str]) -> int:
    from sims.vapi import VapiSimConfig, VapiSimulator

    port, api_key = int(argv[0]), argv[1]
    # As the server's embedded simulator is configured (service.py): no per-call recordings.
    simulator = VapiSimulator(VapiSimConfig(api_key=api_key, record=False), port=port)
    simulator.start()
    stopping = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stopping.set)
    gevent.signal_handler(signal.SIGINT, stopping.set)
    stopping.wait()
    simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
