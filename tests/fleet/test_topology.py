"""The reference topology, all real processes on loopback: nginx (deploy/nginx.conf as shipped)
in front of two bridge nodes (`python run.py`) sharing Redis, PostgreSQL and one VAPI simulator.

The simulated Twilio goes through nginx for everything: the webhook, the media socket and
`/voice/after-stream`. nginx balances round robin with nothing sticky, so one call's three
requests land on different nodes; what the tests assert is that this does not matter. They
choose where each request lands (`_steer`), so every case is met in every run.

The processes are started once for the module; each test uses its own calls.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gevent
import psycopg
import pytest
import requests

from audio.signals import silence, tone
from sims.caller import CallerConfig, CallerError, SimulatedCaller
from tests.fleet.deploy_config import render
from tests.services import NginxServer, PostgresServer, RedisServer, die_with_parent, free_port

ROOT = Path(__file__).resolve().parents[2]
AUTH_TOKEN = "fleet-test-auth-token-0123456789"
API_KEY = "fleet-test-vapi-key"
ADMIN = "fleet-test-admin-token"
START_TIMEOUT_S = 20.0


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        gevent.sleep(step)
    return bool(predicate())


class Child:
    """A child process with its output in a file, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                # In the temp dir: run.py reads .env from its working directory, never the checkout's here.
                argv, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent(signal.SIGTERM),
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@dataclass
class Node:
    name: str
    port: int
    child: Child

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def admin(self, method: str, path: str, **kw: object) -> requests.Response:
        return requests.request(
            method, f"{self.url}/admin{path}", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5, **kw
        )


@dataclass
class Fleet:
    nginx: NginxServer
    nodes: list[Node]
    database_url: str
    calls: list[CallSeen] = field(default_factory=list)

    @property
    def public_url(self) -> str:
        return self.nginx.url

    def node_at(self, upstream: str) -> str:
        return next(node.name for node in self.nodes if node.address == upstream)


@dataclass
class CallSeen:
    """Which node took each of one call's requests (from nginx's log), and what it got."""

    call_sid: str
    webhook: str
    stream: str
    after_stream: str
    after_stream_twiml: str


def _wait_ready(child: Child, url: str) -> None:
    def ready() -> bool:
        try:
            return requests.get(f"{url}/readyz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.process.returncode}:\n{child.log()[-3000:]}")
        if ready():
            return
        gevent.sleep(0.1)
    raise RuntimeError(f"{child.name} not ready within {START_TIMEOUT_S} s:\n{child.log()[-3000:]}")


@contextlib.contextmanager
def running_fleet(workdir: Path, redis_url: str, database: dict[str, str],
                  node_env: dict[str, dict[str, str]] | None = None) -> Iterator[Fleet]:
    """A VAPI simulator, two nodes (node-a, node-b) and nginx in front of them, all stopped
    on exit. `database`: the nodes' DATABASE_URL, or {} for a SQLite file each; `node_env`:
    more variables for a node by name."""
    base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}
    children: list[Child] = []
    nginx = NginxServer()
    try:
        sim = Child("vapi_sim", [sys.executable, "-m", "tests.fleet._vapi_sim", API_KEY], base_env, workdir)
        children.append(sim)
        assert wait_until(lambda: "listening " in sim.log(), timeout=START_TIMEOUT_S), sim.log()
        vapi_url = sim.log().split("listening ", 1)[1].split()[0]

        nginx_port = free_port()
        public_url = f"http://127.0.0.1:{nginx_port}"
        nodes = []
        for name in ("node-a", "node-b"):
            port = free_port()
            env = {
                **base_env,
                "NODE_ID": name,
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "PUBLIC_URL": public_url,
                "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
                "VAPI_API_KEY": API_KEY,
                "VAPI_BASE_URL": vapi_url,
                "REDIS_URL": redis_url,
                **(database or {"DATABASE_PATH": str(workdir / f"{name}.db")}),
                "ADMIN_TOKEN": ADMIN,
                "LOG_FORMAT": "json",
                "LOG_LEVEL": "INFO",
                "DRAIN_TIMEOUT_S": "1",
                # The tests choose the node each request lands on. A node whose overload guard
                # tripped on a loaded CI box would pass a new call on to the other node, so the
                # guard is off (tests/web/test_health.py tests it).
                "OVERLOAD_CPU_PCT": "0",
                **(node_env or {}).get(name, {}),
            }
            child = Child(name, [sys.executable, str(ROOT / "run.py")], env, workdir)
            children.append(child)
            nodes.append(Node(name, port, child))
        for node in nodes:
            _wait_ready(node.child, node.url)
        nginx.start(render([node.address for node in nodes], nginx_port), nginx_port)
        yield Fleet(nginx=nginx, nodes=nodes, database_url=database.get("DATABASE_URL", ""))
    finally:
        nginx.stop()
        nginx.remove()
        for child in reversed(children):
            child.stop()


@pytest.fixture(scope="module")
def fleet(
    redis_server: RedisServer, postgres_server: PostgresServer, nginx_binary: str, tmp_path_factory
) -> Iterator[Fleet]:
    database_url = postgres_server.create_database("fleet_topology")
    redis_server.command("FLUSHALL")
    with running_fleet(tmp_path_factory.mktemp("fleet"), redis_server.url, {"DATABASE_URL": database_url}) as fleet:
        yield fleet


def _caller(fleet: Fleet) -> SimulatedCaller:
    config = CallerConfig(server_url=fleet.public_url, public_url=fleet.public_url, auth_token=AUTH_TOKEN)
    return SimulatedCaller(config)


def _routes(fleet: Fleet, call_sid: str, since: int) -> tuple[str, str, str] | None:
    """(webhook node, stream node, after-stream node) of the call whose requests followed `since`."""
    seen = fleet.nginx.requests()[since:]
    webhook = [u for m, uri, _, u in seen if m == "POST" and uri == "/voice/incoming"]
    stream = [u for m, uri, _, u in seen if m == "GET" and uri == f"/media/{call_sid}"]
    after = [u for m, uri, _, u in seen if m == "POST" and uri == "/voice/after-stream"]
    if len(webhook) == len(stream) == len(after) == 1:
        return fleet.node_at(webhook[0]), fleet.node_at(stream[0]), fleet.node_at(after[0])
    return None


def _post_after_stream(caller: SimulatedCaller) -> tuple[int, str]:
    return caller.post_webhook("/voice/after-stream", extra_params={"CallStatus": "in-progress"})


def _steer(fleet: Fleet, to: str | None) -> None:
    """Make the next request land on node `to` (None: wherever it lands).

    nginx takes the nodes in turn (one worker, two nodes), so a probe that lands on the
    other node puts `to` next.
    """
    if to is None:
        return
    for _ in range(3):
        since = len(fleet.nginx.requests())
        requests.get(f"{fleet.public_url}/healthz", headers={"Connection": "close"}, timeout=5)
        # nginx logs a request once it is done with it, which may be after its client has the
        # answer: the line just before the probe's (the webhook's, say) can come after `since`.
        probe: list[str] = []

        def logged(since: int = since, probe: list[str] = probe) -> bool:
            probe[:] = [upstream for _, uri, _, upstream in fleet.nginx.requests()[since:] if uri == "/healthz"]
            return bool(probe)

        assert wait_until(logged)
        if fleet.node_at(probe[0]) != to:
            return
    raise AssertionError(f"nginx did not take its nodes in turn: {fleet.nginx.requests()[-6:]}")


def _one_call(fleet: Fleet, route: tuple[str, str, str] | None = None, *, hangs_up: bool = True) -> CallSeen:
    """A call the assistant ends after one answer, every request through nginx; `route`: the
    nodes its webhook, stream and after-stream land on."""
    webhook_to, stream_to, after_to = route or (None, None, None)
    caller = _caller(fleet)
    _steer(fleet, webhook_to)
    since = len(fleet.nginx.requests())
    try:
        status, twiml = caller.post_webhook()
        assert status == 200 and "<Stream" in twiml, twiml
        _steer(fleet, stream_to)
        caller.connect()
        caller.start_stream()
        assert caller.wait_for_audio(400, timeout_s=5), "no greeting"  # the assistant's greeting
        caller.send_audio(tone(1000.0, 300, 8000, -20.0))
        with contextlib.suppress(CallerError):  # raised once the bridge closes the stream
            for _ in range(40):  # the line stays open with silence until the assistant hangs up
                caller.send_audio(silence(100, 8000))
        assert caller.closed.wait(5), "the assistant did not end the call"
        _steer(fleet, after_to)
        status, after = _post_after_stream(caller)
        assert status == 200
    finally:
        caller.close()
    routes: list[tuple[str, str, str] | None] = [None]

    def logged() -> bool:
        routes[0] = _routes(fleet, caller.call_sid, since)
        return routes[0] is not None

    assert wait_until(logged, timeout=5), fleet.nginx.requests()[since:]
    webhook, stream, after_node = routes[0]  # type: ignore[misc]
    seen = CallSeen(caller.call_sid, webhook, stream, after_node, after)
    if hangs_up:
        fleet.calls.append(seen)
    return seen


def test_calls_succeed_whichever_node_takes_each_request_and_the_after_stream_hangs_up_from_either(fleet):
    a, b = (node.name for node in fleet.nodes)
    routes = [(a, b, a), (b, a, a), (a, a, b), (b, b, b)]
    calls = [_one_call(fleet, route) for route in routes]
    assert [(c.webhook, c.stream, c.after_stream) for c in calls] == routes
    for call in calls:
        # Streams taken by a node that did not answer the webhook, and hang-ups decided on
        # one node and answered by the other, as well as all on one node.
        assert "<Hangup" in call.after_stream_twiml, call


def _holder(fleet: Fleet, call_sid: str) -> Node | None:
    """The node that holds the live call: the one whose own answer says the call is its own."""
    for node in fleet.nodes:
        answer = node.admin("GET", f"/calls/{call_sid}")
        if answer.ok and answer.json().get("live") and str(answer.json().get("node", "")).startswith(node.name):
            return node
    return None


@pytest.fixture
def live_call(fleet) -> Iterator[tuple[SimulatedCaller, Node]]:
    """A call that stays up (its caller says nothing, silence keeps the line open), and its node."""
    caller = _caller(fleet)
    status, _ = caller.post_webhook()
    assert status == 200
    caller.connect()
    caller.start_stream()
    line = gevent.spawn(lambda: [caller.send_audio(silence(200, 8000)) for _ in range(150)])
    try:
        assert wait_until(lambda: _holder(fleet, caller.call_sid), timeout=5)
        holder = _holder(fleet, caller.call_sid)
        assert holder is not None
        yield caller, holder
    finally:
        line.kill()
        caller.close()


def test_admin_on_one_node_lists_and_steers_the_other_nodes_calls(fleet, live_call):
    caller, owner = live_call
    other = next(n for n in fleet.nodes if n is not owner)

    def listed_on_other() -> dict | None:
        listing = other.admin("GET", "/calls").json()
        return next((c for c in listing["calls"] if c.get("call_sid") == caller.call_sid), None)

    assert wait_until(listed_on_other, timeout=5), other.admin("GET", "/calls").json()
    assert listed_on_other()["node"].startswith(owner.name)
    # The dashboard's live feed on the other node shows it too.
    with other.admin("GET", "/stream", stream=True) as feed:
        first = next(line for line in feed.iter_lines(decode_unicode=True) if line.startswith("data: "))
    snapshot = json.loads(first[len("data: "):])
    assert any(c.get("call_sid") == caller.call_sid and c["node"].startswith(owner.name) for c in snapshot["calls"])

    answer = other.admin("POST", f"/calls/{caller.call_sid}/chaos", json={"actor": "vad", "fault": "raise"})
    assert answer.status_code == 202, answer.text
    assert answer.json()["node"].startswith(owner.name)

    def vad_restarts() -> int:
        return owner.admin("GET", f"/calls/{caller.call_sid}").json()["actors"]["vad"]["restarts"]

    assert wait_until(lambda: vad_restarts() == 1, timeout=5), owner.admin("GET", f"/calls/{caller.call_sid}").json()
    assert not caller.closed.is_set()  # the call goes on


def test_the_records_of_both_nodes_calls_are_in_postgresql(fleet):
    if not fleet.calls:
        a, b = (node.name for node in fleet.nodes)
        fleet.calls.extend(_one_call(fleet, route) for route in ((a, a, b), (a, b, a)))
    wanted = {c.call_sid: c for c in fleet.calls}

    def stored() -> dict[str, tuple[str, str]]:
        with psycopg.connect(fleet.database_url) as conn:
            rows = conn.execute(
                "SELECT call_sid, outcome, node_id FROM calls WHERE call_sid = ANY(%s)", (list(wanted),)
            ).fetchall()
        return {sid: (outcome, node) for sid, outcome, node in rows}

    assert wait_until(lambda: len(stored()) == len(wanted), timeout=10), (stored(), list(wanted))
    records = stored()
    assert {outcome for outcome, _ in records.values()} == {"assistant-ended"}
    # Each record names the node that held the call's stream: both nodes wrote to the one history.
    for sid, (_, node_id) in records.items():
        assert node_id.startswith(wanted[sid].stream + "-"), (node_id, wanted[sid])
    assert {wanted[sid].stream for sid in records} == {node.name for node in fleet.nodes}


def test_with_redis_down_calls_still_cross_nodes_and_only_the_holders_after_stream_hangs_up(fleet, redis_server):
    """Last in the module: it stops the session's Redis (and starts it again on the same port)."""
    redis_server.stop()
    try:
        a, b = (node.name for node in fleet.nodes)
        calls = [_one_call(fleet, route, hangs_up=False) for route in ((a, b, a), (b, a, a))]
        for call in calls:
            assert call.stream != call.webhook  # the ticket alone carried the call across
            # Only the node that held the call knows how it ended; another plays the fallback.
            if call.after_stream == call.stream:
                assert "<Hangup" in call.after_stream_twiml, call
            else:
                assert "<Say" in call.after_stream_twiml and "<Hangup" not in call.after_stream_twiml, call
        assert any(c.after_stream != c.stream for c in calls)
        for node in fleet.nodes:
            assert node.child.log().count('"directory_unavailable"') == 1, node.name
    finally:
        redis_server.start()
    # Redis back: the nodes use it again, and an after-stream on the other node hangs up again.
    call = _one_call(fleet, (a, a, b))
    assert "<Hangup" in call.after_stream_twiml
    assert all('"directory_available"' in node.child.log() for node in fleet.nodes)
