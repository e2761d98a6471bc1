"""ChaosMonkey: injects random faults into live calls, for soak runs.

A SupervisedActor under the root supervisor, so it is itself supervised. Each second it
gives every live call a chance of rate/60 of one fault, picked uniformly from every
(actor, fault) pair that applies. Seeded, so a soak run can be repeated.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import gevent
import gevent.pool

from chaos.faults import applicable_pairs
from observability.logging import Logger
from supervision import ChildHandle, SupervisedActor

__all__ = ["ChaosMonkey"]

_TICK_S = 1.0


class ChaosMonkey(SupervisedActor):
    """Faults at `rate_per_min` per live call-minute, into calls from `live_calls()`."""

    def __init__(
        self,
        handle: ChildHandle | None,
        *,
        rate_per_min: float,
        seed: int | None,
        live_calls: Callable[[], Sequence[str]],
        inject: Callable[[str, str, str], bool],
        log: Logger,
    ) -> None:
        super().__init__(handle)
        self._rate = rate_per_min
        self._rng = random.Random(seed)  # noqa: S311 - picks faults, seeded to repeat a run: no secret
        self._live_calls = live_calls
        self._inject = inject
        self._log = log
        self._pairs = applicable_pairs()
        self._greenlets = gevent.pool.Group()
        self.injected: dict[str, int] = {}

    def on_start(self) -> None:
        self._log.warning("chaos_monkey_started", rate_per_min=self._rate)
        self._greenlets.spawn(self._run)

    def _close(self) -> None:
        self._greenlets.kill(block=False)

    def on_receive(self, message: Any) -> Any:
        if message == "injected":
            return dict(self.injected)
        return None

    def _run(self) -> None:
        chance = self._rate * _TICK_S / 60.0
        while True:
            gevent.sleep(_TICK_S)
            for call_sid in list(self._live_calls()):
                if self._rng.random() >= chance:
                    continue
                actor, fault = self._rng.choice(self._pairs)
                if self._inject(call_sid, actor, fault):
                    key = f"{actor}/{fault}"
                    self.injected[key] = self.injected.get(key, 0) + 1
                    self._log.info("chaos_injected", call_sid=call_sid, target=actor, fault=fault, source="monkey")
