"""The core owns time (DESIGN.md section 2): when each device is polled, and who holds a bus.

Every device on a bus shares one :class:`BusLane`; a serial line allows one request at a time,
a TCP host as many as configured. A poll's due times follow a fixed grid (``due += interval``)
so that a delayed poll does not shift the ones after it. A device that keeps failing is reported
offline once and then probed at an exponentially slower rate, so one dead meter costs its bus a
timeout now and then instead of on every cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from agent.driver import DeviceError, Health, PolledDriver
from agent.records import Record, Status, StatusState

if TYPE_CHECKING:
    import structlog

    from agent.config.models import DeviceConfig
    from agent.state import DeviceState

__all__ = ["BusLane", "DriverCrashedError", "PolledDevice"]

Emit = Callable[[Sequence[Record]], Awaitable[None]]


class DriverCrashedError(Exception):
    """A driver raised something other than DeviceError: a bug. The supervisor restarts it."""


class BusLane:
    """Serialises access to one bus; ``gap_s`` of silence is kept after every request."""

    def __init__(self, name: str, *, max_in_flight: int = 1, gap_s: float = 0.0) -> None:
        self.name = name
        self.gap_s = gap_s
        self._sem = asyncio.Semaphore(max_in_flight)
        self.busy_s = 0.0
        """Total time the lane was held: divided by wall time, the bus's utilisation."""

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        async with self._sem:
            started = time.monotonic()
            try:
                yield
            finally:
                if self.gap_s:
                    await asyncio.sleep(self.gap_s)
                self.busy_s += time.monotonic() - started


class PolledDevice:
    """Runs one polled device: its schedule, its health, its backoff."""

    def __init__(
        self,
        device: DeviceConfig,
        driver: PolledDriver,
        *,
        lane: BusLane,
        state: DeviceState,
        emit: Emit,
        stamp: Callable[[], tuple[int, bool]],
        log: structlog.typing.FilteringBoundLogger,
        start_jitter_s: float | None = None,
    ) -> None:
        self.device = device
        self.driver = driver
        self.lane = lane
        self.state = state
        self._emit = emit
        self._stamp = stamp
        self._log = log
        self._started = False
        # Spread first polls so a reboot does not fire every device at the same instant.
        jitter = min(device.interval_s, 5.0) if start_jitter_s is None else start_jitter_s
        self._first_delay = random.uniform(0, jitter)
        self.stopping = False
        self._wake = asyncio.Event()

    @property
    def _guard_s(self) -> float:
        # The driver enforces the device's own timeout; this guard only catches a driver that
        # hangs despite it, so it is generous.
        return self.device.timeout_s * 4 + 2

    def _backoff_s(self) -> float:
        over = self.state.consecutive_failures - self.device.offline_after
        if over < 0:
            return self.device.interval_s
        wait = min(self.device.interval_s * 2.0 ** (over + 1), self.device.backoff_max_s)
        return max(self.device.interval_s, wait) * random.uniform(0.9, 1.1)

    async def _ensure_started(self) -> None:
        if not self._started:
            await self.driver.start()
            self._started = True

    async def read_once(self) -> Sequence[Record]:
        """One read through the bus lane (used by polls and by a technician's test read)."""
        async with self.lane.hold():
            try:
                await self._ensure_started()
                return await asyncio.wait_for(self.driver.read(), self._guard_s)
            except DeviceError:
                raise
            except TimeoutError:
                raise DeviceError("timeout", "the driver did not answer within its guard") from None
            except OSError as exc:
                raise DeviceError("io_error", str(exc) or type(exc).__name__) from exc
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise DriverCrashedError(f"{type(exc).__name__}: {exc}") from exc

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + self._first_delay
        while not self.stopping:
            self.state.next_poll_in_s = max(0.0, due - loop.time())
            # Sleep until due, but wake at once when asked to stop: a stop waits for a read in
            # flight (its records must reach the buffer), never for a 10-minute interval.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, due - loop.time()))
            if self.stopping:
                break
            try:
                records = await self.read_once()
            except DeviceError as exc:
                await self._failed(exc)
                due = loop.time() + self._backoff_s()
                continue
            await self._succeeded(records)
            due += self.device.interval_s
            if due < loop.time():
                # Fell behind by more than a cycle (a slow bus): skip the missed slots rather
                # than firing them back to back.
                missed = (loop.time() - due) // self.device.interval_s + 1
                due += missed * self.device.interval_s

    def request_stop(self) -> None:
        self.stopping = True
        self._wake.set()

    async def stop(self) -> None:
        self.request_stop()
        if self._started:
            self._started = False
            with contextlib.suppress(Exception):
                await self.driver.stop()

    async def _succeeded(self, records: Sequence[Record]) -> None:
        st = self.state
        st.reads += 1
        st.consecutive_failures = 0
        ts, synced = self._stamp()
        st.last_success_ms = ts
        out = list(records)
        if st.set_health(Health.OK):
            self._log.info("device.up", device=self.device.id)
            out.append(
                Status(device=self.device.id, ts=ts, ts_synced=synced, state=StatusState.ONLINE)
            )
        if out:
            await self._emit(out)

    async def _failed(self, exc: DeviceError) -> None:
        st = self.state
        st.failures += 1
        st.consecutive_failures += 1
        st.errors[exc.reason] += 1
        ts, synced = self._stamp()
        st.last_error = f"{exc.reason}: {exc}" if str(exc) != exc.reason else exc.reason
        st.last_error_ms = ts
        if st.consecutive_failures >= self.device.offline_after:
            if st.set_health(Health.DOWN):
                self._log.warning(
                    "device.down",
                    device=self.device.id,
                    reason=exc.reason,
                    error=str(exc),
                    failures=st.consecutive_failures,
                )
                status = Status(
                    device=self.device.id,
                    ts=ts,
                    ts_synced=synced,
                    state=StatusState.OFFLINE,
                    reason=exc.reason,
                )
                await self._emit([status])
        elif st.health is not Health.DOWN and st.set_health(Health.DEGRADED):
            self._log.info("device.degraded", device=self.device.id, reason=exc.reason)
