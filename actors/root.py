"""RootSupervisor: above every call and the server's own long-lived parts.

Calls are transient children: a CallSupervisor that fails is started again for the same
call (the caller stays connected); one that ends or gives up is not. Each child has its
own restart window, so one call's trouble can never use up another's, and a call that
keeps failing is ended on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from protocols.twiml import is_call_sid
from supervision import Exit, Supervisor, SupervisorFlags

__all__ = ["ROOT_FLAGS", "RootSupervisor"]

# Three failures of one call's supervisor within a minute and that call is lost: each
# failure already restarts four actors and a VAPI link, so a fourth would only repeat
# whatever keeps killing it.
ROOT_FLAGS = SupervisorFlags(intensity=3, period_s=60.0, isolate_children=True)


class RootSupervisor(Supervisor):
    """The process's top supervisor."""

    # Stopping a call's tree takes a second or two; a stop of every call at shutdown is
    # done outside any handler deadline by run.py's drain.
    handler_deadline_s = None

    def __init__(
        self,
        *,
        log: Any,
        metrics: Any,
        on_lost: Callable[[str, Exit], None],
        on_restart: Callable[[str, Exit], None] = lambda child_id, exit_: None,
    ) -> None:
        super().__init__(ROOT_FLAGS, log=log, name="root")
        self._metrics = metrics
        self._on_lost = on_lost
        self._on_restart = on_restart

    def child_log_fields(self, child_id: str) -> dict[str, object]:
        # A call's supervisor is named by its CallSid: its lines belong to the call's log,
        # and its role there is the call's "supervisor" (as in the admin API and metrics).
        fields = super().child_log_fields(child_id)
        if is_call_sid(child_id):
            fields.update(actor="supervisor", call_sid=child_id)
        return fields

    def on_child_exited(self, child_id: str, exit_: Exit, restarting: bool) -> None:
        if restarting:
            # Children of the root are call supervisors (labelled as such, not by call
            # SID, to keep the metric's cardinality fixed) or long-lived server parts.
            actor = "supervisor" if is_call_sid(child_id) else child_id
            self._metrics.restarts.labels(actor=actor, reason=exit_.kind.value).inc()
            self._on_restart(child_id, exit_)

    def on_child_gave_up(self, child_id: str, exit_: Exit) -> None:
        self._on_lost(child_id, exit_)
