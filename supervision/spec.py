"""Supervisor flags and child specifications: data, validated when built.

Each check names the field and the value, as OTP's `{invalid_strategy, What}` does.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pykka

    from supervision.actor import ChildHandle

__all__ = ["AutoShutdown", "Backoff", "ChildSpec", "InvalidSpec", "Restart", "Strategy", "SupervisorFlags"]


class InvalidSpec(ValueError):
    """A flag or child spec field holds a value the supervisor cannot use."""

    def __init__(self, field_name: str, value: object, allowed: str) -> None:
        super().__init__(f"invalid {field_name}: {value!r} (expected {allowed})")
        self.field_name = field_name
        self.value = value


class Restart(enum.Enum):
    """When a child that stopped is started again."""

    PERMANENT = "permanent"  # always
    TRANSIENT = "transient"  # only after an abnormal exit
    TEMPORARY = "temporary"  # never, not even when a sibling's failure restarts the rest


class Strategy(enum.Enum):
    """Which children restart when one fails."""

    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class AutoShutdown(enum.Enum):
    """Whether the supervisor stops itself when significant children stop for good."""

    NEVER = "never"
    ANY_SIGNIFICANT = "any_significant"
    ALL_SIGNIFICANT = "all_significant"


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Delay before restart n: min(max_s, min_s * 2**n), jittered by +-jitter/2 of itself.

    Jitter is at most 1, so a delay never drops below half its nominal length. The
    attempt count resets once a child has run `reset_after_s` without failing.
    """

    min_s: float = 0.1
    max_s: float = 2.0
    jitter: float = 0.2
    reset_after_s: float = 5.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_s) and self.min_s >= 0):
            raise InvalidSpec("backoff.min_s", self.min_s, "a finite number >= 0")
        if not (math.isfinite(self.max_s) and self.max_s >= self.min_s):
            raise InvalidSpec("backoff.max_s", self.max_s, "a finite number >= min_s")
        if not 0.0 <= self.jitter <= 1.0:
            raise InvalidSpec("backoff.jitter", self.jitter, "a number from 0 to 1")
        if not (math.isfinite(self.reset_after_s) and self.reset_after_s > 0):
            raise InvalidSpec("backoff.reset_after_s", self.reset_after_s, "a finite number > 0")


def _no_start(handle: ChildHandle) -> pykka.ActorRef[Any]:
    raise NotImplementedError


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildSpec:
    """How to start one child and what to do when it stops.

    `start(handle)` must start the actor, passing `handle` to its SupervisedActor
    constructor, and return its ref.
    """

    id: str
    start: Callable[[ChildHandle], pykka.ActorRef[Any]] = field(default=_no_start)
    restart: Restart = Restart.PERMANENT
    shutdown_s: float = 5.0
    significant: bool = False
    backoff: Backoff = field(default_factory=Backoff)

    def __post_init__(self) -> None:
        if not self.id:
            raise InvalidSpec("id", self.id, "a non-empty string")
        if self.start is _no_start:
            raise InvalidSpec("start", self.start, "a callable that starts the child")
        if not isinstance(self.restart, Restart):
            raise InvalidSpec("restart", self.restart, "a Restart")
        if not (math.isfinite(self.shutdown_s) and self.shutdown_s > 0):
            raise InvalidSpec("shutdown_s", self.shutdown_s, "a finite number of seconds > 0")
        if self.significant and self.restart is Restart.PERMANENT:
            # OTP's {bad_combination, [{restart, permanent}, {significant, true}]}: a child
            # that always restarts can never end the supervisor's work.
            raise InvalidSpec("significant", self.significant, "False for a permanent child")


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorFlags:
    """How the supervisor restarts, and when it gives up.

    More than `intensity` restarts within `period_s` and the supervisor stops all
    children and itself, and reports the failure to its own parent.
    """

    strategy: Strategy = Strategy.ONE_FOR_ONE
    intensity: int = 3
    period_s: float = 10.0
    auto_shutdown: AutoShutdown = AutoShutdown.NEVER
    # True: each child has its own restart window, and a child that exceeds it is
    # stopped for good instead of taking the supervisor and its siblings down. For a
    # supervisor of independent work units (calls), where one unit's trouble must never
    # end another's.
    isolate_children: bool = False
    # True: the children take their messages in one greenlet between them (a
    # Dispatcher), so a message passed from child to child is not a wake-up each. For
    # children that pass every message on to a sibling, many times a second.
    shared_greenlet: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, Strategy):
            raise InvalidSpec("strategy", self.strategy, "a Strategy")
        if not (isinstance(self.intensity, int) and self.intensity >= 0):
            raise InvalidSpec("intensity", self.intensity, "an integer >= 0")
        if not (math.isfinite(self.period_s) and self.period_s > 0):
            raise InvalidSpec("period_s", self.period_s, "a finite number of seconds > 0")
        if not isinstance(self.auto_shutdown, AutoShutdown):
            raise InvalidSpec("auto_shutdown", self.auto_shutdown, "an AutoShutdown")
