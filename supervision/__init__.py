"""A small OTP-style supervision library for pykka actors under gevent.

Generic: it knows nothing about calls. A supervisor is started with flags and a list of
child specifications, starts the children in order, watches every one of them, restarts
them by strategy with backoff, gives up (escalates) when restarts exceed the intensity,
and stops them in reverse order.

    spec.py       ChildSpec, SupervisorFlags, Backoff and their enums (validated data)
    restarts.py   the pure arithmetic: restart window and backoff delays
    exits.py      why a child stopped
    actor.py      SupervisedActor: a pykka actor that cannot take the process down
    supervisor.py Supervisor: the behaviour itself
    service.py    ServiceActor: a start()/stop() part under a supervisor
"""

from supervision.actor import ActorKilled, ChildHandle, SupervisedActor
from supervision.exits import Exit, ExitKind
from supervision.restarts import RestartWindow, backoff_delay_s
from supervision.service import ServiceActor
from supervision.spec import AutoShutdown, Backoff, ChildSpec, Restart, Strategy, SupervisorFlags
from supervision.supervisor import ChildTable, Supervisor

__all__ = [
    "ActorKilled",
    "AutoShutdown",
    "Backoff",
    "ChildHandle",
    "ChildSpec",
    "ChildTable",
    "Exit",
    "ExitKind",
    "Restart",
    "RestartWindow",
    "ServiceActor",
    "Strategy",
    "SupervisedActor",
    "Supervisor",
    "SupervisorFlags",
    "backoff_delay_s",
]
