"""The token bucket behind the media socket's budgets and the gap filler's bound."""

import pytest

from media.budget import TokenBucket


def test_a_burst_is_allowed_then_only_the_rate():
    bucket = TokenBucket(rate=50, burst=100, now=0.0)
    assert sum(bucket.take(1, 0.0) for _ in range(150)) == 100
    assert sum(bucket.take(1, 1.0) for _ in range(150)) == 50  # one second refills 50
    assert bucket.take(1, 1.0) is False


def test_refill_never_exceeds_the_burst_and_a_refusal_spends_nothing():
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert bucket.take(5, 0.0)
    assert not bucket.take(3, 0.1)  # one token back, three asked
    assert bucket.take(1, 0.1)
    assert sum(bucket.take(1, 100.0) for _ in range(10)) == 5


def test_take_up_to_spends_what_is_there():
    bucket = TokenBucket(rate=50, burst=50, now=0.0)
    assert bucket.take_up_to(30, 0.0) == 30
    assert bucket.take_up_to(30, 0.0) == 20
    assert bucket.take_up_to(30, 0.0) == 0
    assert bucket.take_up_to(30, 0.2) == 10


def test_nonsense_rates_are_refused():
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1, now=0.0)
