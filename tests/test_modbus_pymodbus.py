"""The driver against pymodbus's server: over TCP, and as RTU over a socat pty pair.

Values are placed in the server with an encoder written apart from the driver's codec
(``peers.modbus_peers.registers_of``), so a mistake shared by encoder and decoder cannot hide.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from peers.modbus_peers import (
    Harness,
    PtyPair,
    async_wait_until,
    free_port,
    pymodbus_rtu,
    pymodbus_tcp,
    registers_of,
    sim_device,
)
from pymodbus.client import AsyncModbusTcpClient

from agent.driver import CommandError, DeviceError
from agent.records import Quality, Reading

pytestmark = pytest.mark.slow

NUMERIC = {
    "int16": -12345,
    "uint16": 54321,
    "int32": -123456789,
    "uint32": 3456789012,
    "int64": -1234567890123456789,
    "uint64": 12345678901234567890,
    "float32": 230.2,
    "float64": -1234.5678901234,
}
ORDERS = ("ABCD", "DCBA", "BADC", "CDAB")


def _typed_points() -> tuple[list[dict[str, Any]], dict[int, int], dict[str, Any]]:
    """Points of every type and word order, the registers that hold them, and the values."""
    points: list[dict[str, Any]] = []
    registers: dict[int, int] = {}
    expected: dict[str, Any] = {}
    address = 0
    for data_type, value in NUMERIC.items():
        for order in ORDERS:
            name = f"{data_type}_{order.lower()}"
            points.append(
                {
                    "name": name,
                    "address": address,
                    "type": data_type,
                    "word_order": order,
                    "writable": True,
                }
            )
            for i, word in enumerate(registers_of(value, data_type, order)):
                registers[address + i] = word
            expected[name] = value
            address += 4 + 1  # one unread register between points: the planner fills it
    text = "DDSU666-E"
    points.append({"name": "model", "address": 200, "type": "string", "length": 6})
    raw = text.encode().ljust(12, b"\0")
    for i in range(6):
        registers[200 + i] = int.from_bytes(raw[2 * i : 2 * i + 2], "big")
    expected["model"] = text
    registers[210] = 0b0000_0000_0001_0100
    points.append({"name": "alarm", "address": 210, "type": "bit", "bit": 2, "writable": True})
    points.append({"name": "door", "address": 210, "type": "bit", "bit": 3})
    expected.update(alarm=True, door=False)
    points.append({"name": "scaled", "address": 220, "type": "int16", "scale": 0.1, "unit": "V"})
    registers[220] = 2302
    expected["scaled"] = 230.2
    points.append({"name": "relay", "table": "coil", "address": 5, "writable": True})
    points.append({"name": "input_1", "table": "discrete", "address": 7})
    expected.update(relay=True, input_1=True)
    return points, registers, expected


TABLES = {"coil": {5: True}, "discrete": {7: True}}


@contextlib.asynccontextmanager
async def _server(kind: str, tmp_path: Path, devices: list[Any]) -> AsyncIterator[dict[str, Any]]:
    """A pymodbus server and the bus that reaches it."""
    if kind == "tcp":
        port = free_port()
        async with pymodbus_tcp(devices, port=port) as server:
            yield {"id": "line", "tcp": {"host": "127.0.0.1", "port": port}, "server": server}
        return
    with PtyPair(tmp_path) as pty:
        async with pymodbus_rtu(devices, port=pty.peer) as server:
            yield {"id": "line", "serial": {"port": str(pty.agent)}, "server": server}


def _bus(bus: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in bus.items() if k != "server"}


def _values(records: list[Any]) -> dict[str, Any]:
    return {r.point: r.value for r in records if isinstance(r, Reading)}


@pytest.fixture(params=["tcp", "rtu"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_every_type_and_word_order_round_trips(kind: str, tmp_path: Path) -> None:
    points, registers, expected = _typed_points()
    device = sim_device(1, {"holding": registers, **TABLES})
    async with _server(kind, tmp_path, [device]) as bus:
        harness = Harness(
            tmp_path,
            [_bus(bus)],
            [
                {
                    "id": "m1",
                    "driver": "modbus",
                    "bus": "line",
                    "unit": 1,
                    "points": points,
                    "commands": ["modbus.write"],
                }
            ],
        )
        driver = harness.drivers["m1"]
        try:
            values = _values(list(await driver.read()))
            assert values == expected
            # The gaps of one register were filled: far fewer requests than points.
            assert len(driver.plan) <= 6 < len(points)

            # Writes go out in the point's word order and are confirmed by reading back.
            new = {
                "int16": 321,
                "uint16": 65535,
                "int32": 2**31 - 1,
                "uint32": 7,
                "int64": -(2**63),
                "uint64": 2**64 - 1,
                "float32": -0.5,
                "float64": 6.02214076e23,
            }
            for data_type, value in new.items():
                for order in ORDERS:
                    name = f"{data_type}_{order.lower()}"
                    result = await driver.execute("modbus.write", {"point": name, "value": value})
                    assert result == {"point": name, "value": value, "confirmed": True}
            assert (await driver.execute("modbus.write", {"point": "alarm", "value": False}))[
                "value"
            ] is False
            assert (await driver.execute("modbus.write", {"point": "relay", "value": False}))[
                "value"
            ] is False
            values = _values(list(await driver.read()))
            for data_type, value in new.items():
                for order in ORDERS:
                    assert values[f"{data_type}_{order.lower()}"] == value
            assert values["alarm"] is False
            assert values["relay"] is False
            assert values["door"] is False
            if kind == "tcp":
                # What the server holds is the independent encoding of what was written.
                client = AsyncModbusTcpClient("127.0.0.1", port=bus["tcp"]["port"])
                await client.connect()
                start = points[0]["address"]
                reply = await client.read_holding_registers(start, count=40, device_id=1)
                client.close()
                for offset, order in enumerate(ORDERS):
                    at = offset * 5
                    assert reply.registers[at : at + 1] == registers_of(321, "int16", order)
                assert reply.registers[20 + 5 : 20 + 6] != []
        finally:
            await harness.aclose()


async def test_write_refusals(tmp_path: Path) -> None:
    points, registers, _ = _typed_points()
    async with _server("tcp", tmp_path, [sim_device(1, {"holding": registers, **TABLES})]) as bus:
        harness = Harness(
            tmp_path,
            [_bus(bus)],
            [{"id": "m1", "driver": "modbus", "bus": "line", "unit": 1, "points": points}],
        )
        driver = harness.drivers["m1"]
        [spec] = driver.command_specs()
        try:
            with pytest.raises(CommandError) as refused:
                spec.validate({"point": "door", "value": True})
            assert refused.value.reason == "not_writable"
            for args in (
                {"point": "uint16_abcd", "value": 70000},
                {"point": "int16_abcd", "value": 1.5},
                {"point": "alarm", "value": 1},
                {"point": "nope", "value": 1},
                {"point": "uint16_abcd"},
                {"point": "uint16_abcd", "value": 1, "extra": 2},
            ):
                with pytest.raises(CommandError) as refused:
                    spec.validate(args)
                assert refused.value.reason == "bad_args", args
            assert spec.validate({"point": "uint16_abcd", "value": 7}) == {
                "point": "uint16_abcd",
                "value": 7,
            }
        finally:
            await harness.aclose()


async def test_exception_replies_mark_points_bad_and_split_rejected_reads(
    kind: str, tmp_path: Path
) -> None:
    from pymodbus.simulator import DataType, SimData, SimDevice

    # Registers 0-1 and 8-15 exist; 2-7 do not; 0x3000 does not exist at all.
    holding = [
        SimData(0, values=[100, 101], datatype=DataType.REGISTERS),
        SimData(8, values=list(range(108, 116)), datatype=DataType.REGISTERS),
    ]
    bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
    registers = [SimData(0, values=[0] * 8, datatype=DataType.REGISTERS)]
    device = SimDevice(id=1, simdata=(bits, bits, holding, registers))
    async with _server(kind, tmp_path, [device]) as bus:
        harness = Harness(
            tmp_path,
            [_bus(bus)],
            [
                {
                    "id": "m1",
                    "driver": "modbus",
                    "bus": "line",
                    "unit": 1,
                    "max_gap": 20,
                    "points": [
                        {"name": "a", "address": 0},
                        {"name": "b", "address": 1},
                        {"name": "c", "address": 9},
                        {"name": "missing", "address": 0x3000},
                    ],
                }
            ],
        )
        driver = harness.drivers["m1"]
        try:
            # The planner spans the hole; the device refuses; the driver splits the read.
            assert [(r.address, r.count) for r in driver.plan] == [(0, 10), (0x3000, 1)]
            records = [r for r in await driver.read() if isinstance(r, Reading)]
            by_point = {r.point: r for r in records}
            assert {p: r.value for p, r in by_point.items() if r.quality is Quality.GOOD} == {
                "a": 100,
                "b": 101,
                "c": 109,
            }
            assert by_point["missing"].quality is Quality.BAD
            assert by_point["missing"].reason == "exception_02"
            assert driver.counters["exception_02"] == 2  # the wide read, then "missing"
            assert driver.counters["partial_reads"] == 1
            # The split is remembered: the next cycle asks for what the device serves.
            assert [(r.address, r.count) for r in driver.plan] == [(0, 2), (9, 1), (0x3000, 1)]
            await driver.read()
            assert driver.counters["exception_02"] == 3
        finally:
            await harness.aclose()


async def test_a_device_whose_every_read_is_refused_is_a_failed_read(tmp_path: Path) -> None:
    async with _server("tcp", tmp_path, [sim_device(1, {}, size=16)]) as bus:
        harness = Harness(
            tmp_path,
            [_bus(bus)],
            [
                {
                    "id": "m1",
                    "driver": "modbus",
                    "bus": "line",
                    "unit": 1,
                    "points": [{"name": "x", "address": 0x1000}],
                }
            ],
        )
        try:
            with pytest.raises(DeviceError) as failed:
                await harness.drivers["m1"].read()
            assert failed.value.reason == "exception_02"
        finally:
            await harness.aclose()


async def test_a_silent_unit_costs_at_most_its_timeout_times_tries(
    kind: str, tmp_path: Path
) -> None:
    # pymodbus's server answers an unknown unit with exception 04 (a real line stays silent:
    # see test_modbus_line.py); a unit whose answer takes seconds is silent for the driver.
    async def hang(*_: object) -> None:
        await asyncio.sleep(2)

    hung = sim_device(9, {"input": {0: 1}})
    hung.action = hang
    device = sim_device(1, {"holding": {0: 5}})
    async with _server(kind, tmp_path, [device, hung]) as bus:
        harness = Harness(
            tmp_path,
            [_bus(bus)],
            [
                {
                    "id": "dead",
                    "driver": "modbus",
                    "bus": "line",
                    "unit": 9,
                    "timeout_s": 0.3,
                    "retries": 1,
                    "profile": "eastron-sdm630",
                },
                {
                    "id": "alive",
                    "driver": "modbus",
                    "bus": "line",
                    "unit": 1,
                    "points": [{"name": "x", "address": 0}],
                },
            ],
        )
        try:
            dead = harness.drivers["dead"]
            assert len(dead.plan) > 1
            started = time.monotonic()
            with pytest.raises(DeviceError) as failed:
                await dead.read()
            elapsed = time.monotonic() - started
            assert failed.value.reason == "timeout"
            # One request tried twice, then the rest of the plan left for the next cycle.
            assert dead.counters["requests"] == 1
            assert harness.link.counters["retries"] == 1
            assert elapsed < 0.3 * 2 + 0.5
            # The line itself is fine: the next device answers at once.
            assert _values(list(await harness.drivers["alive"].read())) == {"x": 5}
        finally:
            await harness.aclose()


async def test_deadband_reports_on_change_and_on_heartbeat(tmp_path: Path) -> None:
    registers = {0: 1000, 1: 7}
    async with _server("tcp", tmp_path, [sim_device(1, {"holding": registers})]) as bus:
        harness = Harness(
            tmp_path,
            [_bus(bus)],
            [
                {
                    "id": "m1",
                    "driver": "modbus",
                    "bus": "line",
                    "unit": 1,
                    "report_every_s": 3600,
                    "points": [
                        {"name": "energy", "address": 0, "scale": 0.01, "deadband": 0.5},
                        {"name": "always", "address": 1},
                    ],
                    "commands": ["modbus.write"],
                }
            ],
        )
        driver = harness.drivers["m1"]
        server = bus["server"]
        try:
            assert _values(list(await driver.read())) == {"energy": 10.0, "always": 7}
            assert _values(list(await driver.read())) == {"always": 7}
            await server.context.async_setValues(1, 3, 0, [1040])  # +0.4: inside the deadband
            assert _values(list(await driver.read())) == {"always": 7}
            await server.context.async_setValues(1, 3, 0, [1060])  # +0.6 since the last report
            assert _values(list(await driver.read())) == {"energy": 10.6, "always": 7}
            driver._reported._last[0].ts -= 3600 * 1000  # the heartbeat is due
            assert _values(list(await driver.read())) == {"energy": 10.6, "always": 7}
        finally:
            await harness.aclose()


async def test_a_bus_changed_by_a_reload_gets_a_new_link(tmp_path: Path) -> None:
    from agent_proc import write_config

    from agent.clock import Clock
    from agent.config.loader import load_config
    from agent.runtime import Runtime
    from drivers.modbus.link import ModbusLink

    first, second = free_port(), free_port()
    device = {
        "id": "m1",
        "driver": "modbus",
        "bus": "line",
        "unit": 1,
        "interval_s": 0.1,
        "points": [{"name": "x", "address": 0}],
    }

    def config(port: int) -> Path:
        return write_config(
            tmp_path, [device], buses=[{"id": "line", "tcp": {"host": "127.0.0.1", "port": port}}]
        )

    def links(runtime: Runtime) -> list[ModbusLink]:
        items = runtime._devices.shared._items.values()
        return [r for r in items if isinstance(r, ModbusLink)]

    def last_x(runtime: Runtime) -> Any:
        point = runtime.state.devices["m1"].points.get("x")
        return None if point is None else point.value

    async with (
        pymodbus_tcp([sim_device(1, {"holding": {0: 1}})], port=first),
        pymodbus_tcp([sim_device(1, {"holding": {0: 2}})], port=second),
    ):
        path = config(first)
        runtime = Runtime(
            load_config(path), config_path=path, loader=load_config, clock=Clock("always")
        )
        await runtime.start()
        try:
            await async_wait_until(lambda: last_x(runtime) == 1, what="x = 1 from the first host")
            [old] = links(runtime)
            config(second)
            assert await runtime.reload()
            await async_wait_until(lambda: last_x(runtime) == 2, what="x = 2 from the second")
            assert links(runtime) != [old]
            assert not old._all, "the old link was closed, freeing its port"
        finally:
            await runtime.shutdown()


async def test_writes_through_the_runtime_are_allowlisted_and_audited(tmp_path: Path) -> None:
    from agent_proc import buffer_records, write_config

    from agent.clock import Clock
    from agent.config.loader import load_config
    from agent.runtime import Runtime

    port = free_port()
    registers = {0: 500, **dict(enumerate(registers_of(1.5, "float32"), start=10))}
    # Two meters (one unit id each: a shared address is a config error) of the same kind.
    meters = [sim_device(unit, {"holding": registers}) for unit in (1, 2)]
    async with pymodbus_tcp(meters, port=port):
        points = [
            {"name": "setpoint", "address": 0, "scale": 0.1, "unit": "Hz", "writable": True},
            {"name": "gain", "address": 10, "type": "float32"},
        ]
        devices = [
            {
                "id": "pump",
                "driver": "modbus",
                "bus": "line",
                "unit": 1,
                "interval_s": 0.2,
                "points": points,
                "commands": ["modbus.write"],
            },
            {"id": "ro", "driver": "modbus", "bus": "line", "unit": 2, "points": points},
        ]
        path = write_config(
            tmp_path, devices, buses=[{"id": "line", "tcp": {"host": "127.0.0.1", "port": port}}]
        )
        runtime = Runtime(load_config(path), clock=Clock("always"))
        await runtime.start()
        try:
            result = await runtime.execute_command(
                "pump",
                "modbus.write",
                {"point": "setpoint", "value": 48.5},
                source="test",
                command_id="c1",
            )
            assert result == {"point": "setpoint", "value": 48.5, "confirmed": True}
            refusals = {
                ("ro", "setpoint"): "not_allowed",
                ("pump", "gain"): "not_writable",
            }
            for (device, point), reason in refusals.items():
                with pytest.raises(CommandError) as refused:
                    await runtime.execute_command(
                        device,
                        "modbus.write",
                        {"point": point, "value": 1.0},
                        source="test",
                        command_id="c2",
                    )
                assert refused.value.reason == reason
            readings = await runtime.read_device("pump")
            assert _values(list(readings)) == {"setpoint": 48.5, "gain": 1.5}
        finally:
            await runtime.shutdown()
    audit = [r for r in buffer_records(tmp_path / "buffer.db") if r.get("type") == "agent.command"]
    assert [(e["data"]["target"], e["data"]["status"]) for e in audit] == [
        ("pump", "ok"),
        ("ro", "failed"),
        ("pump", "failed"),
    ]
