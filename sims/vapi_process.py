"""The VAPI simulator as a process of its own: `python -m sims.vapi_process`.

Processes that must share one simulator (the workers of `run.py --workers N`, or several
bridge nodes) point VAPI_BASE_URL at it: a VAPI call created by one process is then
joined by whichever process takes the call's stream. It listens on --host/--port (a free
loopback port by default), accepts only --api-key's key when one is given, prints one
line `listening <base_url>` on stdout once bound, and serves until SIGTERM. With
--exit-with-parent it also exits when the process that started it is gone, and ignores
SIGINT: a Ctrl-C reaches every process of the terminal's group, and the simulator must
outlive the bridge's drain (its parent stops it last, with SIGTERM).
"""

from __future__ import annotations

if __name__ == "__main__":  # patch before anything imports sockets
    from gevent import monkey

    monkey.patch_all()

import argparse
import os
import signal
import sys

import gevent
import gevent.event

from sims.vapi import VapiSimConfig, VapiSimulator

__all__ = ["READY_PREFIX", "main"]

READY_PREFIX = "listening "
# How often an orphaned simulator notices that its parent is gone.
_PARENT_CHECK_S = 1.0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m sims.vapi_process", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 (the default) picks a free port")
    parser.add_argument("--api-key", help="the only key POST /call accepts (default: any)")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="exit when the parent process is gone; ignore SIGINT")
    args = parser.parse_args(argv)
    parent = os.getppid()
    simulator = VapiSimulator(
        VapiSimConfig(api_key=args.api_key, record=False), host=args.host, port=args.port
    )
    simulator.start()
    print(f"{READY_PREFIX}{simulator.base_url}", flush=True)
    stopping = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stopping.set)
    if args.exit_with_parent:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

        def watch_parent() -> None:
            while os.getppid() == parent:
                gevent.sleep(_PARENT_CHECK_S)
            stopping.set()

        gevent.spawn(watch_parent)
    else:
        gevent.signal_handler(signal.SIGINT, stopping.set)
    stopping.wait()
    simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
