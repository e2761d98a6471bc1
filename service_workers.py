"""WORKERS > 1: one port served by N worker processes under gunicorn's master.

`run.py --workers N` (or WORKERS=N) runs `serve_workers`. What the master does once,
before it forks:

- `service.preflight`: every start-up check of `BridgeService.start()` in the same order
  (a bad setting is still one line and exit status 2, before anything starts), the
  database migrated once, and the port bound and listening: the workers share it;
- a run directory of its own (removed at exit): prometheus-client's multiprocess files,
  so /metrics on any worker reports the whole machine (observability/metrics.py), and,
  without REDIS_URL or DIRECTORY_PATH, the SQLite call directory every worker shares
  (its tables made here once), so any worker takes any call's stream;
- without VAPI_API_KEY, ONE VAPI simulator (`sims/vapi_process.py`, a process of its own)
  that every worker uses: a VAPI call created by one worker is joined by whichever worker
  takes its stream.

gunicorn's master then forks the workers, replaces one that dies, and on SIGTERM (or a
first Ctrl-C) tells each to drain, waiting for them up to DRAIN_TIMEOUT_S plus the time
ending the remaining calls may take; a second Ctrl-C (or SIGQUIT) stops them at once.

Each worker, after the fork, builds its own `BridgeService` (root supervisor, call
registry, records writer, HTTP server) on the shared socket. The server is
`web/server.py`'s, exactly as with one process: the upgrade gate, the header and idle
deadlines, at most MAX_CONNECTIONS handlers (per worker), the body limits. That is why
`BridgeWorker.run` serves through the service's server instead of the one gevent-websocket's
worker would build around its plain handler. On SIGTERM a worker drains as one process
does: /readyz says 503 and new calls hear the fallback while live ones run on for up to
DRAIN_TIMEOUT_S, then the rest are ended.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import gevent
import gevent.util
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.glogging import Logger as GunicornLogger

from calls.directory import DirectoryUnavailable
from directory.sqlite import SqliteDirectory
from observability.logging import BoundLogger
from observability.metrics import Metrics, process_exited, use_multiprocess_dir
from service import BridgeService, preflight
from settings import ConfigError, Settings
from sims.vapi_process import READY_PREFIX

__all__ = ["BridgeWorker", "WorkerPlan", "serve_workers"]

_ROOT = Path(__file__).resolve().parent
# Beyond DRAIN_TIMEOUT_S, what a worker may take to end its remaining calls and stop
# (BridgeService.drain waits up to 10 s for ended calls to go, stop() up to 10 s more).
_STOP_MARGIN_S = 20
# A worker that has not said it is alive for this long is killed and replaced.
_WORKER_TIMEOUT_S = 30
# How long a replacement worker that failed to start waits before the master tries another.
_RESTART_PAUSE_S = 5.0
# How soon a worker starts draining after SIGTERM (and /readyz says 503).
_ALIVE_POLL_S = 0.1
# The key the shared VAPI simulator takes (a development simulator's: not a secret).
_SIMULATOR_KEY = "simulator-key"
# How long the VAPI simulator process may take to say where it listens.
_SIMULATOR_START_S = 15.0


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerPlan:
    """What the master hands each worker (through the fork: nothing is serialised)."""

    settings: Settings  # with the shared simulator's URL and key when there is one
    log: BoundLogger
    metrics_dir: str


def serve_workers(settings: Settings, log: BoundLogger, *, on_started: Callable[[], None]) -> int:
    """Run the master until it is stopped; its exit status (2: a setting cannot be used)."""
    master_pid = os.getpid()
    run_dir = Path(tempfile.mkdtemp(prefix="bridge-run-"))
    simulator: _SimulatorProcess | None = None
    try:
        metrics_dir = run_dir / "metrics"
        metrics_dir.mkdir()
        use_multiprocess_dir(str(metrics_dir))  # before any worker makes an instrument
        worker_settings = _with_shared_directory(settings, run_dir / "directory.sqlite")
        try:
            listener = preflight(settings, log)
        except ConfigError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
        try:
            _prepare_directory(worker_settings)
        except ConfigError as exc:
            listener.close()
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
        if settings.vapi.api_key is None:
            simulator = _SimulatorProcess.start()
            worker_settings = dataclasses.replace(
                worker_settings, vapi=dataclasses.replace(settings.vapi, api_key=simulator.api_key,
                                                          base_url=simulator.base_url),
            )
            log.info("vapi_simulator_started", base_url=simulator.base_url, simulator_pid=simulator.process.pid)
        on_started()
        plan = WorkerPlan(settings=worker_settings, log=log, metrics_dir=str(metrics_dir))
        # gunicorn takes the socket over from its descriptor (and closes that descriptor).
        master = _Master(plan, fd=listener.detach())
        log.info("workers_starting", workers=settings.workers, host=settings.host, port=settings.port,
                 public_url=settings.public_url, run_dir=str(run_dir))
        status = master.serve()
        log.info("workers_stopped", status=status)
        return 0 if status == 0 else 1
    finally:
        # A worker leaves gunicorn's master loop by raising SystemExit through here: what
        # the master made is the master's to clean up.
        if os.getpid() == master_pid:
            if simulator is not None:
                simulator.stop()
            shutil.rmtree(run_dir, ignore_errors=True)


def _with_shared_directory(settings: Settings, path: Path) -> Settings:
    """The workers' settings: without REDIS_URL or DIRECTORY_PATH, the call directory is an
    SQLite file in the master's run directory, so any worker can take any call's stream."""
    fleet = settings.fleet
    if fleet.redis_url is not None or fleet.directory_path is not None:
        return settings
    return dataclasses.replace(settings, fleet=dataclasses.replace(fleet, directory_path=str(path)))


def _prepare_directory(settings: Settings) -> None:
    """Make the SQLite call directory's file and tables once, before the workers race to.

    ConfigError names DIRECTORY_PATH when the file cannot be made or used.
    """
    path = settings.fleet.directory_path
    if settings.fleet.redis_url is not None or path is None:
        return
    if not Path(path).parent.is_dir():
        raise ConfigError("DIRECTORY_PATH", path, f"a file in an existing directory ({Path(path).parent})")
    directory = SqliteDirectory(path)
    try:
        directory.nodes()  # opens it: the tables and the write-ahead log are made here
    except (DirectoryUnavailable, sqlite3.Error) as exc:
        raise ConfigError("DIRECTORY_PATH", path, f"a usable SQLite file ({exc})") from None
    finally:
        directory.close()


class BridgeWorker(GeventWebSocketWorker):  # type: ignore[misc]  # gevent-websocket ships no types
    """gevent-websocket's gunicorn worker, serving the process's own BridgeService.

    gunicorn calls `load_wsgi` after the fork and before the worker counts as booted, then
    `run`. A failure in `load_wsgi` is a boot error, on which gunicorn's master stops every
    worker: right at start-up, wrong for a replacement (see `load_wsgi`).
    """

    service: BridgeService | None = None

    def init_signals(self) -> None:
        super().init_signals()
        # Ctrl-C reaches every process of the terminal's group: a worker drains, as one
        # process would. The master's quick stop (a second Ctrl-C) sends SIGQUIT.
        signal.signal(signal.SIGINT, self.handle_exit)

    def handle_usr1(self, _signum: int, _frame: object) -> None:
        # As with one process: `kill -USR1 <worker pid>` prints its greenlets' stacks, for a
        # hung worker (gunicorn's own use of USR1, reopening log files, has no files here).
        gevent.spawn(gevent.util.print_run_info)

    def load_wsgi(self) -> None:
        plan: WorkerPlan = self.app.plan
        metrics = Metrics(enabled=plan.settings.admin.metrics_enabled, multiprocess_dir=plan.metrics_dir)
        # GeventWorker.patch made self.sockets gevent sockets on the master's listening one.
        log = plan.log.bind(worker=self.age)
        service = BridgeService(plan.settings, log=log, metrics=metrics, listener=self.sockets[0],
                                wait_for_database=True)
        try:
            service.start()
        except Exception:
            if self.age <= plan.settings.workers:
                raise  # at start-up: a boot error, and gunicorn stops the master, as a failed start should
            # A replacement worker: gunicorn would stop every worker, and their calls, for one
            # that cannot boot. It exits instead (after a pause, so a lasting fault is retried
            # slowly) and the master starts another; the others serve on meanwhile.
            log.error("worker_start_failed", retry_in_s=_RESTART_PAUSE_S, exc_info=True)
            until = time.monotonic() + _RESTART_PAUSE_S
            while self.alive and time.monotonic() < until:  # SIGTERM meanwhile: no need to wait
                gevent.sleep(_ALIVE_POLL_S)
            sys.exit(1)
        if service.server is not None:
            # gevent accepts up to 100 pending connections per wake-up: a burst would all go
            # to whichever worker woke first. One at a time lets the others take their share
            # (gunicorn's own gevent worker does the same when there are several).
            service.server.max_accept = 1
        self.service = service
        self.wsgi = service.server.application if service.server is not None else None
        gc.freeze()  # as run.py does for one process: full collections walk only what calls made

    def run(self) -> None:
        service = self.service
        if service is None:
            raise RuntimeError("the worker's service was not built (load_wsgi)")
        # SIGTERM only clears self.alive (a signal handler must not block): it is polled.
        while self.alive:
            self.notify()  # the master's liveness check; it also exits if the master is gone
            gevent.sleep(_ALIVE_POLL_S)
        drain = gevent.spawn(service.drain, service.settings.admin.drain_timeout_s)
        while not drain.dead:
            self.notify()
            drain.join(timeout=1.0)
        service.stop()


class _Arbiter(Arbiter):  # type: ignore[misc]  # gunicorn ships no types
    def handle_int(self) -> None:
        # A first Ctrl-C drains like SIGTERM, as one process does; Arbiter.stop turns a
        # second one into a quick stop.
        raise StopIteration


class _Log(GunicornLogger):  # type: ignore[misc]  # gunicorn ships no types
    """gunicorn's own lines (workers booting, dying, replaced) through the process's structlog setup."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            logger.handlers.clear()
        self.error_log.propagate = True  # to the root handler configure_logging set up
        self.access_log.propagate = False  # the server logs its own http_request lines


class _Master(BaseApplication):  # type: ignore[misc]  # gunicorn ships no types
    def __init__(self, plan: WorkerPlan, *, fd: int) -> None:
        self.plan = plan
        settings = plan.settings
        metrics_dir = plan.metrics_dir

        def child_exit(_arbiter: object, worker: Any) -> None:
            process_exited(worker.pid, metrics_dir)

        self._options: dict[str, object] = {
            "bind": [f"fd://{fd}"],
            "workers": settings.workers,
            "worker_class": BridgeWorker,
            "graceful_timeout": math.ceil(settings.admin.drain_timeout_s + _STOP_MARGIN_S),  # whole seconds
            "timeout": _WORKER_TIMEOUT_S,
            "logger_class": _Log,
            "loglevel": settings.log_level.lower(),
            "proc_name": "twilio-vapi-bridge",
            "child_exit": child_exit,
            "worker_tmp_dir": str(Path(metrics_dir).parent),
            "control_socket_disable": True,  # gunicorn's control socket: nothing here uses it
        }
        super().__init__()

    def load_config(self) -> None:
        for name, value in self._options.items():
            self.cfg.set(name, value)

    def load(self) -> None:
        raise RuntimeError("each worker builds its own application (BridgeWorker.load_wsgi)")

    def serve(self) -> int:
        """Run the master loop until it halts; its exit status."""
        master_pid = os.getpid()
        try:
            _Arbiter(self).run()
        except SystemExit as exit_:
            if os.getpid() != master_pid:
                raise  # a forked worker ending: it must leave the process, as gunicorn means it to
            return exit_.code if isinstance(exit_.code, int) else 1
        return 0


@dataclass(slots=True)
class _SimulatorProcess:
    """`python -m sims.vapi_process`, started by the master before the fork and stopped last."""

    process: subprocess.Popen[str]
    base_url: str
    api_key: str

    @classmethod
    def start(cls) -> _SimulatorProcess:
        # Run from the checkout, so `-m` finds the module wherever run.py was started from.
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
            [sys.executable, "-m", "sims.vapi_process", "--exit-with-parent", "--api-key", _SIMULATOR_KEY],
            cwd=_ROOT, stdout=subprocess.PIPE, text=True,
        )
        stdout: IO[str] | None = process.stdout
        line = ""
        if stdout is not None:
            try:
                with gevent.Timeout(_SIMULATOR_START_S):
                    line = stdout.readline()
            except gevent.Timeout:
                pass
            stdout.close()
        if not line.startswith(READY_PREFIX):
            process.kill()
            process.wait()
            raise RuntimeError(f"the VAPI simulator did not start (it said {line.strip()!r})")
        return cls(process=process, base_url=line[len(READY_PREFIX):].strip(), api_key=_SIMULATOR_KEY)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it ended since poll()
                self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
