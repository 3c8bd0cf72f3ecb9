"""The driver contract (DESIGN.md section 6).

A driver class is constructed once per configured device, with that device's typed config and a
:class:`DriverContext`. It does no I/O in its constructor. Polled drivers implement
:class:`PolledDriver` (the runtime's scheduler decides when ``read`` runs and serialises the bus);
push drivers implement :class:`StreamingDriver`. Optional abilities are separate protocols:
:class:`CommandHandler` for commands.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    import structlog

    from agent.config.models import AgentConfig, Bus, DeviceConfig
    from agent.records import Record

__all__ = [
    "CommandError",
    "CommandHandler",
    "CommandSpec",
    "DeviceError",
    "DriverContext",
    "Health",
    "PolledDriver",
    "RecordSink",
    "StreamingDriver",
]

T = TypeVar("T")


class Health(enum.StrEnum):
    STARTING = "starting"
    OK = "ok"
    DEGRADED = "degraded"
    DOWN = "down"


class DeviceError(Exception):
    """A read failed. ``reason`` is a short machine word: timeout, crc_error, exception_02, ..."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason


class CommandError(Exception):
    """A command was refused or failed; ``reason`` is a short machine word."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason


class RecordSink(Protocol):
    """Where drivers put records. Returns once the records are durable in the buffer."""

    async def __call__(self, records: Sequence[Record], /) -> None: ...


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One command a driver accepts: its action name, argument model and a description."""

    action: str
    description: str
    validate: Callable[[Mapping[str, Any]], Mapping[str, Any]]
    """Checks and normalises the arguments; raises ``CommandError('bad_args', ...)``."""


@dataclass(slots=True)
class DriverContext:
    """What the runtime hands a driver."""

    device: DeviceConfig
    bus: Bus | None
    config: AgentConfig
    sink: RecordSink
    stamp: Callable[[], tuple[int, bool]]
    """Current UTC ms and whether the clock is synchronised."""
    log: structlog.typing.FilteringBoundLogger
    shared: Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]] = field(repr=False)
    """``await ctx.shared(key, factory)``: one resource per key (a bus connection) shared by the
    devices on it; created on first use, closed by the runtime (``aclose``/``close``) at stop."""


@runtime_checkable
class PolledDriver(Protocol):
    """A device the scheduler reads on its interval. ``read`` raises DeviceError on failure."""

    async def start(self) -> None: ...

    async def read(self) -> Sequence[Record]: ...

    async def stop(self) -> None: ...


@runtime_checkable
class StreamingDriver(Protocol):
    """A device that pushes records (scans, subscriptions) into ``ctx.sink`` until cancelled."""

    async def run(self) -> None: ...

    async def stop(self) -> None: ...


@runtime_checkable
class CommandHandler(Protocol):
    """A driver that accepts commands (open a door, write a register)."""

    def command_specs(self) -> Sequence[CommandSpec]: ...

    async def execute(self, action: str, args: Mapping[str, Any]) -> Mapping[str, Any]: ...
