"""The load generator's hot loop: every call's two sockets on one epoll, one pacing clock.

One thread does all the streaming and reading, so the load process costs as little per
call as the wire allows (the load shares the box with the server it measures: what it
spends, a second worker cannot). No gevent here: a plain `select.epoll` over
non-blocking sockets, and one clock for all calls instead of a timer per call. The
20 ms period is cut into `_SLOTS` phases; each call belongs to one, so the calls'
frames go out spread evenly over the period, as independent callers' would. The loop
sleeps until the next phase is due, reads every socket epoll says is ready (the kernel
stamped each segment as it arrived: bench/_load_calls.py), then reads the clock once
and sends that phase's frames. So it wakes 500 times a second whatever the load, not
once per segment, and a segment arriving wakes no one (on loopback the sender's
kernel would otherwise do that wake-up, in the bridge's own system time).

Other threads talk to the loop only through `_todo` (a deque the loop empties on every
pass): adding sockets, starting a call, hanging up. The process must not be gevent
monkey-patched (gevent removes `select.epoll` and turns threads into greenlets):
`python -m bench.load` is not.
"""

from __future__ import annotations

import collections
import select
import socket
import threading
import time
from collections.abc import Callable

from bench._load_calls import FRAME_S, LoadCall

__all__ = ["Engine"]

_SLOTS = 10  # phases within the 20 ms period
_LATE_S = 0.005  # a phase served later than this: the load process was too busy
_IN = select.EPOLLIN | select.EPOLLRDHUP


class Engine:
    """The loop's thread; `start()` it, then add calls' sockets from any thread."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._readers: dict[int, Callable[[], bool]] = {}
        self._slots: list[list[LoadCall]] = [[] for _ in range(_SLOTS)]
        self._next_slot = 0
        self._todo: collections.deque[Callable[[], None]] = collections.deque()
        self._running = True
        self._thread = threading.Thread(target=self._run, name="load-engine", daemon=True)
        self.late = 0  # phases served more than _LATE_S late
        self.passes = 0  # loop passes (epoll wake-ups), for the load's own cost per pass

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        self._epoll.close()

    # From other threads ----------------------------------------------------------------------

    def add_twilio(self, call: LoadCall, sock: socket.socket, rest: bytes) -> None:
        """The call's media socket, open and `start` sent; `rest`: what came after the 101."""
        def add() -> None:
            call.tw = sock
            if rest:
                call.feed_twilio(rest, time.time())
            self._watch(sock, call.read_twilio)
        self._todo.append(add)

    def add_vapi(self, call: LoadCall, sock: socket.socket, rest: bytes) -> None:
        """The call's VAPI transport, upgraded; `rest`: what came after the request head."""
        def add() -> None:
            old = call.vapi
            if old is not None:  # the bridge replaced its VAPI link: the new one carries on
                self._forget(old)
                old.close()
            call.vapi = sock
            call.vapi_closed = False
            if rest:
                call.feed_vapi(rest, time.time())
            self._watch(sock, call.read_vapi)
            call.vapi_ready.set()
        self._todo.append(add)

    def start_sending(self, call: LoadCall) -> None:
        """Both legs are open: the call streams from the next tick of its phase on."""
        def add() -> None:
            self._slots[self._next_slot % _SLOTS].append(call)
            self._next_slot += 1
            call.sending = True
        self._todo.append(add)

    def run(self, work: Callable[[], None], timeout_s: float = 10.0) -> None:
        """Run `work` in the loop's thread and wait for it (hanging up, closing)."""
        done = threading.Event()
        error: list[BaseException] = []

        def wrapped() -> None:
            try:
                work()
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
                error.append(exc)
            finally:
                done.set()
        if not self._thread.is_alive():  # never started, or stopped: nothing else runs it
            wrapped()
        else:
            self._todo.append(wrapped)
        if not done.wait(timeout_s):
            raise TimeoutError("the load engine did not answer")
        if error:
            raise error[0]

    def close_calls(self, calls: list[LoadCall]) -> None:
        """Stop watching and close every socket of `calls` (from any thread)."""
        def close() -> None:
            for call in calls:
                call.sending = False
                for sock in (call.tw, call.vapi):
                    if sock is not None:
                        self._forget(sock)
                call.close()
            gone = {id(call) for call in calls}
            for slot in self._slots:
                slot[:] = [c for c in slot if id(c) not in gone]
        self.run(close)

    # In the loop's thread --------------------------------------------------------------------

    def _watch(self, sock: socket.socket, reader: Callable[[], bool]) -> None:
        fd = sock.fileno()
        self._readers[fd] = reader
        self._epoll.register(fd, _IN)

    def _forget(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if fd >= 0 and self._readers.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def _run(self) -> None:
        poll = self._epoll.poll
        readers = self._readers
        slots = self._slots
        todo = self._todo
        clock = time.time  # the clock of the kernel's receive timestamps
        sleep = time.sleep
        step = FRAME_S / _SLOTS
        due = clock()
        slot = 0
        passes = 0
        while self._running:
            now = clock()
            if due > now:
                # A plain sleep, not a wait on the epoll: bytes arriving meanwhile wake no
                # one (the kernel stamps them as they land) and are read in one batch below.
                sleep(due - now)
            passes += 1
            for fd, _mask in poll(0):
                reader = readers.get(fd)
                if reader is not None and not reader():
                    readers.pop(fd, None)
                    self._epoll.unregister(fd)
            while todo:
                todo.popleft()()
            now = clock()
            if now - due > _LATE_S:
                self.late += 1
            for call in slots[slot]:
                if call.sending:
                    call.tick(now)
            slot = (slot + 1) % _SLOTS
            due += step
            if now - due > 1.0:  # far behind (a stall): skip ahead rather than burst
                due = now
            self.passes = passes
