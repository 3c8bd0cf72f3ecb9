"""A real Modbus RTU meter on a USB-RS485 adapter: scan, read every point of its profile, write.

The rig (hardware-tests/README.md, ``modbus``): a USB-RS485 adapter with automatic direction
control (FTDI FT232R or WCH CH340), a twisted pair A-A / B-B to one meter (CHINT DDSU666 or
DTSU666, Eastron SDM120 or SDM630, Acrel ADL3000-E), 120 Ω across A-B at both ends of the line
(a metre of cable on a bench works without), bias resistors once per line (most adapters have
them), and the adapter's GND to the meter's signal ground. The meter needs its mains supply,
wired by someone qualified to do so. Set its address and line settings on its front panel.

    EDGE_HW_MODBUS_PORT=/dev/serial/by-id/usb-FTDI_... EDGE_HW_MODBUS_UNIT=1 \\
    EDGE_HW_MODBUS_PROFILE=chint-ddsu666 [EDGE_HW_MODBUS_BAUD=9600 EDGE_HW_MODBUS_PARITY=N] \\
        pytest hardware-tests -v -k modbus

The write test also needs ``EDGE_HW_MODBUS_WRITE_ADDRESS``: a holding register that is safe to
write (the test reads it and writes the same value back, so the meter is left as found), with
``EDGE_HW_MODBUS_WRITE_TYPE`` (default uint16) for its type.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest

PARITY = {"N": "none", "E": "even", "O": "odd", "NONE": "none", "EVEN": "even", "ODD": "odd"}
PLAUSIBLE = {
    "V": (80.0, 460.0),
    "Hz": (45.0, 65.0),
}


def _line(rig: dict[str, str]) -> tuple[str, int, str]:
    from drivers.modbus.config import load_profile  # noqa: PLC0415

    profile = load_profile(rig["EDGE_HW_MODBUS_PROFILE"])
    baud = int(rig.get("EDGE_HW_MODBUS_BAUD", profile.serial.baud))
    parity = PARITY[rig.get("EDGE_HW_MODBUS_PARITY", profile.serial.parity).upper()]
    return rig["EDGE_HW_MODBUS_PORT"], baud, parity


class _Meter:
    """One driver on the rig's port, built as the runtime builds it."""

    def __init__(self, rig: dict[str, str], points: Sequence[dict[str, Any]] = ()) -> None:
        from agent.config.models import AgentConfig  # noqa: PLC0415
        from agent.driver.testing import Standalone  # noqa: PLC0415
        from agent.logs import get_logger  # noqa: PLC0415
        from drivers.modbus.config import ModbusDevice  # noqa: PLC0415
        from drivers.modbus.driver import ModbusDriver  # noqa: PLC0415

        port, baud, parity = _line(rig)
        config = AgentConfig.model_validate(
            {
                "gateway": {"id": "gw-hw", "community": {"code": "350102001001"}},
                "buses": [{"id": "rig", "serial": {"port": port, "baud": baud, "parity": parity}}],
            }
        )
        raw: dict[str, Any] = {
            "id": "meter",
            "driver": "modbus",
            "bus": "rig",
            "unit": int(rig["EDGE_HW_MODBUS_UNIT"]),
            "timeout_s": 1.0,
            "retries": 1,
            "commands": ["modbus.write"],
        }
        if points:
            raw["points"] = list(points)
        else:
            raw["profile"] = rig["EDGE_HW_MODBUS_PROFILE"]
        self.device = ModbusDevice.model_validate(raw)
        self.bench = Standalone(config.buses, gateway_id=config.gateway.id)
        self.events = self.bench.records
        ctx = self.bench.context(self.device, log=get_logger(test="modbus-hw"))
        self.driver = ModbusDriver(self.device, ctx)

    async def aclose(self) -> None:
        await self.bench.aclose()


@pytest.mark.hardware("modbus")
def test_scan_finds_the_meter_and_suggests_its_profile(
    rig: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from drivers.modbus.cli import add_commands  # noqa: PLC0415
    from drivers.modbus.config import load_profile  # noqa: PLC0415

    port, baud, parity = _line(rig)
    unit = int(rig["EDGE_HW_MODBUS_UNIT"])
    parser = argparse.ArgumentParser(prog="edge-agent")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            "scan",
            "modbus",
            "--port",
            port,
            "--baud",
            str(baud),
            "--parity",
            parity,
            "--units",
            f"{max(1, unit - 2)}-{min(247, unit + 2)}",
            "--json",
        ]
    )
    code = args.func(args)
    out = capsys.readouterr()
    assert code == 0, out.err
    found = {u["unit"]: u for u in json.loads(out.out)["units"]}
    assert unit in found, f"unit {unit} did not answer; the scan said: {out.err}"
    if load_profile(rig["EDGE_HW_MODBUS_PROFILE"]).probe is not None:
        assert rig["EDGE_HW_MODBUS_PROFILE"] in found[unit]["profiles"]


@pytest.mark.hardware("modbus")
def test_every_point_of_the_profile_reads_good(rig: dict[str, str]) -> None:
    from agent.records import Quality, Reading  # noqa: PLC0415

    async def run() -> list[Reading]:
        meter = _Meter(rig)
        try:
            await meter.driver.start()
            return [r for r in await meter.driver.read() if isinstance(r, Reading)]
        finally:
            await meter.aclose()

    readings = asyncio.run(run())
    bad = {r.point: r.reason for r in readings if r.quality is not Quality.GOOD}
    assert not bad, f"points that did not read: {bad}"
    expected = {p.name for p in _Meter(rig).driver.points}
    assert {r.point for r in readings} == expected
    for reading in readings:
        low_high = PLAUSIBLE.get(reading.unit or "")
        if low_high is not None and isinstance(reading.value, float) and reading.value:
            low, high = low_high
            assert low <= reading.value <= high, (reading.point, reading.value, reading.unit)


@pytest.mark.hardware("modbus", requires=("EDGE_HW_MODBUS_WRITE_ADDRESS",))
def test_a_write_where_allowed_is_confirmed_by_reading_back(rig: dict[str, str]) -> None:
    point = {
        "name": "target",
        "address": int(rig["EDGE_HW_MODBUS_WRITE_ADDRESS"], 0),
        "type": rig.get("EDGE_HW_MODBUS_WRITE_TYPE", "uint16"),
        "writable": True,
    }

    async def run() -> tuple[Any, Any]:
        meter = _Meter(rig, [point])
        try:
            [reading] = await meter.driver.read()
            value = getattr(reading, "value", None)
            assert value is not None, f"cannot read the register first: {reading}"
            result = await meter.driver.execute("modbus.write", {"point": "target", "value": value})
            return value, result
        finally:
            await meter.aclose()

    value, result = asyncio.run(run())
    assert result == {"point": "target", "value": value, "confirmed": True}
