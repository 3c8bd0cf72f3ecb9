"""Drivers outside the agent (in the spirit of ``structlog.testing``): for tests and installer
tools.

:class:`Standalone` gives a driver the same kind of context the agent does, with real bus
handles (a real port is opened by the first transaction, as in the agent) and a list for records::

    bench = Standalone([bus])
    driver = ModbusDriver(device, bench.context(device))
    records = await driver.read()
    bench.events("bus.link_down")
    await bench.aclose()

Bus transitions become the same ``bus.link_*`` events the agent emits; health reports are kept
in :attr:`Standalone.health`.
"""

from __future__ import annotations

import asyncio
import collections
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from agent.bus import AnyBus, BusHandle, link_event, open_bus
from agent.driver import DriverContext, ForeignRecordError, GatewayIdentity
from agent.driver.shared import SharedStore
from agent.logs import get_logger
from agent.records import Event, Record, now_ms

if TYPE_CHECKING:
    from agent.config.models import Bus, DeviceConfig

__all__ = ["Standalone", "quiet_logs", "run_tool_locally"]


class _Health:
    def __init__(self, bench: Standalone, devices: frozenset[str]) -> None:
        self._bench = bench
        self._devices = devices

    def _check(self, device: str) -> None:
        # As in the agent (agent.availability.DeviceHealth): only the driver's own devices.
        if device not in self._devices:
            raise ValueError(f"health of {device!r}: not a device of this driver")

    def ok(self, device: str, /) -> None:
        self._check(device)
        self._bench.health[device] = ("ok", None)

    def down(self, device: str, reason: str, message: str | None = None, /) -> None:
        del message
        self._check(device)
        self._bench.health[device] = ("down", reason)


class Standalone:
    """Contexts for drivers that run without an agent: records go to :attr:`records`."""

    def __init__(
        self,
        buses: Sequence[Bus] = (),
        *,
        gateway_id: str = "standalone",
        community_code: str = "000000000000",
    ) -> None:
        self.gateway = GatewayIdentity(gateway_id, community_code)
        self.records: list[Record] = []
        self.health: dict[str, tuple[str, str | None]] = {}
        self.inventory_changes = 0
        self.counters: dict[str, collections.Counter[str]] = {}
        """What each device's driver counted (``ctx.counters``)."""
        self.shared = SharedStore()
        self.buses: dict[str, AnyBus] = {
            b.id: open_bus(b, on_link=self._link_changed) for b in buses
        }
        self._owners: dict[str, set[str]] = {}

    def _link_changed(self, bus: BusHandle) -> None:
        up = bus.state == "up"
        devices = sorted(self._owners.get(bus.id, set()))
        self.records.append(
            link_event(bus, up, source=self.gateway.id, stamp=(now_ms(), True), devices=devices)
        )

    def bus(self, bus_id: str) -> AnyBus:
        return self.buses[bus_id]

    def _inventory_changed(self) -> None:
        self.inventory_changes += 1

    def context(self, *devices: DeviceConfig, log: Any = None) -> DriverContext:
        """A context for a driver of ``devices`` (one for a ``device``-scope driver)."""
        owned = frozenset(d.id for d in devices)
        bus_ids = {d.bus for d in devices}
        if len(bus_ids) != 1:
            raise ValueError("the devices of one driver share one bus (or none)")
        [bus_id] = bus_ids
        for device in devices:
            if device.bus is not None:
                self._owners.setdefault(device.bus, set()).add(device.id)

        def check(records: Sequence[Record]) -> None:
            for record in records:
                if record.device not in owned:
                    raise ForeignRecordError(f"a record of {record.device!r}, not of this driver")

        async def sink(records: Sequence[Record], /) -> None:
            check(records)
            self.records.extend(records)

        def push(records: Sequence[Record], /) -> None:
            check(records)
            self.records.extend(records)

        return DriverContext(
            gateway=self.gateway,
            devices=tuple(devices),
            bus=self.buses[bus_id] if bus_id is not None else None,
            sink=sink,
            push=push,
            stamp=lambda: (now_ms(), True),
            log=log if log is not None else get_logger(driver=devices[0].driver),
            health=_Health(self, owned),
            inventory_changed=self._inventory_changed,
            shared=self.shared,
            counters={d.id: self.counters.setdefault(d.id, collections.Counter()) for d in devices},
        )

    def events(self, type_: str) -> list[Event]:
        return [r for r in self.records if isinstance(r, Event) and r.type == type_]

    async def aclose(self) -> None:
        """Close what the drivers shared and every bus, as the agent does at stop."""
        await self.shared.close(every=True)
        for bus in self.buses.values():
            await bus.aclose()


def quiet_logs() -> None:
    """Only errors, on stderr: for a tool that prints its own results on stdout."""
    from agent.logs import configure_logging  # noqa: PLC0415

    configure_logging("error", "console", sys.stderr)


def run_tool_locally(
    driver: str, tool: str, bus: Bus, options: Mapping[str, Any]
) -> Mapping[str, Any]:
    """Open ``bus`` here and run driver ``driver``'s bus tool ``tool`` on it (an installer tool
    when no agent holds the port)."""
    from drivers import bus_tool  # noqa: PLC0415 - the registry, not a driver by name

    run = bus_tool(driver, tool)

    async def main() -> Mapping[str, Any]:
        bench = Standalone([bus])
        try:
            return await run(bench.bus(bus.id), options)
        finally:
            await bench.aclose()

    return asyncio.run(main())
