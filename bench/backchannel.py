"""What a barge-in costs the caller when VAPI does not take it for an interruption.

    python -m bench.backchannel [--calls 6]

Over sockets, through a real server (`python run.py`) with the simulated VAPI: the assistant
says a 5-second turn, and 1.5 s into it the caller says something short (a 400 ms
acknowledgement, a "mm-hmm"). The bridge's VAD clears Twilio within a fraction of a second
either way. Then:

- **VAPI lets it pass** (the simulator talks on and sends no `user-interrupted`, as VAPI
  does for an acknowledgement phrase or under `numWords`): how much of the turn the caller
  heard in all, and how long they waited, from the `clear`, for the assistant to go on;
- **VAPI stops** (the simulator sends `user-interrupted` and stops, as VAPI's default
  `stopSpeakingPlan` does for 0.2 s of voice): how much of the interrupted turn the caller
  heard after the `clear` (it must be none).

Each with the turn delivered in one burst and in real time, and for two settings of this
checkout side by side in one run: `BARGE_IN_RESUME_MS=300` (a barge-in pauses the turn; the
default) and `=0` (it drops the turn, as before). Figures are means over the calls, from the
caller's side: audio received less what a `clear` dropped unplayed.
"""

from __future__ import annotations

if __name__ == "__main__":  # patch before anything imports sockets
    from gevent import monkey

    monkey.patch_all()

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gevent

from audio.signals import silence, speech_like
from bench._server import ServerProcess
from sims.caller import CallerConfig, SimulatedCaller
from sims.vapi import VapiSimConfig, VapiSimulator

__all__ = ["Outcome", "main", "run_case"]

TURN_MS = 5000
SPEAKS_AT_MS = 1500
SAYS_MS = 400
BYTES_PER_MS = 8  # 8 kHz mu-law
SIDES = (("pause (300 ms)", "300"), ("drop (0)", "0"))


@dataclass(frozen=True)
class Outcome:
    """One call, from the caller's side."""

    heard_ms: float  # of the turn, in all
    heard_after_clear_ms: float  # of the turn, after the first clear
    wait_ms: float | None  # from the clear to the next audio, None if none came


def _one_call(url: str, token: str) -> Outcome:
    caller = SimulatedCaller(CallerConfig(server_url=url, public_url=url, auth_token=token))
    try:
        status, twiml = caller.post_webhook()
        if status != 200:
            raise RuntimeError(f"webhook answered {status}: {twiml[:200]}")
        caller.connect()
        caller.start_stream()
        deadline = time.monotonic() + 5
        while not caller.received_ulaw and time.monotonic() < deadline:
            caller.send_audio(silence(20, 8000))
        if not caller.received_ulaw:
            raise RuntimeError("no greeting")
        caller.send_audio(silence(SPEAKS_AT_MS, 8000))
        caller.send_audio(speech_like(SAYS_MS, 8000, dbfs=-20.0))
        caller.send_audio(silence(TURN_MS, 8000))
        if not caller.clears:
            raise RuntimeError("no barge-in")
        cleared_at = caller.clears[0]
        after = [(at, size) for at, size in caller.media_events if at > cleared_at]
        heard = (len(caller.received_ulaw) - caller.playback.cleared_bytes) / BYTES_PER_MS
        return Outcome(
            heard_ms=heard,
            heard_after_clear_ms=sum(size for _, size in after) / BYTES_PER_MS,
            wait_ms=(after[0][0] - cleared_at) * 1000 if after else None,
        )
    finally:
        caller.close()


def run_case(resume_ms: str, sim_config: VapiSimConfig, calls: int, workdir: Path) -> list[Outcome]:
    """`calls` calls at once against a server with this BARGE_IN_RESUME_MS and a simulator of this config."""
    sim = VapiSimulator(sim_config)
    sim.start()
    server = ServerProcess(
        workdir=workdir, chaos_rate=0.0, seed=1,
        extra_env={"VAPI_API_KEY": sim_config.api_key or "", "VAPI_BASE_URL": sim.base_url,
                   "BARGE_IN_RESUME_MS": resume_ms, "VAD_ENGINE": "energy", "LOG_LEVEL": "WARNING"},
    )
    try:
        server.start()
        jobs = [gevent.spawn(_one_call, server.url, server.auth_token) for _ in range(calls)]
        gevent.joinall(jobs, timeout=60, raise_error=True)
        outcomes = [job.value for job in jobs if job.value is not None]
        if len(outcomes) < calls:
            raise RuntimeError(f"{calls - len(outcomes)} of {calls} calls did not finish within 60 s")
        return outcomes
    finally:
        server.stop()
        sim.stop()


def _mean(values: Sequence[float]) -> str:
    return f"{statistics.fmean(values):,.0f}" if values else "–"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backchannel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=6, help="calls per case, at once (default %(default)s)")
    args = parser.parse_args(argv)
    key = secrets.token_hex(8)
    rows: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory(prefix="backchannel-") as tmp:
        for delivery, realtime in (("burst", False), ("real time", True)):
            for vapi, interruptible in (("lets it pass", False), ("stops", True)):
                config = VapiSimConfig(api_key=key, record=False, greeting_ms=TURN_MS, reply_ms=600,
                                       interruptible=interruptible, answers=False, send_realtime=realtime)
                for label, resume_ms in SIDES:
                    workdir = Path(tmp) / f"{len(rows)}"
                    workdir.mkdir()
                    outcomes = run_case(resume_ms, config, args.calls, workdir)
                    waits = [o.wait_ms for o in outcomes if o.wait_ms is not None]
                    rows.append((delivery, vapi, label, _mean([o.heard_ms for o in outcomes]),
                                 _mean([o.heard_after_clear_ms for o in outcomes]),
                                 f"{_mean(waits)} ({len(waits)} of {len(outcomes)})"))
                    print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    print(f"A {TURN_MS} ms turn; the caller says {SAYS_MS} ms of speech {SPEAKS_AT_MS} ms into it; "
          f"{args.calls} calls per row, means.\n")
    print("| turn delivered | VAPI | barge-in | turn heard, ms | heard after the clear, ms | clear → audio again, ms |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
