"""A node too busy for a new call, in the reference topology: nginx (deploy/nginx.conf as
shipped) passes the call's webhook and its media socket to the other node, and the caller
never hears the fallback.

Two real bridge nodes (`python run.py`) share Redis and one VAPI simulator; node-a takes one
call at most (MAX_CALLS=1).
"""

from __future__ import annotations

from collections.abc import Iterator

import gevent
import pytest
import requests

from audio.signals import silence
from sims.caller import SimulatedCaller
from tests.fleet.test_topology import Fleet, Node, _caller, _holder, _steer, running_fleet, wait_until
from tests.services import RedisServer


@pytest.fixture(scope="module")
def fleet(redis_server: RedisServer, nginx_binary: str, tmp_path_factory) -> Iterator[Fleet]:
    with running_fleet(tmp_path_factory.mktemp("busy"), redis_server.url, {},
                       {"node-a": {"MAX_CALLS": "1"}}) as fleet:
        yield fleet


def _holding_call(fleet: Fleet, on: str) -> tuple[SimulatedCaller, gevent.Greenlet]:
    """A call whose stream is held by node `on`, kept up with silence."""
    caller = _caller(fleet)
    status, twiml = caller.post_webhook()
    assert status == 200 and "<Stream" in twiml, twiml
    _steer(fleet, on)
    caller.connect()
    caller.start_stream()
    line = gevent.spawn(lambda: [caller.send_audio(silence(200, 8000)) for _ in range(100)])
    return caller, line


def test_a_new_call_a_full_node_turns_away_is_taken_by_the_other_node(fleet):
    busy, free = fleet.nodes
    caller, line = _holding_call(fleet, busy.name)
    callers: list[SimulatedCaller] = []
    try:
        assert wait_until(lambda: _ready(busy) == 503, timeout=5)  # full
        since = len(fleet.nginx.requests())
        for _ in range(4):
            callers.append(_caller(fleet))
            status, twiml = callers[-1].post_webhook()
            assert status == 200 and "<Stream" in twiml, twiml  # never the fallback

        def logged() -> list[str]:  # nginx logs a request once done with it, maybe after the answer
            return [upstream for method, uri, _, upstream in fleet.nginx.requests()[since:]
                    if method == "POST" and uri == "/voice/incoming"]

        assert wait_until(lambda: len(logged()) == 4), logged()
        webhooks = logged()
        # Round robin: half went to the full node first, which turned them away, and nginx
        # passed them on, each to the other node in the end (nginx logs the tries of a webhook
        # as "first : passed on, to the next").
        assert sum(w.startswith(busy.address) for w in webhooks) == 2, webhooks
        assert all(w.endswith(free.address) for w in webhooks), webhooks
        tries_on_busy = sum(w.count(busy.address) for w in webhooks)
        assert busy.child.log().count('"call_passed_on"') == tries_on_busy
        assert '"call_refused"' not in busy.child.log() + free.child.log()
        # ...but not out of the rest: its live call's requests still reach it.
        assert {fleet.node_at(upstream) for upstream in _healthz_upstreams(fleet, 4)} == {busy.name, free.name}
        # A new call's media socket sent to the full node is passed on to the other one too.
        _steer(fleet, busy.name)
        since = len(fleet.nginx.requests())
        callers[0].connect()
        callers[0].start_stream()
        assert wait_until(lambda: _holder(fleet, callers[0].call_sid) is free, timeout=5)
        assert busy.child.log().count('"stream_passed_on"') >= 1
        callers[0].close()

        def streams() -> list[str]:  # logged by nginx when the socket closes
            return [u for _, uri, _, u in fleet.nginx.requests()[since:] if uri.startswith("/media/")]

        assert wait_until(lambda: len(streams()) == 1)
        assert streams()[0].startswith(busy.address) and streams()[0].endswith(free.address), streams()
    finally:
        line.kill()
        for each in [caller, *callers]:
            each.close()


def _ready(node: Node) -> int:
    return requests.get(f"{node.url}/readyz", timeout=2).status_code


def _healthz_upstreams(fleet: Fleet, count: int) -> list[str]:
    since = len(fleet.nginx.requests())
    for _ in range(count):
        requests.get(f"{fleet.public_url}/healthz", headers={"Connection": "close"}, timeout=5)
    def probes() -> list[str]:
        return [upstream for _, uri, _, upstream in fleet.nginx.requests()[since:] if uri == "/healthz"]

    assert wait_until(lambda: len(probes()) >= count)
    return probes()
