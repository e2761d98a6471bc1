"""structlog configuration: one JSON object per line, or readable console lines.

Configured once by run.py. stdlib logging (pykka, gevent's server) goes through the same
renderer, so every line of the process has one shape. Call context (call_sid, actor)
is bound explicitly on loggers handed down, not through contextvars: every greenlet
starts with an empty context.

Levels are for alerting: WARNING for a fault the bridge recovered from (one line, e.g.
the supervisor's `child_exited`), ERROR for what needs a person (a call lost, a give-up,
a process-level failure). Tracebacks of recovered faults are DEBUG lines, and pykka's
own logger, whose INFO lines carry tracebacks too, shows below WARNING only at DEBUG.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Protocol, TextIO

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor

__all__ = ["BoundLogger", "Logger", "configure_logging"]


class Logger(Protocol):
    """What a component needs of the logger handed to it: one method per level it uses.

    structlog's bound loggers fit (`configure_logging` returns one, and `bind` gives
    more), and so does a test's recorder. Fields are free-form, as in structlog.
    """

    def info(self, event: str, /, **fields: object) -> object: ...

    def warning(self, event: str, /, **fields: object) -> object: ...

    def error(self, event: str, /, **fields: object) -> object: ...


class BoundLogger(Logger, Protocol):
    """A Logger that can bind context (structlog's): each call's logger carries its call_sid."""

    def debug(self, event: str, /, **fields: object) -> object: ...

    def bind(self, **fields: object) -> BoundLogger: ...


class _CurrentStdout:
    """Writes to whatever sys.stdout is now (test runners swap it per test)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


def _add_pid(_logger: object, _method: str, event: EventDict) -> EventDict:
    event.setdefault("pid", os.getpid())  # read per line: a forked worker logs its own
    return event


def configure_logging(*, fmt: str, level: str, stream: TextIO | None = None, pid: bool = False) -> FilteringBoundLogger:
    """Set up structlog and stdlib logging; returns the root structlog logger.

    `pid`: every line carries the process id that wrote it (several worker processes
    share one log).
    """
    out: TextIO | _CurrentStdout = stream or _CurrentStdout()
    shared: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if pid:
        shared.append(_add_pid)
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level)),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level))
    # pykka logs an exception returned to an asker at INFO with its traceback; its
    # failures of supervised actors are logged by supervision/ instead (see actor.py).
    pykka_level = logging.DEBUG if level == "DEBUG" else max(logging.WARNING, getattr(logging, level))
    logging.getLogger("pykka").setLevel(pykka_level)
    # structlog.get_logger is typed Any; the wrapper_class configured above is what it makes.
    log: FilteringBoundLogger = structlog.get_logger("bridge")
    return log
