"""run.py as operators run it: a real server process, its embedded VAPI simulator, signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from audio.signals import silence
from sims.caller import CallerConfig, SimulatedCaller
from tests.integration.conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "run-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp_path, **extra: str) -> tuple[subprocess.Popen, str]:
    """`python run.py` on a free loopback port, once it answers /healthz."""
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "TWILIO_AUTH_TOKEN": TOKEN,
        "DATABASE_PATH": str(tmp_path / "calls.db"),
        **extra,
    }
    # Logs go to a file, not a pipe: a pipe nobody drains fills up and stalls the server.
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen([sys.executable, "run.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    base = f"http://127.0.0.1:{port}"
    assert wait_until(lambda: _healthy(base), timeout=15), (tmp_path / "server.log").read_text()[-2000:]
    return process, base


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait(timeout=10)


def _healthy(base: str) -> bool:
    try:
        return requests.get(base + "/healthz", timeout=0.5).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture
def server(tmp_path):
    process, base = start_server(tmp_path, DRAIN_TIMEOUT_S="1", LOG_FORMAT="json")
    yield process, base
    stop_server(process)


def test_sigterm_drains_live_calls_then_exits_0(server, tmp_path):
    process, base = server
    caller = SimulatedCaller(CallerConfig(server_url=base, public_url=base, auth_token=TOKEN))
    try:
        status, _ = caller.post_webhook()
        assert status == 200
        caller.connect()
        caller.start_stream()
        caller.send_audio(silence(300, 8000))
        process.send_signal(signal.SIGTERM)
        assert wait_until(lambda: requests.get(base + "/readyz", timeout=1).status_code == 503, timeout=3)
        signalled = time.monotonic()
        while not caller.closed.is_set() and time.monotonic() - signalled < 5:
            try:
                caller.send_audio(silence(100, 8000))
            except Exception:  # noqa: BLE001 - the server closed the stream: expected
                break
        assert caller.closed.wait(3)
        assert time.monotonic() - signalled >= 0.9  # the call ran on for the drain timeout
    finally:
        caller.close()
    assert process.wait(timeout=15) == 0
    out = (tmp_path / "server.log").read_text()
    assert '"event": "drained"' in out or '"event":"drained"' in out


def test_json_logs_parse_line_by_line_and_call_lines_carry_the_call_sid(server, tmp_path):
    import json

    process, base = server
    caller = SimulatedCaller(CallerConfig(server_url=base, public_url=base, auth_token=TOKEN))
    try:
        caller.post_webhook()
        caller.connect()
        caller.start_stream()
        caller.send_audio(silence(300, 8000))
        caller.send_stop()
        assert caller.closed.wait(5)
    finally:
        caller.close()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
    lines = [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines() if line.strip()]
    assert lines
    call_lines = [line for line in lines if line.get("actor") in ("twilio", "vapi", "codec", "vad", "supervisor")]
    assert call_lines and all(line.get("call_sid") == caller.call_sid for line in call_lines)
    assert {"call_started", "call_ended"} <= {line["event"] for line in call_lines}
    text = "\n".join(map(str, lines))
    assert TOKEN not in text


def test_every_json_line_about_a_call_carries_its_call_sid_and_an_actor(tmp_path):
    import json

    admin = "admin-token-for-the-log-test"
    process, base = start_server(tmp_path, DRAIN_TIMEOUT_S="1", LOG_FORMAT="json", ADMIN_TOKEN=admin)
    headers = {"Authorization": f"Bearer {admin}"}
    caller = SimulatedCaller(CallerConfig(server_url=base, public_url=base, auth_token=TOKEN))
    try:
        caller.post_webhook()
        caller.connect()
        caller.start_stream()
        caller.send_audio(silence(300, 8000))
        assert requests.get(f"{base}/admin/calls/{caller.call_sid}", headers=headers, timeout=5).status_code == 200
        # A supervisor fault: the root's lines about it are the call's lines too.
        assert requests.post(f"{base}/admin/calls/{caller.call_sid}/chaos", json={"actor": "supervisor",
                             "fault": "kill"}, headers=headers, timeout=5).status_code == 202
        caller.send_audio(silence(500, 8000))
        caller.send_stop()
        assert caller.closed.wait(5)
    finally:
        caller.close()
        stop_server(process)
    lines = [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines() if line.strip()]
    about_the_call = [line for line in lines if caller.call_sid in json.dumps(line)]
    events = {line["event"] for line in about_the_call}
    assert {"call_answered", "call_started", "child_exited", "http_request", "call_ended"} <= events, events
    unattributed = [line for line in about_the_call
                    if line.get("call_sid") != caller.call_sid or not line.get("actor")]
    assert unattributed == []


@pytest.fixture
def chaos_server(tmp_path):
    process, base = start_server(
        tmp_path,
        ADMIN_TOKEN="chaos-cli-token",
        CHAOS_RATE="120",  # faults per call-minute: two a second, a busy monkey
        CHAOS_SEED="7",
    )
    yield process, base
    stop_server(process)


def test_chaos_cli_lists_calls_and_injects_faults_and_the_monkey_injects_on_its_own(chaos_server):
    _process, base = chaos_server
    caller = SimulatedCaller(CallerConfig(server_url=base, public_url=base, auth_token=TOKEN))
    try:
        caller.post_webhook()
        caller.connect()
        caller.start_stream()
        caller.send_audio(silence(300, 8000))
        cli = [sys.executable, "run.py", "chaos", "--server", base, "--token", "chaos-cli-token"]
        listed = subprocess.run([*cli, "list"], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert listed.returncode == 0 and caller.call_sid in listed.stdout
        injected = subprocess.run(
            [*cli, "inject", caller.call_sid, "vad", "raise"], cwd=ROOT, capture_output=True, text=True, timeout=30
        )
        assert injected.returncode == 0 and "injected" in injected.stdout
        refused = subprocess.run([*cli, "inject", caller.call_sid, "codec", "sever"], cwd=ROOT, capture_output=True,
                                 text=True, timeout=30)
        assert refused.returncode == 1 and "400" in refused.stdout
        # The monkey, at 120 faults per call-minute, strikes within a few seconds.
        def monkey_struck() -> bool:
            text = requests.get(base + "/metrics", timeout=2).text
            total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                        if line.startswith("bridge_chaos_faults_total{"))
            return total >= 3  # the CLI's one, plus the monkey's
        deadline = time.monotonic() + 8
        while not monkey_struck() and time.monotonic() < deadline:
            caller.send_audio(silence(200, 8000))
        assert monkey_struck()
        assert not caller.closed.is_set()
    finally:
        caller.close()
