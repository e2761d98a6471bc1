"""An estimate of what a call cost, from configurable per-minute rates.

It is an estimate for dashboards, not an invoice: rates change, and carriers, regions
and VAPI plans differ. The rounding follows how each side bills:

- Twilio bills a voice call per *started* minute (a 61 s call is billed as 2 minutes),
  on the whole call, from answer to hang-up.
- VAPI prorates its per-minute price to the second, and only for the time an assistant
  session was open, which can be shorter than the call (a call that gave up on VAPI
  still pays Twilio for the whole call).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["CostRates", "estimate_cost"]

DEFAULT_TWILIO_PER_MIN = 0.0085  # US inbound voice, USD
DEFAULT_VAPI_PER_MIN = 0.03  # VAPI platform fee, USD; provider costs come on top


@dataclass(frozen=True, slots=True)
class CostRates:
    """USD per minute for each side of the bridge (`COST_TWILIO_PER_MIN`, `COST_VAPI_PER_MIN`)."""

    twilio_per_min: float = DEFAULT_TWILIO_PER_MIN
    vapi_per_min: float = DEFAULT_VAPI_PER_MIN

    def __post_init__(self) -> None:
        for name in ("twilio_per_min", "vapi_per_min"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}={value!r} is not valid: expected a finite number >= 0")


def estimate_cost(duration_s: float, vapi_seconds: float, rates: CostRates) -> float:
    """Estimated USD for a call of `duration_s` that held a VAPI session for `vapi_seconds`.

    Negative inputs count as zero. The result is rounded to 6 decimals (a millionth of a
    dollar), which keeps float noise out of the stored value and the JSON.
    """
    # Durations come from wall-clock subtraction: 120 s can arrive as 120.00000000001.
    # Round to the millisecond first so float noise never bills an extra minute.
    call_s = max(0.0, round(duration_s, 3))
    vapi_s = max(0.0, round(vapi_seconds, 3))
    twilio_minutes = math.ceil(call_s / 60.0)
    cost = twilio_minutes * rates.twilio_per_min + (vapi_s / 60.0) * rates.vapi_per_min
    return round(cost, 6)
