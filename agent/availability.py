"""Availability, owned by the core: every device's health and what the platform was told of it.

Three sources move a device's health, and all go through :class:`Availability` so that each
transition is one status record and one log line, never one per poll or per advert:

- the scheduler, for polled devices (a good read, a failed read, ``offline_after`` failures);
- streaming drivers, through ``ctx.health`` (:class:`DeviceHealth`), and the records they hand
  over (a device that is heard from is online); and the stale watch, which marks a streamed
  device offline (reason ``stale``) when nothing arrived for its ``stale_after_s``;
- the buses: a bus that fails makes its devices ``unknown`` with the bus as the cause. That is
  one bus-level event (``bus.link_down``), not one offline status per device; when the bus comes
  back the devices return to what they were, and the next read or record says the rest.

The platform hears ``online``/``offline`` only: a status record goes out when what it was last
told changes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from agent.driver import Health
from agent.records import Status, StatusState

if TYPE_CHECKING:
    import structlog

    from agent.driver import Push
    from agent.state import AgentState, DeviceState

__all__ = ["Availability", "DeviceHealth"]


class Availability:
    """Health transitions of every device, and the stale watch of streamed ones."""

    def __init__(
        self,
        state: AgentState,
        *,
        push: Push,
        stamp: Callable[[], tuple[int, bool]],
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._state = state
        self._push = push
        self._stamp = stamp
        self._log = log
        self._reported: dict[str, StatusState] = {}
        self._before_bus: dict[str, Health] = {}
        """Health of each device made unknown by its bus, restored when the bus returns."""
        self._stale_after: dict[str, float] = {}
        self._last_seen: dict[str, float] = {}

    def _device(self, device: str) -> DeviceState | None:
        return self._state.devices.get(device)

    def _status(self, device: str, state: StatusState, reason: str | None) -> Status | None:
        if self._reported.get(device) is state:
            return None
        self._reported[device] = state
        ts, synced = self._stamp()
        return Status(device=device, ts=ts, ts_synced=synced, state=state, reason=reason)

    # ------------------------------------------------------------------ transitions

    def up(self, device: str) -> Status | None:
        """The device answered (or was heard from). Returns the status record to emit, if any."""
        st = self._device(device)
        if st is None:
            return None
        st.consecutive_failures = 0
        self._before_bus.pop(device, None)
        if st.set_health(Health.OK):
            self._log.info("device.up", device=device)
        return self._status(device, StatusState.ONLINE, None)

    def down(self, device: str, reason: str, message: str | None = None) -> Status | None:
        """The device is offline for ``reason``."""
        st = self._device(device)
        if st is None:
            return None
        self._before_bus.pop(device, None)
        if message is not None:
            st.last_error = f"{reason}: {message}" if message != reason else reason
            st.last_error_ms = self._stamp()[0]
        if st.set_health(Health.DOWN):
            self._log.warning(
                "device.down",
                device=device,
                reason=reason,
                error=message or reason,
                failures=st.consecutive_failures,
            )
        return self._status(device, StatusState.OFFLINE, reason)

    def succeeded(self, device: str) -> Status | None:
        """A read or an explicit word from the driver: counted, then :meth:`up`."""
        st = self._device(device)
        if st is not None:
            st.last_success_ms = self._stamp()[0]
        return self.up(device)

    def degraded(self, device: str, reason: str) -> None:
        st = self._device(device)
        if st is not None and st.health is not Health.DOWN and st.set_health(Health.DEGRADED):
            self._log.info("device.degraded", device=device, reason=reason)

    def bus_down(self, bus: str, reason: str, error: str, devices: Iterable[str]) -> None:
        """The bus failed: its devices are ``unknown``, the bus the cause. No status record: the
        bus event speaks for all of them."""
        for device in devices:
            st = self._device(device)
            if st is None:
                continue
            if st.health is not Health.UNKNOWN:
                self._before_bus[device] = st.health
                st.set_health(Health.UNKNOWN)
            st.last_error = f"bus {bus}: {reason}: {error}"
            st.last_error_ms = self._stamp()[0]

    def bus_up(self, devices: Iterable[str]) -> None:
        for device in devices:
            st = self._device(device)
            before = self._before_bus.pop(device, None)
            if st is not None and before is not None and st.health is Health.UNKNOWN:
                st.set_health(before)

    def unknown(self, device: str, bus: str, reason: str, error: str) -> None:
        """A read failed because its bus did (the bus listener may not have spoken yet)."""
        self.bus_down(bus, reason, error, (device,))

    def forget(self, device: str) -> None:
        for table in (self._reported, self._before_bus, self._stale_after, self._last_seen):
            table.pop(device, None)

    # ------------------------------------------------------------------ streamed devices

    def watch(self, device: str, stale_after_s: float | None) -> None:
        """Start the stale watch of a streamed device (from now: never heard is stale too)."""
        self._last_seen[device] = time.monotonic()
        if stale_after_s is not None:
            self._stale_after[device] = stale_after_s
        else:
            self._stale_after.pop(device, None)

    def seen(self, device: str) -> Status | None:
        """A record arrived from a streamed device: it is online."""
        self._last_seen[device] = time.monotonic()
        st = self._device(device)
        if st is None:
            return None
        st.reads += 1
        st.last_success_ms = self._stamp()[0]
        if st.health is Health.OK:
            return None
        return self.up(device)

    def stale(self) -> list[Status]:
        """Streamed devices silent past their ``stale_after_s``: offline, once."""
        now = time.monotonic()
        out: list[Status] = []
        for device, limit in self._stale_after.items():
            st = self._device(device)
            if st is None or st.health in (Health.DOWN, Health.UNKNOWN):
                continue
            silent = now - self._last_seen.get(device, now)
            if silent >= limit:
                status = self.down(device, "stale", f"nothing heard for {silent:.0f} s")
                if status is not None:
                    out.append(status)
        return out

    async def watch_stale(self, period_s: float = 1.0) -> None:
        """The stale watch: runs until cancelled."""
        while True:
            records = self.stale()
            if records:
                self._push(records)
            await asyncio.sleep(period_s)


class DeviceHealth:
    """``ctx.health`` of one driver: only its own devices."""

    def __init__(self, availability: Availability, push: Push, devices: Iterable[str]) -> None:
        self._availability = availability
        self._push = push
        self._devices = frozenset(devices)

    def _check(self, device: str) -> None:
        if device not in self._devices:
            raise ValueError(f"health of {device!r}: not a device of this driver")

    def ok(self, device: str, /) -> None:
        self._check(device)
        status = self._availability.succeeded(device)
        if status is not None:
            self._push([status])

    def down(self, device: str, reason: str, message: str | None = None, /) -> None:
        self._check(device)
        status = self._availability.down(device, reason, message)
        if status is not None:
            self._push([status])
