"""The Modbus installer tools as bus tools (:class:`agent.driver.BusTool`): ``scan`` and ``read``.

They run on whatever bus handle they are given: the running agent's own (through its control
socket, at test-read priority between its polls) or one the command line opened. Options and
answers are plain JSON, so the same code serves both; :mod:`drivers.modbus.cli` prints them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest

from agent.bus import BusHandle, SerialLine, TcpHost
from agent.driver import DeviceError
from agent.driver.testing import Standalone
from agent.records import Reading
from drivers.modbus.codec import exception_reason, reply_length
from drivers.modbus.config import ModbusDevice, load_profile, profile_names
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.link import LINK_REASONS, LinkError, ModbusLink

__all__ = ["read", "scan"]


def _handle(bus: BusHandle) -> SerialLine | TcpHost:
    if not isinstance(bus, SerialLine | TcpHost):
        raise TypeError("a Modbus tool needs a serial line or a TCP host")
    return bus


def _bench(bus: SerialLine | TcpHost) -> Standalone:
    """Contexts on the given handle: the tool's drivers share its link, not the agent's."""
    bench = Standalone()
    bench.buses[bus.id] = bus
    return bench


async def _probe_unit(link: ModbusLink, unit: int, timeout_s: float) -> tuple[bool, str]:
    try:
        reply = await link.call(
            ReadHoldingRegistersRequest(dev_id=unit, address=0, count=1),
            expected=reply_length(3, 1),
            timeout_s=timeout_s,
            retries=0,
        )
    except LinkError as exc:
        return False, exc.reason
    if reply.isError():
        return True, exception_reason(int(getattr(reply, "exception_code", 0)))
    return True, "ok"


async def _suggest(bench: Standalone, bus_id: str, unit: int, timeout_s: float) -> list[list[str]]:
    """Profiles whose probe point reads a plausible value from ``unit``."""
    found: list[list[str]] = []
    for name in profile_names():
        profile = load_profile(name)
        probe = profile.probe
        if probe is None:
            continue
        # The profile with every point but the probe switched off: one short request.
        others = [{"name": p.name, "enabled": False} for p in profile.points]
        device = ModbusDevice.model_validate(
            {
                "id": "scan",
                "driver": "modbus",
                "bus": bus_id,
                "unit": unit,
                "profile": name,
                "points": [o for o in others if o["name"] != probe.point],
                "timeout_s": max(timeout_s, 0.3),
            }
        )
        driver = ModbusDriver(device, bench.context(device))
        try:
            readings = [r for r in await driver.read() if isinstance(r, Reading)]
        except DeviceError:
            continue
        value = readings[0].value if readings else None
        if isinstance(value, int | float) and probe.min <= value <= probe.max:
            unit_text = f" {readings[0].unit}" if readings[0].unit else ""
            found.append([name, f"{probe.point} {value}{unit_text}"])
    return found


async def scan(bus: BusHandle, options: Mapping[str, Any], /) -> Mapping[str, Any]:
    """Ask each unit id for one register; any answer, even a Modbus exception, means a device
    is there. Options: ``units`` (list), ``timeout_s``, ``profiles`` (try the built-in ones)."""
    handle = _handle(bus)
    units = [int(u) for u in options.get("units", range(1, 248))]
    timeout_s = float(options.get("timeout_s", 0.2))
    bench = _bench(handle)
    link = ModbusLink(handle)
    found: dict[int, str] = {}
    noise: dict[str, int] = {}
    try:
        for unit in units:
            present, detail = await _probe_unit(link, unit, timeout_s)
            if present:
                found[unit] = detail
            elif detail in LINK_REASONS:
                return {"where": handle.where, "error": handle.down_error or detail}
            elif detail != "timeout":
                noise[detail] = noise.get(detail, 0) + 1
        suggestions = {
            unit: await _suggest(bench, handle.id, unit, timeout_s)
            for unit in found
            if options.get("profiles", True)
        }
    finally:
        await link.aclose()
        await bench.shared.close(every=True)
    return {
        "where": handle.where,
        "tried": len(units),
        "units": [
            {"unit": unit, "answer": detail, "profiles": suggestions.get(unit, [])}
            for unit, detail in found.items()
        ],
        "line_problems": noise,
    }


async def read(bus: BusHandle, options: Mapping[str, Any], /) -> Mapping[str, Any]:
    """One typed read of a device. Options: ``device``, the device's config as YAML would give
    it (``unit``, ``profile`` and/or ``points``, ``timeout_s``, ``retries``)."""
    handle = _handle(bus)
    raw = {**dict(options.get("device", {})), "id": "cli", "driver": "modbus", "bus": handle.id}
    try:
        device = ModbusDevice.model_validate(raw)
    except ValidationError as exc:
        errors = [
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False)
        ]
        return {"config_errors": errors}
    bench = _bench(handle)
    driver = ModbusDriver(device, bench.context(device))
    try:
        await driver.start()
        records = await driver.read()
    except DeviceError as exc:
        return {"error": {"reason": exc.reason, "message": str(exc)}}
    finally:
        await bench.shared.close(every=True)
    return {
        "readings": [
            {
                "point": r.point,
                "value": r.value,
                "unit": r.unit,
                "quality": r.quality.value,
                "reason": r.reason,
            }
            for r in records
            if isinstance(r, Reading)
        ]
    }
