"""What an actor hop costs in isolation: chains of four actors sharing one dispatcher.

    python -m bench.hops [--chains 100] [--rounds 2000]

Each chain is four SupervisedActors on one Dispatcher, reached through a ChildTable as
a call's children are: a -> b, b -> c and b -> d, so one message from outside crosses
four actors, as a caller frame does (TwilioActor, CodecActor, then VapiActor and
VadActor). Each round tells every chain's `a` one message (a frozen slots dataclass, as
actors/messages.py has them) from this greenlet, then yields once so every dispatcher
wakes and runs its chain. Reported: the best of five runs, in CPU µs per frame (one
wake-up and four messages, handlers that only pass the message on). Pin it for stable
figures: `taskset -c 1 python -m bench.hops`.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import gevent  # noqa: E402
from pykka import ActorRegistry  # noqa: E402

from supervision import ChildHandle, ChildTable, SupervisedActor  # noqa: E402
from supervision.dispatcher import Dispatcher  # noqa: E402

_MAILBOX_LIMIT = 1000
_CHAIN = (("a", ("b",)), ("b", ("c", "d")), ("c", ()), ("d", ()))


@dataclass(frozen=True, slots=True)
class _Frame:
    data: bytes
    stream_ms: int
    received_ns: int


class _Hop(SupervisedActor):
    def __init__(self, handle: ChildHandle, table: ChildTable, onward: tuple[str, ...]) -> None:
        super().__init__(handle)
        self._table = table
        self._onward = onward

    def on_receive(self, message: _Frame) -> None:
        for role in self._onward:
            self._table.tell(role, _Frame(message.data, message.stream_ms, message.received_ns))


def _chain() -> ChildTable:
    dispatcher = Dispatcher()
    table = ChildTable()
    for role, onward in _CHAIN:
        table._set(role, _Hop.start(ChildHandle(role, 1, dispatcher=dispatcher), table, onward))  # noqa: SLF001
    return table


def _run(tables: list[ChildTable], rounds: int) -> None:
    payload = bytes(160)
    for n in range(rounds):
        for table in tables:
            table.tell_bounded("a", _Frame(payload, n * 20, n), _MAILBOX_LIMIT)
        gevent.sleep(0)
    gevent.sleep(0.01)  # the last round's messages


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hops")
    parser.add_argument("--chains", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args(argv)
    tables = [_chain() for _ in range(args.chains)]
    try:
        _run(tables, 200)  # warm-up: every actor started, caches filled
        best = float("inf")
        for _ in range(5):
            started = time.process_time()
            _run(tables, args.rounds)
            spent = time.process_time() - started - 0.01
            best = min(best, spent / (args.rounds * args.chains) * 1e6)
    finally:
        ActorRegistry.stop_all()
    print(f"{args.chains} chains of 4 actors: {best:.2f} µs of CPU per frame (1 wake-up, 4 messages)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
