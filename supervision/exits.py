"""Why a supervised actor stopped, as its supervisor sees it."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Exit", "ExitKind"]


class ExitKind(enum.Enum):
    NORMAL = "normal"  # the actor stopped itself: its work is done
    SHUTDOWN = "shutdown"  # its supervisor stopped it
    FAILED = "failed"  # an exception escaped a handler or on_start
    KILLED = "killed"  # a BaseException (GreenletExit, gevent.Timeout, ...) hit it
    HUNG = "hung"  # a watchdog found it stuck and replaced it
    VANISHED = "vanished"  # it stopped without saying why


@dataclass(frozen=True, slots=True)
class Exit:
    kind: ExitKind
    reason: str = ""

    @property
    def abnormal(self) -> bool:
        return self.kind not in (ExitKind.NORMAL, ExitKind.SHUTDOWN)
