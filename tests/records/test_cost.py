import pytest

from records.cost import CostRates, estimate_cost

RATES = CostRates()


def test_default_rates_are_the_documented_ones():
    assert (RATES.twilio_per_min, RATES.vapi_per_min) == (0.0085, 0.03)


@pytest.mark.parametrize(
    "duration_s, vapi_seconds, expected",
    [
        (0.0, 0.0, 0.0),  # never connected: nothing billed
        (1.0, 0.0, 0.0085),  # one started Twilio minute
        (60.0, 60.0, 0.0385),  # exactly a minute each
        (61.0, 61.0, 0.0475),  # Twilio: 2 minutes = 0.017; VAPI: 61 s = 0.0305
        (90.0, 85.0, 0.0595),  # 2 Twilio minutes + 85/60 VAPI minutes = 0.017 + 0.0425
        (600.0, 0.0, 0.085),  # VAPI never reached: only Twilio
    ],
)
def test_cost_examples_with_the_default_rates(duration_s, vapi_seconds, expected):
    assert estimate_cost(duration_s, vapi_seconds, RATES) == expected


def test_twilio_bills_per_started_minute_and_vapi_per_second():
    twilio_only = CostRates(vapi_per_min=0.0)
    vapi_only = CostRates(twilio_per_min=0.0)
    assert estimate_cost(60.5, 0.0, twilio_only) == estimate_cost(119.0, 0.0, twilio_only) == 0.017
    assert estimate_cost(0.0, 30.0, vapi_only) == 0.015


def test_float_noise_in_a_duration_does_not_bill_an_extra_minute():
    assert estimate_cost(120.00000000001, 0.0, RATES) == 0.017


def test_negative_durations_count_as_zero():
    assert estimate_cost(-5.0, -1.0, RATES) == 0.0


def test_the_estimate_is_rounded_to_six_decimals():
    cost = estimate_cost(7.0, 7.0, CostRates(twilio_per_min=0.0, vapi_per_min=0.01))
    assert cost == 0.001167  # 0.0011666…


@pytest.mark.parametrize("field", ["twilio_per_min", "vapi_per_min"])
@pytest.mark.parametrize("value", [-0.01, float("nan"), float("inf")])
def test_rates_that_are_negative_or_not_finite_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        CostRates(**{field: value})
