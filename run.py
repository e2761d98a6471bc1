"""Entry point.

    python run.py           serve (embedded VAPI simulator when VAPI_API_KEY is unset)
    python run.py --workers N
                            serve with N worker processes on the one port (as WORKERS=N; the
                            flag wins); 1, the default, is one process
    python run.py call ...  a simulated caller that does what Twilio does (see --help)
    python run.py chaos ... inject faults into live calls through the admin API (see --help)
    python run.py soak ...  the chaos soak benchmark (same as python -m bench.soak)
    python run.py dial +15551234567 [--from +15557654321]
                            place an outbound call through Twilio, connected to the bridge
                            (PUBLIC_URL) like an inbound call; prints its CallSid

Serving, chaos and dial read their settings from the environment and from `.env` in the current
directory (or the file DOTENV_PATH names); a variable set in the environment wins over the
file. A setting that cannot be used stops the server before it starts, with one line naming
it, and exit status 2.
"""

from gevent import monkey

monkey.patch_all()  # before anything else imports sockets, threads or ssl

import os  # noqa: E402

# Before numpy loads its BLAS: one gevent loop per process does the work, and BLAS threads
# only spin beside it (a least-squares solve of the echo filter cost 14 ms of CPU with them,
# 2 ms without).
for _blas_threads in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_blas_threads, "1")

import gc  # noqa: E402
import io  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import cast  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.util  # noqa: E402
from dotenv import dotenv_values  # noqa: E402
from dotenv.parser import parse_stream  # noqa: E402

from observability.logging import BoundLogger  # noqa: E402
from settings import ConfigError, Settings  # noqa: E402

DOTENV_DEFAULT = ".env"


def load_env(environ: Mapping[str, str]) -> tuple[dict[str, str], Path | None]:
    """The environment over the `.env` file: what Settings.from_env reads, and the file read.

    The file is DOTENV_PATH if set (it must exist then), else `.env` in the current
    directory if there is one. Its values are never logged or printed.
    """
    named = environ.get("DOTENV_PATH", "").strip()
    path = Path(named or DOTENV_DEFAULT)
    if not named and not path.exists():
        return dict(environ), None
    if not path.is_file():
        raise ConfigError("DOTENV_PATH", str(path), "a readable .env file (there is no such file)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ConfigError("DOTENV_PATH", str(path), f"a readable UTF-8 .env file ({reason})") from None
    # A line python-dotenv cannot parse would only be warned about and skipped, and the
    # setting on it silently lost: refused instead, by line number (never its text).
    bad = [binding.original.line for binding in parse_stream(io.StringIO(text)) if binding.error]
    if bad:
        raise ConfigError("DOTENV_PATH", str(path), f"NAME=value lines (line {bad[0]} is not one)")
    from_file = dotenv_values(stream=io.StringIO(text))
    merged = {name: value for name, value in from_file.items() if value is not None}
    merged.update(environ)  # the real environment wins
    return merged, path


def serve(environ: Mapping[str, str], *, workers: str | None = None) -> int:
    """Serve until SIGTERM or Ctrl-C; `workers` (from --workers) wins over WORKERS."""
    try:
        env, dotenv_path = load_env(environ)
        if workers is not None:
            env["WORKERS"] = workers
        settings = Settings.from_env(env)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2

    from observability.logging import configure_logging

    # Several workers share one log: each line says which process wrote it.
    # configure_logging's FilteringBoundLogger is a BoundLogger that mypy cannot match (see service.py).
    log = cast(
        "BoundLogger", configure_logging(fmt=settings.log_format, level=settings.log_level, pid=settings.workers > 1)
    )
    if dotenv_path is not None:
        log.info("settings_file_read", path=str(dotenv_path))  # never its values
    if settings.workers > 1:
        from service_workers import serve_workers

        return serve_workers(settings, log, on_started=lambda: _started(settings, log))

    from service import BridgeService

    service = BridgeService(settings, log=log)
    try:
        service.start()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    # Everything made so far (modules, the app, settings) lives as long as the process:
    # out of the collector's sight, a full collection walks only what calls made, so it
    # stays short enough not to stall the media path (docs/cpu-per-call.md).
    gc.freeze()
    _started(settings, log)
    stopping = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stopping.set)
    gevent.signal_handler(signal.SIGINT, stopping.set)
    gevent.signal_handler(signal.SIGUSR1, gevent.util.print_run_info)
    stopping.wait()
    log.info("shutting_down")
    # A second signal while draining means "now": skip the rest of the drain.
    drain = gevent.spawn(service.drain, settings.admin.drain_timeout_s)
    stopping.clear()
    waitables: list[gevent.Greenlet[[float], int] | gevent.event.Event] = [drain, stopping]
    gevent.wait(waitables, count=1)
    drain.kill()
    service.stop()
    return 0


def _started(settings: Settings, log: BoundLogger) -> None:
    """What the operator is told once the server has started."""
    for name, problem in settings.production_warnings():
        log.warning("setting_unusable_with_twilio", setting=name, problem=problem)
    if settings.twilio.auth_token_generated:
        # Printed, not logged: it is a secret, and logs are shipped elsewhere.
        print(
            f"TWILIO_AUTH_TOKEN is unset; development token for this run: {settings.twilio.auth_token}",
            file=sys.stderr,
            flush=True,
        )


def dial(argv: list[str], environ: Mapping[str, str]) -> int:
    """`dial` command: one outbound call; its CallSid on stdout, or one line on stderr and exit 1 or 2."""
    import argparse

    from links.twilio_rest import OutboundCallError, OutboundErrorKind, TwilioDialer

    parser = argparse.ArgumentParser(
        prog="run.py dial",
        description="Place an outbound call through Twilio's REST API; when answered, Twilio connects it to "
        "this bridge (PUBLIC_URL/voice/incoming) like an inbound call. Needs TWILIO_ACCOUNT_SID, "
        "TWILIO_AUTH_TOKEN and TWILIO_FROM_NUMBER (or --from).",
    )
    parser.add_argument("to", help="the number to call, in E.164 form (+15551234567)")
    parser.add_argument("--from", dest="from_", metavar="NUMBER", help="caller ID (default: $TWILIO_FROM_NUMBER)")
    args = parser.parse_args(argv)
    try:
        env, _ = load_env(environ)
        settings = Settings.from_env(env)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        placed = TwilioDialer.from_settings(settings).place(args.to, args.from_)
    except OutboundCallError as exc:
        # Our settings or the number asked for: 2, as for usage errors; Twilio's answer: 1.
        print(f"dial failed: {exc}", file=sys.stderr)
        return 2 if exc.kind in (OutboundErrorKind.NOT_CONFIGURED, OutboundErrorKind.INVALID) else 1
    print(placed.call_sid, flush=True)
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "call":
        from sims.caller import main as caller_main

        return caller_main(argv[1:])
    if argv and argv[0] == "soak":
        from bench.soak import main as soak_main

        return soak_main(argv[1:])
    if argv and argv[0] == "chaos":
        from chaos.cli import main as chaos_main

        try:
            env, _ = load_env(os.environ)
        except ConfigError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
        return chaos_main(argv[1:], env)
    if argv and argv[0] == "dial":
        return dial(argv[1:], os.environ)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv and argv[0].startswith("--workers"):
        import argparse

        parser = argparse.ArgumentParser(prog="run.py", description="Serve (see python run.py --help).")
        # A string: Settings checks it as it checks WORKERS, and names WORKERS in its error.
        parser.add_argument("--workers", required=True, metavar="N", help="worker processes (as WORKERS)")
        return serve(os.environ, workers=parser.parse_args(argv).workers)
    if argv:
        print(f"unknown command {argv[0]!r}; try --help", file=sys.stderr)
        return 2
    return serve(os.environ)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
