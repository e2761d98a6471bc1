"""BridgeService: the whole server assembled from Settings, startable and stoppable.

run.py uses it to serve; integration tests start one on an ephemeral port. It owns the
root supervisor (above every call), the call registry, the HTTP server and, when no
VAPI key is configured, the built-in VAPI simulator.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

import gevent
import structlog
from gevent.pywsgi import WSGIServer
from pykka import ActorRef, ActorRegistry
from structlog.typing import FilteringBoundLogger

from actors.fleet import FleetNode, fleet_from_settings
from actors.registry import CallRegistry, call_settings
from actors.root import RootSupervisor
from audio.hold import default_hold_ulaw, load_hold_wav
from calls.handoff import DEPLOY
from calls.outcome import Outcome
from chaos.monkey import ChaosMonkey
from links.twilio import SocketLimits
from links.twilio_rest import TwilioDialer
from links.vapi import VapiConnector
from observability.logging import BoundLogger
from observability.metrics import Metrics
from observability.overload import CpuLoad, watch_loop
from observability.ratelimit import LogLimiter
from protocols.signature import SignatureValidator
from protocols.twilio import MAX_FRAME_BYTES
from records import CostRates, RecordStore, SchemaTooNew, StoreUnavailable
from records.recordings import RecordingWriter, prepare_directory
from settings import ConfigError, Settings
from supervision import ChildSpec, ServiceActor
from supervision.supervisor import StartChild
from web import WebContext, create_app
from web.admission import Admission, refusal_kind
from web.limits import BoundedBodies
from web.server import make_server

if TYPE_CHECKING:
    from sims.vapi import VapiSimulator

__all__ = ["BridgeService", "preflight"]

_SIMULATOR_KEY = "simulator-key"
# How often rate-limited logs report what they held back, and the store counters catch up
# on /metrics (a scrape brings its own worker's level first; this brings the others').
_HOUSEKEEPING_S = 10.0
# Before handing calls off, how long a stopping node waits for nodes stopping with it to say so.
_PEERS_SETTLE_S = 0.5
# Connections the kernel holds for us before they are accepted (gevent's default too).
_LISTEN_BACKLOG = 128


class BridgeService:
    """Builds and runs the server. `start()` binds; `stop()` ends calls and unbinds."""

    def __init__(
        self,
        settings: Settings,
        *,
        log: BoundLogger | FilteringBoundLogger | None = None,
        metrics: Metrics | None = None,
        listener: socket.socket | None = None,
        wait_for_database: bool = False,
    ) -> None:
        """`listener`: a socket already bound and listening, served on instead of HOST:PORT (tests).

        `wait_for_database`: a PostgreSQL server (DATABASE_URL) that is down at start is an
        outage the records wait out, not a start-up error. For gunicorn's workers, whose
        master checked the database: a worker booted or replaced during an outage must
        serve, or gunicorn would stop every worker and their live calls with them.
        """
        self.settings = settings
        self._listener = listener
        self._wait_for_database = wait_for_database
        # configure_logging's FilteringBoundLogger is a BoundLogger, but mypy cannot match
        # them: its methods take `event` by keyword too, which Logger's **fields may also name.
        self.log: BoundLogger = cast("BoundLogger", log) if log is not None else structlog.get_logger("bridge")
        self.metrics = metrics or Metrics(enabled=settings.admin.metrics_enabled)
        self.simulator: VapiSimulator | None = None
        self.root: ActorRef[RootSupervisor] | None = None
        self.calls: CallRegistry | None = None
        self.fleet: FleetNode | None = None
        self.server: WSGIServer | None = None
        self.relay_server: WSGIServer | None = None  # a worker's own port for VAPI relays (WORKERS > 1)
        self.records: RecordStore | None = None
        self.recordings: RecordingWriter | None = None
        self._housekeeper: gevent.Greenlet[[], None] | None = None
        self._load_watch: gevent.Greenlet[..., None] | None = None

    @property
    def port(self) -> int:
        """The port the server listens on, once started."""
        port = self.server.server_port if self.server is not None else None
        if port is None:
            raise RuntimeError("the server is not listening: start() it first")
        return port

    def start(self) -> None:
        """Build everything and bind.

        What a user's setting can break is tried first, before any part starts, and
        reported as ConfigError naming the setting: the hold sound file, the listening
        address (bound here, listening only once the database is open), the database.
        Anything failing later stops what had started before it is raised.
        """
        settings = self.settings
        hold_ulaw = _hold_sound(settings.vapi.hold_sound_wav)
        own_listener = self._listener is None
        listener = self._listener if self._listener is not None else _bind(settings.host, settings.port)
        try:
            self._start(listener, hold_ulaw, own_listener=own_listener)
        except BaseException:
            self.stop(timeout_s=5.0)
            if own_listener:
                listener.close()
            raise

    def _start(self, listener: socket.socket, hold_ulaw: bytes, *, own_listener: bool) -> None:
        settings = self.settings
        self.records = _records(settings, self.log, wait_for_database=self._wait_for_database)
        self.recordings = _recordings(settings, self.log)
        self.metrics.watch_stores(self.records, self.recordings)
        if own_listener:
            _listen(listener, settings.host, settings.port)
        base_url, api_key = settings.vapi.base_url, settings.vapi.api_key
        self.root = RootSupervisor.start(
            log=self.log.bind(actor="root"),
            metrics=self.metrics,
            on_lost=lambda call_sid, exit_: self.calls.call_lost(call_sid, exit_) if self.calls else None,
            on_restart=lambda call_sid, exit_: (
                self.calls.supervisor_restarting(call_sid, exit_) if self.calls else None
            ),
        )
        if api_key is None:
            from sims.vapi import VapiSimConfig, VapiSimulator

            # Under the root like any long-lived part: started first, stopped last.
            simulator = self.simulator = VapiSimulator(VapiSimConfig(api_key=_SIMULATOR_KEY, record=False))
            ref: ActorRef[ServiceActor] | None = self.root.ask(StartChild(ChildSpec(
                id="vapi_simulator",
                start=lambda handle: ServiceActor.start(handle, start=simulator.start, stop=simulator.stop),
            )), block=True, timeout=10)
            if ref is None:  # its start function raised (the root logged it)
                raise RuntimeError("the VAPI simulator did not start")
            ref.ask("started?", timeout=10)  # answered once on_start has bound its port
            base_url, api_key = simulator.base_url, _SIMULATOR_KEY
            self.log.info("vapi_simulator_started", base_url=base_url)
        connector = VapiConnector(
            base_url=base_url,
            api_key=api_key,
            assistant_id=settings.vapi.assistant_id,
            timeout_s=settings.vapi.connect_timeout_s,
        )
        self.fleet, tickets = fleet_from_settings(settings, metrics=self.metrics, log=self.log)
        # A node of a fleet relays (one process has no other node); gunicorn's workers share one
        # port, where a relay handshake could reach any of them, so each relays on one of its own.
        shared = self.fleet.shared
        relay_listener = _relay_listener(settings) if shared and settings.workers > 1 else None
        self.calls = CallRegistry(
            root=self.root,
            settings=call_settings(settings, hold_ulaw),
            connector=connector,
            metrics=self.metrics,
            log=self.log,
            tickets=tickets,
            fleet=self.fleet,
            records=self.records,
            recordings=self.recordings,
            relay_url=_relay_url(settings, listener, relay_listener) if shared else None,
            rates=CostRates(
                twilio_per_min=settings.admin.cost_twilio_per_min, vapi_per_min=settings.admin.cost_vapi_per_min
            ),
        )
        self.fleet.start(snapshots=self.calls.snapshots, inject=self.calls.inject)
        load = CpuLoad(settings.admin.overload_cpu_pct / 100) if settings.admin.overload_cpu_pct > 0 else None
        self.admission = Admission(lambda: len(self.calls.live()) if self.calls else 0, settings.admin.max_calls,
                                   overload=load.refusal if load is not None else None)
        if settings.admin.chaos_rate_per_min > 0:
            calls = self.calls
            self.root.ask(StartChild(ChildSpec(
                id="chaos_monkey",
                start=lambda handle: ChaosMonkey.start(
                    handle,
                    rate_per_min=settings.admin.chaos_rate_per_min,
                    seed=settings.admin.chaos_seed,
                    live_calls=lambda: [c.call_sid for c in calls.live()],
                    inject=calls.inject,
                    log=self.log.bind(actor="chaos_monkey"),
                ),
            )), timeout=5)
        validator = SignatureValidator(settings.twilio.auth_token)
        limits = settings.limits
        self.log_limiter = LogLimiter(self.log.bind(actor="gate"))
        app = create_app(
            WebContext(
                public_url=settings.public_url,
                validator=validator,
                calls=self.calls,
                metrics=self.metrics,
                fallback=settings.fallback,
                log=self.log,
                admin_token=settings.admin.token,
                metrics_token=settings.admin.metrics_token,
                admission=self.admission,
                records=self.records,
                dialer=TwilioDialer.from_settings(settings),
                log_limiter=self.log_limiter,
                socket_limits=SocketLimits(
                    max_message_bytes=MAX_FRAME_BYTES,
                    idle_timeout_s=limits.media_idle_timeout_s,
                    frames_per_s=limits.media_frames_per_s,
                    bytes_per_s=limits.media_bytes_per_s,
                ),
                media_start_timeout_s=limits.media_start_timeout_s,
            ),
            max_body_bytes=limits.max_body_bytes,
        )

        def rejected(kind: str, client: str, detail: str) -> None:
            self.metrics.malformed.labels(source="media_handshake", kind=kind).inc()
            self.log_limiter.warning("upgrade_refused", source=client, kind=kind, detail=detail)

        def body_refused(kind: str, client: str) -> None:
            self.metrics.malformed.labels(source="http", kind=kind).inc()
            self.log_limiter.warning("request_refused", source=client, kind=kind)

        calls = self.calls

        bounded = BoundedBodies(app, max_bytes=limits.max_body_bytes, timeout_s=limits.http_body_timeout_s,
                                on_refused=body_refused)

        def serve(on: socket.socket, *, relay_only: bool = False) -> WSGIServer:
            server = make_server(
                on,
                bounded,
                public_url=settings.public_url,
                validator=validator,
                admit=calls.media_refusal,
                on_rejected=rejected,
                relay=calls.relay_refusal,
                relay_only=relay_only,
                busy=self._stream_busy,
                header_timeout_s=limits.http_header_timeout_s,
                idle_timeout_s=limits.http_idle_timeout_s,
                max_connections=limits.max_connections,
                trusted_proxies=limits.trusted_proxies,
                access_log=self.log.bind(actor="http"),
            )
            server.start()
            return server

        self.server = serve(listener)
        if relay_listener is not None:
            self.relay_server = serve(relay_listener, relay_only=True)
        self._housekeeper = gevent.spawn(self._housekeeping)
        if load is not None:
            probed = partial(self._probed, load)
            self._load_watch = gevent.spawn(watch_loop, load, probed, partial(self._overload_changed, load))
        self.log.info("server_listening", host=settings.host, port=self.port, public_url=settings.public_url,
                      **({"relay_port": self.relay_server.server_port} if self.relay_server is not None else {}))

    def _stream_busy(self, call_sid: str) -> str | None:
        """Why a new media socket should go to another node (the proxy can pass it on), or None."""
        refusal = self.admission.refusal()
        if refusal is not None:
            self.log.info("stream_passed_on", call_sid=call_sid, actor="http", reason=refusal)
            self.metrics.passed_on.labels(request="stream", reason=refusal_kind(refusal)).inc()
        return refusal

    def _probed(self, load: CpuLoad, late_s: float) -> None:
        self.metrics.loop_lag.observe(late_s)
        self.metrics.core_demand.set(load.share())

    def _overload_changed(self, load: CpuLoad, overloaded: bool) -> None:
        self.metrics.overloaded.set(1 if overloaded else 0)
        live = len(self.calls.live()) if self.calls is not None else 0
        share = round(load.share() * 100)
        if overloaded:
            # The process protects the calls it has: no person is needed unless it lasts.
            self.log.warning("overloaded", live_calls=live, cpu_pct=share, threshold_pct=round(load.threshold * 100))
        else:
            self.log.info("overload_ended", live_calls=live, cpu_pct=share)

    def _housekeeping(self) -> None:
        """Say how many lines a flood's rate limit held back, also once the flood has stopped;
        bring the store counters on /metrics level with the stores."""
        while True:
            gevent.sleep(_HOUSEKEEPING_S)
            self.log_limiter.flush()
            self.metrics.catch_up()

    def drain(self, timeout_s: float) -> int:
        """Stop taking calls, let live ones finish for up to `timeout_s`, then end the rest.

        Returns how many calls had to be ended. New calls hear the fallback meanwhile,
        and /readyz says not ready, so a load balancer sends them elsewhere.

        In a fleet (a shared directory: Redis, or the workers' SQLite file) the node hands
        its live calls over instead of waiting for them: it stops accepting connections (the
        load balancer, or a sibling worker, takes every new request), then marks each call
        moving and lets its stream go; Twilio asks the action URL, which another node answers
        with a new stream (calls/handoff.py). The calls it could not hand off drain as usual.
        """
        if self.calls is None:
            raise RuntimeError("nothing to drain: the service was not started")
        self.admission.draining = True
        self.log.info("draining", live_calls=len(self.calls.live()), timeout_s=timeout_s)
        handing_off = False
        if self.fleet is not None and self.fleet.shared:
            # Said even with no calls: a node stopping with others must not be handed theirs.
            self.fleet.draining = True
            self.fleet.heartbeat()
            # Even with no calls: until its listener closes, a node takes streams, resumed ones
            # too (a sibling worker's hand-off lands on the shared port), and would drain them.
            handing_off = self._hand_off()
        deadline = time.monotonic() + timeout_s
        while self.calls.live() and time.monotonic() < deadline:
            gevent.sleep(0.1)
            if handing_off:
                # A stream that arrived in the moment before the listener closed, or over a
                # connection already open: it goes too, rather than waiting to be ended.
                self.calls.hand_off_all(DEPLOY)
        remaining = len(self.calls.live())
        if remaining:
            self.calls.end_all(Outcome.DRAINED, f"server shutting down after {timeout_s:g}s of draining")
            end_by = time.monotonic() + 10.0
            while self.calls.live() and time.monotonic() < end_by:
                gevent.sleep(0.05)
        self.log.info("drained", ended=remaining)
        return remaining

    def _hand_off(self) -> bool:
        """Hand the live calls to the fleet, if another node takes calls (else they drain here);
        whether one did (and this node's listener is closed).

        This node has said it is draining (drain) and waits a moment, so nodes stopping together
        (every worker of a machine on the master's SIGTERM, say) see each other stopping and
        drain rather than hand their calls to a node that is about to go too.
        """
        fleet, calls = self.fleet, self.calls
        if fleet is None or calls is None:
            return False
        gevent.sleep(_PEERS_SETTLE_S)
        peers = fleet.peers_taking_calls()
        if not peers:
            if calls.live():
                self.log.warning("handoff_impossible", reason="no other node takes calls", live_calls=len(calls.live()))
            return False
        self._close_listeners()  # established sockets stay; new connections go to another node
        handed = calls.hand_off_all(DEPLOY)
        self.log.info("handing_off", calls=handed, peers=len(peers))
        return True

    def _close_listeners(self) -> None:
        for server in (self.server, self.relay_server):
            if server is not None and not server.closed:
                server.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        """End every call, stop the root supervisor, close the listener and the simulator."""
        if self._housekeeper is not None:
            self._housekeeper.kill(block=False)
        if self._load_watch is not None:
            self._load_watch.kill(block=False)
        self._close_listeners()  # no new connections
        if self.root is not None and self.root.is_alive():
            self.root.stop(block=True, timeout=timeout_s)
        if self.calls is not None:
            self.calls.release_parked()
        if self.fleet is not None:
            self.fleet.stop()  # after the calls: their outcomes go out first
        for server in (self.server, self.relay_server):
            if server is not None:
                server.stop(timeout=timeout_s)
        if self.records is not None:
            self.records.stop()
        if self.recordings is not None:
            self.recordings.stop()  # the calls have ended: their last chunks are queued
        leftover = ActorRegistry.get_all()
        if leftover:
            self.log.warning("actors_left_at_stop", count=len(leftover))


def _relay_url(settings: Settings, listener: socket.socket, relay_listener: socket.socket | None) -> str:
    """Where the other nodes reach this fleet node's VAPI relay (docs/vapi-relay.md): NODE_URL,
    or with a worker's own relay port, that port at NODE_URL's host."""
    fleet = settings.fleet
    if relay_listener is None:
        return fleet.node_url or f"http://127.0.0.1:{listener.getsockname()[1]}"
    host = urlsplit(fleet.node_url).hostname if fleet.node_url else None
    host = host or "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{relay_listener.getsockname()[1]}"


def _relay_listener(settings: Settings) -> socket.socket:
    """A worker's own port for relays (WORKERS > 1 in a fleet): the first free one of
    RELAY_PORTS on HOST, else any free one."""
    ports = settings.fleet.relay_ports
    if ports is None:
        sock = _bind(settings.host, 0)
        _listen(sock, settings.host, 0)
        return sock
    first, last = ports
    for port in range(first, last + 1):
        try:
            sock = _bind(settings.host, port)
        except ConfigError:
            continue  # another worker's, or another program's
        try:
            _listen(sock, settings.host, port)
        except ConfigError:  # a sibling bound it too at the same moment, and listened first
            sock.close()
            continue
        return sock
    raise ConfigError("RELAY_PORTS", f"{first}-{last}",
                      f"a range with a free port on {settings.host} for each worker ({settings.workers})")


def preflight(settings: Settings, log: BoundLogger) -> socket.socket:
    """What `BridgeService.start()` would refuse, tried once by a master that then forks workers.

    Same order and same one-line ConfigErrors as `start()`: the hold sound, the listening
    address, the database (opened, migrated and closed again, so workers never race to
    migrate it), the recordings directory. Returns the socket bound and listening, for the
    workers to share. Starts nothing that outlives the call.
    """
    _hold_sound(settings.vapi.hold_sound_wav)
    ports = settings.fleet.relay_ports
    if ports is not None and ports[1] - ports[0] + 1 < settings.workers:
        raise ConfigError("RELAY_PORTS", f"{ports[0]}-{ports[1]}",
                          f"a range of at least WORKERS ({settings.workers}) ports")
    listener = _bind(settings.host, settings.port)
    try:
        _records(settings, log).stop()
        _prepare_recordings_directory(settings)
        _listen(listener, settings.host, settings.port)
    except BaseException:
        listener.close()
        raise
    return listener


def _records(settings: Settings, log: BoundLogger, *, wait_for_database: bool = False) -> RecordStore:
    """The call-records store, open (migrated) and writing; ConfigError names DATABASE_URL or DATABASE_PATH."""
    url = settings.admin.database_url
    if url is not None:
        records = RecordStore(url, log=log.bind(actor="records"), retention_days=settings.admin.records_retention_days)
        try:
            records.start(wait_for_database=wait_for_database)
        except (StoreUnavailable, SchemaTooNew) as exc:
            # The store's messages name the URL less its password; the setting's value is not repeated.
            raise ConfigError("DATABASE_URL", "***", f"a reachable PostgreSQL database ({_reason(exc)})") from None
        return records
    path = settings.admin.database_path
    _check_database_path(path)
    records = RecordStore(path, log=log.bind(actor="records"), retention_days=settings.admin.records_retention_days)
    try:
        records.start()
    except (StoreUnavailable, SchemaTooNew) as exc:
        raise ConfigError("DATABASE_PATH", path, f"a usable SQLite database ({_reason(exc, path)})") from None
    return records


def _reason(exc: BaseException, path: str = "") -> str:
    """An error's message on one line, less the path it starts with (the setting names it)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = " ".join(str(exc).split()).replace(" ()", "")  # an empty inner message says nothing
    if path and text.startswith(f"{path}: "):
        text = text[len(path) + 2 :]
    return text


def _hold_sound(path: str | None) -> bytes:
    """The hold sound as 8 kHz mu-law: HOLD_SOUND_WAV's, or the built-in chime."""
    if not path:
        return default_hold_ulaw()
    if not Path(path).is_file():
        raise ConfigError("HOLD_SOUND_WAV", path, "a readable WAV file (there is no such file)")
    try:
        return load_hold_wav(path)
    except ValueError as exc:
        wanted = f"a readable mono 16-bit WAV file at 8 or 16 kHz ({_reason(exc, path)})"
        raise ConfigError("HOLD_SOUND_WAV", path, wanted) from None


def _recordings(settings: Settings, log: BoundLogger) -> RecordingWriter | None:
    """The recordings writer, started, when RECORDINGS_DIR is set (its directory made if missing)."""
    config = settings.recordings
    if config.directory is None:
        return None
    _prepare_recordings_directory(settings)
    writer = RecordingWriter(
        config.directory,
        max_seconds=config.max_seconds,
        retention_days=config.retention_days,
        log=log.bind(actor="recordings"),
    )
    writer.start()
    return writer


def _prepare_recordings_directory(settings: Settings) -> None:
    """RECORDINGS_DIR made if missing and checked writable, when set; ConfigError names it."""
    directory = settings.recordings.directory
    if directory is None:
        return
    try:
        prepare_directory(directory)
    except ValueError as exc:
        raise ConfigError("RECORDINGS_DIR", directory, str(exc)) from None


def _check_database_path(path: str) -> None:
    """Say plainly what sqlite would only call "unable to open database file"."""
    if path == ":memory:":
        return
    target = Path(path)
    directory = target.parent
    if not directory.is_dir():
        raise ConfigError("DATABASE_PATH", path, f"a file in an existing directory ({directory} does not exist)")
    if target.is_dir():
        raise ConfigError("DATABASE_PATH", path, "a file, not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        # SQLite creates its write-ahead log and shared-memory files beside the database.
        raise ConfigError("DATABASE_PATH", path, f"a file in a writable directory ({directory} is not writable)")
    if target.exists() and not os.access(target, os.R_OK | os.W_OK):
        raise ConfigError("DATABASE_PATH", path, "a file this process can read and write")


def _address_error(exc: OSError, host: str, port: int) -> ConfigError:
    reason = _reason(exc)
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError("HOST", host, f"an address of this machine to listen on ({reason})")
    return ConfigError("PORT", str(port), f"a port free to listen on at HOST {host} ({reason})")


def _bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to HOST:PORT, not listening yet. ConfigError names HOST or PORT."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise ConfigError("HOST", host, f"an address or name of this machine to listen on ({_reason(exc)})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise _address_error(exc, host, port) from None
    return sock


def _listen(sock: socket.socket, host: str, port: int) -> None:
    try:
        sock.listen(_LISTEN_BACKLOG)
    except OSError as exc:  # another socket bound the port too (SO_REUSEADDR) and listened first
        raise _address_error(exc, host, port) from None
    sock.setblocking(False)
