"""The server's Prometheus instruments, in one registry owned by the process.

Created once in run.py (or per test) and passed down; no module-level instruments, so
two servers in one test process do not share counts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["Metrics"]


class Metrics:
    """Counters a call's actors update. Labels are short, stable, low-cardinality strings."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.live_calls = Gauge("bridge_live_calls", "Calls with a live actor tree", registry=r)
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
        self.vapi_links = Counter("bridge_vapi_links", "VAPI links, by event", ["event"], registry=r)
        self.vapi_events = Counter("bridge_vapi_events", "VAPI JSON events, by type", ["type"], registry=r)
        self.dtmf = Counter("bridge_dtmf_digits", "DTMF digits forwarded to VAPI", registry=r)
        self.chaos = Counter("bridge_chaos_faults", "Faults injected on purpose", ["actor", "fault"], registry=r)
        self.marks = Counter(
            "bridge_marks", "Twilio mark echoes: played, or cancelled by a clear", ["result"], registry=r
        )

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample, for tests and the admin API (0 when never set)."""
        got = self.registry.get_sample_value(name, labels or None)
        return got or 0.0
