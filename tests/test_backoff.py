"""The one backoff formula every retry loop uses."""

from __future__ import annotations

import random

from agent import backoff


def test_delay_doubles_from_the_first_and_stops_at_the_cap() -> None:
    assert [backoff.delay(n, first_s=0.5, cap_s=10) for n in range(7)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        10,
        10,
    ]
    assert backoff.delay(10_000, first_s=1, cap_s=300) == 300  # no overflow after weeks down
    assert backoff.delay(-3, first_s=1, cap_s=300) == 1


def test_jitter_stays_in_its_bounds_and_spreads() -> None:
    rng = random.Random(1)
    full = [backoff.full_jitter(3, first_s=1, cap_s=300, rng=rng) for _ in range(2000)]
    assert 0 <= min(full) < 0.5
    assert 7.5 < max(full) <= 8
    spread = [backoff.spread(10, 0.2, rng) for _ in range(2000)]
    assert 8 <= min(spread) < 8.5
    assert 11.5 < max(spread) <= 12
