"""bin/demo as a newcomer runs it: a real process tree (server and simulated callers), then Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
DEMO_TOKEN = "demo-token"  # fixed by bin/demo, printed, and used for both tokens
START_TIMEOUT_S = 60.0  # the venv check, the server's start and the first callers
STOP_TIMEOUT_S = 30.0  # callers stopped, the server drained

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_members(sid: int) -> set[int]:
    """Processes in session `sid` (Linux /proc): the demo started its own, so these are its tree."""
    members = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the command (which may hold spaces) in parentheses: state ppid pgrp session.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            members.add(int(entry))
    return members


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass
class Demo:
    process: subprocess.Popen[bytes]
    base: str
    output: Path
    tmp: Path

    def admin(self, path: str) -> requests.Response:
        return requests.get(f"{self.base}{path}", headers={"Authorization": f"Bearer {DEMO_TOKEN}"}, timeout=5)

    def live_calls(self) -> list[str]:
        try:
            response = self.admin("/admin/calls")
        except requests.RequestException:
            return []
        if response.status_code != 200:
            return []
        return [call["call_sid"] for call in response.json()["calls"] if call.get("live")]

    def wait_for(self, predicate: Callable[[], T], timeout: float, what: str) -> T:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"bin/demo exited ({self.process.returncode}):\n{self.text()}"
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"bin/demo: no {what} within {timeout:.0f} s:\n{self.text()}")

    def text(self) -> str:
        return self.output.read_text(errors="replace")[-4000:]

    def stop(self, signum: int = signal.SIGINT) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=STOP_TIMEOUT_S)


def demo_env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    """What a newcomer's shell holds, no more: never this test run's settings or the checkout's .env."""
    empty_env = tmp_path / "empty.env"
    empty_env.write_text("")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "TMPDIR": str(tmp_path),  # so the test sees the demo remove its temporary directory
        "DOTENV_PATH": str(empty_env),
        "PORT": str(port),
    }
    if "PYTHON" in os.environ:
        env["PYTHON"] = os.environ["PYTHON"]
    env.update(extra)
    return env


@contextlib.contextmanager
def running_demo(tmp_path: Path, **extra: str) -> Iterator[Demo]:
    """bin/demo in a session of its own, on a free port; whatever is left of it is killed after."""
    port = free_port()
    output = tmp_path / "demo.out"
    with output.open("wb") as sink:  # a file, not a pipe: nobody has to drain it
        process = subprocess.Popen(
            [str(ROOT / "bin" / "demo")],
            cwd=tmp_path,
            env=demo_env(tmp_path, port, **extra),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    demo = Demo(process, f"http://127.0.0.1:{port}", output, tmp_path)
    try:
        yield demo
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        for pid in session_members(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(150)  # bounded inside: start 60 s, calls 20 + 45 s, stop 30 s
def test_demo_places_calls_continuously_and_stops_cleanly_on_ctrl_c(tmp_path):
    # Short calls, so that one ends and the next begins within a few seconds.
    with running_demo(tmp_path, DEMO_CALL_SECONDS="3") as demo:
        first = demo.wait_for(lambda: set(demo.live_calls()), START_TIMEOUT_S, "live call in GET /admin/calls")
        printed = demo.text()
        assert f"{demo.base}/dashboard" in printed and DEMO_TOKEN in printed, printed
        demo.wait_for(lambda: len(demo.live_calls()) >= 2, 20, "two calls at once")  # a few at a time
        # One call after another: once calls have completed, more than the 3 callers' first
        # calls have been live (each call lasts about 3 s here).
        seen = set(first)

        def replaced() -> bool:
            seen.update(demo.live_calls())
            history = demo.admin("/admin/history?limit=50").json()["calls"]
            return len(seen) > 3 and any(record["outcome"] == "completed" for record in history)

        demo.wait_for(replaced, 45, "completed call followed by a new one")

        tree = session_members(demo.process.pid)
        lines = [command_line(pid) for pid in tree]
        assert any(line.endswith("run.py ") for line in lines), lines  # the server
        assert any(" run.py call " in line for line in lines), lines  # callers
        status = demo.stop(signal.SIGINT)

        assert status == 0, demo.text()
        leftovers = {pid: command_line(pid) for pid in session_members(demo.process.pid)}
        assert leftovers == {}, leftovers
        assert "stopped; calls finished ok" in demo.text()
        assert "Traceback" not in demo.text(), demo.text()
        assert not list(tmp_path.glob("bridge-demo-*")), "the demo's temporary directory is left behind"
        with pytest.raises(requests.ConnectionError):  # nothing listens on its port any more
            requests.get(f"{demo.base}/healthz", timeout=2)


@pytest.mark.timeout(100)
def test_sigterm_stops_the_demo_the_same_way(tmp_path):
    with running_demo(tmp_path, DEMO_CALLS="1") as demo:
        demo.wait_for(demo.live_calls, START_TIMEOUT_S, "live call in GET /admin/calls")
        tree = session_members(demo.process.pid)
        assert len(tree) >= 3, [command_line(pid) for pid in tree]  # the demo, the server, a caller
        assert demo.stop(signal.SIGTERM) == 0, demo.text()
        assert session_members(demo.process.pid) == set()


def test_a_port_in_use_stops_the_demo_with_the_servers_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = demo_env(tmp_path, port)
        result = subprocess.run(
            [str(ROOT / "bin" / "demo")],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            start_new_session=True,
        )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"PORT='{port}' is not valid" in result.stderr
    assert "Dashboard:" not in result.stdout


def test_a_bad_port_or_call_count_is_refused_before_anything_starts(tmp_path):
    for extra in ({"PORT": "http"}, {"DEMO_CALLS": "0"}):
        env = demo_env(tmp_path, 1, **{"PORT": "3000", **extra})
        result = subprocess.run(
            [str(ROOT / "bin" / "demo")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, result.stderr
        name = next(iter(extra))
        assert result.stderr.startswith(f"demo: {name}="), result.stderr
