"""The running devices: their buses, their drivers, their contexts, and the reload diff.

- **Buses.** One handle per configured bus that has devices (:func:`agent.bus.open_bus`), shared
  by every device and protocol on it, opened by its first transaction, closed when the bus
  changes or goes away at a reload, and at stop. A link transition is one ``bus.link_*`` event
  and makes the bus's devices ``unknown`` (:mod:`agent.availability`).
- **Units.** A unit is one driver instance: one device for a ``device``-scope driver, every
  device of the driver on one bus for a ``bus``-scope one. Each runs as one supervised task.
- **Contexts.** A driver gets a :class:`agent.driver.DriverContext`: its own devices, its bus, a
  sink and a push that refuse records of devices it does not own, a health reporter, typed
  shared resources. Never the whole config.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.availability import Availability, DeviceHealth
from agent.bus import AnyBus, BusHandle, link_event, open_bus
from agent.config.models import DeviceConfig, PolledDeviceConfig, StreamedDeviceConfig
from agent.driver import (
    Driver,
    DriverContext,
    ForeignRecordError,
    GatewayIdentity,
    Health,
    InventoryProvider,
    PolledDriver,
    StreamingDriver,
)
from agent.driver.shared import SharedStore
from agent.records import Event, Record, Severity
from agent.scheduler import DriverCrashedError, PolledDevice
from agent.state import DeviceState
from drivers import DRIVERS, driver_class

if TYPE_CHECKING:
    import structlog

    from agent.config.models import AgentConfig, Bus
    from agent.driver import Push, RecordSink
    from agent.state import AgentState

__all__ = ["DeviceEntry", "Devices", "Unit"]

UNIT_STOP_TIMEOUT_S = 5.0
"""How long a stopping polled unit may finish its read before it is cancelled."""

Supervise = Callable[[str, Callable[[], Awaitable[None]], Sequence[DeviceState]], Awaitable[None]]
Spawn = Callable[[str, Awaitable[None]], "asyncio.Task[None]"]


@dataclass(slots=True)
class Unit:
    """One driver instance and the devices it serves."""

    name: str
    driver_name: str
    devices: tuple[DeviceConfig, ...]
    bus: BusHandle | None
    driver: Driver | None = None
    pollers: dict[str, PolledDevice] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None


@dataclass(slots=True)
class DeviceEntry:
    """One running device, as the page and the command router see it."""

    config: DeviceConfig
    unit: Unit

    @property
    def driver(self) -> Driver | None:
        return self.unit.driver

    @property
    def poller(self) -> PolledDevice | None:
        return self.unit.pollers.get(self.config.id)


def _unit_key(device: DeviceConfig) -> str:
    if DRIVERS[device.driver].scope == "bus":
        return f"{device.driver}@{device.bus or '-'}"
    return f"{device.driver}:{device.id}"


class Devices:
    """Starts, stops and reloads the devices of a config."""

    def __init__(
        self,
        *,
        gateway: GatewayIdentity,
        state: AgentState,
        availability: Availability,
        sink: RecordSink,
        push: Push,
        stamp: Callable[[], tuple[int, bool]],
        log: structlog.typing.FilteringBoundLogger,
        supervise: Supervise,
        spawn: Spawn,
        inventory_changed: Callable[[], None],
    ) -> None:
        self.gateway = gateway
        self._state = state
        self._availability = availability
        self._sink = sink
        self._push = push
        self._stamp = stamp
        self._log = log
        self._supervise = supervise
        self._spawn = spawn
        self._inventory_changed = inventory_changed
        self.shared = SharedStore()
        self.buses: dict[str, AnyBus] = {}
        self.units: dict[str, Unit] = {}
        self.entries: dict[str, DeviceEntry] = {}

    # ------------------------------------------------------------------ buses

    def bus(self, config: Bus) -> AnyBus:
        handle = self.buses.get(config.id)
        if handle is None:
            handle = self.buses[config.id] = open_bus(config, on_link=self._link_changed)
        return handle

    def _devices_on(self, bus: str) -> list[str]:
        return sorted(i for i, e in self.entries.items() if e.config.bus == bus)

    def _link_changed(self, bus: BusHandle) -> None:
        up = bus.state == "up"
        devices = self._devices_on(bus.id)
        if up:
            self._availability.bus_up(devices)
            self._log.info("bus.link_up", bus=bus.id, where=bus.where)
        else:
            reason, error = bus.down_reason or "io_error", bus.down_error or ""
            self._availability.bus_down(bus.id, reason, error, devices)
            self._log.warning(
                "bus.link_down", bus=bus.id, where=bus.where, reason=reason, error=error
            )
        self._push(
            [link_event(bus, up, source=self.gateway.id, stamp=self._stamp(), devices=devices)]
        )

    async def close_bus(self, bus_id: str) -> None:
        handle = self.buses.pop(bus_id, None)
        await self.shared.close(bus_id)
        if handle is not None:
            await handle.aclose()

    def busy_figures(self) -> dict[str, float]:
        """Seconds each lane was held: a bus, or a device without one."""
        lanes = {f"bus:{b}": h.busy_s for b, h in self.buses.items()}
        for entry in self.entries.values():
            poller = entry.poller
            if entry.config.bus is None and poller is not None:
                lanes[f"device:{entry.config.id}"] = poller.busy_s
        return lanes

    # ------------------------------------------------------------------ contexts

    def _owned(self, unit: Unit, streaming: bool) -> tuple[RecordSink, Push]:
        owned = frozenset(d.id for d in unit.devices)

        def check(records: Sequence[Record]) -> list[Record]:
            foreign = {r.device for r in records} - owned
            if foreign:
                raise ForeignRecordError(
                    f"{unit.name} handed over records of {', '.join(sorted(foreign))}, which it "
                    "does not own"
                )
            out = list(records)
            if streaming:
                for device in {r.device for r in records}:
                    status = self._availability.seen(device)
                    if status is not None:
                        out.append(status)
            return out

        async def sink(records: Sequence[Record], /) -> None:
            await self._sink(check(records))

        def push(records: Sequence[Record], /) -> None:
            self._push(check(records))

        return sink, push

    def _context(self, unit: Unit, streaming: bool) -> DriverContext:
        sink, push = self._owned(unit, streaming)
        ids = [d.id for d in unit.devices]
        log = self._log.bind(driver=unit.driver_name)
        if len(ids) == 1:
            log = log.bind(device=ids[0])
        return DriverContext(
            gateway=self.gateway,
            devices=unit.devices,
            bus=unit.bus,
            sink=sink,
            push=push,
            stamp=self._stamp,
            log=log,
            health=DeviceHealth(self._availability, self._push, ids),
            inventory_changed=self._inventory_changed,
            shared=self.shared,
            counters={i: self._state.devices[i].driver_counters for i in ids},
        )

    def _make_driver(self, unit: Unit) -> Driver:
        cls = driver_class(unit.driver_name)
        # Records of a streaming driver also say its device is alive (a polled one's reads do).
        streaming = issubclass(cls, StreamingDriver) and not issubclass(cls, PolledDriver)
        ctx = self._context(unit, streaming)
        driver = cls(ctx) if DRIVERS[unit.driver_name].scope == "bus" else cls(unit.devices[0], ctx)
        if not isinstance(driver, PolledDriver | StreamingDriver):
            msg = f"{unit.name}: {cls.__name__} is neither a polled nor a streaming driver"
            raise TypeError(msg)
        return driver

    # ------------------------------------------------------------------ start and stop

    def start(self, config: AgentConfig, devices: Iterable[DeviceConfig]) -> None:
        groups: dict[str, list[DeviceConfig]] = {}
        for device in devices:
            if device.enabled:
                groups.setdefault(_unit_key(device), []).append(device)
        for key, members in groups.items():
            self._start_unit(config, key, tuple(members))

    def _start_unit(self, config: AgentConfig, key: str, members: tuple[DeviceConfig, ...]) -> None:
        first = members[0]
        bus_config = config.bus(first.bus) if first.bus else None
        unit = Unit(
            name=f"driver[{key}]",
            driver_name=first.driver,
            devices=members,
            bus=self.bus(bus_config) if bus_config is not None else None,
        )
        states = [
            self._state.devices.setdefault(d.id, DeviceState(id=d.id, driver=d.driver))
            for d in members
        ]
        for device in members:
            self.entries[device.id] = DeviceEntry(device, unit)
        try:
            unit.driver = self._make_driver(unit)
        except ImportError as exc:
            # A gateway installed without this driver's extra: the other devices go on, and the
            # page and the platform say exactly what is missing.
            for device, st in zip(members, states, strict=True):
                st.set_health(Health.DOWN)
                st.last_error = f"driver_unavailable: {exc}"
                self._log.error("device.driver_unavailable", device=device.id, error=str(exc))
                self.entries.pop(device.id, None)
                ts, synced = self._stamp()
                self._push(
                    [
                        Event(
                            device=self.gateway.id,
                            ts=ts,
                            ts_synced=synced,
                            type="agent.driver_unavailable",
                            severity=Severity.ALARM,
                            data={"device": device.id, "error": str(exc)},
                        )
                    ]
                )
            return
        self.units[key] = unit
        body = self._polled_body(unit) if isinstance(unit.driver, PolledDriver) else None
        if body is None:
            if not isinstance(unit.driver, StreamingDriver):
                msg = f"driver {unit.driver_name!r} is neither polled nor streaming"
                raise TypeError(msg)
            body = self._streaming_body(unit)
        unit.task = self._spawn(unit.name, self._supervise(unit.name, body, states))

    def _polled_body(self, unit: Unit) -> Callable[[], Awaitable[None]]:
        if len(unit.devices) != 1:
            msg = f"{unit.name}: a bus-scope driver must be a streaming driver"
            raise TypeError(msg)
        [device] = unit.devices
        if not isinstance(device, PolledDeviceConfig):
            msg = f"{unit.name}: a polled driver needs a PolledDeviceConfig"
            raise TypeError(msg)

        async def body() -> None:
            driver = unit.driver
            assert isinstance(driver, PolledDriver), "checked when the unit started"
            poller = PolledDevice(
                device,
                driver,
                state=self._state.devices[device.id],
                bus=unit.bus,
                availability=self._availability,
                emit=self._sink,
                log=self._log,
            )
            unit.pollers[device.id] = poller
            try:
                await poller.run()
            except DriverCrashedError:
                # A fresh driver instance after a crash: state inside the old one is suspect.
                await poller.stop()
                unit.driver = self._make_driver(unit)
                raise

        return body

    def _streaming_body(self, unit: Unit) -> Callable[[], Awaitable[None]]:
        for device in unit.devices:
            stale = device.stale_after_s if isinstance(device, StreamedDeviceConfig) else None
            self._availability.watch(device.id, stale)

        async def body() -> None:
            driver = unit.driver
            assert isinstance(driver, StreamingDriver), "checked when the unit started"
            try:
                await driver.run()
            finally:
                with contextlib.suppress(Exception):
                    await driver.stop()

        return body

    async def _stop_unit(self, key: str) -> None:
        unit = self.units.pop(key, None)
        if unit is None:
            return
        for device in unit.devices:
            self.entries.pop(device.id, None)
        for poller in unit.pollers.values():
            poller.request_stop()
        if not unit.pollers and unit.task is not None:
            # A streaming driver runs until cancelled (the driver contract): waiting for it
            # first added the whole timeout to every stop and reload of its unit.
            unit.task.cancel()
        if unit.task is not None:
            # Let an in-flight read finish and hand its records over; then cancel.
            done, _ = await asyncio.wait({unit.task}, timeout=UNIT_STOP_TIMEOUT_S)
            if not done:
                unit.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await unit.task
        for poller in unit.pollers.values():
            await poller.stop()
        if not unit.pollers and unit.driver is not None:
            with contextlib.suppress(Exception):
                await unit.driver.stop()

    async def stop(self) -> None:
        await asyncio.gather(*(self._stop_unit(k) for k in list(self.units)))
        await self.shared.close(every=True)
        for bus_id in list(self.buses):
            await self.close_bus(bus_id)

    async def reload(self, old: AgentConfig, new: AgentConfig) -> Mapping[str, list[str]]:
        """Apply ``new``: stop the units whose devices or bus changed, close the buses that
        changed or went away, start what is new. Untouched units keep running."""
        old_devices = {d.id: d for d in old.devices if d.enabled}
        new_devices = {d.id: d for d in new.devices if d.enabled}
        changed_buses = {b.id for b in old.buses if new.bus(b.id) != b}
        changed_units: set[str] = set()
        for key, unit in self.units.items():
            for device in unit.devices:
                if new_devices.get(device.id) != device or device.bus in changed_buses:
                    changed_units.add(key)
        for device in new_devices.values():
            key = _unit_key(device)
            if key in self.units and device.id not in self.entries:
                changed_units.add(key)  # a new device joins a bus-scope driver
        stopped = sorted({d.id for k in changed_units for d in self.units[k].devices})
        for key in changed_units:
            await self._stop_unit(key)
        for bus_id in changed_buses:
            await self.close_bus(bus_id)
        for device_id in [i for i in old_devices if i not in new_devices]:
            self._state.devices.pop(device_id, None)
            self._availability.forget(device_id)
        to_start = [d for i, d in new_devices.items() if i not in self.entries]
        self.start(new, to_start)
        started = sorted(d.id for d in to_start)
        return {
            "restarted": sorted(set(stopped) & set(started)),
            "added": sorted(set(started) - set(stopped)),
            "removed": sorted(set(stopped) - set(started)),
        }

    # ------------------------------------------------------------------ inventory

    def reported(self) -> dict[str, Mapping[str, str]]:
        """What drivers that are :class:`agent.driver.InventoryProvider` s say of their devices."""
        out: dict[str, Mapping[str, str]] = {}
        for unit in self.units.values():
            if isinstance(unit.driver, InventoryProvider):
                with contextlib.suppress(Exception):
                    out.update(unit.driver.device_inventory())
        return out
