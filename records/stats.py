"""Summary statistics for the numbers a call record keeps (turn latency percentiles)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["percentile"]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The `q`-th percentile (0 to 100) of `values`, or None when there are none.

    Linear interpolation between the two nearest ranks, the same as numpy's default and
    `statistics.quantiles(method="inclusive")`. Chosen over nearest-rank because calls have
    few turns: with four latencies nearest-rank's p50 is simply the second one, while this
    gives the usual median. p0 is the minimum and p100 the maximum.

    Raises:
        ValueError: `q` is outside 0..100 or not a number (a programming error).
    """
    if not (isinstance(q, int | float) and 0.0 <= q <= 100.0):
        raise ValueError(f"q={q!r} is not valid: expected a number from 0 to 100")
    if not values:
        return None
    ordered = sorted(float(v) for v in values)
    rank = (len(ordered) - 1) * (q / 100.0)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    fraction = rank - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction
