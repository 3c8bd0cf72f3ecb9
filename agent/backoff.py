"""One backoff formula for every retry loop: the supervisor's restarts, the scheduler's probes of
a dead device, a bus's reopening, the uplink's resends.

``delay(n)`` doubles from ``first_s`` with each failure ``n`` (0, 1, 2…) up to ``cap_s``. Spread
it so that many gateways or devices do not retry in step: :func:`full_jitter` (anywhere from 0
to the delay, AWS's "full jitter", for the uplink: a district power cut brings hundreds of
gateways back at once) or :func:`spread` (a ± share, where the delay itself must be kept).
"""

from __future__ import annotations

import random

__all__ = ["delay", "full_jitter", "spread"]

_MAX_DOUBLINGS = 62


def delay(failures: int, *, first_s: float, cap_s: float) -> float:
    """``first_s · 2^failures``, at most ``cap_s`` (``failures`` counts from 0)."""
    return min(cap_s, first_s * 2.0 ** min(max(failures, 0), _MAX_DOUBLINGS))


def full_jitter(
    failures: int, *, first_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """Uniform between 0 and :func:`delay`."""
    return (rng or random).uniform(0, delay(failures, first_s=first_s, cap_s=cap_s))


def spread(seconds: float, share: float, rng: random.Random | None = None) -> float:
    """``seconds`` moved by up to ± ``share`` of itself."""
    return seconds * (rng or random).uniform(1 - share, 1 + share)
