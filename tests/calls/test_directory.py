"""The call directory's contract, held by every backend: memory, an SQLite file, a real redis-server.

Each node of a fleet talks to the directory through its own client; these tests make one
client per simulated node, so a claim raced by two nodes is a real race on the store.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import gevent
import pytest

from calls.directory import ALREADY_STREAMING, ENDED, NOT_ADMITTED, DirectoryUnavailable, MemoryDirectory
from calls.handoff import Handoff
from calls.outcome import Outcome
from directory import RedisDirectory, SqliteDirectory
from tests.services import free_port, redis_server  # noqa: F401 - a fixture

SID = "CA" + "12" * 16
_prefixes = itertools.count()


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "sqlite", "redis"])
def nodes(request, tmp_path) -> Iterator[tuple[Callable[[], object], Clock]]:
    yield from _nodes(request, tmp_path)


@pytest.fixture(params=["sqlite", "redis"])
def shared_nodes(request, tmp_path) -> Iterator[tuple[Callable[[], object], Clock]]:
    """Only the backends other processes share (a memory directory's claims never expire)."""
    yield from _nodes(request, tmp_path)


def _nodes(request, tmp_path) -> Iterator[tuple[Callable[[], object], Clock]]:
    """A factory of directory clients on one store (one per node), and the store's clock."""
    clock = Clock()
    made: list[object] = []
    if request.param == "memory":
        shared = MemoryDirectory(clock)

        def make() -> object:
            return shared
    elif request.param == "sqlite":
        path = str(tmp_path / "directory.db")

        def make() -> object:
            made.append(directory := SqliteDirectory(path, clock=clock))
            return directory
    else:
        server = request.getfixturevalue("redis_server")
        prefix = f"test{next(_prefixes)}"

        def make() -> object:
            # Redis expires keys on its own clock: the fake clock only stamps what is stored.
            made.append(directory := RedisDirectory(server.url, clock=clock, prefix=prefix))
            return directory
    yield make, clock
    for directory in made:
        directory.close()


def test_a_call_is_admitted_claimed_once_and_ended_for_every_node(nodes):
    make, _ = nodes
    webhook, stream, other = make(), make(), make()
    assert stream.refusal(SID) == NOT_ADMITTED
    webhook.admit(SID, "node-a", ttl_s=30)
    assert other.refusal(SID) is None and stream.outcome(SID) is None
    assert stream.claim(SID, "node-b", lease_s=10) is None
    assert other.owner(SID) == "node-b"
    # The second socket, wherever it lands, gets nothing.
    assert other.claim(SID, "node-c", lease_s=10) == ALREADY_STREAMING
    assert other.refusal(SID) == ALREADY_STREAMING
    stream.finish(SID, Outcome.ASSISTANT_ENDED)
    for node in (webhook, stream, other):
        assert node.outcome(SID) is Outcome.ASSISTANT_ENDED
        assert node.refusal(SID) == ENDED
        assert node.claim(SID, "node-c", lease_s=10) == ENDED
        assert node.owner(SID) is None


def test_a_replayed_webhook_after_the_end_does_not_admit_the_call_again(nodes):
    make, _ = nodes
    a, b = make(), make()
    a.admit(SID, "a", 30)
    b.claim(SID, "b", 10)
    b.finish(SID, Outcome.COMPLETED)
    a.admit(SID, "a", 30)
    assert a.refusal(SID) == ENDED and b.claim(SID, "b", 10) == ENDED


def test_two_nodes_racing_to_claim_one_call_have_exactly_one_winner(nodes):
    make, _ = nodes
    clients = [make() for _ in range(6)]
    for n in range(5):
        sid = f"CA{n:032x}"
        clients[0].admit(sid, "a", 30)
        results = [gevent.spawn(client.claim, sid, f"node-{i}", 10) for i, client in enumerate(clients)]
        gevent.joinall(results, timeout=10, raise_error=True)
        answers = [g.value for g in results]
        assert answers.count(None) == 1, answers
        assert set(answers) - {None} == {ALREADY_STREAMING}


def test_an_admission_not_claimed_within_its_ttl_is_gone(nodes, request):
    make, clock = nodes
    a = make()
    a.admit(SID, "a", ttl_s=0.2)
    if "redis" in request.node.callspec.id:
        gevent.sleep(0.3)  # Redis expires on its own clock
    else:
        clock.now += 0.3
    assert a.refusal(SID) == NOT_ADMITTED and a.claim(SID, "b", 10) == NOT_ADMITTED


def test_heartbeats_publish_each_nodes_calls_and_a_silent_nodes_view_ages_out(nodes, request):
    make, clock = nodes
    a, b = make(), make()
    a.admit(SID, "a", 30)
    a.claim(SID, "node-a", lease_s=0.3)
    a.heartbeat("node-a", [{"call_sid": SID, "turns": 3}], ttl_s=0.3)
    b.heartbeat("node-b", [], ttl_s=5)
    views = {view.node_id: view for view in b.nodes()}
    assert views["node-a"].calls == [{"call_sid": SID, "turns": 3}]
    assert views["node-b"].calls == []
    if isinstance(a, MemoryDirectory):
        return  # one process: nothing outlives it, nothing needs to age out
    if "redis" in request.node.callspec.id:
        gevent.sleep(0.4)
    else:
        clock.now += 0.4
    assert [view.node_id for view in b.nodes()] == ["node-b"]
    assert b.owner(SID) is None  # the dead node's claim expired with it


def test_a_heartbeat_extends_the_owners_claim(shared_nodes, request):
    make, clock = shared_nodes
    a = make()
    a.admit(SID, "a", 30)
    a.claim(SID, "node-a", lease_s=1.0)
    for _ in range(3):  # 1.2 s in all: past the first lease, within each renewed one
        if "redis" in request.node.callspec.id:
            gevent.sleep(0.4)
        else:
            clock.now += 0.4
        a.heartbeat("node-a", [{"call_sid": SID}], ttl_s=1.0)
    assert a.owner(SID) == "node-a"


def test_commands_reach_only_the_node_they_are_sent_to_in_order(nodes):
    make, _ = nodes
    sender, a, b = make(), make(), make()
    sender.send_command("node-a", {"n": 1}, ttl_s=10)
    sender.send_command("node-a", {"n": 2}, ttl_s=10)
    sender.send_command("node-b", {"n": 3}, ttl_s=10)
    assert a.take_commands("node-a", wait_s=0) == [{"n": 1}, {"n": 2}]
    assert a.take_commands("node-a", wait_s=0) == []
    assert b.take_commands("node-b", wait_s=0) == [{"n": 3}]


def test_a_waiting_node_gets_a_command_sent_while_it_waits(shared_nodes):
    make, _ = shared_nodes
    sender, a = make(), make()
    waiter = gevent.spawn(a.take_commands, "node-a", 3.0)
    gevent.sleep(0.1)
    sender.send_command("node-a", {"n": 1}, ttl_s=10)
    assert waiter.get(timeout=5) == [{"n": 1}]


def test_a_redis_that_does_not_answer_is_unavailable_within_the_timeout_and_never_hangs():
    port = free_port()  # nothing listens there
    directory = RedisDirectory(f"redis://127.0.0.1:{port}/0", timeout_s=0.3)
    with gevent.Timeout(3):
        for operation in (lambda: directory.refusal(SID), lambda: directory.claim(SID, "a", 1),
                          lambda: directory.finish(SID, Outcome.COMPLETED), lambda: directory.nodes(),
                          lambda: directory.take_commands("a", 0.1)):
            with pytest.raises(DirectoryUnavailable) as refused:
                operation()
            assert str(port) not in str(refused.value)  # no URL in messages (it may hold a password)
    directory.close()


def test_a_locked_sqlite_directory_is_unavailable_after_its_timeout_not_a_stuck_process(tmp_path):
    import sqlite3

    path = str(tmp_path / "d.db")
    SqliteDirectory(path).refusal(SID)  # creates the schema
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another worker holds the write lock
    directory = SqliteDirectory(path, timeout_s=0.3)
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(100)])
    with pytest.raises(DirectoryUnavailable):
        directory.claim(SID, "a", 1)
    assert len(ticks) >= 10  # the process kept running other greenlets while it waited
    assert directory.refusal(SID) == NOT_ADMITTED  # readers are not blocked (WAL)
    holder.execute("ROLLBACK")
    ticker.kill()
    directory.admit(SID, "a", 30)
    assert directory.claim(SID, "a", 1) is None


def test_a_memory_directory_forgets_admissions_whose_stream_never_came():
    clock = Clock()
    directory = MemoryDirectory(clock)
    for n in range(300):
        directory.admit(f"CA{n:032x}", "a", ttl_s=1)
    clock.now += 2
    for n in range(300, 600):
        directory.admit(f"CA{n:032x}", "a", ttl_s=1)
    assert len(directory._entries) <= 300  # the expired ones were swept, not kept for ever


def test_a_moving_call_releases_its_claim_and_one_node_takes_its_handoff(nodes):
    make, _ = nodes
    old, after_stream, new, rival = make(), make(), make(), make()
    old.admit(SID, "node-a", ttl_s=30)
    assert old.claim(SID, "node-a", lease_s=10) is None
    handoff = Handoff(call_sid=SID, conversation_json=[{"role": "user", "text": "hello"}], from_node="node-a",
                      left_at=1.0, started_at=0.5)
    old.mark_moving(SID, handoff, ttl_s=30)
    assert after_stream.moving(SID) == handoff
    assert after_stream.owner(SID) is None  # released: the new stream can claim it
    after_stream.admit(SID, "node-b", ttl_s=30)
    assert new.claim(SID, "node-b", lease_s=10) is None
    takers = [gevent.spawn(d.take_moving, SID, name) for d, name in ((new, "node-b"), (rival, "node-c"))]
    gevent.joinall(takers, raise_error=True)
    assert sorted([t.value is not None for t in takers]) == [False, True]
    assert next(t.value for t in takers if t.value is not None) == handoff
    assert after_stream.moving(SID) is None


def test_a_finished_call_is_no_longer_moving(nodes):
    make, _ = nodes
    node = make()
    node.mark_moving(SID, Handoff(call_sid=SID, from_node="node-a"), ttl_s=30)
    node.finish(SID, Outcome.COMPLETED)
    assert node.moving(SID) is None and node.outcome(SID) is Outcome.COMPLETED


def test_a_draining_nodes_heartbeat_says_so(nodes):
    make, _ = nodes
    a, b = make(), make()
    a.heartbeat("node-a", [{"call_sid": SID}], ttl_s=5, draining=True)
    b.heartbeat("node-b", [], ttl_s=5)
    views = {view.node_id: view for view in b.nodes()}
    assert views["node-a"].draining and not views["node-b"].draining
    assert [c["call_sid"] for c in views["node-a"].calls] == [SID]


def test_a_heartbeat_never_takes_back_a_claim_another_node_now_holds(nodes):
    # The old node's last heartbeat may still list a call it has just handed off.
    make, _ = nodes
    old, new = make(), make()
    old.admit(SID, "node-a", ttl_s=30)
    assert old.claim(SID, "node-a", lease_s=10) is None
    old.mark_moving(SID, Handoff(call_sid=SID, conversation_json=[], from_node="node-a", left_at=1.0,
                                 started_at=0.5), ttl_s=30)
    new.admit(SID, "node-b", ttl_s=30)
    assert new.claim(SID, "node-b", lease_s=10) is None
    old.heartbeat("node-a", [{"call_sid": SID}], ttl_s=10)
    assert new.owner(SID) == "node-b"
