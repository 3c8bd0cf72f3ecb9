"""A real driver whose device is a small deterministic model instead of a wire.

It follows the same contract as every protocol driver: the scheduler calls ``read`` on the
device's interval, failures are raised as :class:`DeviceError`, commands go through
:meth:`execute`. A simulated device that names a bus holds it for the whole of its read (it has
no frames to exchange), so devices on one bus take turns as they would on a real line. Faults can
be configured up front or switched on at run time with the ``simulate.fault`` command, which is
how the tests and the demo show a device going red.
"""

from __future__ import annotations

import asyncio
import math
import random
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from agent.driver import CommandError, CommandSpec, DeviceError, DriverContext
from agent.records import Event, Quality, Reading, Record, Severity
from drivers.simulated.config import SimPoint, SimulatedDevice

__all__ = ["SimulatedDriver"]

_FAULT_MODES = ("none", "timeout", "bad_value", "silent", "crash")


def _validate_output(args: Mapping[str, Any]) -> Mapping[str, Any]:
    unknown = set(args) - {"output", "on"}
    if unknown:
        raise CommandError("bad_args", f"unknown argument(s): {', '.join(sorted(unknown))}")
    output = args.get("output", 0)
    on = args.get("on")
    if not isinstance(output, int) or isinstance(output, bool) or not 0 <= output <= 15:
        raise CommandError("bad_args", "output must be an integer 0-15")
    if not isinstance(on, bool):
        raise CommandError("bad_args", "on must be true or false")
    return {"output": output, "on": on}


def _validate_fault(args: Mapping[str, Any]) -> Mapping[str, Any]:
    unknown = set(args) - {"mode", "probability"}
    if unknown:
        raise CommandError("bad_args", f"unknown argument(s): {', '.join(sorted(unknown))}")
    mode = args.get("mode")
    if mode not in _FAULT_MODES:
        raise CommandError("bad_args", f"mode must be one of {', '.join(_FAULT_MODES)}")
    probability = args.get("probability", 1.0)
    if not isinstance(probability, (int, float)) or not 0 <= probability <= 1:
        raise CommandError("bad_args", "probability must be between 0 and 1")
    return {"mode": mode, "probability": float(probability)}


class SimulatedDriver:
    """Counters, sine waves, random walks and constants, with events, faults and commands."""

    def __init__(self, config: SimulatedDevice, ctx: DriverContext) -> None:
        self.config = config
        self.ctx = ctx
        seed = config.seed ^ zlib.crc32(config.id.encode())
        self._rng = random.Random(seed)
        self._polls = 0
        self._walk: dict[str, float] = {p.name: p.start for p in config.points}
        failure = config.failure
        self._fault_mode: str = failure.mode if failure is not None else "none"
        self._fault_probability = failure.probability if failure is not None else 0.0
        self._fault_after = failure.after_polls if failure is not None else 0
        self.outputs: dict[int, bool] = {}

    async def start(self) -> None:
        """Nothing to open: a simulated device is always there."""

    async def stop(self) -> None:
        """Nothing to close."""

    def _value(self, point: SimPoint, now_s: float) -> float | int | bool | str | None:
        value: float | int | bool | str | None
        if point.kind == "counter":
            value = point.start + point.step * self._polls
        elif point.kind == "sine":
            value = point.offset + point.amplitude * math.sin(2 * math.pi * now_s / point.period_s)
        elif point.kind == "random_walk":
            walked = self._walk[point.name] + self._rng.gauss(0, point.step)
            if point.min is not None:
                walked = max(point.min, walked)
            if point.max is not None:
                walked = min(point.max, walked)
            self._walk[point.name] = walked
            value = walked
        else:
            value = point.value
        if point.decimals is not None and isinstance(value, float):
            value = round(value, point.decimals)
        return value

    def _fault_now(self) -> str:
        if self._fault_mode == "none" or self._polls < self._fault_after:
            return "none"
        if self._fault_mode == "silent" or self._rng.random() < self._fault_probability:
            return self._fault_mode
        return "none"

    async def read(self) -> Sequence[Record]:
        if self.ctx.bus is not None:
            async with self.ctx.bus.hold():
                return await self._read()
        return await self._read()

    async def _read(self) -> Sequence[Record]:
        fault = self._fault_now()
        if fault in ("timeout", "silent"):
            # Cost the bus what a silent device costs: the whole timeout.
            await asyncio.sleep(self.config.timeout_s)
            raise DeviceError("timeout", f"no answer within {self.config.timeout_s} s")
        if fault == "crash":
            msg = "simulated driver crash"
            raise RuntimeError(msg)
        if self.config.latency_ms:
            await asyncio.sleep(self.config.latency_ms / 1000)
        self._polls += 1
        ts, synced = self.ctx.stamp()
        now_s = ts / 1000
        records: list[Record] = []
        for point in self.config.points:
            if fault == "bad_value":
                records.append(
                    Reading(
                        device=self.config.id,
                        ts=ts,
                        ts_synced=synced,
                        point=point.name,
                        value=None,
                        unit=point.unit,
                        quality=Quality.BAD,
                        reason="bad_value",
                    )
                )
                continue
            records.append(
                Reading(
                    device=self.config.id,
                    ts=ts,
                    ts_synced=synced,
                    point=point.name,
                    value=self._value(point, now_s),
                    unit=point.unit,
                )
            )
        for spec in self.config.events:
            fire = (
                self._polls % spec.every_polls == 0
                if spec.every_polls is not None
                else self._rng.random() < (spec.probability or 0.0)
            )
            if fire:
                records.append(
                    Event(
                        device=self.config.id,
                        ts=ts,
                        ts_synced=synced,
                        type=spec.type,
                        severity=Severity(spec.severity),
                        data=dict(spec.data),
                    )
                )
        return records

    def command_specs(self) -> Sequence[CommandSpec]:
        return (
            CommandSpec("output.set", "switch a simulated output on or off", _validate_output),
            CommandSpec("simulate.fault", "change the fault at run time", _validate_fault),
        )

    async def execute(self, action: str, args: Mapping[str, Any]) -> Mapping[str, Any]:
        if action == "output.set":
            self.outputs[int(args["output"])] = bool(args["on"])
            return {"output": args["output"], "on": args["on"]}
        if action == "simulate.fault":
            self._fault_mode = str(args["mode"])
            self._fault_probability = float(args.get("probability", 1.0))
            self._fault_after = 0
            return {"mode": self._fault_mode, "probability": self._fault_probability}
        raise CommandError("unknown_action", f"simulated devices do not know {action!r}")
