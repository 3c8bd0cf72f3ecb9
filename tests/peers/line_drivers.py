"""Test-only drivers, registered by the tests that need them (:func:`register`).

- ``echo``: a second protocol for a serial line, with its own tiny framing (8-byte frames:
  ``A5 addr n0..n4 sum`` out, ``5A addr n0..n4 sum`` back), polled per device. It shares a line
  with Modbus RTU in the tests, through the core's ``exchange`` like any driver.
- ``swarm``: a ``bus``-scope streaming driver: one instance serves every swarm device, pushing
  one reading per device and period through ``ctx.push``, as a BLE scanner would. Devices named
  in :data:`SILENT` stop "advertising"; :data:`FOREIGN` makes it hand over a record of a device
  it does not own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

import pytest
from pydantic import Field

import drivers
from agent.config.models import PolledDeviceConfig, SerialBus, StreamedDeviceConfig
from agent.driver import CommandError, CommandSpec, DeviceError, DriverContext, ForeignRecordError
from agent.records import Reading, Record

SILENT: set[str] = set()
BROKEN: dict[str, str] = {}
"""Devices the driver says are down (with the reason) through ``ctx.health``."""
FOREIGN: list[str] = []
REFUSED: list[str] = []
INSTANCES: list[SwarmDriver] = []


def register(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put ``echo`` and ``swarm`` into the driver registry for one test."""
    for spec in (
        drivers.DriverSpec("echo", f"{__name__}:EchoDevice", f"{__name__}:EchoDriver"),
        drivers.DriverSpec(
            "swarm", f"{__name__}:SwarmDevice", f"{__name__}:SwarmDriver", scope="bus"
        ),
    ):
        monkeypatch.setitem(drivers.DRIVERS, spec.name, spec)
    SILENT.clear()
    BROKEN.clear()
    FOREIGN.clear()
    REFUSED.clear()
    INSTANCES.clear()


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def echo_answer(frame: bytes) -> bytes | None:
    """The peer's side of the echo framing (for :class:`peers.modbus_peers.FakeMeter`)."""
    if len(frame) != 8 or checksum(frame[:7]) != frame[7]:
        return None
    body = bytes([0x5A]) + frame[1:7]
    return body + bytes([checksum(body)])


class EchoDevice(PolledDeviceConfig):
    driver: Literal["echo"]
    address: Annotated[int, Field(ge=0, le=255)]

    bus_kinds: ClassVar[frozenset[str]] = frozenset({"serial"})
    address_key: ClassVar[str | None] = "address"

    @classmethod
    def line_problem(cls, line: SerialBus) -> str | None:
        if line.parity != "none":
            return "the echo framing runs on 8N1 lines only"
        return None


class EchoDriver:
    def __init__(self, config: EchoDevice, ctx: DriverContext) -> None:
        self.config = config
        self.ctx = ctx
        self.count = 0

    async def start(self) -> None:
        """Nothing to open: the line is the core's."""

    async def stop(self) -> None:
        """Nothing to close."""

    async def read(self) -> Sequence[Record]:
        bus = self.ctx.bus
        assert bus is not None
        self.count += 1
        body = bytes([0xA5, self.config.address]) + self.count.to_bytes(5, "big")
        frame = body + bytes([checksum(body)])

        def read_reply(data: bytes) -> int:
            return 8 if len(data) >= 8 and data[0] == 0x5A else 0

        reply = await bus.exchange(frame, read_reply, self.config.timeout_s)  # type: ignore[attr-defined]
        if reply[1:7] != frame[1:7] or checksum(reply[:7]) != reply[7]:
            raise DeviceError("bad_reply", "the echo did not match")
        ts, synced = self.ctx.stamp()
        value = int.from_bytes(reply[2:7], "big")
        return [Reading(device=self.config.id, ts=ts, ts_synced=synced, point="n", value=value)]


class SwarmDevice(StreamedDeviceConfig):
    driver: Literal["swarm"]
    tag: Annotated[int, Field(ge=0)]
    period_s: float = 0.1

    address_key: ClassVar[str | None] = "tag"
    known_commands: ClassVar[frozenset[str]] = frozenset({"tag.beep"})


class SwarmDriver:
    """One scanner for every tag; reports per device."""

    def __init__(self, ctx: DriverContext) -> None:
        self.ctx = ctx
        self.beeps: list[str] = []
        INSTANCES.append(self)

    async def run(self) -> None:
        period = min(getattr(d, "period_s", 0.1) for d in self.ctx.devices)
        said_down: set[str] = set()
        while True:
            for device, reason in BROKEN.items():
                if device not in said_down:
                    self.ctx.health.down(device, reason, "the tag refused our key")
                    said_down.add(device)
            for device in said_down - set(BROKEN):
                self.ctx.health.ok(device)
                said_down.discard(device)
            ts, synced = self.ctx.stamp()
            heard = [
                Reading(device=d.id, ts=ts, ts_synced=synced, point="rssi", value=-60 - i % 30)
                for i, d in enumerate(self.ctx.devices)
                if d.id not in SILENT and d.id not in BROKEN
            ]
            self.ctx.push(heard)
            while FOREIGN:
                stranger = FOREIGN.pop()
                try:
                    self.ctx.push(
                        [Reading(device=stranger, ts=ts, ts_synced=synced, point="x", value=1)]
                    )
                except ForeignRecordError as exc:
                    REFUSED.append(str(exc))
            await asyncio.sleep(period)

    async def stop(self) -> None:
        """Nothing to close."""

    def device_inventory(self) -> Mapping[str, Mapping[str, str]]:
        # What the tags said about themselves: the first one has announced its firmware.
        first = self.ctx.devices[0].id
        return {first: {"firmware": f"tag-fw-{len(self.beeps)}"}}

    def command_specs(self) -> Sequence[CommandSpec]:
        return (CommandSpec("tag.beep", "make the tag beep", dict),)

    async def execute(self, action: str, args: Mapping[str, Any]) -> Mapping[str, Any]:
        if action != "tag.beep":
            raise CommandError("unknown_action", action)
        self.beeps.append(str(args["device"]))
        self.ctx.inventory_changed()
        return {"beeped": args["device"]}
