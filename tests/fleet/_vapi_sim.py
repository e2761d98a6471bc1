"""One VAPI simulator process for every node of a test fleet: `python -m tests.fleet._vapi_sim KEY`.

Short turns and an assistant that ends the call after its first answer, so a test call
is over in about a second and its after-stream must hang up. Prints `listening <url>`.
"""

from __future__ import annotations

if __name__ == "__main__":  # patch before anything imports sockets
    from gevent import monkey

    monkey.patch_all()

import signal
import sys

import gevent
import gevent.event

from sims.vapi import VapiSimConfig, VapiSimulator


def main(argv: list[str]) -> int:
    config = VapiSimConfig(
        api_key=argv[0], greeting_ms=200, reply_delay_ms=100, reply_ms=300, end_of_utterance_ms=300,
        end_after_turns=1, record=False,
    )
    simulator = VapiSimulator(config, host="127.0.0.1", port=0)
    simulator.start()
    print(f"listening {simulator.base_url}", flush=True)
    stopping = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stopping.set)
    stopping.wait()
    simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
