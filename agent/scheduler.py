"""The core owns time (DESIGN.md section 2): when each device is polled.

A poll's due times follow a fixed grid (``due += interval``) so that a delayed poll does not
shift the ones after it. On a saturated line (its meters need more time than their intervals
allow) a meter that falls behind queues for its next turn at once: turns on a line go round in
arrival order, so every meter gets the same share whatever the length of its plan, and the
achieved intervals stay within a few percent of each other.

A device that keeps failing is reported offline once and then probed at an exponentially slower
rate, so one dead meter costs its bus a timeout now and then instead of
on every cycle. A poll is a session on its bus (:mod:`agent.bus`): the device's requests go out
back to back, and a command or a technician's test read still waits for at most the one
transaction in flight. A failing device's polls are probes, at the lowest priority: they never
hold up a healthy device's poll for longer than one transaction.

A read that fails because its bus failed (:class:`agent.driver.BusError`) is not the device's
fault: the device becomes ``unknown``, with the bus as the cause, and no offline status is sent
for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from agent import backoff
from agent.bus import BusHandle, Priority, priority, waiting_time
from agent.driver import BusError, DeviceError, PolledDriver
from agent.records import Record

if TYPE_CHECKING:
    import structlog

    from agent.availability import Availability
    from agent.config.models import PolledDeviceConfig
    from agent.state import DeviceState

__all__ = ["DriverCrashedError", "PolledDevice", "ReadBudget"]

Emit = Callable[[Sequence[Record]], Awaitable[None]]


class DriverCrashedError(Exception):
    """A driver raised something other than DeviceError: a bug. The supervisor restarts it."""


@runtime_checkable
class ReadBudget(Protocol):
    """A polled driver that knows how long one read may take at worst (its plan's requests,
    timeouts and retries), not counting waits for a turn on the bus."""

    @property
    def read_budget_s(self) -> float: ...


class PolledDevice:
    """Runs one polled device: its schedule, its health, its backoff."""

    def __init__(
        self,
        device: PolledDeviceConfig,
        driver: PolledDriver,
        *,
        state: DeviceState,
        bus: BusHandle | None,
        availability: Availability,
        emit: Emit,
        log: structlog.typing.FilteringBoundLogger,
        start_jitter_s: float | None = None,
    ) -> None:
        self.device = device
        self.driver = driver
        self.state = state
        self.bus = bus
        self._availability = availability
        self._emit = emit
        self._log = log
        self._started = False
        # Spread first polls so a reboot does not fire every device at the same instant.
        jitter = min(device.interval_s, 5.0) if start_jitter_s is None else start_jitter_s
        self._first_delay = random.uniform(0, jitter)
        self.stopping = False
        self._wake = asyncio.Event()
        self.busy_s = 0.0
        """Time spent in reads: for a device without a bus, its share of the gateway."""
        self.last_read_s: float | None = None
        """How long the last read held its bus (waits for a turn not counted): its share of a
        full cycle of the line."""

    @property
    def guard_s(self) -> float:
        """How long a read may run, waits for bus turns not counted. The driver bounds each of
        its requests; this only catches a driver that hangs despite that, so it is generous."""
        guard = self.device.timeout_s * 4 + 2
        if isinstance(self.driver, ReadBudget):
            guard = max(guard, self.driver.read_budget_s * 2 + 10)
        return guard

    def _backoff_s(self) -> float:
        over = self.state.consecutive_failures - self.device.offline_after
        if over < 0:
            return self.device.interval_s
        wait = backoff.delay(
            over + 1, first_s=self.device.interval_s, cap_s=self.device.backoff_max_s
        )
        return backoff.spread(max(self.device.interval_s, wait), 0.1)

    async def _ensure_started(self) -> None:
        if not self._started:
            await self.driver.start()
            self._started = True

    async def _guarded_read(self) -> Sequence[Record]:
        guard = self.guard_s
        with waiting_time() as waited:
            read = asyncio.ensure_future(self._session())
        started = time.monotonic()
        try:
            while True:
                left = guard - (time.monotonic() - started - waited[0])
                if left <= 0:
                    read.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await read
                    raise TimeoutError
                done, _ = await asyncio.wait({read}, timeout=left)
                if done:
                    return read.result()
        except asyncio.CancelledError:
            read.cancel()
            raise
        finally:
            self.last_read_s = max(0.0, time.monotonic() - started - waited[0])

    async def _session(self) -> Sequence[Record]:
        if self.bus is None:
            return await self.driver.read()
        async with self.bus.hold():
            return await self.driver.read()

    async def read_once(self) -> Sequence[Record]:
        """One read (used by polls and by a technician's test read)."""
        started = time.monotonic()
        try:
            await self._ensure_started()
            return await self._guarded_read()
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
        finally:
            self.busy_s += time.monotonic() - started

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
            level = Priority.PROBE if self.state.consecutive_failures else Priority.POLL
            try:
                with priority(level):
                    records = await self.read_once()
            except DeviceError as exc:
                await self._failed(exc)
                due = loop.time() + self._backoff_s()
                continue
            await self._succeeded(records)
            due += self.device.interval_s
            # Behind (a saturated line): poll again at once, in the line's queue, rather than
            # at the next slot of the grid. Waiting for the next slot would hand out polls by
            # where each meter's slots happen to fall (up to 30 % more for short plans); in the
            # queue, turns go round in order, one each. The missed slots are not made up.
            due = max(due, loop.time())

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
        self.state.reads += 1
        out = list(records)
        status = self._availability.succeeded(self.device.id)
        if status is not None:
            out.append(status)
        if out:
            await self._emit(out)

    async def _failed(self, exc: DeviceError) -> None:
        st = self.state
        st.failures += 1
        st.errors[exc.reason] += 1
        ts = int(time.time() * 1000)
        st.last_error = f"{exc.reason}: {exc}" if str(exc) != exc.reason else exc.reason
        st.last_error_ms = ts
        if isinstance(exc, BusError) and self.device.bus is not None:
            # The bus failed, not the device: unknown, and no failure counted against it.
            self._availability.unknown(self.device.id, self.device.bus, exc.reason, str(exc))
            return
        st.consecutive_failures += 1
        if st.consecutive_failures >= self.device.offline_after:
            status = self._availability.down(self.device.id, exc.reason)
            if status is not None:
                await self._emit([status])
        else:
            self._availability.degraded(self.device.id, exc.reason)
