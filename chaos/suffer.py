"""How an actor suffers an injected fault: the same paths a real failure takes.

Every actor of a call (and its supervisor) handles `InjectFault` by calling `suffer` in
its own handler, so the fault happens where a bug would: an exception, a BaseException,
a handler that never returns or one that is slow. The VAPI link's own faults (its socket
severed, or silently swallowing everything) need the link, so the VapiActor passes how.
"""

from __future__ import annotations

from collections.abc import Callable

import gevent

from observability.logging import Logger

__all__ = ["HANG_FAULT_S", "SLOW_FAULT_S", "ChaosError", "suffer"]

# How long a "slow" fault stalls one handler: long enough to be felt, shorter than the
# handler deadline, so the watchdog must not fire.
SLOW_FAULT_S = 0.3
# A "hang" outlasts any deadline; the watchdog must end it.
HANG_FAULT_S = 3600.0


class ChaosError(Exception):
    """A fault injected on purpose."""


def suffer(
    log: Logger,
    fault: str,
    *,
    sever: Callable[[], None] | None = None,
    blackhole: Callable[[], None] | None = None,
) -> None:
    """Fail the calling handler in the named way; `sever`/`blackhole` for a link's own faults."""
    # Deliberate, so INFO: the fault's WARNING is its supervisor's, when it recovers from it.
    log.info("fault_injected", fault=fault)
    match fault:
        case "raise":
            raise ChaosError("injected failure")
        case "kill":
            # A BaseException inside a handler: pykka alone would stop every actor.
            raise gevent.GreenletExit()
        case "hang":
            gevent.sleep(HANG_FAULT_S)
        case "slow":
            gevent.sleep(SLOW_FAULT_S)
        case "sever" if sever is not None:
            sever()
        case "blackhole" if blackhole is not None:
            blackhole()
        case _:
            log.warning("fault_not_applicable", fault=fault)
