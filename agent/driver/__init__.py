"""The driver contract (DESIGN.md section 6).

A driver serves one device (``device`` scope) or every device of its driver on one bus or
adapter (``bus`` scope, declared in the registry: :mod:`drivers`). It is constructed with its
typed device config(s) and a :class:`DriverContext`, and does no I/O in its constructor.

- Polled drivers implement :class:`PolledDriver`: ``read`` once, raise :class:`DeviceError` on
  failure; the scheduler decides when, tracks health and backs off.
- Streaming drivers implement :class:`StreamingDriver`: ``run`` until cancelled, hand records to
  ``ctx.push`` (never blocks) or ``await ctx.sink(...)`` (durable when it returns), and say what
  they know about health through ``ctx.health``; the core also marks a device offline (``stale``)
  when nothing arrived for its ``stale_after_s``.
- The wire belongs to the core: ``ctx.bus`` is the bus's :class:`agent.bus.SerialLine` or
  :class:`agent.bus.TcpHost`. A driver frames its protocol and calls ``exchange``; it never opens
  the port.

Optional abilities are small protocols, each checked with ``isinstance``:
:class:`CommandHandler`, :class:`InventoryProvider`, :class:`Discoverer` (for ``edge-agent scan``).
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    import structlog

    from agent.bus import BusHandle
    from agent.config.models import DeviceConfig
    from agent.records import Record

__all__ = [
    "BusError",
    "BusTool",
    "CommandError",
    "CommandHandler",
    "CommandSpec",
    "DeviceError",
    "Discoverer",
    "Driver",
    "DriverContext",
    "ForeignRecordError",
    "GatewayIdentity",
    "Health",
    "HealthReporter",
    "InventoryProvider",
    "PolledDriver",
    "Push",
    "RecordSink",
    "SharedKey",
    "SharedResources",
    "StreamingDriver",
]

T = TypeVar("T")


class Health(enum.StrEnum):
    STARTING = "starting"
    OK = "ok"
    DEGRADED = "degraded"
    DOWN = "down"
    UNKNOWN = "unknown"
    """The device cannot be reached because its bus failed (adapter gone, port vanished): the
    bus, not the device, is the cause."""


class DeviceError(Exception):
    """A read failed. ``reason`` is a short machine word: timeout, crc_error, exception_02, ..."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason


class BusError(DeviceError):
    """The bus itself failed (``no_port``, ``io_error``): every device on it is affected, so the
    scheduler makes the device ``unknown`` instead of counting the failure against it."""


class ForeignRecordError(ValueError):
    """A driver handed over a record of a device it does not own."""


class CommandError(Exception):
    """A command was refused or failed; ``reason`` is a short machine word."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason


class RecordSink(Protocol):
    """Where drivers put records. Returns once the records are durable in the buffer."""

    async def __call__(self, records: Sequence[Record], /) -> None: ...


class Push(Protocol):
    """Hands records to the core without waiting (a BlueZ callback, an event listener): they go
    through a bounded queue to the buffer. Call it from the event loop's thread."""

    def __call__(self, records: Sequence[Record], /) -> None: ...


class HealthReporter(Protocol):
    """A streaming driver's word on a device's health; the core turns transitions into one
    status record and one log line each."""

    def ok(self, device: str, /) -> None: ...

    def down(self, device: str, reason: str, message: str | None = None, /) -> None: ...


@dataclass(frozen=True, slots=True)
class GatewayIdentity:
    """Who the gateway is, as far as a driver needs to know."""

    id: str
    community_code: str


@dataclass(frozen=True, slots=True)
class SharedKey(Generic[T]):
    """A typed key of a resource shared by drivers (one per bus, say): ``ctx.shared.get(key,
    factory)`` returns a ``T``. A resource with a ``bus`` is closed when that bus changes or goes
    away; every resource is closed at stop (``aclose`` or ``close``)."""

    name: str
    bus: str | None = None


class SharedResources(Protocol):
    async def get(self, key: SharedKey[T], factory: Callable[[], Awaitable[T]], /) -> T: ...


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One command a driver accepts: its action name, argument model and a description."""

    action: str
    description: str
    validate: Callable[[Mapping[str, Any]], Mapping[str, Any]]
    """Checks and normalises the arguments; raises ``CommandError('bad_args', ...)``."""


@dataclass(frozen=True, slots=True)
class DriverContext:
    """What the core hands a driver: never the whole config."""

    gateway: GatewayIdentity
    devices: tuple[DeviceConfig, ...]
    """The device (``device`` scope) or every device of the driver on the bus (``bus`` scope)."""
    bus: BusHandle | None
    """The bus's :class:`agent.bus.SerialLine`, :class:`agent.bus.TcpHost` or
    :class:`agent.bus.BleAdapter`; None without one."""
    sink: RecordSink
    push: Push
    stamp: Callable[[], tuple[int, bool]]
    """Current UTC ms and whether the clock is synchronised."""
    log: structlog.typing.FilteringBoundLogger
    health: HealthReporter
    inventory_changed: Callable[[], None]
    """Say that what :class:`InventoryProvider` reports has changed: the core sends it again."""
    shared: SharedResources = field(repr=False)
    counters: Mapping[str, collections.Counter[str]] = field(repr=False, default_factory=dict)
    """Per device: what the driver counts finer than the scheduler sees (a Modbus read that
    half failed, a plan split). The page and ``/metrics`` show them; nobody reaches into the
    driver for them."""

    @property
    def device(self) -> DeviceConfig:
        """The one device of a ``device``-scope driver."""
        if len(self.devices) != 1:
            raise TypeError(f"{len(self.devices)} devices: a bus-scope driver uses ctx.devices")
        return self.devices[0]


@runtime_checkable
class PolledDriver(Protocol):
    """A device the scheduler reads on its interval. ``read`` raises DeviceError on failure."""

    async def start(self) -> None: ...

    async def read(self) -> Sequence[Record]: ...

    async def stop(self) -> None: ...


@runtime_checkable
class StreamingDriver(Protocol):
    """Devices that push records (scans, subscriptions, a control panel's poll loop) until
    cancelled."""

    async def run(self) -> None: ...

    async def stop(self) -> None: ...


Driver = PolledDriver | StreamingDriver
"""What a driver class builds: a polled driver, a streaming one, or both; it may also be a
:class:`CommandHandler` and an :class:`InventoryProvider`."""


@runtime_checkable
class CommandHandler(Protocol):
    """A driver that accepts commands (open a door, write a register). A ``bus``-scope driver
    serves several devices: it finds the target's id in ``args["device"]`` (a reserved key)."""

    def command_specs(self) -> Sequence[CommandSpec]: ...

    async def execute(self, action: str, args: Mapping[str, Any]) -> Mapping[str, Any]: ...


@runtime_checkable
class InventoryProvider(Protocol):
    """What devices report about themselves (firmware, serial number, model), by device id; it
    goes into the inventory sent to the platform. Call ``ctx.inventory_changed()`` when it
    changes."""

    def device_inventory(self) -> Mapping[str, Mapping[str, str]]: ...


class BusTool(Protocol):
    """An installer tool of a driver family that works on a bus: ``scan`` (the family's
    :data:`Discoverer`) and one-off ``read``. It runs on the bus handle it is given: the running
    agent's own (through the control socket, at test-read priority, so it never fights the
    agent for the port) or one the command line opened. ``options`` and the answer are
    JSON-shaped, so they cross the control socket as they are."""

    async def __call__(
        self, bus: BusHandle, options: Mapping[str, Any], /
    ) -> Mapping[str, Any]: ...


Discoverer = BusTool
"""``edge-agent scan <driver>``: a :class:`BusTool` that finds the devices on a bus."""
