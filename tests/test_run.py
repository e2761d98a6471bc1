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
from records import RecordStore
from sims.caller import CallerConfig, SimulatedCaller
from tests.integration.conftest import wait_until
from tests.records.helpers import make_record

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "run-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(tmp_path, port: int, **extra: str) -> dict[str, str]:
    """The environment of a test server: loopback, a known token, its own database."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "TWILIO_AUTH_TOKEN": TOKEN,
        "DATABASE_PATH": str(tmp_path / "calls.db"),
        **extra,
    }


def start_server(tmp_path, **extra: str) -> tuple[subprocess.Popen, str]:
    """`python run.py` on a free loopback port, once it answers /healthz.

    It runs in `tmp_path`, so a `.env` there is the one it reads (never the checkout's).
    """
    port = free_port()
    env = server_env(tmp_path, port, **extra)
    # Logs go to a file, not a pipe: a pipe nobody drains fills up and stalls the server.
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py")], cwd=tmp_path, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
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


# --- Start-up failures a user can cause: one line naming the setting, exit 2, nothing started ---


def run_until_exit(tmp_path, port: int, **extra: str) -> subprocess.CompletedProcess[str]:
    """`python run.py` that is expected to stop on its own (bounded by a timeout)."""
    return subprocess.run([sys.executable, str(ROOT / "run.py")], cwd=tmp_path, env=server_env(tmp_path, port, **extra),
                          capture_output=True, text=True, timeout=30)


def assert_refused(result: subprocess.CompletedProcess[str], setting: str, port: int) -> str:
    """Exit 2, one line on stderr naming `setting`, and nothing was started or left listening."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"configuration error: {setting}="), lines[0]
    for event in ("vapi_simulator_started", "server_listening"):
        assert event not in result.stdout
    with socket.socket() as probe:
        probe.settimeout(2)
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listening
    return lines[0]


@pytest.mark.parametrize("case", ["missing directory", "not sqlite", "a directory"])
def test_an_unusable_database_path_stops_start_up_with_one_line(tmp_path, case):
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("these are not the call records you are looking for\n" * 50)
    path = {"missing directory": str(tmp_path / "no-such-dir" / "calls.db"), "not sqlite": str(not_sqlite),
            "a directory": str(tmp_path)}[case]
    port = free_port()
    line = assert_refused(run_until_exit(tmp_path, port, DATABASE_PATH=path), "DATABASE_PATH", port)
    assert path in line


def test_call_records_older_than_the_retention_period_are_gone_once_the_server_is_up(tmp_path):
    now = time.time()
    store = RecordStore(str(tmp_path / "calls.db"))
    store.start()
    for call_sid, days in {"CAlastmonth": 31.0, "CAlastweek": 7.0}.items():
        store.submit(make_record(call_sid, started_at=now - days * 86400 - 60, ended_at=now - days * 86400))
    store.stop()
    process, base = start_server(tmp_path, ADMIN_TOKEN="admin-token", CALL_RECORDS_RETENTION_DAYS="30")
    try:
        def history() -> list[str]:
            answer = requests.get(base + "/admin/history", headers={"Authorization": "Bearer admin-token"}, timeout=5)
            return [record["call_sid"] for record in answer.json()["calls"]]

        assert wait_until(lambda: history() == ["CAlastweek"], timeout=5), history()
    finally:
        stop_server(process)


def test_an_unreachable_database_url_stops_start_up_with_one_line_without_its_password(tmp_path):
    port, nobody = free_port(), free_port()  # nothing listens on `nobody`
    url = f"postgresql://bridge:pw-s3cret@127.0.0.1:{nobody}/calls"
    result = run_until_exit(tmp_path, port, DATABASE_URL=url)
    line = assert_refused(result, "DATABASE_URL", port)
    assert "pw-s3cret" not in result.stdout + result.stderr
    assert f"bridge:***@127.0.0.1:{nobody}/calls" in line and "Connection refused" in line


def test_a_busy_port_stops_start_up_with_one_line_naming_port(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_until_exit(tmp_path, port)
    # The port was someone else's: the probe after exit must find it free, so check by hand.
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("configuration error: PORT=") and "in use" in lines[0]
    assert "vapi_simulator_started" not in result.stdout and "call_records_opened" not in result.stdout
    assert not (tmp_path / "calls.db").exists()  # the port is tried before the database is made


def test_a_host_that_is_not_this_machines_stops_start_up_with_one_line_naming_host(tmp_path):
    port = free_port()
    assert_refused(run_until_exit(tmp_path, port, HOST="192.0.2.1"), "HOST", port)  # TEST-NET-1


@pytest.mark.parametrize("case", ["missing", "not a wav", "stereo"])
def test_an_unusable_hold_sound_stops_start_up_with_one_line(tmp_path, case):
    import wave

    path = tmp_path / "hold.wav"
    if case == "not a wav":
        path.write_bytes(b"RIFF....not really")
    elif case == "stereo":
        with wave.open(str(path), "wb") as wav:
            wav.setnchannels(2)
            wav.setsampwidth(2)
            wav.setframerate(8000)
            wav.writeframes(b"\0\0" * 1600)
    port = free_port()
    assert_refused(run_until_exit(tmp_path, port, HOLD_SOUND_WAV=str(path)), "HOLD_SOUND_WAV", port)


def test_an_unparsable_env_file_stops_start_up_with_one_line_and_no_value(tmp_path):
    (tmp_path / ".env").write_text("ADMIN_TOKEN=file-secret-1\nthis line is not a setting\n")
    port = free_port()
    line = assert_refused(run_until_exit(tmp_path, port), "DOTENV_PATH", port)
    assert "line 2" in line and "file-secret-1" not in line


# --- Production warnings ---


def log_lines(tmp_path) -> list[dict]:
    import json

    return [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines() if line.startswith("{")]


def test_a_real_vapi_key_with_a_loopback_url_and_a_generated_token_warns_once_each(tmp_path):
    key = "vapi-key-that-must-not-be-logged"
    process, _base = start_server(tmp_path, LOG_FORMAT="json", VAPI_API_KEY=key, TWILIO_AUTH_TOKEN="")
    stop_server(process)
    warnings = [line for line in log_lines(tmp_path) if line["event"] == "setting_unusable_with_twilio"]
    assert sorted(line["setting"] for line in warnings) == ["PUBLIC_URL", "TWILIO_AUTH_TOKEN"]
    assert all(line["level"] == "warning" for line in warnings)
    assert key not in (tmp_path / "server.log").read_text()


def test_the_development_server_gives_no_production_warnings(server, tmp_path):
    process, _base = server
    stop_server(process)
    assert [line for line in log_lines(tmp_path) if line["level"] == "warning"] == []


# --- .env ---


def test_env_file_values_are_used_and_the_environment_wins_over_them(tmp_path):
    (tmp_path / ".env").write_text(
        "# settings for the test\n"
        "ADMIN_TOKEN=admin-from-file\n"
        "METRICS_TOKEN=metrics-from-file\n"
    )
    process, base = start_server(tmp_path, METRICS_TOKEN="metrics-from-env", LOG_FORMAT="json")
    try:
        def status(path: str, token: str) -> int:
            return requests.get(base + path, headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code

        assert status("/admin/calls", "admin-from-file") == 200  # from .env
        assert status("/metrics", "metrics-from-env") == 200  # the environment wins
        assert status("/metrics", "metrics-from-file") != 200
    finally:
        stop_server(process)
    text = (tmp_path / "server.log").read_text()
    assert "settings_file_read" in text
    assert "admin-from-file" not in text and "metrics-from" not in text


def test_dotenv_path_names_the_file_and_must_exist(tmp_path):
    elsewhere = tmp_path / "conf"
    elsewhere.mkdir()
    (elsewhere / "bridge.env").write_text("ADMIN_TOKEN=admin-from-named-file\n")
    process, base = start_server(tmp_path, DOTENV_PATH=str(elsewhere / "bridge.env"))
    try:
        headers = {"Authorization": "Bearer admin-from-named-file"}
        assert requests.get(base + "/admin/calls", headers=headers, timeout=5).status_code == 200
    finally:
        stop_server(process)
    port = free_port()
    line = assert_refused(run_until_exit(tmp_path, port, DOTENV_PATH=str(elsewhere / "missing.env")), "DOTENV_PATH",
                          port)
    assert "missing.env" in line
