"""A real server on an ephemeral loopback port, the VAPI simulator, and simulated callers."""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import time
from collections.abc import Callable, Iterator

import gevent
import pytest
import structlog
from pykka import ActorRegistry

from service import BridgeService
from settings import Settings
from sims.caller import CallerConfig, SimulatedCaller
from sims.script import CallerScript
from sims.vapi import VapiSimConfig, VapiSimulator

AUTH_TOKEN = "test-auth-token-0123456789abcdef"
API_KEY = "test-vapi-key"


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, step: float = 0.01) -> bool:
    """Poll `predicate` cooperatively until it is truthy or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        gevent.sleep(step)
    return bool(predicate())


def live_greenlets() -> int:
    """gevent Greenlets alive now (the hub and its thread-pool workers are infrastructure)."""
    return sum(1 for obj in gc.get_objects() if isinstance(obj, gevent.Greenlet) and not obj.dead)


def open_sockets() -> int:
    """Sockets this process holds open (Linux)."""
    fd_dir = "/proc/self/fd"
    count = 0
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            count += os.readlink(f"{fd_dir}/{fd}").startswith("socket:")
    return count


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every test must leave no actor, no extra greenlet and no extra socket behind."""
    gevent.sleep(0)
    gc.collect()
    before, sockets = live_greenlets(), open_sockets()
    yield
    assert wait_until(lambda: not ActorRegistry.get_all(), timeout=5), ActorRegistry.get_all()
    assert wait_until(lambda: live_greenlets() <= before, timeout=5), (live_greenlets(), before)
    # Clients' pooled connections are freed by the collector, not by us.
    assert wait_until(lambda: gc.collect() >= 0 and open_sockets() <= sockets, timeout=5), (open_sockets(), sockets)


def make_settings(port: int, sim: VapiSimulator, database: str = ":memory:", **env: str) -> Settings:
    base = {
        "DATABASE_PATH": database,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "PUBLIC_URL": f"https://bridge.test:{port}",
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "VAPI_API_KEY": API_KEY,
        "VAPI_BASE_URL": sim.base_url,
        "KEEPALIVE_INTERVAL_S": "0.5",
        "PONG_TIMEOUT_S": "0.3",
        "LOG_LEVEL": "WARNING",
        # This bridge shares its process with the test's own work (synthesising audio,
        # waiting, asserting): the process's CPU says nothing of the bridge, so the overload
        # guard is off unless a test turns it on (tests/web/test_health.py).
        "OVERLOAD_CPU_PCT": "0",
    }
    base.update(env)
    return Settings.from_env(base)


@pytest.fixture
def sim_config() -> VapiSimConfig:
    return VapiSimConfig(api_key=API_KEY, reply_delay_ms=200, reply_ms=800, greeting_ms=400)


@pytest.fixture
def vapi_sim(sim_config: VapiSimConfig) -> Iterator[VapiSimulator]:
    sim = VapiSimulator(sim_config)
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def server_env() -> dict[str, str]:
    return {}


@pytest.fixture
def bridge(vapi_sim: VapiSimulator, server_env: dict[str, str]) -> Iterator[BridgeService]:
    # Bind first so PUBLIC_URL can name the real port, as it would in production.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    settings = make_settings(listener.getsockname()[1], vapi_sim, **server_env)
    service = BridgeService(settings, log=structlog.get_logger("test"), listener=listener)
    service.start()
    yield service
    service.stop()


@pytest.fixture
def make_caller(bridge: BridgeService) -> Iterator[Callable[..., SimulatedCaller]]:
    callers: list[SimulatedCaller] = []

    def make(script: CallerScript | None = None, **kw: object) -> SimulatedCaller:
        config = CallerConfig(
            server_url=f"http://127.0.0.1:{bridge.port}",
            public_url=bridge.settings.public_url,
            auth_token=AUTH_TOKEN,
            **({"script": script} if script is not None else {}),
            **kw,
        )
        caller = SimulatedCaller(config)
        callers.append(caller)
        return caller

    make.bridge = bridge  # type: ignore[attr-defined]  # for helpers that wait on the server's side
    yield make
    for caller in callers:
        caller.close()
