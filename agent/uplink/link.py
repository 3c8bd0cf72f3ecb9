"""The uplink's link state and retry pacing, shared by the pump, the inventory sender and the
command service of one uplink.

It owns what the page shows of the link (:class:`agent.state.UplinkState`: connected, last
success and error, the next attempt) and logs one line per change of link state or of the kind
of failure, never one per retry. The delays come from :mod:`agent.backoff`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterator

import structlog

from agent import backoff
from agent.state import UplinkState
from agent.uplink.base import Kind, Outcome

__all__ = ["Link"]


class Link:
    def __init__(
        self,
        state: UplinkState,
        *,
        address: str,
        log: structlog.typing.FilteringBoundLogger,
        backoff_first_s: float,
        backoff_cap_s: float,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.state = state
        self._address = address
        self._log = log
        self._first_s = backoff_first_s
        self._cap_s = backoff_cap_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._link = "unknown"
        self._category: str | None = None
        self._down_since_ms: int | None = None
        self.failures = 0
        """Failures in a row of the records path (inventory included); 0 once one succeeds."""

    def wall_ms(self) -> int:
        return int(self._clock() * 1000)

    def succeeded(self, latency_s: float) -> None:
        """The platform answered (even if it refused what was sent): the link works."""
        state = self.state
        now = self.wall_ms()
        state.last_success_ms = now
        state.last_latency_ms = round(latency_s * 1000, 1)
        if self._link == "down":
            self._log.info(
                "uplink.recovered",
                failed_attempts=self.failures,
                down_for_s=round((now - (self._down_since_ms or now)) / 1000, 1),
            )
        elif self._link == "unknown":
            self._log.info("uplink.connected", url=self._address)
        self._link = "up"
        self._category = None
        self.failures = 0
        self._down_since_ms = None
        state.connected = True

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """Around a request of the records path (a batch, the inventory): while it waits for
        its answer the page shows the link as sending, then stalled."""
        self.state.sending_since_ms = self.wall_ms()
        try:
            yield
        finally:
            self.state.sending_since_ms = None

    def failed(self, outcome: Outcome) -> Outcome:
        """Count a RETRY or AUTH outcome; returns it, for ``return link.failed(outcome)``."""
        state = self.state
        now = self.wall_ms()
        state.connected = False
        state.batches_failed += 1
        state.last_error = outcome.error
        state.last_error_reason = outcome.reason or "unexpected"
        state.last_error_status = outcome.status
        state.last_error_ms = now
        self.failures += 1
        category = f"{outcome.kind.value}:{(outcome.error or '')[:40]}"
        if self._link != "down" or self._category != category:
            auth = outcome.kind is Kind.AUTH
            (self._log.error if auth else self._log.warning)(
                "uplink.auth_failed" if auth else "uplink.failing", error=outcome.error
            )
            if self._link != "down":
                self._down_since_ms = now
        self._link = "down"
        self._category = category
        return outcome

    def problem(self, error: str, reason: str, status: int | None = None) -> None:
        """Show a problem that does not take the link down (an inventory refused)."""
        self.state.last_error = error
        self.state.last_error_reason = reason
        self.state.last_error_status = status
        self.state.last_error_ms = self.wall_ms()

    def delay(self, failures: int, retry_after_s: float | None = None) -> float:
        """Full-jitter backoff after ``failures`` (from 1), at least what the platform asked."""
        delay = backoff.full_jitter(
            failures - 1, first_s=self._first_s, cap_s=self._cap_s, rng=self._rng
        )
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        return delay

    async def back_off(self, outcome: Outcome) -> None:
        """Wait before the next attempt of the records path, showing when it will be."""
        await self.wait(self.delay(self.failures, outcome.retry_after_s))

    async def wait(self, delay_s: float) -> None:
        self.state.next_attempt_ms = int(self.wall_ms() + delay_s * 1000)
        try:
            await asyncio.sleep(delay_s)
        finally:
            self.state.next_attempt_ms = None

    def uniform(self, high: float) -> float:
        return self._rng.uniform(0, high)
