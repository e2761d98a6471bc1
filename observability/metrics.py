"""The server's Prometheus instruments, in one registry owned by the process.

Created once in run.py (or per test) and passed down; no module-level instruments, so
two servers in one test process do not share counts.

With several worker processes (WORKERS > 1) every worker writes its samples to files in
one directory that the master makes (prometheus-client's multiprocess mode), and /metrics
on any worker reads them all: it reports the whole machine. Counters and histograms add
up over every worker that ever ran since the master started, dead ones included; the live
calls gauge adds up the workers alive now (`livesum`: the master drops a dead worker's
share, see `process_exited`).
"""

from __future__ import annotations

import os
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values

__all__ = ["MULTIPROC_ENV", "Metrics", "RecordCounts", "RecordingCounts", "process_exited", "use_multiprocess_dir"]

# prometheus-client's own variable: where multiprocess mode keeps its files.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The bridge's own work on a frame is tens of microseconds; its queues can add
# milliseconds. Buckets from 50 us up, so a regression shows before it reaches callers.
_BRIDGE_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
# Outbound includes the pacing queue (audio waits while Twilio holds the lead).
_OUTBOUND_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Voice-to-voice turns live in the hundreds of milliseconds; callers notice past ~800 ms.
_TURN_BUCKETS_S = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
# A loop keeping up is late by well under a millisecond; one falling behind, by tens of ms and up.
_LAG_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_RECOVERY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


def use_multiprocess_dir(path: str) -> None:
    """Make every instrument created from now on, in this process and its forks, write to `path`.

    prometheus-client picks how values are stored when it is first imported, from the
    environment; the master sets the variable for its workers and picks again here, so
    the order of imports does not matter. Call it before any Metrics exists.
    """
    os.environ[MULTIPROC_ENV] = path
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]  # untyped in the library


def process_exited(pid: int, path: str) -> None:
    """Forget the live gauges of a worker that has exited (its counters still count)."""
    multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]  # untyped in the library


class _Off:
    """Stands in for every instrument when metrics are off (for measuring their cost)."""

    def labels(self, *args: object, **kwargs: object) -> _Off:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass


class RecordCounts(Protocol):
    """What the call-records store counts (records.RecordStore), in plain attributes."""

    written: int
    dropped: int
    deleted: int
    write_errors: int
    healthy: bool


class RecordingCounts(Protocol):
    """What the recordings writer counts (records.recordings.RecordingWriter), in plain attributes."""

    chunks_written: int
    chunks_dropped: int
    write_errors: int
    files_deleted: int


class Metrics:
    """Counters a call's actors update. Labels are short, stable, low-cardinality strings."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, enabled: bool = True, multiprocess_dir: str | None = None
    ) -> None:
        """`multiprocess_dir`: this process is one of several workers sharing that directory
        (see `use_multiprocess_dir`); `registry` (what /metrics shows) then reads all of them.
        """
        self.registry = registry or CollectorRegistry()
        self.enabled = enabled
        r = self.registry
        if multiprocess_dir is not None:
            # The instruments live in a registry of their own: their values are in the
            # shared files, and /metrics collects those files, this process's among them.
            r = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
        # livesum: with several workers, the calls live on the machine right now.
        self.live_calls = Gauge(
            "bridge_live_calls", "Calls with a live actor tree", registry=r, multiprocess_mode="livesum"
        )
        self.calls = Counter("bridge_calls", "Calls ended, by outcome", ["outcome"], registry=r)
        self.malformed = Counter(
            "bridge_malformed_inputs", "Frames or messages refused, by source and kind", ["source", "kind"], registry=r
        )
        self.restarts = Counter(
            "bridge_actor_restarts", "Actor exits that led to a restart, by actor and reason", ["actor", "reason"],
            registry=r,
        )
        self.dropped = Counter("bridge_frames_dropped", "Audio frames dropped, by reason", ["reason"], registry=r)
        self.filled = Counter("bridge_gap_frames_filled", "Silent frames inserted for Twilio gaps", registry=r)
        self.barge_ins = Counter("bridge_barge_ins", "Caller speech that cut the assistant off", registry=r)
        self.barge_ins_resumed = Counter(
            "bridge_barge_ins_resumed",
            "Barge-ins after which the assistant's turn went on: VAPI did not take them for an interruption",
            registry=r,
        )
        self.vapi_links = Counter("bridge_vapi_links", "VAPI links, by event", ["event"], registry=r)
        self.vapi_events = Counter("bridge_vapi_events", "VAPI JSON events, by type", ["type"], registry=r)
        self.dtmf = Counter("bridge_dtmf_digits", "DTMF digits forwarded to VAPI", registry=r)
        self.chaos = Counter("bridge_chaos_faults", "Faults injected on purpose", ["actor", "fault"], registry=r)
        self.directory_errors = Counter(
            "bridge_directory_errors", "Call directory operations that failed (store down or locked), by operation",
            ["operation"], registry=r,
        )
        self.passed_on = Counter(
            "bridge_passed_on", "New calls' webhooks and media sockets answered 503 for the proxy to pass on to "
            "another node (too busy), by request and reason", ["request", "reason"], registry=r,
        )
        self.handoffs = Counter(
            "bridge_handoffs", "Live calls let go to another node (calls/handoff.py), by reason", ["reason"], registry=r
        )
        self.resumes = Counter("bridge_resumes", "Live calls taken over from another stream, by reason", ["reason"],
                               registry=r)
        self.frames = Counter("bridge_frames", "Audio frames, by direction", ["direction"], registry=r)
        self.frames_in = self.frames.labels(direction="inbound")  # resolved once: hot path
        self.frames_out = self.frames.labels(direction="outbound")
        self.latency_in = Histogram(
            "bridge_latency_inbound_seconds", "Twilio frame received -> its audio sent to VAPI",
            buckets=_BRIDGE_BUCKETS_S, registry=r,
        )
        self.latency_out = Histogram(
            "bridge_latency_outbound_seconds", "VAPI audio received -> sent to Twilio (pacing queue included)",
            buckets=_OUTBOUND_BUCKETS_S, registry=r,
        )
        self.turn_sent = Histogram(
            "bridge_turn_latency_sent_seconds", "End of caller speech -> first assistant audio sent to Twilio",
            buckets=_TURN_BUCKETS_S, registry=r,
        )
        self.turn_heard = Histogram(
            "bridge_turn_latency_heard_seconds", "End of caller speech -> that audio's mark echoed (heard)",
            buckets=_TURN_BUCKETS_S, registry=r,
        )
        self.recovery = Histogram(
            "bridge_fault_recovery_seconds", "Actor failure -> caller audio reaching VAPI again",
            buckets=_RECOVERY_BUCKETS_S, registry=r,
        )
        self.loop_lag = Histogram(
            "bridge_event_loop_lag_seconds", "How much later than asked the event loop woke a 100 ms timer",
            buckets=_LAG_BUCKETS_S, registry=r,
        )
        # livemax: with several workers, the busiest one's.
        self.core_demand = Gauge(
            "bridge_core_demand_ratio", "Share of a core the process wanted over the last second (on it or waiting)",
            registry=r, multiprocess_mode="livemax",
        )
        # livesum: with several workers, how many are refusing new calls right now.
        self.overloaded = Gauge(
            "bridge_overloaded", "1 while the process is too busy to take new calls (OVERLOAD_CPU_PCT)",
            registry=r, multiprocess_mode="livesum",
        )
        self.marks = Counter(
            "bridge_marks", "Twilio mark echoes: played, or cancelled by a clear", ["result"], registry=r
        )
        # The stores count in plain attributes of their own; `catch_up` brings these level.
        self.call_records = Counter(
            "bridge_call_records", "Call records written, dropped (lost), or deleted by retention", ["result"],
            registry=r,
        )
        self.call_record_write_errors = Counter(
            "bridge_call_record_write_errors", "Failed tries to write a batch of call records", registry=r
        )
        # livemin: with several workers, 0 while any of them cannot write.
        self.call_records_healthy = Gauge(
            "bridge_call_records_healthy", "0 from a failed write of call records until one succeeds, else 1",
            registry=r, multiprocess_mode="livemin",
        )
        self.recording_chunks = Counter(
            "bridge_recording_chunks", "Recording chunks (a call's audio, 5 s at a time) written or dropped",
            ["result"], registry=r,
        )
        self.recording_write_errors = Counter(
            "bridge_recording_write_errors", "Failed writes of recording chunks", registry=r
        )
        self.recordings_deleted = Counter(
            "bridge_recordings_deleted", "Recording files deleted by retention", registry=r
        )
        self._stores: tuple[RecordCounts | None, RecordingCounts | None] = (None, None)
        self._seen: dict[str, int] = {}

        if not enabled:
            off = _Off()
            for name, value in list(vars(self).items()):
                if isinstance(value, (Counter, Gauge, Histogram)) or name in ("frames_in", "frames_out"):
                    setattr(self, name, off)
            self.registry = CollectorRegistry()  # nothing registered: /metrics is empty

    def watch_stores(self, records: RecordCounts | None, recordings: RecordingCounts | None) -> None:
        """Report what these stores count, from now on."""
        self._stores = (records, recordings)
        self.catch_up()  # at once: a gauge never set reads 0, which across workers says "cannot write"

    def catch_up(self) -> None:
        """Bring the store counters level with the stores' own (before a scrape, and every few seconds)."""
        if not self.enabled:
            return
        records, recordings = self._stores
        if records is not None:
            self._add("records.written", records.written, self.call_records.labels(result="written"))
            self._add("records.dropped", records.dropped, self.call_records.labels(result="dropped"))
            self._add("records.deleted", records.deleted, self.call_records.labels(result="deleted"))
            self._add("records.write_errors", records.write_errors, self.call_record_write_errors)
            self.call_records_healthy.set(1 if records.healthy else 0)
        if recordings is not None:
            self._add("recordings.written", recordings.chunks_written, self.recording_chunks.labels(result="written"))
            self._add("recordings.dropped", recordings.chunks_dropped, self.recording_chunks.labels(result="dropped"))
            self._add("recordings.write_errors", recordings.write_errors, self.recording_write_errors)
            self._add("recordings.deleted", recordings.files_deleted, self.recordings_deleted)

    def _add(self, key: str, total: int, counter: Counter) -> None:
        grown = total - self._seen.get(key, 0)
        if grown > 0:
            counter.inc(grown)
            self._seen[key] = total

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample, for tests and the admin API (0 when never set)."""
        got = self.registry.get_sample_value(name, labels or None)
        return got or 0.0
