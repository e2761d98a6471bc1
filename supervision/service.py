"""ServiceActor: puts a long-lived part with start() and stop() under a supervisor.

For the server's own parts that are not actors (an embedded server, a background
writer): the supervisor starts it in order, stops it in reverse order at shutdown, and
restarts it if its actor is killed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from supervision.actor import ChildHandle, SupervisedActor

__all__ = ["ServiceActor"]


class ServiceActor(SupervisedActor):
    """Runs `start()` when the actor starts and `stop()` however it ends."""

    def __init__(self, handle: ChildHandle | None, *, start: Callable[[], None], stop: Callable[[], None]) -> None:
        super().__init__(handle)
        self._start_service = start
        self._stop_service = stop

    def on_start(self) -> None:
        self._start_service()

    def _close(self) -> None:
        self._stop_service()

    def on_receive(self, message: Any) -> Any:
        return None
