"""Real redis-server, PostgreSQL and nginx processes on free loopback ports in temp dirs.

Each service is a plain class (start, stop, its URL). The tests' fixtures (tests/services.py)
and the fleet soak (bench/_fleet.py) both start them through these classes.

Debian's packages put the binaries at /usr/bin/redis-server, /usr/sbin/nginx and
/usr/lib/postgresql/<major>/bin/{initdb,postgres,psql,pg_isready}. PostgreSQL refuses to
run as root: as root its data directory is given to the `postgres` user the package
creates, and initdb and the server run as that user.

The servers run in the foreground as children of the test process (no daemonizing), so
stopping one is a signal to a pid we hold, and its log file is in its temp dir for the
failure message when it does not come up.
"""

from __future__ import annotations

import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypedDict

__all__ = [
    "NginxServer",
    "PostgresServer",
    "RedisServer",
    "ServiceUnavailable",
    "die_with_parent",
    "find_binary",
    "free_port",
]

LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Bound on every wait for a service to come up or go down: a loaded 2-core CI box starts
# PostgreSQL (initdb included) in 2-4 s; more than this means it is not coming.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class ServiceUnavailable(Exception):
    """The service's binary is not installed here (a test fixture skips, fails under CI)."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def find_binary(name: str, *candidates: str) -> str:
    """The binary `name` from PATH or one of `candidates`, else ServiceUnavailable."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    raise ServiceUnavailable(f"{name} is not installed (Debian: apt-get install {name})")


class _UserArgs(TypedDict, total=False):
    """The Popen keyword arguments _as_user may set."""

    user: str
    group: int
    extra_groups: list[str | int]


def _as_user(user: str | None) -> _UserArgs:
    """Popen arguments that run the child as `user` (its group, no supplementary groups)."""
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def die_with_parent(sig: int) -> Callable[[], None]:
    """A preexec_fn: the kernel sends the child `sig` when the test process dies, however it dies.

    Without it a pytest (or a soak) killed by a timeout or SIGKILL would leave servers running forever
    (they are in a session of their own). It runs after the child took its user, so the
    credential change does not clear it.
    """

    def arm() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return arm


class _Process:
    """A service running in the foreground as our child, with its log in its temp dir."""

    name = "service"
    # What the kernel sends the service if the process that started it dies without stopping it.
    orphan_signal = signal.SIGTERM

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"test-{self.name}-"))
        self.log_path = self.dir / f"{self.name}.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _spawn(self, argv: Sequence[str], *, user: str | None = None) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it; we close our copy below
        try:
            # Own process group: a Ctrl-C at the terminal goes to pytest, which then stops
            # the service in order, instead of the service dying under a running test.
            self._proc = subprocess.Popen(
                list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.dir, start_new_session=True, preexec_fn=die_with_parent(self.orphan_signal),
                **_as_user(user),
            )
        finally:
            log.close()

    def _wait_up(self, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self._proc.returncode} at start:\n{_tail(self.log_path)}"
                )
            if ready():
                return
            time.sleep(0.05)
        self._signal(signal.SIGKILL)
        raise RuntimeError(f"{self.name} did not come up within {START_TIMEOUT_S} s:\n{_tail(self.log_path)}")

    def _signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(sig)

    def _stop_process(self, sig: int) -> None:
        """Signal the service to stop and wait for it; SIGKILL if it will not."""
        proc = self._proc
        if proc is None:
            return
        self._signal(sig)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)
        self._proc = None

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer(_Process):
    """redis-server on a free loopback port, no persistence, no unix socket."""

    name = "redis"

    def __init__(self) -> None:
        self.binary = find_binary("redis-server", "/usr/bin/redis-server")
        super().__init__()

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        """Start on a free port; after a `stop()`, again on the same port (an outage test)."""
        self.port = self.port or free_port()
        self._spawn([
            self.binary,
            "--bind", LOOPBACK, "--port", str(self.port), "--dir", str(self.dir),
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--logfile", "", "--databases", "16",
        ])
        self._wait_up(self.ping)

    def ping(self) -> bool:
        """True if the server answers PING (raw RESP: no client library needed here)."""
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1.0) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        """Send one command (RESP array) and return the raw reply, e.g. FLUSHALL between tests."""
        payload = f"*{len(args)}\r\n".encode() + b"".join(
            f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args
        )
        with socket.create_connection((LOOPBACK, self.port), timeout=2.0) as conn:
            conn.sendall(payload)
            return conn.recv(65536)

    def stop(self) -> None:
        self._stop_process(signal.SIGTERM)


def _postgres_bindir() -> Path:
    """Debian's newest /usr/lib/postgresql/<major>/bin holding initdb, else initdb's PATH dir."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise ServiceUnavailable("PostgreSQL is not installed (Debian: apt-get install postgresql)")


class PostgresServer(_Process):
    """A PostgreSQL cluster in a temp dir: trust auth on loopback only, fsync off (tests).

    As root, the cluster belongs to the `postgres` user and runs as it. `stop()` and
    `start()` may alternate (an outage test): the cluster and its port stay the same.
    """

    name = "postgres"
    orphan_signal = signal.SIGQUIT  # immediate shutdown: SIGTERM would wait for every session
    superuser = "postgres"
    database = "bridge"

    def __init__(self) -> None:
        self.bindir = _postgres_bindir()
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise ServiceUnavailable(
                    "running as root, PostgreSQL needs the `postgres` user its Debian package creates"
                ) from None
            self.user = "postgres"
        super().__init__()
        self.data = self.dir / "data"
        self._initialised = False

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        return f"postgresql://{self.superuser}@{LOOPBACK}:{self.port}/{database}"

    def start(self) -> None:
        if not self._initialised:
            self._initdb()
            self.port = free_port()
        self._spawn([
            str(self.bindir / "postgres"), "-D", str(self.data),
            "-h", LOOPBACK, "-p", str(self.port), "-k", str(self.dir),
            # A test cluster: durability buys nothing, start-up and commits get faster.
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=100", "-c", "shared_buffers=16MB",
        ], user=self.user)
        self._wait_up(self.ready)
        if not self._initialised:
            self.psql("postgres", f"CREATE DATABASE {self.database}")
            self._initialised = True

    def _initdb(self) -> None:
        if self.user is not None:
            shutil.chown(self.dir, self.user, self.user)
        result = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.superuser,
             "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"],
            capture_output=True, cwd=self.dir, timeout=START_TIMEOUT_S, check=False, **_as_user(self.user),
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed ({result.returncode}):\n{result.stderr.decode(errors='replace')}")

    def ready(self) -> bool:
        """True once the server accepts connections (pg_isready)."""
        result = subprocess.run(
            [str(self.bindir / "pg_isready"), "-q", "-h", LOOPBACK, "-p", str(self.port), "-t", "1"],
            capture_output=True, timeout=5, check=False,
        )
        return result.returncode == 0

    def psql(self, database: str, sql: str) -> str:
        """Run `sql` with psql as the superuser; its output (unaligned, tuples only)."""
        result = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", LOOPBACK, "-p", str(self.port), "-U", self.superuser, "-d", database, "-c", sql],
            capture_output=True, timeout=30, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {sql!r}: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode()

    def create_database(self, name: str) -> str:
        """A new, empty database (a test's own); its URL."""
        self.psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.psql("postgres", f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def stop(self) -> None:
        # SIGINT is PostgreSQL's fast shutdown: open sessions are cut, not waited for.
        self._stop_process(signal.SIGINT)


class NginxServer(_Process):
    """nginx in the foreground with everything it writes (pid, logs, temp files) in its temp dir.

    `http_config` is the body of the `http { }` block: the configuration under test. As root
    the workers run as root too (the temp dir is not readable by nginx's default `nobody`);
    as another user nginx keeps that user and only warns about the `user` default.
    """

    name = "nginx"

    def __init__(self) -> None:
        self.binary = find_binary("nginx", "/usr/sbin/nginx")
        super().__init__()
        self.conf_path = self.dir / "nginx.conf"

    def render(self, http_config: str) -> str:
        d = self.dir
        user = "user root;\n" if os.geteuid() == 0 else ""
        return (
            f"{user}"
            "daemon off;\n"
            "master_process on;\n"
            "worker_processes 1;\n"
            f"pid {d}/nginx.pid;\n"
            f"error_log {d}/error.log warn;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            # Which upstream took each request: what a fleet test asserts about balancing.
            "    log_format upstream '$request_method $request_uri $status $upstream_addr';\n"
            f"    access_log {d}/access.log upstream;\n"
            f"    client_body_temp_path {d}/client_body;\n"
            f"    proxy_temp_path {d}/proxy;\n"
            f"    fastcgi_temp_path {d}/fastcgi;\n"
            f"    uwsgi_temp_path {d}/uwsgi;\n"
            f"    scgi_temp_path {d}/scgi;\n"
            f"{http_config}\n"
            "}\n"
        )

    def start(self, http_config: str, port: int) -> None:
        """Run nginx with `http_config`, which must listen on 127.0.0.1:`port`."""
        self.port = port
        self.conf_path.write_text(self.render(http_config))
        self.check()
        # -e: the start-up error log, before the config's error_log applies (1.19.5+); without
        # it nginx tries /var/log/nginx/error.log, which a non-root user cannot open.
        self._spawn([self.binary, *self._paths()])
        self._wait_up(lambda: _port_open(port))

    def check(self) -> None:
        """`nginx -t` on the rendered config: a syntax error fails here with nginx's words."""
        result = subprocess.run(
            [self.binary, "-t", "-q", *self._paths()],
            capture_output=True, timeout=30, check=False,
        )
        if result.returncode != 0:
            stderr = result.stderr.decode(errors="replace")
            raise RuntimeError(f"nginx -t failed:\n{stderr}{_tail(self.dir / 'error.log')}")

    def _paths(self) -> list[str]:
        return ["-e", str(self.dir / "error.log"), "-p", str(self.dir), "-c", str(self.conf_path)]

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def requests(self) -> list[tuple[str, str, int, str]]:
        """(method, uri, status, upstream address) of every request logged so far, in order."""
        found = []
        for line in self.access_log.splitlines():
            method, uri, status, upstream = [*line.split(" ", 3), "", ""][:4]
            found.append((method, uri, int(status) if status.isdigit() else 0, upstream))
        return found

    @property
    def access_log(self) -> str:
        try:
            return (self.dir / "access.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        self._stop_process(signal.SIGTERM)
