"""The driver on lines that behave like real ones: silent unknown units (modbus-serial, an
implementation independent of pymodbus), a dead meter among healthy ones through the real
runtime and scheduler, a serial adapter that vanishes and comes back, a TCP link that drops,
and garbage on the line."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from agent_proc import buffer_records, write_config
from peers.modbus_peers import (
    FakeMeter,
    Harness,
    NodeLine,
    PtyPair,
    async_wait_until,
    free_port,
    registers_of,
)

from agent.clock import Clock
from agent.config.loader import load_config
from agent.driver import DeviceError, Health
from agent.records import Quality, Reading
from agent.runtime import Runtime

pytestmark = pytest.mark.slow


def ddsu666_registers(voltage: float, energy: float) -> dict[int, int]:
    """A CHINT DDSU666's holding registers (every register of its map present)."""
    values = {0x2000: voltage, 0x2002: 1.5, 0x2004: 0.3, 0x2006: 0.0, 0x200A: 0.99, 0x200E: 50.0}
    values |= {0x4000: energy, 0x400A: 0.0}
    registers: dict[int, int] = {}
    for block in (range(0x2000, 0x2010), range(0x4000, 0x400C)):
        registers |= dict.fromkeys(block, 0)
    for address, value in values.items():
        high, low = registers_of(value, "float32")
        registers[address], registers[address + 1] = high, low
    return registers


def meter(device_id: str, unit: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": device_id,
        "driver": "modbus",
        "bus": "line",
        "unit": unit,
        "profile": "chint-ddsu666",
        **extra,
    }


def values(records: list[Any]) -> dict[str, Any]:
    return {r.point: r.value for r in records if isinstance(r, Reading)}


async def read_until_ok(driver: Any, *, timeout_s: float = 20.0) -> list[Any]:
    """Read every 0.1 s until a read succeeds (the link's reconnect pause is up to seconds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return list(await driver.read())
        except DeviceError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_unknown_units_stay_silent_on_a_real_line(tmp_path: Path) -> None:
    port = free_port()
    with NodeLine(tmp_path, {1: {"holding": ddsu666_registers(230.2, 1234.5)}}, tcp_port=port):
        bus = {"id": "line", "tcp": {"host": "127.0.0.1", "port": port}}
        harness = Harness(tmp_path, [bus], [meter("m1", 1), meter("ghost", 5, timeout_s=0.3)])
        try:
            assert values(list(await harness.drivers["m1"].read()))["voltage"] == 230.2
            with pytest.raises(DeviceError) as failed:
                await harness.drivers["ghost"].read()
            assert failed.value.reason == "timeout"
            assert harness.drivers["ghost"].counters["timeout"] == 1
            assert values(list(await harness.drivers["m1"].read()))["energy_import"] == 1234.5
        finally:
            await harness.aclose()


def _reads(runtime: Runtime, device: str) -> int:
    state = runtime.state.devices.get(device)
    return state.reads if state is not None else 0


def _reading_times(records: list[dict[str, Any]], device: str) -> list[int]:
    return sorted({r["ts"] for r in records if r["kind"] == "reading" and r["device"] == device})


async def test_a_dead_meter_backs_off_while_seven_keep_their_interval(tmp_path: Path) -> None:
    interval = 0.5
    units = {u: {"holding": ddsu666_registers(220.0 + u, 100.0 * u)} for u in range(1, 8)}
    with PtyPair(tmp_path) as pty, NodeLine(tmp_path, units, serial_path=pty.peer):
        healthy = [meter(f"meter-{u}", u, interval_s=interval) for u in range(1, 8)]
        dead = meter(
            "dead",
            8,
            interval_s=interval,
            timeout_s=0.4,
            offline_after=2,
            backoff_max_s=4,
        )
        path = write_config(
            tmp_path,
            [*healthy, dead],
            buses=[{"id": "line", "serial": {"port": str(pty.agent), "baud": 9600}}],
        )
        runtime = Runtime(load_config(path), clock=Clock("always"))
        task = asyncio.create_task(runtime.run(install_signals=False))
        try:
            await async_wait_until(
                lambda: task.done() or all(_reads(runtime, d["id"]) >= 20 for d in healthy),
                timeout_s=60,
                what="20 reads of every healthy meter",
            )
        finally:
            runtime.request_stop()
            await asyncio.wait_for(task, 30)
        state = runtime.state.devices["dead"]

    records = buffer_records(tmp_path / "buffer.db")
    for device in healthy:
        times = _reading_times(records, device["id"])
        gaps = [(b - a) / 1000 for a, b in itertools.pairwise(times)]
        assert len(gaps) >= 19
        assert abs(statistics.mean(gaps) - interval) <= 0.1 * interval, (device["id"], gaps)
    # The dead meter was tried far less often than the others were read...
    assert state.health is Health.DOWN
    assert state.failures <= runtime.state.devices["meter-1"].reads / 2
    assert state.errors["timeout"] == state.failures
    # ...and reported offline once, with the reason.
    offline = [r for r in records if r["kind"] == "status" and r["device"] == "dead"]
    assert [(r["state"], r["reason"]) for r in offline] == [("offline", "timeout")]
    # Every healthy reading is good and decoded from the right unit.
    for record in records:
        if record["kind"] == "reading" and record["point"] == "voltage":
            unit = int(record["device"].split("-")[1])
            assert record["value"] == 220.0 + unit


async def test_a_vanished_serial_adapter_is_reopened_by_itself(tmp_path: Path) -> None:
    pty = PtyPair(tmp_path)
    units = {
        1: {"holding": ddsu666_registers(230.0, 1.0)},
        2: {"holding": ddsu666_registers(231.0, 2.0)},
    }
    pty.start()
    peer = NodeLine(tmp_path, units, serial_path=pty.peer)
    peer.start()
    bus = {"id": "line", "serial": {"port": str(pty.agent)}}
    harness = Harness(
        tmp_path, [bus], [meter("m1", 1, timeout_s=0.3), meter("m2", 2, timeout_s=0.3)]
    )
    m1, m2 = harness.drivers["m1"], harness.drivers["m2"]
    try:
        assert values(list(await m1.read()))["voltage"] == 230.0
        # The adapter is unplugged: the pty pair and the meters behind it go away.
        peer.stop()
        pty.kill()
        reasons = []
        for driver in (m1, m2, m1, m2):
            with pytest.raises(DeviceError) as failed:
                await driver.read()
            reasons.append(failed.value.reason)
        assert reasons[0] in ("io_error", "no_port")
        assert set(reasons[1:]) == {"no_port"}
        link = harness.link
        assert link.state == "down"
        # Plugged back in (same /dev/serial/by-id name): both meters read again by themselves.
        pty.start()
        peer.start()
        assert values(await read_until_ok(m1))["voltage"] == 230.0
        assert values(await read_until_ok(m2))["voltage"] == 231.0
        downs = harness.events("bus.link_down")
        ups = harness.events("bus.link_up")
        # One event per transition for the bus, not one per device or per failed read.
        assert len(downs) == 1
        assert len(ups) == 1
        assert downs[0].data["bus"] == "line"
        assert downs[0].data["reason"] in ("io_error", "no_port")
        assert ups[0].ts >= downs[0].ts
    finally:
        await harness.aclose()
        peer.stop()
        pty.kill()


async def test_a_dropped_tcp_link_is_reconnected(tmp_path: Path) -> None:
    port = free_port()
    units = {1: {"holding": ddsu666_registers(229.0, 5.0)}}
    peer = NodeLine(tmp_path, units, tcp_port=port)
    peer.start()
    bus = {"id": "line", "tcp": {"host": "127.0.0.1", "port": port}}
    harness = Harness(tmp_path, [bus], [meter("m1", 1, timeout_s=0.3)])
    m1 = harness.drivers["m1"]
    try:
        assert values(list(await m1.read()))["voltage"] == 229.0
        peer.stop()  # the gateway reboots
        with pytest.raises(DeviceError) as failed:
            await m1.read()
        assert failed.value.reason == "io_error"
        peer.start()
        assert values(await read_until_ok(m1))["voltage"] == 229.0
        assert len(harness.events("bus.link_down")) == 1
        assert len(harness.events("bus.link_up")) == 1
    finally:
        await harness.aclose()
        peer.stop()


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("truncated", "short_reply"),
        ("bad_crc", "crc_error"),
        ("other_unit", "wrong_unit"),
        ("garbage_before", "garbage"),
        ("short_count", "short_reply"),
        ("silent", "timeout"),
    ],
)
async def test_garbage_on_the_line_is_counted_and_the_next_request_succeeds(
    tmp_path: Path, behaviour: str, reason: str
) -> None:
    registers = {0x2000 + i: w for i, w in enumerate(registers_of(230.2, "float32"))}
    with PtyPair(tmp_path) as pty, FakeMeter(pty.peer, 1, registers) as fake:
        bus = {"id": "line", "serial": {"port": str(pty.agent)}}
        device = {
            "id": "m1",
            "driver": "modbus",
            "bus": "line",
            "unit": 1,
            "timeout_s": 0.3,
            "points": [{"name": "voltage", "address": 0x2000, "type": "float32"}],
        }
        harness = Harness(tmp_path, [bus], [device])
        driver = harness.drivers["m1"]
        try:
            assert values(list(await driver.read())) == {"voltage": 230.2}
            fake.script = [behaviour]
            with pytest.raises(DeviceError) as failed:
                await driver.read()
            assert failed.value.reason == reason
            assert driver.counters[reason] == 1
            assert values(list(await driver.read())) == {"voltage": 230.2}
        finally:
            await harness.aclose()


async def test_noise_between_frames_and_retries(tmp_path: Path) -> None:
    registers = {0x10: 7, 0x11: 8}
    with PtyPair(tmp_path) as pty, FakeMeter(pty.peer, 1, registers) as fake:
        bus = {"id": "line", "serial": {"port": str(pty.agent)}}
        device = {
            "id": "m1",
            "driver": "modbus",
            "bus": "line",
            "unit": 1,
            "timeout_s": 0.3,
            "retries": 1,
            "points": [{"name": "a", "address": 0x10}, {"name": "b", "address": 0x11}],
        }
        harness = Harness(tmp_path, [bus], [device])
        driver = harness.drivers["m1"]
        try:
            fake.script = ["noise_after", "ok", "bad_crc", "ok", "garbage_before", "ok"]
            for _ in range(4):
                records = list(await driver.read())
                assert values(records) == {"a": 7, "b": 8}
                assert all(r.quality is Quality.GOOD for r in records)
            # The corrupt replies were retried within the read and counted on the bus.
            link = harness.link
            assert link.counters["crc_error"] == 1
            assert link.counters["garbage"] == 1
            assert link.counters["retries"] == 2
        finally:
            await harness.aclose()


async def test_a_long_plan_is_read_whole_on_a_slow_line(tmp_path: Path) -> None:
    # 16 requests answered 150 ms late each: 2.4 s a read, more than timeout_s · 4 + 1 (2.2 s),
    # which used to cut the last points off every poll as "short_reply".
    registers = {0x100 * i: i for i in range(16)}
    with PtyPair(tmp_path) as pty, FakeMeter(pty.peer, 1, registers, delay_s=0.15) as fake:
        device = {
            "id": "m1",
            "driver": "modbus",
            "bus": "line",
            "unit": 1,
            "timeout_s": 0.3,
            "interval_s": 3600,
            "points": [{"name": f"p{i}", "address": 0x100 * i} for i in range(16)],
        }
        path = write_config(
            tmp_path, [device], buses=[{"id": "line", "serial": {"port": str(pty.agent)}}]
        )
        runtime = Runtime(load_config(path), clock=Clock("always"))
        await runtime.start()
        try:
            await async_wait_until(lambda: runtime.devices["m1"].poller, what="its poller")
            records = list(await runtime.read_device("m1"))
            poller = runtime.devices["m1"].poller
            assert poller is not None
            assert poller.guard_s > 2.4
        finally:
            await runtime.shutdown()
    assert values(records) == {f"p{i}": i for i in range(16)}
    assert all(r.quality is Quality.GOOD for r in records)
    assert fake.requests >= 16


async def test_a_port_that_will_not_open_is_a_link_failure_not_a_crash(tmp_path: Path) -> None:
    not_a_tty = tmp_path / "ttyUSB0"
    not_a_tty.write_bytes(b"")  # exists, but tcgetattr fails on it: termios.error / OSError
    path = write_config(
        tmp_path,
        [meter("m1", 1, interval_s=0.1), meter("m2", 2, interval_s=0.1)],
        buses=[{"id": "line", "serial": {"port": str(not_a_tty)}}],
    )
    runtime = Runtime(load_config(path), clock=Clock("always"))
    task = asyncio.create_task(runtime.run(install_signals=False))
    try:
        await async_wait_until(
            lambda: all(
                (s := runtime.state.devices.get(i)) is not None and s.failures >= 3
                for i in ("m1", "m2")
            ),
            what="failed reads of both meters",
        )
        [line] = runtime.bus_figures()
        states = {i: runtime.state.devices[i] for i in ("m1", "m2")}
    finally:
        runtime.request_stop()
        await asyncio.wait_for(task, 30)
    assert line["state"] == "down"
    assert line["reason"] == "io_error"
    assert "cannot open" in line["error"]
    assert runtime.state.task_restarts == 0
    for state in states.values():
        assert state.health is Health.UNKNOWN
        assert state.errors["io_error"] == state.failures
        assert "driver_error" not in state.errors
    records = buffer_records(tmp_path / "buffer.db")
    assert len([r for r in records if r.get("type") == "bus.link_down"]) == 1
    assert not [r for r in records if r["kind"] == "status"]
