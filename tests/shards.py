"""Run the whole suite as several pytest processes at once, then add up their results.

Most of the suite's wall time is waiting, not computing: calls paced in real time,
deadlines that must pass, real servers starting. So a few pytest processes side by side
on a two-core machine finish in a fraction of the time of one. pytest-xdist cannot be
used: its workers talk over execnet threads, which gevent's monkey-patching (needed by
every test, tests/conftest.py) breaks. pytest-split instead gives each process a group
of tests balanced by the durations recorded in tests/test_durations.json (refresh it
with `python -m tests.shards --store`, a whole sequential run; a test it does not list
counts as the average). tests/test_standalone.py is left out of it: its test ids are the
very outside paths that test forbids in tracked files, and its tests take milliseconds.

`python -m tests.shards` runs TEST_SHARDS groups (default 3) and prints each group's
output as it finishes, then one closing line for the whole suite; the exit status is
the worst of the groups'.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
_DURATIONS = _ROOT / "tests" / "test_durations.json"
_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")
# pytest's exit status when no test ran: a group may be empty, the suite may not.
_NO_TESTS = 5
_UNRECORDED = "tests/test_standalone.py::"


def _group_command(shards: int, group: int) -> list[str]:
    return [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "--splits", str(shards), "--group", str(group),
        "--splitting-algorithm", "least_duration",
        "--durations-path", str(_DURATIONS),
    ]


def _counts(output: str) -> dict[str, int]:
    """The counts on pytest's closing line ("3 passed, 1 skipped in 2.0s")."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    counts: dict[str, int] = {}
    for number, kind in _COUNT.findall(lines[-1] if lines else ""):
        counts[kind.rstrip("s") if kind.startswith("error") else kind] = int(number)
    return counts


def store() -> int:
    """One sequential run that records every test's duration."""
    with tempfile.TemporaryDirectory(prefix="test-durations-") as tmp:
        path = Path(tmp) / "durations.json"
        status = subprocess.call(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--store-durations",
             "--durations-path", str(path)],
            cwd=_ROOT,
        )
        durations = json.loads(path.read_text())
    kept = {test: round(seconds, 3) for test, seconds in sorted(durations.items()) if not test.startswith(_UNRECORDED)}
    _DURATIONS.write_text(json.dumps(kept, indent=0) + "\n")
    print(f"{len(kept)} of {len(durations)} tests recorded in {_DURATIONS.relative_to(_ROOT)}")
    return status


def main() -> int:
    if sys.argv[1:] == ["--store"]:
        return store()
    shards = max(1, int(os.environ.get("TEST_SHARDS", "3")))
    started = time.monotonic()
    totals: dict[str, int] = {}
    statuses: list[int] = []
    with tempfile.TemporaryDirectory(prefix="test-shards-") as tmp:
        running: list[tuple[int, subprocess.Popen[bytes], Path]] = []
        for group in range(1, shards + 1):
            log = Path(tmp) / f"group-{group}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    _group_command(shards, group), cwd=_ROOT, stdout=out, stderr=subprocess.STDOUT
                )
            running.append((group, process, log))
        while running:
            for entry in list(running):
                group, process, log = entry
                if process.poll() is None:
                    continue
                running.remove(entry)
                output = log.read_text(errors="replace")
                print(f"===== group {group} of {shards} (exit {process.returncode}) =====", flush=True)
                print(output, end="" if output.endswith("\n") else "\n", flush=True)
                statuses.append(process.returncode)
                for kind, number in _counts(output).items():
                    totals[kind] = totals.get(kind, 0) + number
            time.sleep(0.2)
    ran = totals.get("passed", 0) + totals.get("failed", 0) + totals.get("error", 0)
    print(f"===== the whole suite: {shards} groups in {time.monotonic() - started:.1f}s =====")
    # Alone on the last line, as CI reads it.
    failed = totals.get("failed", 0) + totals.get("error", 0)
    print(f"{totals.get('passed', 0)} passed, {failed} failed, {totals.get('skipped', 0)} skipped", flush=True)
    failures = [status for status in statuses if status not in (0, _NO_TESTS)]
    if failures:
        return failures[0]
    return 0 if ran else _NO_TESTS


if __name__ == "__main__":
    sys.exit(main())
