"""CallActor: what the four children of a call have in common.

Each gets the call's context, a logger bound with its role, and reaches its siblings
only by role through the supervisor's child table. Faults can be injected into any of
them by message, so chaos goes through the same path as real failures.
"""

from __future__ import annotations

from typing import Any

import gevent

from actors.call import CallContext
from actors.messages import InjectFault
from supervision import ChildHandle, SupervisedActor

__all__ = ["CallActor", "ChaosError", "inject_fault"]

# How long a "slow" fault stalls one handler: long enough to be felt, shorter than the
# handler deadline, so the watchdog must not fire.
SLOW_FAULT_S = 0.3
# A "hang" outlasts any deadline; the watchdog must end it.
HANG_FAULT_S = 3600.0


class ChaosError(Exception):
    """A fault injected on purpose."""


class CallActor(SupervisedActor):
    """Base of TwilioActor, VapiActor, CodecActor and VadActor."""

    role = "actor"
    # Handlers here never wait on the network, so a second in one handler is a hang.
    handler_deadline_s: float | None = 1.0

    def __init__(self, handle: ChildHandle | None, call: CallContext) -> None:
        super().__init__(handle)
        self._call = call
        self._log = call.log.bind(actor=self.role)
        self._unexpected = 0

    def _tell(self, role: str, message: Any) -> bool:
        children = self._call.children
        return children.tell(role, message) if children is not None else False

    def _tell_supervisor(self, message: Any) -> None:
        if self._call.supervisor is not None:
            try:
                self._call.supervisor.tell(message)
            except Exception:  # noqa: BLE001 - the supervisor is going away; nothing to tell
                pass

    def _inject(self, message: InjectFault) -> None:
        """Common faults; subclasses add their own (sever, blackhole) before calling this."""
        inject_fault(self._log, message.fault)

    def _unexpected_message(self, message: Any) -> None:
        self._unexpected += 1
        self._log.warning("unexpected_message", message_type=type(message).__name__)


def inject_fault(log: Any, fault: str) -> None:
    """Fail the calling handler in the named way (raise, kill, hang, slow)."""
    log.warning("fault_injected", fault=fault)
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
        case _:
            log.warning("fault_not_applicable", fault=fault)
