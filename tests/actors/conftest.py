"""One real call actor at a time, among fakes: no socket, no real sleep (see fakes.py)."""

from __future__ import annotations

import gc
import random
from collections.abc import Iterator

import gevent
import pytest
import structlog
from pykka import ActorRegistry

from actors.call import CallContext, CallSettings
from observability.metrics import Metrics
from tests.actors.fakes import FakeClock, FakeConnector, FakeTwilioSocket, ProbeParent, wait_until

CALL_SID = "CA" + "1" * 32
STREAM_SID = "MZ" + "2" * 32

SETTINGS = CallSettings(
    audio_format="pcm_s16le",
    replay_ms=1000,  # 50 frames kept for replay
    keepalive_interval_s=5.0,
    pong_timeout_s=1.0,
    outbound_max_frames=500,
    playback_lead_ms=200,
    vad_threshold_db=10.0,
    vad_min_level_dbfs=-45.0,
    vad_min_speech_ms=100,
    vad_hangover_ms=400,
    vad_echo_margin_db=10.0,
    media_connect_timeout_s=5.0,
    retry_budget_s=15.0,
)


def _live_greenlets() -> set[int]:
    return {id(g) for g in gc.get_objects() if isinstance(g, gevent.Greenlet) and not g.dead}


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every actor a test starts is stopped, and its greenlets (timers, link readers) are gone."""
    assert not ActorRegistry.get_all(), f"actors left by an earlier test: {ActorRegistry.get_all()}"
    gevent.sleep(0)
    before = _live_greenlets()
    yield
    assert wait_until(lambda: not ActorRegistry.get_all()), ActorRegistry.get_all()
    assert wait_until(lambda: not (_live_greenlets() - before)), "greenlets outlived the test"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def connector(clock: FakeClock) -> FakeConnector:
    fake = FakeConnector()
    fake.clock = clock
    return fake


@pytest.fixture
def socket() -> FakeTwilioSocket:
    return FakeTwilioSocket()


@pytest.fixture
def call(clock: FakeClock, connector: FakeConnector, socket: FakeTwilioSocket) -> CallContext:
    """A call whose resources are the fakes. A test that needs other settings replaces
    `call.settings` before it starts its actor."""
    call = CallContext(
        call_sid=CALL_SID,
        settings=SETTINGS,
        log=structlog.get_logger("tests.actors").bind(call_sid=CALL_SID),
        metrics=Metrics(),
        connector=connector,  # type: ignore[arg-type]  # a fake
        clock=clock,
        rng=random.Random(1),
    )
    call.socket = socket  # type: ignore[assignment]  # a fake
    return call


@pytest.fixture
def parent(call: CallContext) -> Iterator[ProbeParent]:
    family = ProbeParent(call)
    yield family
    family.stop()
