"""`run.py --workers N` / WORKERS=N as operators run it: gunicorn's master, real worker processes, signals."""

from __future__ import annotations

import json
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
from tests.test_run import ROOT, TOKEN, _healthy, free_port, server_env, stop_server


def start_workers(directory: Path, *args: str, **extra: str) -> tuple[subprocess.Popen[str], str]:
    """`python run.py [args]` on a free loopback port with JSON logs, once it answers /healthz.

    It leads a process group of its own, as a server started from a terminal does.
    """
    port = free_port()
    env = server_env(directory, port, LOG_FORMAT="json", **extra)
    log = open(directory / "server.log", "w")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=directory, env=env, stdout=log,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    log.close()
    base = f"http://127.0.0.1:{port}"
    assert wait_until(lambda: _healthy(base), timeout=20), (directory / "server.log").read_text()[-3000:]
    return process, base


def children(pid: int) -> dict[int, str]:
    """pid -> command line of each child process of `pid` (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:  # it ended meanwhile
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found[int(entry.name)] = cmdline
    return found


def workers_of(master: subprocess.Popen[str]) -> set[int]:
    return {pid for pid, cmd in children(master.pid).items() if "run.py" in cmd}


def listening_workers(master: subprocess.Popen[str], directory: Path) -> set[int]:
    """The master's worker processes that have said they serve."""
    said = {line["pid"] for line in log_lines(directory) if line["event"] == "server_listening"}
    return workers_of(master) & said


def running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def log_lines(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "server.log").read_text().splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """Two workers chosen with the flag, over a WORKERS=1 environment that it overrides."""
    directory = tmp_path_factory.mktemp("workers")
    first = _free_ports(4)
    process, base = start_workers(directory, "--workers", "2", WORKERS="1", DRAIN_TIMEOUT_S="1",
                                  RELAY_PORTS=f"{first}-{first + 3}")
    assert wait_until(lambda: len(listening_workers(process, directory)) == 2, timeout=10), children(process.pid)
    yield process, base, directory, (first, first + 3)
    stop_server(process)


def _free_ports(count: int) -> int:
    """The first of `count` consecutive ports free on loopback now."""
    for _ in range(50):
        first = free_port()
        if first + count > 65536:
            continue
        held = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports")


def test_two_workers_serve_one_port_with_one_vapi_simulator_between_them(two_workers):
    process, _base, directory, _relay_ports = two_workers
    kids = children(process.pid)
    assert len([cmd for cmd in kids.values() if "run.py" in cmd]) == 2
    assert len([cmd for cmd in kids.values() if "sims.vapi_process" in cmd]) == 1
    listening = [line for line in log_lines(directory) if line["event"] == "server_listening"]
    assert len(listening) >= 2 and all(line.get("worker") for line in listening)  # who it is, with its pid


def test_a_killed_worker_is_replaced_and_the_port_keeps_serving(two_workers):
    process, base, directory, _relay_ports = two_workers
    before = workers_of(process)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    # Every request in the meantime is answered, by the survivor or by the new worker.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert requests.get(base + "/healthz", timeout=5).status_code == 200
        now = workers_of(process)
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.05)
    now = workers_of(process)
    assert len(now) == 2 and victim not in now and len(now & before) == 1, (before, now)
    assert wait_until(lambda: len(listening_workers(process, directory)) == 2, timeout=10)
    assert wait_until(lambda: requests.get(base + "/readyz", timeout=5).status_code == 200, timeout=5)


def test_metrics_on_any_worker_report_the_whole_machine(two_workers):
    process, base, directory, _relay_ports = two_workers

    def refused_upgrades() -> float:
        text = requests.get(base + "/metrics", timeout=5).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith('bridge_malformed_inputs_total{kind="not_an_upgrade_route"'))

    start = refused_upgrades()
    for _ in range(20):  # each on a connection of its own, taken by whichever worker accepts it
        assert requests.get(base + "/not-media", headers={"Upgrade": "websocket", "Connection": "Upgrade"},
                            timeout=5).status_code == 404
    # Ask until both workers have answered /metrics: each says all 20 were refused.
    answered_by: set[int] = set()
    for _ in range(60):
        assert refused_upgrades() == start + 20
        answered_by = {line["pid"] for line in log_lines(directory)
                       if line["event"] == "http_request" and line["path"] == "/metrics"} & workers_of(process)
        if len(answered_by) == 2:
            break
    assert len(answered_by) == 2, "one worker took every connection"


@pytest.mark.parametrize("how", ["SIGTERM to the master", "Ctrl-C to every process"])
def test_stopping_drains_every_worker_live_calls_run_on_and_the_master_exits_0(tmp_path, how):
    process, base = start_workers(tmp_path, WORKERS="2", DRAIN_TIMEOUT_S="1")
    assert wait_until(lambda: len(listening_workers(process, tmp_path)) == 2, timeout=10)
    workers = workers_of(process)
    everyone = set(children(process.pid))  # the workers and the simulator

    def not_ready() -> bool:
        try:
            return requests.get(base + "/readyz", timeout=1).status_code == 503
        except requests.RequestException:
            return False

    caller = SimulatedCaller(CallerConfig(server_url=base, public_url=base, auth_token=TOKEN))
    try:
        assert caller.post_webhook()[0] == 200
        caller.connect()
        caller.start_stream()
        caller.send_audio(silence(300, 8000))
        if how == "SIGTERM to the master":
            process.send_signal(signal.SIGTERM)
        else:  # a terminal's Ctrl-C: the master, the workers and the simulator all get SIGINT
            os.killpg(process.pid, signal.SIGINT)
        signalled = time.monotonic()
        assert wait_until(not_ready, timeout=3)
        while not caller.closed.is_set() and time.monotonic() - signalled < 5:
            try:
                caller.send_audio(silence(100, 8000))  # the simulator still answers: it is stopped last
            except Exception:  # noqa: BLE001 - the server closed the stream: expected
                break
        assert caller.closed.wait(3)
        assert time.monotonic() - signalled >= 0.9  # the call ran on for the drain timeout
    finally:
        caller.close()
    assert process.wait(timeout=30) == 0
    lines = log_lines(tmp_path)
    drained = {line["pid"]: line["ended"] for line in lines if line["event"] == "drained"}
    assert set(drained) == workers and sorted(drained.values()) == [0, 1]  # the call was ended by its worker
    assert len(everyone) == 3 and wait_until(lambda: not any(map(running, everyone)), timeout=5)  # nothing left
    [starting] = [line for line in lines if line["event"] == "workers_starting"]
    assert not Path(starting["run_dir"]).exists()


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_a_bad_worker_count_stops_start_up_with_one_line_naming_workers(tmp_path, how):
    port = free_port()
    args, extra = (["--workers", "0"], {}) if how == "flag" else ([], {"WORKERS": "many"})
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=tmp_path,
                            env=server_env(tmp_path, port, **extra), capture_output=True, text=True, timeout=30)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("configuration error: WORKERS=")


def test_with_workers_a_busy_port_still_stops_start_up_with_one_line_before_anything_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, str(ROOT / "run.py"), "--workers", "2"], cwd=tmp_path,
                                env=server_env(tmp_path, port), capture_output=True, text=True, timeout=30)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("configuration error: PORT=") and "in use" in lines[0]
    assert "vapi_simulator_started" not in result.stdout and "Booting worker" not in result.stdout
    assert not (tmp_path / "calls.db").exists()  # the port is tried before the database, as with one process


@pytest.mark.parametrize("setting", ["DATABASE_PATH", "DIRECTORY_PATH"])
def test_with_workers_an_unusable_file_stops_start_up_with_one_line(tmp_path, setting):
    port = free_port()
    path = str(tmp_path / "no-such-dir" / "some.db")
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "--workers", "2"], cwd=tmp_path,
                            env=server_env(tmp_path, port, **{setting: path}), capture_output=True, text=True,
                            timeout=30)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"configuration error: {setting}=") and path in lines[0]
    assert "vapi_simulator_started" not in result.stdout and "Booting worker" not in result.stdout
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listening


def test_ten_calls_succeed_whichever_worker_takes_each_request(two_workers):
    process, base, directory, _relay_ports = two_workers
    workers = workers_of(process)
    # Which worker accepts a connection is the kernel's choice: another ten, at most twice,
    # in the rare case where every stream went to one worker (about 1 in 500).
    for batch in range(1, 4):
        calls = subprocess.run([sys.executable, str(ROOT / "run.py"), "call", "--server", base, "--auth-token", TOKEN,
                                "--calls", "10", "--duration", "2.5"], cwd=directory, capture_output=True, text=True,
                               timeout=60)
        assert calls.returncode == 0, calls.stdout[-3000:] + calls.stderr[-2000:]  # every call of every batch
        lines = log_lines(directory)
        webhook_pid = {line["call_sid"]: line["pid"] for line in lines if line["event"] == "call_answered"}
        stream_pid = {line["call_sid"]: line["pid"] for line in lines
                      if line["event"] == "call_started" and line["call_sid"] in webhook_pid}
        assert len(stream_pid) == 10 * batch
        # Both workers took streams, and some streams landed on the other worker than their webhook's.
        if set(stream_pid.values()) == workers and any(stream_pid[sid] != webhook_pid[sid] for sid in stream_pid):
            break
    assert set(stream_pid.values()) == workers
    assert any(stream_pid[sid] != webhook_pid[sid] for sid in stream_pid)


def test_a_stream_on_another_worker_gets_the_vapi_socket_its_webhooks_worker_opened_through_that_workers_relay(
        two_workers):
    # The webhook's worker opens the VAPI call's socket at once (the greeting waits in it); a
    # stream that lands on the other worker used to open a second connection to VAPI after
    # `start`, which a real VAPI round trip puts before the greeting (README, First assistant audio).
    _process, base, directory, _relay_ports = two_workers
    crossed: dict[str, int] = {}
    for _batch in range(3):
        calls = subprocess.run([sys.executable, str(ROOT / "run.py"), "call", "--server", base, "--auth-token", TOKEN,
                                "--calls", "6", "--duration", "2.0"], cwd=directory, capture_output=True, text=True,
                               timeout=60)
        assert calls.returncode == 0, calls.stdout[-3000:] + calls.stderr[-2000:]
        lines = log_lines(directory)
        webhook_pid = {line["call_sid"]: line["pid"] for line in lines if line["event"] == "call_answered"}
        crossed = {line["call_sid"]: webhook_pid[line["call_sid"]] for line in lines
                   if line["event"] == "call_started" and webhook_pid.get(line["call_sid"], line["pid"]) != line["pid"]}
        if crossed:
            break
    assert crossed, "no stream landed on the other worker than its webhook's in 18 calls"

    def relayed() -> dict[str, int]:
        return {line["call_sid"]: line["pid"] for line in log_lines(directory) if line["event"] == "vapi_relay_ended"}

    assert wait_until(lambda: set(crossed) <= set(relayed()), timeout=10), (crossed, relayed())
    ended = relayed()
    assert all(ended[sid] == pid for sid, pid in crossed.items())  # by the worker that answered the webhook
    lost = [line for line in log_lines(directory) if line["event"] == "vapi_prepared_call_lost"]
    assert lost == []


def test_a_workers_relay_port_relays_and_nothing_else(two_workers):
    process, _base, directory, (first, last) = two_workers
    said = {line["pid"]: line["relay_port"] for line in log_lines(directory) if line["event"] == "server_listening"}
    live = workers_of(process)  # a test before may have had one killed and replaced
    ports = {said[pid] for pid in live}
    assert len(ports) == len(live) == 2  # one each
    assert all(first <= port <= last for port in ports)  # from RELAY_PORTS: a firewall can let them through
    for port in ports:
        answer = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert answer.status_code == 404
        upgrade = requests.get(f"http://127.0.0.1:{port}/media/CA" + "0" * 32, timeout=5, headers={
            "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert upgrade.status_code == 404


def test_a_replacement_worker_that_cannot_start_does_not_stop_the_others(tmp_path):
    import wave

    hold = tmp_path / "hold.wav"
    with wave.open(str(hold), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(b"\0\0" * 1600)
    process, base = start_workers(tmp_path, WORKERS="2", HOLD_SOUND_WAV=str(hold))
    try:
        assert wait_until(lambda: len(listening_workers(process, tmp_path)) == 2, timeout=10)
        hold.unlink()  # every new worker now fails to start
        victim, survivor = sorted(workers_of(process))
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: any(line["event"] == "worker_start_failed" for line in log_lines(tmp_path)),
                          timeout=10)
        assert process.poll() is None and survivor in workers_of(process)
        assert requests.get(base + "/readyz", timeout=5).status_code == 200
    finally:
        stop_server(process)
    assert process.returncode == 0


def test_relay_ports_fewer_than_the_workers_stop_start_up_with_one_line(tmp_path):
    from tests.test_run import assert_refused

    port = free_port()
    result = subprocess.run([sys.executable, str(ROOT / "run.py")], cwd=tmp_path, capture_output=True, text=True,
                            env=server_env(tmp_path, port, WORKERS="3", RELAY_PORTS="4100-4101"), timeout=30)
    assert "at least WORKERS (3)" in assert_refused(result, "RELAY_PORTS", port)

