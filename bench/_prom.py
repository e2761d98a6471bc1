"""Prometheus text read as numbers: snapshots, the change between two, histogram quantiles."""

from __future__ import annotations

import math
from collections.abc import Sequence

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Snapshot", "bucket_quantile", "counter_delta", "histogram_delta", "parse_snapshot"]

# (sample name, sorted label pairs) -> value
Snapshot = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_snapshot(text: str) -> Snapshot:
    """Every sample of a /metrics answer."""
    samples: Snapshot = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


def counter_delta(
    before: Snapshot, after: Snapshot, name: str, labels: Sequence[str]
) -> dict[tuple[str, ...], int]:
    """How much each labelled series of counter `name` (the `_total` sample) grew, keyed by `labels`."""
    grown: dict[tuple[str, ...], int] = {}
    for (sample, pairs), value in after.items():
        if sample != name:
            continue
        change = value - before.get((sample, pairs), 0.0)
        if change:
            by_name = dict(pairs)
            key = tuple(by_name.get(label, "") for label in labels)
            grown[key] = grown.get(key, 0) + round(change)
    return grown


def histogram_delta(before: Snapshot, after: Snapshot, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of histogram `name` between two snapshots, by bound."""
    buckets: list[tuple[float, float]] = []
    for (sample, pairs), value in after.items():
        if sample != f"{name}_bucket":
            continue
        bound = float(dict(pairs)["le"])
        buckets.append((bound, value - before.get((sample, pairs), 0.0)))
    return sorted(buckets)


def bucket_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> tuple[float, bool] | None:
    """The q-quantile, linearly interpolated inside its bucket (as PromQL's histogram_quantile).

    Returns (value, above): `above` is True when the quantile lies past the largest finite
    bound, and `value` is then that bound (a floor, not an estimate). None with no
    observations.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower, True
            if count == below:
                return bound, False
            return lower + (bound - lower) * (rank - below) / (count - below), False
        lower, below = bound, count
    return lower, True
