import random

import pytest

from supervision.restarts import RestartWindow, backoff_delay_s
from supervision.spec import Backoff, ChildSpec, InvalidSpec, Restart, SupervisorFlags


def test_window_allows_intensity_restarts_within_the_period_and_refuses_the_next():
    window = RestartWindow(intensity=3, period_s=10.0)
    assert [window.add(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert window.add(3.0) is False


def test_window_forgets_restarts_older_than_the_period():
    window = RestartWindow(intensity=2, period_s=5.0)
    assert window.add(0.0) and window.add(1.0)
    assert window.add(6.5) is True  # 0.0 and 1.0 are outside [1.5, 6.5]
    assert window.count == 1


def test_backoff_doubles_from_min_up_to_max_without_jitter():
    backoff = Backoff(min_s=0.25, max_s=2.0, jitter=0.0)
    rng = random.Random(1)
    assert [backoff_delay_s(backoff, n, rng) for n in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


def test_jitter_never_shrinks_a_delay_below_half_its_nominal_length():
    backoff = Backoff(min_s=1.0, max_s=1.0, jitter=1.0)
    rng = random.Random(7)
    delays = [backoff_delay_s(backoff, 0, rng) for _ in range(2000)]
    assert min(delays) >= 0.5
    assert max(delays) <= 1.5
    assert max(delays) - min(delays) > 0.8  # it does spread


def test_huge_attempt_counts_do_not_overflow():
    assert backoff_delay_s(Backoff(min_s=0.1, max_s=3.0, jitter=0.0), 10_000, random.Random()) == 3.0


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda: SupervisorFlags(intensity=-1), "intensity"),
        (lambda: SupervisorFlags(period_s=0), "period_s"),
        (lambda: Backoff(min_s=2.0, max_s=1.0), "backoff.max_s"),
        (lambda: Backoff(jitter=1.5), "backoff.jitter"),
        (lambda: ChildSpec(id="", start=lambda h: None), "id"),
        (lambda: ChildSpec(id="x"), "start"),
        (lambda: ChildSpec(id="x", start=lambda h: None, significant=True), "significant"),
        (lambda: ChildSpec(id="x", start=lambda h: None, shutdown_s=-1), "shutdown_s"),
    ],
)
def test_invalid_specs_are_refused_naming_the_field(build, field):
    with pytest.raises(InvalidSpec) as info:
        build()
    assert info.value.field_name == field


def test_a_transient_significant_child_is_a_valid_spec():
    spec = ChildSpec(id="x", start=lambda h: None, restart=Restart.TRANSIENT, significant=True)
    assert spec.significant
