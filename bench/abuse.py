"""Security abuse bench: attacks on a real server process, with one legit call beside each.

    python -m bench.abuse [--case NAME ...] [--seconds S] [--workdir DIR] [--json PATH]
                          [--server-root DIR]

Each case starts a fresh `python run.py` on a loopback port (127.0.0.1 only), pointed at
a VAPI simulator running in this process (so every VAPI call the server creates is
counted), places one legit simulated call, then runs the case's attacks at once for
`--seconds` (default 10; the slowloris case observes for at least 30 s) and reports:

* the legit call: alive at the end, and its worst audio gap each way over the window
  plus 1.5 s of tail. Inbound: between the caller's frames reaching the VAPI
  simulator. Outbound: between assistant media frames reaching the caller; the
  simulated assistant speaks without pause for the whole case and the caller sends
  silence (no barge-in), so every outbound gap is a stall. The same figures over the
  1.5 s before the attack are printed as the baseline;
* the server: RSS growth (VmRSS sampled every 100 ms, peak minus the sample before the
  attack), CPU % of one core (utime + stime over the window and tail), the lines its
  log got (per event), VAPI calls created during the attack (new calls vs. re-links of
  a call that already greeted), /healthz latency from a fresh connection every second;
* the bench itself: its CPU and how late its event loop ran (over 100 ms, its own gap
  figures are suspect and the row says so);
* what each attack achieved: HTTP statuses, 101s, audio an attacker received, bytes a
  server took, connections held, seconds until the server closed a socket, ...

A case PASSes when every attack finding is as wanted (no 101 without a valid signature
on the media route, no assistant audio to an attacker, signed-but-unadmitted sockets
closed, bodies refused early, ...), no new VAPI call was created, the legit call is
alive with no gap over 250 ms either way, RSS grew by at most 50 MiB, and no log event
was written more than 25 times. Exit status: 0 all PASS, 1 any FAIL, 2 bad arguments.

Cases (number or name): 0 baseline, 1 path-forms, 2 unadmitted, 3 floods,
4 http-bodies, 5 slowloris, 6 replay, 7 amplification, 8 protocol, 9 vapi-side.
Default: all of them, the baseline first, one at a time. `--server-root` runs the server from
another checkout (e.g. `git archive HEAD | tar -x -C DIR`), to compare two trees.
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m bench.abuse`: patch before anything imports sockets.
    from gevent import monkey

    monkey.patch_all()

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import gevent.monkey

from bench._abuse_attacks import CASES, case_by_name
from bench._abuse_case import Case, run_case
from bench._abuse_measure import CaseResult, format_case, format_summary

__all__ = ["main", "run_cases"]


def run_cases(
    cases: Sequence[Case], *, seconds: float, workdir: Path, server_root: Path | None = None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    out: Callable[[str], None] = print,
) -> list[CaseResult]:
    """Run `cases` one after another, printing each case's block as it finishes."""
    if not gevent.monkey.is_module_patched("socket"):
        raise RuntimeError("gevent.monkey.patch_all() must run first (python -m bench.abuse does it)")
    results = []
    for case in cases:
        started = time.monotonic()
        result = run_case(case, seconds=seconds, workdir=workdir / f"{case.key}-{case.name}",
                          log=log, server_root=server_root)
        log(f"abuse: case {case.key} {case.name} took {time.monotonic() - started:.0f} s")
        out(format_case(result) + "\n")
        results.append(result)
    return results


def _parse_cases(values: Sequence[str]) -> list[Case]:
    if not values:
        return list(CASES)
    chosen: list[Case] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name == "all":
                chosen += [case for case in CASES if case not in chosen]
                continue
            case = case_by_name(name)
            if case not in chosen:
                chosen.append(case)
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.abuse", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Cases: " + ", ".join(f"{c.key} {c.name}" for c in CASES) + ", all")
    parser.add_argument("--case", action="append", default=[], metavar="NAME",
                        help="a case by number or name (repeat, or comma-separate); default: all")
    parser.add_argument("--seconds", type=float, default=10.0, help="attack window per case (default %(default)s)")
    parser.add_argument("--workdir", type=Path, help="server logs go here (default: a new /tmp/abuse-*)")
    parser.add_argument("--json", type=Path, help="also write every result as JSON to this file")
    parser.add_argument("--server-root", type=Path, help="run `python run.py` from this directory instead")
    args = parser.parse_args(argv)
    try:
        cases = _parse_cases(args.case)
    except KeyError as exc:
        parser.error(f"unknown case {exc.args[0]!r}; cases: " + ", ".join(f"{c.key} {c.name}" for c in CASES))
    if not 1.0 <= args.seconds <= 600.0:
        parser.error("--seconds must be between 1 and 600")
    if args.server_root is not None and not (args.server_root / "run.py").is_file():
        parser.error(f"--server-root {args.server_root} has no run.py")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="abuse-"))
    print(f"abuse bench: {len(cases)} cases, {args.seconds:g} s each, logs in {workdir}", file=sys.stderr)
    results = run_cases(cases, seconds=args.seconds, workdir=workdir, server_root=args.server_root)
    print(format_summary(results))
    if args.json is not None:
        payload = [dict(dataclasses.asdict(r), ok=r.ok, rss_growth_mib=r.rss_growth_mib) for r in results]
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    failed = [r for r in results if not r.ok]
    print(f"\n{len(results) - len(failed)} of {len(results)} cases PASS" +
          (f"; FAIL: {', '.join(r.name for r in failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
