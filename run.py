"""Entry point.

    python run.py           serve (embedded VAPI simulator when VAPI_API_KEY is unset)
    python run.py call ...  a simulated caller that does what Twilio does (see --help)
    python run.py chaos ... inject faults into live calls through the admin API (see --help)
    python run.py soak ...  the chaos soak benchmark (same as python -m bench.soak)
"""

from gevent import monkey

monkey.patch_all()  # before anything else imports sockets, threads or ssl

import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.util  # noqa: E402

from settings import ConfigError, Settings  # noqa: E402


def serve(env: dict[str, str]) -> int:
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2

    from observability.logging import configure_logging
    from service import BridgeService

    log = configure_logging(fmt=settings.log_format, level=settings.log_level)
    if settings.twilio.auth_token_generated:
        # Printed, not logged: it is a secret, and logs are shipped elsewhere.
        print(
            f"TWILIO_AUTH_TOKEN is unset; development token for this run: {settings.twilio.auth_token}",
            file=sys.stderr,
            flush=True,
        )
    service = BridgeService(settings, log=log)
    try:
        service.start()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
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


def main(argv: list[str]) -> int:
    if argv and argv[0] == "call":
        from sims.caller import main as caller_main

        return caller_main(argv[1:])
    if argv and argv[0] == "soak":
        from bench.soak import main as soak_main

        return soak_main(argv[1:])
    if argv and argv[0] == "chaos":
        from chaos.cli import main as chaos_main

        return chaos_main(argv[1:], dict(os.environ))
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv:
        print(f"unknown command {argv[0]!r}; try --help", file=sys.stderr)
        return 2
    return serve(dict(os.environ))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
