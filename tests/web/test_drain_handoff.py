"""A fleet node that drains with no call of its own, in one process with a shared directory
and a peer that takes calls: what reaches it before its listener closes is handed on, not
ended at the drain timeout (a sibling worker's hand-off lands on the port they share)."""

from __future__ import annotations

import socket

import gevent
import pytest

import service
from tests.integration.conftest import wait_until


@pytest.fixture
def server_env(tmp_path) -> dict[str, str]:
    return {"DIRECTORY_PATH": str(tmp_path / "directory.db")}


def _peer_takes_calls(bridge) -> None:
    bridge.fleet.directory.heartbeat("peer-node", [], 30.0, draining=False)


def test_an_idle_draining_node_closes_its_listener_when_a_peer_takes_calls(bridge):
    _peer_takes_calls(bridge)
    drain = gevent.spawn(bridge.drain, 5.0)
    assert drain.get(timeout=10) == 0

    def refused() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", bridge.port)) != 0

    assert refused()


def test_a_stream_reaching_a_draining_node_before_its_listener_closes_is_handed_on(
        bridge, make_caller, vapi_sim, monkeypatch):
    # The moment nodes stopping together wait to see each other: long enough to start a call in.
    monkeypatch.setattr(service, "_PEERS_SETTLE_S", 2.0)
    _peer_takes_calls(bridge)
    caller = make_caller()
    assert caller.post_webhook()[0] == 200  # admitted before the drain
    drain = gevent.spawn(bridge.drain, 5.0)
    caller.connect()
    caller.start_stream()
    assert wait_until(lambda: bridge.calls.get(caller.call_sid) is not None, timeout=5)
    assert drain.get(timeout=15) == 0  # none had to be ended
    assert bridge.metrics.value("bridge_handoffs_total", reason="deploy") == 1
    assert bridge.fleet.moving(caller.call_sid) is not None  # any node's after-stream resumes it
