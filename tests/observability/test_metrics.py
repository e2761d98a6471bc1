"""Metrics across worker processes: prometheus-client's multiprocess mode, with real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from observability.metrics import Metrics, process_exited

ROOT = Path(__file__).resolve().parents[2]

# One worker's share: counts what it is told to, holds `live` calls, and waits for a line
# on stdin before it exits (so the test decides when it is alive).
_WORKER = """
import sys
from observability.metrics import Metrics, use_multiprocess_dir
use_multiprocess_dir(sys.argv[1])
metrics = Metrics(multiprocess_dir=sys.argv[1])
for _ in range(int(sys.argv[2])):
    metrics.calls.labels(outcome="completed").inc()
    metrics.latency_in.observe(0.002)
metrics.live_calls.set(int(sys.argv[3]))
print("ready", flush=True)
sys.stdin.readline()
"""


def start_worker(directory: Path, calls: int, live: int) -> subprocess.Popen[str]:
    worker = subprocess.Popen([sys.executable, "-c", _WORKER, str(directory), str(calls), str(live)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert worker.stdout is not None and worker.stdout.readline() == "ready\n"
    return worker


def finish(worker: subprocess.Popen[str]) -> None:
    worker.communicate("\n", timeout=10)


def test_any_process_reports_the_counts_of_every_worker_and_the_calls_live_in_those_alive(tmp_path):
    a = start_worker(tmp_path, calls=3, live=2)
    b = start_worker(tmp_path, calls=4, live=5)
    try:
        # What /metrics shows on any worker: this process holds none of the counts itself.
        shown = Metrics(multiprocess_dir=str(tmp_path))
        assert shown.value("bridge_calls_total", outcome="completed") == 7
        assert shown.value("bridge_latency_inbound_seconds_count") == 7
        assert shown.value("bridge_live_calls") == 7
        finish(a)
        process_exited(a.pid, str(tmp_path))  # what the master does when a worker exits
        assert shown.value("bridge_live_calls") == 5  # only the calls of workers alive now
        assert shown.value("bridge_calls_total", outcome="completed") == 7  # a dead worker's calls still count
    finally:
        for worker in (a, b):
            if worker.poll() is None:
                finish(worker)


def test_one_process_alone_keeps_a_registry_per_metrics_object():
    # Single-process mode (and the test suite, with two servers in one process) is untouched.
    first, second = Metrics(), Metrics()
    first.calls.labels(outcome="completed").inc()
    assert first.value("bridge_calls_total", outcome="completed") == 1
    assert second.value("bridge_calls_total", outcome="completed") == 0


def test_every_gauge_says_how_the_workers_values_combine():
    # A gauge left at prometheus-client's default mode ("all") shows one series per worker
    # pid, dead ones included, instead of one figure for the machine.
    from prometheus_client import Gauge

    gauges = [value for value in vars(Metrics()).values() if isinstance(value, Gauge)]
    assert gauges
    assert all(gauge._multiprocess_mode != "all" for gauge in gauges)


@dataclass
class Counts:
    """What the stores count (records.RecordStore, records.recordings.RecordingWriter), as plain data."""

    written: int = 0
    dropped: int = 0
    deleted: int = 0
    write_errors: int = 0
    healthy: bool = True
    chunks_written: int = 0
    chunks_dropped: int = 0
    files_deleted: int = 0


def test_store_counters_catch_up_by_what_grew_and_are_never_counted_twice():
    metrics = Metrics()
    records, recordings = Counts(), Counts()
    metrics.watch_stores(records, recordings)
    records.written, records.deleted, recordings.chunks_written, recordings.files_deleted = 5, 2, 7, 1
    metrics.catch_up()
    metrics.catch_up()  # nothing new: nothing added
    assert metrics.value("bridge_call_records_total", result="written") == 5
    assert metrics.value("bridge_call_records_total", result="deleted") == 2
    assert metrics.value("bridge_recording_chunks_total", result="written") == 7
    assert metrics.value("bridge_recordings_deleted_total") == 1
    records.written, records.write_errors, records.dropped, records.healthy = 6, 3, 1, False
    recordings.write_errors, recordings.chunks_dropped = 2, 4
    metrics.catch_up()
    assert metrics.value("bridge_call_records_total", result="written") == 6
    assert metrics.value("bridge_call_records_total", result="dropped") == 1
    assert metrics.value("bridge_call_record_write_errors_total") == 3
    assert metrics.value("bridge_call_records_healthy") == 0
    assert metrics.value("bridge_recording_write_errors_total") == 2
    assert metrics.value("bridge_recording_chunks_total", result="dropped") == 4

