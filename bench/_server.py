"""The bridge as a real server process for a soak run: `python run.py` on a free loopback port.

It runs with the embedded VAPI simulator, its log goes to a file in the run's work
directory, and the bench reads it only through HTTP: /healthz, /metrics and the admin API.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import gevent
import requests

__all__ = ["ServerError", "ServerProcess"]

_PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Variables that would point the server away from the embedded simulator, or lock the
# endpoints the bench reads; the soak sets its own values for everything it needs.
_DROPPED_ENV = ("VAPI_API_KEY", "VAPI_BASE_URL", "METRICS_TOKEN", "METRICS", "MAX_CALLS", "PORT", "HOST")
_HTTP_TIMEOUT_S = 10.0
_HEALTH_POLL_S = 0.1


class ServerError(Exception):
    """The server process did not start, or stopped answering."""


def free_port() -> int:
    """A loopback port nothing listens on right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    """One `python run.py` child process; `start()` returns once /healthz answers."""

    def __init__(
        self,
        *,
        workdir: Path,
        chaos_rate: float,
        seed: int,
        port: int | None = None,
        extra_env: Mapping[str, str] | None = None,
        root: Path | None = None,
    ) -> None:
        self.workdir = workdir
        # Where run.py is: this checkout, or another commit's (a bench comparing versions).
        self.root = root or _PROJECT_ROOT
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.auth_token = secrets.token_hex(16)
        self.admin_token = secrets.token_hex(16)
        self.log_path = workdir / "server.log"
        self._env = {key: value for key, value in os.environ.items() if key not in _DROPPED_ENV}
        self._env.update(
            {
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "PUBLIC_URL": self.url,
                "TWILIO_AUTH_TOKEN": self.auth_token,
                "ADMIN_TOKEN": self.admin_token,
                "CHAOS_RATE": f"{chaos_rate:g}",
                "CHAOS_SEED": str(seed),
                "DATABASE_PATH": str(workdir / "calls.db"),
                "LOG_FORMAT": "json",
                "LOG_LEVEL": "INFO",
                # Every call has ended before the bench sends SIGTERM; nothing to wait for.
                "DRAIN_TIMEOUT_S": "5",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self._env.update(extra_env or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, timeout_s: float = 30.0) -> None:
        """Spawn the server and wait for /healthz; ServerError if it exits or stays silent."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            [sys.executable, "run.py"],
            cwd=self.root,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServerError(f"server exited with {self._process.returncode} at start; see {self.log_path}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except requests.RequestException:
                pass
            gevent.sleep(_HEALTH_POLL_S)
        raise ServerError(f"no /healthz answer within {timeout_s:g} s; see {self.log_path}")

    def admin(self, path: str) -> Any:
        """GET an admin endpoint and return its JSON; ServerError on anything but 200."""
        return self._get_json(path, {"Authorization": f"Bearer {self.admin_token}"})

    def admin_or_none(self, path: str) -> Any:
        """Like `admin`, but None for a 404."""
        response = self._get(path, {"Authorization": f"Bearer {self.admin_token}"})
        if response.status_code == 404:
            return None
        return self._json(path, response)

    def metrics_text(self) -> str:
        response = self._get("/metrics", {})
        if response.status_code != 200:
            raise ServerError(f"GET /metrics answered HTTP {response.status_code}")
        return response.text

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM, then wait; SIGKILL after `timeout_s`. The exit status, None if it had to be killed."""
        process = self._process
        if process is None:
            return None
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    return process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5.0)
                    return None
            return process.returncode
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def kill(self) -> None:
        """Last resort (the bench itself is failing): SIGKILL if still running."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=5.0)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _get(self, path: str, headers: dict[str, str]) -> requests.Response:
        # A fresh connection per request: a kept-alive one would hold a handler greenlet
        # open in the server between samples and blur its greenlet count.
        try:
            return requests.get(
                self.url + path, headers={**headers, "Connection": "close"}, timeout=_HTTP_TIMEOUT_S
            )
        except requests.RequestException as exc:
            raise ServerError(f"GET {path} failed: {exc}") from exc

    def _get_json(self, path: str, headers: dict[str, str]) -> Any:
        return self._json(path, self._get(path, headers))

    @staticmethod
    def _json(path: str, response: requests.Response) -> Any:
        if response.status_code != 200:
            raise ServerError(f"GET {path} answered HTTP {response.status_code}: {response.text[:200]}")
        try:
            return response.json()
        except ValueError as exc:
            raise ServerError(f"GET {path} answered non-JSON: {response.text[:200]}") from exc
