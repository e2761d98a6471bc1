"""The load bench end to end, briefly: a real server process, three paced calls both ways.

`python -m bench.load` runs as a process of its own, as it is meant to: its engine needs
real threads and select.epoll, which this test process's gevent patching takes away.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]


# Server start (~2 s), a 0.5 s warm-up, set-up, 0.5 s settle, a 2 s window, drain and
# shutdown: about 8 s. The bound leaves room for a loaded machine.
@pytest.mark.timeout(90)
def test_three_paced_calls_are_measured_both_ways_with_nothing_dropped_or_failed(tmp_path):
    out = tmp_path / "load.json"
    done = subprocess.run(  # our own interpreter and module, fixed arguments
        [sys.executable, "-m", "bench.load", "--calls", "3", "--seconds", "2", "--duplex", "--no-pin",
         "--warmup", "0.5", "--settle", "0.5", "--json", str(out)],
        cwd=_ROOT, capture_output=True, text=True, timeout=80, check=False,
    )
    table = done.stdout + done.stderr
    assert done.returncode == 0, table
    [result] = json.loads(out.read_text())

    assert result["connected"] == 3 and result["failed"] == 0, table
    # 3 calls x 50 frames a second, both ways (duplex: the assistant talks all the time),
    # from the first set-up to the end of the window: at least the window's 300 a way.
    assert result["frames_up"] >= 300 and result["frames_down"] >= 300, table
    assert result["dropped_up"] == 0 and result["dropped_down"] == 0, table
    for name in ("up_p50_ms", "up_p99_ms", "down_p50_ms", "down_p99_ms"):
        assert math.isfinite(result[name]) and 0.0 < result[name] < 1000.0, table
    assert result["up_p50_ms"] <= result["up_p99_ms"] <= result["up_max_ms"], table
    assert result["clears"] == 0, table  # the caller was quiet: no barge-in cut the measured audio
    assert result["cpu_pct"] > 0.0 and result["rss_mb"] > 0.0, table
    assert result["load_cpu_pct"] > 0.0, table
    # The one server process holds every call's media socket and VAPI leg.
    assert result["calls_per_worker"] == [3] and result["vapi_legs_per_worker"] == [3], table
    assert "| this checkout | 3 | 0 |" in table
