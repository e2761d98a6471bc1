import numpy as np
import pytest

from records.stats import percentile


def test_no_values_have_no_percentile():
    assert percentile([], 50) is None
    assert percentile((), 95) is None


@pytest.mark.parametrize("q", [0, 50, 95, 100])
def test_one_value_is_every_percentile(q):
    assert percentile([420.0], q) == 420.0


def test_the_median_of_an_even_count_is_the_mean_of_the_middle_two():
    assert percentile([400.0, 100.0, 300.0, 200.0], 50) == 250.0


def test_p0_is_the_minimum_and_p100_the_maximum():
    values = [5.0, 1.0, 9.0, 3.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 9.0


@pytest.mark.parametrize("q", [5, 25, 50, 90, 95, 99])
def test_many_values_match_numpys_linear_percentile(q):
    values = np.random.default_rng(3).gamma(2.0, 300.0, size=97).tolist()
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_the_input_is_not_reordered():
    values = [3.0, 1.0, 2.0]
    percentile(values, 50)
    assert values == [3.0, 1.0, 2.0]


@pytest.mark.parametrize("q", [-1, 100.5, float("nan")])
def test_a_percentile_outside_0_to_100_is_refused(q):
    with pytest.raises(ValueError, match="q="):
        percentile([1.0], q)
