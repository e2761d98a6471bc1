"""CallActor: what the four children of a call have in common.

Each gets the call's context, a logger bound with its role, and reaches its siblings
only by role through the supervisor's child table. Faults can be injected into any of
them by message (chaos/), so chaos goes through the same path as real failures.
"""

from __future__ import annotations

from typing import Any

from actors.call import CallContext
from actors.messages import InjectFault
from chaos.suffer import suffer
from supervision import ChildHandle, SupervisedActor

__all__ = ["CallActor"]


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

    def _inject(self, message: InjectFault) -> None:
        """Suffer an injected fault as a bug in this handler would (chaos/suffer.py)."""
        suffer(self._log, message.fault)

    def _unexpected_message(self, message: Any) -> None:
        self._unexpected += 1
        self._log.warning("unexpected_message", message_type=type(message).__name__)
