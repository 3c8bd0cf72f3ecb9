"""The CJ/T 188 driver on a real line: an ``os.openpty`` pair with the simulated meters
(drivers/cjt188/simulator.py) on the other end through ``serve_line``, at 2400 Bd wire time;
through the driver alone (``Standalone``) and through the real runtime; the installer's scan and
the command line. It is our codec on both ends: the frames themselves are pinned by the
reference vectors in test_cjt188_codec.py."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import select
import subprocess
import sys
import threading
import time
import tty
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent_proc import buffer_records, write_config
from peers.modbus_peers import async_wait_until
from pydantic import ValidationError
from test_bus import reads, run_until, stop

from agent.clock import Clock
from agent.config.errors import ConfigError
from agent.config.loader import load_config
from agent.driver import CommandError, DeviceError
from agent.driver.simulation import LineDevice, collide, serve_line
from agent.driver.testing import Standalone
from agent.records import Event, Quality, Reading, Record
from agent.runtime import Runtime
from drivers.cjt188.cli import add_commands
from drivers.cjt188.codec import (
    CURRENT,
    READ_ADDRESS,
    WILDCARD,
    Frame,
    body,
    decode,
    encode,
    parse_address,
)
from drivers.cjt188.config import Cjt188Device
from drivers.cjt188.driver import Cjt188Driver
from drivers.cjt188.simulator import SimulatedMeter, line_device
from drivers.cjt188.tools import scan
from drivers.dlt645.cli import add_commands as dlt645_commands

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "drivers" / "cjt188"
WATER = "78330011223344"
HEAT = "00000040314132"


@contextlib.contextmanager
def pty_pair() -> Iterator[tuple[int, str]]:
    """An ``os.openpty`` pair in raw mode: the master's fd (the meters' end) and the slave's
    path (the gateway's port)."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


@contextlib.asynccontextmanager
async def simulated_line(
    devices: Sequence[LineDevice], baud: int = 2400
) -> AsyncIterator[dict[str, Any]]:
    """The devices on one end of a pty pair, at ``baud`` wire time (8N1: a pty has no parity);
    yields the bus config of the other end."""
    with pty_pair() as (fd, port):
        served = asyncio.create_task(serve_line(fd, devices, char_s=10 / baud))
        try:
            yield {"id": "line", "serial": {"port": port, "baud": baud}}
        finally:
            served.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await served


@contextlib.asynccontextmanager
async def one_meter(
    tmp_path: Path, sim: SimulatedMeter, **device: Any
) -> AsyncIterator[tuple[Standalone, Cjt188Driver]]:
    async with simulated_line([sim]) as bus:
        config = {
            "id": "m",
            "driver": "cjt188",
            "bus": "line",
            "address": sim.address,
            "meter_type": sim.meter_type,
            **device,
        }
        loaded = load_config(write_config(tmp_path, [config], buses=[bus]))
        bench = Standalone(loaded.buses)
        try:
            yield bench, make_driver(bench, loaded.devices[0])
        finally:
            await bench.aclose()


def make_driver(bench: Standalone, config: Any) -> Cjt188Driver:
    assert isinstance(config, Cjt188Device)
    return Cjt188Driver(config, bench.context(config))


def by_point(records: Sequence[Record]) -> dict[str, Reading]:
    return {r.point: r for r in records if isinstance(r, Reading)}


def event_types(records: Sequence[Record]) -> list[str]:
    return [r.type for r in records if isinstance(r, Event)]


# ---------------------------------------------------------------------- reading


async def test_a_cold_water_meter_with_a_valve(tmp_path: Path) -> None:
    sim = SimulatedMeter(address=WATER, valve=True, volume_m3=321.5)
    async with one_meter(tmp_path, sim, valve=True) as (bench, driver):
        records = await driver.read()
    got = by_point(records)
    assert set(got) == {
        "volume",
        "volume_settlement",
        "meter_time",
        "clock_offset_s",
        "battery_low",
        "status",
        "valve",
    }
    volume = got["volume"]
    assert (volume.unit, volume.quality) == ("m³", Quality.GOOD)
    assert 321.5 <= volume.value < 321.6  # type: ignore[operator]
    assert got["volume_settlement"].value == round(321.5 * 0.97, 2)
    assert isinstance(got["meter_time"].value, str)
    assert abs(got["clock_offset_s"].value) < 3  # type: ignore[arg-type]
    assert (got["valve"].value, got["battery_low"].value, got["status"].value) == (
        "open",
        False,
        "0000",
    )
    assert event_types(records) == []  # an open valve and a good battery are no news
    assert bench.counters["m"]["requests"] == 1
    assert sim.frames_answered == 1
    assert sim.last_di == bytes.fromhex("1F 90")  # low byte first, the default
    assert driver.device_inventory() == {
        "m": {
            "protocol": "CJ/T 188-2004",
            "type": "cold_water",
            "type_code": "10",
            "address": WATER,
        }
    }


async def test_a_meter_whose_clock_is_off(tmp_path: Path) -> None:
    sim = SimulatedMeter(address=WATER, meter_type="gas", clock_drift_s=-600)
    async with one_meter(tmp_path, sim) as (_, driver):
        got = by_point(await driver.read())
    assert -603 < got["clock_offset_s"].value < -597  # type: ignore[operator]
    assert "valve" not in got  # a gas meter without a valve


@pytest.mark.parametrize(
    ("sent", "answered"),
    [
        ("low_first", "low_first"),
        ("high_first", "high_first"),
        ("low_first", "high_first"),
        ("high_first", "low_first"),
    ],
)
async def test_a_heat_meter_in_either_identifier_order(
    tmp_path: Path, sent: str, answered: Any
) -> None:
    sim = SimulatedMeter(address=HEAT, meter_type="heat", di_order=answered, energy_kwh=5230.0)
    async with one_meter(tmp_path, sim, di_order=sent) as (_, driver):
        got = by_point(await driver.read())
    assert sim.last_di == bytes.fromhex("1F 90" if sent == "low_first" else "90 1F")
    assert all(r.quality is Quality.GOOD for r in got.values()), got
    assert 58 < got["supply_temp"].value < 62  # type: ignore[operator]
    assert 43 < got["return_temp"].value < 47  # type: ignore[operator]
    assert got["supply_temp"].unit == "°C"
    assert 0.5 < got["flow_rate"].value < 0.7  # type: ignore[operator]
    assert got["flow_rate"].unit == "m³/h"
    assert 8 < got["heat_power"].value < 15  # type: ignore[operator]
    assert got["heat_power"].unit == "kW"
    assert 5230 <= got["heat_energy"].value < 5231  # type: ignore[operator]
    assert got["heat_energy"].unit == "kWh"
    assert got["heat_settlement"].value == round(5230 * 0.95, 2)
    assert isinstance(got["working_hours"].value, int)
    assert got["working_hours"].unit == "h"
    assert "volume_settlement" not in got


async def test_a_cooling_meter_counting_in_gigajoules(tmp_path: Path) -> None:
    sim = SimulatedMeter(address=HEAT, meter_type="cooling", energy_unit=0x11, energy_kwh=2777.8)
    async with one_meter(tmp_path, sim) as (_, driver):
        got = by_point(await driver.read())
    assert got["heat_energy"].unit == "GJ"
    assert got["heat_energy"].value == pytest.approx(10.0, abs=0.02)
    assert got["supply_temp"].value < got["return_temp"].value  # type: ignore[operator]


async def test_values_the_meter_fills_with_ff_are_bad_and_the_rest_is_read(tmp_path: Path) -> None:
    sim = SimulatedMeter(address=WATER, missing={"volume_settlement", "meter_time"})
    async with one_meter(tmp_path, sim) as (bench, driver):
        got = by_point(await driver.read())
    assert got["volume"].quality is Quality.GOOD
    for name in ("volume_settlement", "meter_time"):
        assert (got[name].value, got[name].quality, got[name].reason) == (
            None,
            Quality.BAD,
            "not_available",
        )
    assert "clock_offset_s" not in got
    assert bench.counters["m"]["not_available"] == 2


async def test_a_deadband_holds_back_a_volume_that_did_not_move(tmp_path: Path) -> None:
    sim = SimulatedMeter(address=WATER)
    async with one_meter(tmp_path, sim, deadbands={"volume": 1.0}) as (_, driver):
        first = by_point(await driver.read())
        second = by_point(await driver.read())
    assert "volume" in first
    assert "volume" not in second
    assert "volume_settlement" in second  # no deadband: every poll


# ---------------------------------------------------------------------- valve and battery


async def test_the_valve_closes_and_opens_confirmed_with_one_event_each(tmp_path: Path) -> None:
    sim = SimulatedMeter(address=WATER, valve=True)
    commands = ["valve.open", "valve.close"]
    async with one_meter(tmp_path, sim, valve=True, commands=commands) as (bench, driver):
        assert [s.action for s in driver.command_specs()] == commands
        polled: list[Record] = list(await driver.read())
        result = await driver.execute("valve.close", {})
        assert result == {"valve": "closed", "confirmed": True, "status": "0100"}
        assert not sim.valve_open
        # The command saw the transition: its event went to the sink, once.
        assert event_types(bench.records) == ["meter.valve_closed"]
        closed = bench.events("meter.valve_closed")[0]
        assert closed.severity == "warning"
        assert closed.data["address"] == WATER
        after = await driver.read()
        polled += after
        assert by_point(after)["valve"].value == "closed"
        polled += await driver.read()
        await driver.execute("valve.open", {})
        polled += await driver.read()
        assert by_point(polled[-7:])["valve"].value == "open"
    # Polls never repeat what the commands already reported.
    assert event_types(polled) == []
    assert event_types(bench.records) == ["meter.valve_closed", "meter.valve_opened"]
    assert bench.events("meter.valve_opened")[0].severity == "info"
    assert sim.valve_operations == 2
    assert bench.counters["m"]["valve_commands"] == 2


async def test_a_valve_closed_behind_the_agents_back_is_an_event_of_the_poll(
    tmp_path: Path,
) -> None:
    sim = SimulatedMeter(address=WATER, valve=True)
    async with one_meter(tmp_path, sim, valve=True) as (_, driver):
        first = await driver.read()
        sim.valve_open = False  # the prepaid credit ran out
        second = await driver.read()
        third = await driver.read()
    assert event_types(first) == []
    assert event_types(second) == ["meter.valve_closed"]
    assert event_types(third) == []


async def test_a_stuck_valve_is_not_confirmed(tmp_path: Path) -> None:
    sim = SimulatedMeter(address=WATER, valve=True, faults={"valve_stuck"})
    async with one_meter(tmp_path, sim, valve=True, commands=["valve.close"]) as (bench, driver):
        with pytest.raises(CommandError) as caught:
            await driver.execute("valve.close", {})
    assert caught.value.reason == "not_confirmed"
    assert "open" in str(caught.value)
    assert bench.counters["m"]["not_confirmed"] == 1
    assert sim.valve_open


async def test_without_a_valve_there_is_no_valve_command(tmp_path: Path) -> None:
    sim = SimulatedMeter(address=WATER)
    async with one_meter(tmp_path, sim) as (_, driver):
        assert driver.command_specs() == ()
        with pytest.raises(CommandError) as caught:
            await driver.execute("valve.close", {})
        assert caught.value.reason == "unsupported"
        with pytest.raises(CommandError):
            await driver.execute("valve.jam", {})
    assert sim.frames_answered == 0


async def test_battery_low_and_ok_are_reported_once_each(tmp_path: Path) -> None:
    sim = SimulatedMeter(address=WATER)
    records: list[list[Record]] = []
    async with one_meter(tmp_path, sim) as (_, driver):
        records.append(list(await driver.read()))
        sim.battery_low = True
        records += [list(await driver.read()) for _ in range(3)]
        sim.battery_low = False
        records += [list(await driver.read()) for _ in range(2)]
    assert [event_types(r) for r in records] == [
        [],
        ["meter.battery_low"],
        [],
        [],
        ["meter.battery_ok"],
        [],
    ]
    assert [by_point(r)["battery_low"].value for r in records] == [
        False,
        True,
        True,
        True,
        False,
        False,
    ]
    low = next(r for r in records[1] if isinstance(r, Event))
    assert low.severity == "warning"
    assert low.data["status"] == "0400"


# ---------------------------------------------------------------------- failures


async def test_a_silent_meter_times_out(tmp_path: Path) -> None:
    sim = SimulatedMeter(address=WATER, faults={"silent"})
    async with one_meter(tmp_path, sim, timeout_s=0.3, retries=1) as (bench, driver):
        with pytest.raises(DeviceError) as caught:
            await driver.read()
        line = bench.bus("line")
    assert caught.value.reason == "timeout"
    assert line.counters["requests"] == 2  # the first try and its resend
    assert line.counters["retries"] == 1
    assert bench.counters["m"]["timeout"] == 1
    assert 0.6 < driver.read_budget_s < 1.2


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("garbage", "garbage"), ("checksum", "checksum_error"), ("truncated", "truncated")],
)
async def test_a_misbehaving_meter_fails_with_what_the_line_carried(
    tmp_path: Path, fault: Any, reason: str
) -> None:
    sim = SimulatedMeter(address=WATER, faults={fault})
    async with one_meter(tmp_path, sim, timeout_s=0.4) as (bench, driver):
        with pytest.raises(DeviceError) as caught:
            await driver.read()
        line = bench.bus("line")
    assert caught.value.reason == reason
    assert bench.counters["m"][reason] == 1
    assert line.counters[reason] == 1
    assert line.counters["requests"] == 1


class Impostor:
    """A LineDevice that answers every 901F read with another frame built from the request:
    the wrong address, a stale SER, another meter type."""

    answer_delay_s = 0.02

    def __init__(self, how: str) -> None:
        self.how = how
        self.meter = SimulatedMeter(address=WATER)

    def hear(self, data: bytes, /) -> bytes | None:
        request = decode(data)
        reply = self.meter.answer(request)
        assert reply is not None
        if self.how == "address":
            reply = Frame(reply.meter_type, parse_address("1"), reply.control, reply.data)
        elif self.how == "ser":
            reply = Frame(
                reply.meter_type,
                reply.address,
                reply.control,
                reply.data[:2] + b"\x7f" + reply.data[3:],
            )
        elif self.how == "type":
            reply = Frame(0x11, reply.address, reply.control, reply.data)
        elif self.how == "di":
            reply = Frame(
                reply.meter_type, reply.address, reply.control, body(0x902F, 0) + reply.data[3:]
            )
        return encode(reply)


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("address", "wrong_address"),
        ("ser", "wrong_reply"),
        ("type", "wrong_reply"),
        ("di", "wrong_reply"),
    ],
)
async def test_a_reply_that_is_not_this_meters_is_refused(
    tmp_path: Path, how: str, reason: str
) -> None:
    async with simulated_line([Impostor(how)]) as bus:
        config = {"id": "m", "driver": "cjt188", "bus": "line", "address": WATER}
        loaded = load_config(
            write_config(tmp_path, [config | {"meter_type": "cold_water"}], buses=[bus])
        )
        bench = Standalone(loaded.buses)
        driver = make_driver(bench, loaded.devices[0])
        try:
            with pytest.raises(DeviceError) as caught:
                await driver.read()
        finally:
            await bench.aclose()
    assert caught.value.reason == reason
    assert bench.counters["m"][reason] == 1


async def test_the_serial_number_counts_up_per_request(tmp_path: Path) -> None:
    heard: list[int] = []
    sim = SimulatedMeter(address=WATER)

    class Listening:
        answer_delay_s = 0.02

        def hear(self, data: bytes, /) -> bytes | None:
            heard.append(decode(data).data[2])
            return sim.hear(data)

    async with simulated_line([Listening()]) as bus:
        config = {"id": "m", "driver": "cjt188", "bus": "line", "address": WATER}
        loaded = load_config(
            write_config(tmp_path, [config | {"meter_type": "cold_water"}], buses=[bus])
        )
        bench = Standalone(loaded.buses)
        driver = make_driver(bench, loaded.devices[0])
        try:
            for _ in range(3):
                await driver.read()
        finally:
            await bench.aclose()
    assert heard == [0, 1, 2]


# ---------------------------------------------------------------------- the runtime


@pytest.mark.slow
async def test_meters_through_the_runtime_with_a_valve_command(tmp_path: Path) -> None:
    water = SimulatedMeter(address=WATER, valve=True)
    heat = SimulatedMeter(address=HEAT, meter_type="heat", di_order="high_first")
    silent = SimulatedMeter(address="00000000000003", faults={"silent"})
    async with simulated_line([water, heat, silent]) as bus:
        devices = [
            {
                "id": "water",
                "driver": "cjt188",
                "bus": "line",
                "address": WATER,
                "meter_type": "cold_water",
                "valve": True,
                "commands": ["valve.close"],
                "interval_s": 1,
            },
            {
                "id": "heat",
                "driver": "cjt188",
                "bus": "line",
                "address": HEAT,
                "meter_type": "heat",
                "di_order": "high_first",
                "interval_s": 1,
            },
            {
                "id": "dead",
                "driver": "cjt188",
                "bus": "line",
                "address": "3",
                "meter_type": "cold_water",
                "interval_s": 1,
                "timeout_s": 0.3,
                "offline_after": 1,
            },
        ]
        runtime = Runtime(
            load_config(write_config(tmp_path, devices, buses=[bus])), clock=Clock("always")
        )
        task = await run_until(
            runtime,
            lambda: reads(runtime, "water") >= 2 and reads(runtime, "heat") >= 2,
            what="two polls of each answering meter",
        )
        result = await runtime.execute_command(
            "water", "valve.close", {}, source="test", command_id="c1"
        )
        await async_wait_until(lambda: reads(runtime, "water") >= 4, what="polls after it")
        await stop(runtime, task)
    assert result["confirmed"] is True
    records = buffer_records(tmp_path / "buffer.db")
    closed = [r for r in records if r["kind"] == "event" and r["type"] == "meter.valve_closed"]
    assert len(closed) == 1
    valves = [r["value"] for r in records if r.get("point") == "valve"]
    assert valves[0] == "open"
    assert valves[-1] == "closed"
    temps = [
        r["value"] for r in records if r["device"] == "heat" and r.get("point") == "supply_temp"
    ]
    assert temps
    assert all(55 < t < 65 for t in temps)
    offline = [
        (r["state"], r["reason"])
        for r in records
        if r["kind"] == "status" and r["device"] == "dead"
    ]
    assert offline[:1] == [("offline", "timeout")]


# ---------------------------------------------------------------------- the scan


async def test_scan_finds_one_meter_by_the_wildcard(tmp_path: Path) -> None:
    sim = SimulatedMeter(address=HEAT, meter_type="heat")
    async with simulated_line([sim]) as bus:
        loaded = load_config(write_config(tmp_path, [], buses=[bus]))
        bench = Standalone(loaded.buses)
        try:
            found = await scan(bench.bus("line"), {})
        finally:
            await bench.aclose()
    [meter] = found["meters"]
    assert (meter["address"], meter["type"], meter["found_by"]) == (HEAT, "heat", "wildcard")
    assert 58 < meter["values"]["supply_temp"] < 62
    assert meter["units"]["heat_energy"] == "kWh"
    assert found["frames"] == 2  # the wildcard, and the confirming read
    assert sim.frames_answered == 2


@pytest.mark.slow
async def test_scan_searches_several_meters_by_abbreviated_addresses(tmp_path: Path) -> None:
    # 00000000100101 and 00000000100201 share their low byte (01): the search narrows them by
    # the next byte; 00000000100003 stands alone; a heat meter among water meters.
    sims = [
        SimulatedMeter(address="00000000100101", answer_delay_s=0.01),
        SimulatedMeter(address="00000000100201", answer_delay_s=0.01, valve=True),
        SimulatedMeter(address="00000000100003", meter_type="heat", answer_delay_s=0.01),
    ]
    async with simulated_line(sims, baud=9600) as bus:
        loaded = load_config(write_config(tmp_path, [], buses=[bus]))
        bench = Standalone(loaded.buses)
        try:
            collided = await scan(bench.bus("line"), {"timeout_s": 0.15})
            found = await scan(bench.bus("line"), {"search": True, "timeout_s": 0.1})
            only_heat = await scan(bench.bus("line"), {"meter_type": "heat"})
        finally:
            await bench.aclose()
    # The three read-address replies to the wildcard, ORed on the line, happen to make a frame
    # that checks, from 00000000100303 (a "gas" meter: 10 | 20 = 30): nobody answers there.
    wildcard = encode(Frame(0xAA, WILDCARD, 0x03, body(READ_ADDRESS, 0)))
    replies = [SimulatedMeter(m.address, m.meter_type).hear(wildcard) or b"" for m in sims]
    assert decode(collide(replies)).address == parse_address("00000000100303")
    assert collided["meters"] == []
    assert collided["phantoms"] == ["00000000100303"]
    assert "--search" in collided["hint"]
    assert [(m["address"], m["type"]) for m in found["meters"]] == [
        ("00000000100003", "heat"),
        ("00000000100101", "cold_water"),
        ("00000000100201", "cold_water"),
    ]
    assert all(m["found_by"] == "search" for m in found["meters"])
    assert isinstance(found["meters"][0]["values"]["supply_temp"], float)
    assert all(isinstance(m["values"]["volume"], float) for m in found["meters"])
    assert (found["unresolved"], found["phantoms"]) == ([], ["00000000100303"])
    # The wildcard and its phantom's confirming read, the low byte (00..99), the second byte
    # under 01 (where two meters collided), each meter's confirming read.
    assert found["frames"] == 2 + 100 + 100 + 3
    assert found["collisions"] == 1
    assert [m["address"] for m in only_heat["meters"]] == ["00000000100003"]


# ---------------------------------------------------------------------- config, docs, CLI


def device(**keys: Any) -> Cjt188Device:
    base = {"id": "m", "driver": "cjt188", "address": "123", "meter_type": "cold_water"}
    return Cjt188Device.model_validate(base | keys)


def test_the_config_normalises_and_derives() -> None:
    water = device()
    assert water.address == "00000000000123"
    assert water.kind == "water_meter"
    assert water.type_code == 0x10
    assert device(meter_type="heat").kind == "heat_meter"
    assert device(meter_type="gas").kind == "gas_meter"
    assert device(meter_type="gas", kind="other").kind == "other"
    assert device().timeout_s == 1.0
    assert line_device(device(valve=True, di_order="high_first")).di_order == "high_first"


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"commands": ["valve.close"]}, "valve: true"),
        ({"address": "123456789012345"}, "14 digits"),
        ({"address": "12AB"}, "14 digits"),
        ({"meter_type": "electricity"}, "cold_water"),
        ({"deadbands": {"volumes": 0.1}}, "did you mean 'volume'"),
        ({"deadbands": {"supply_temp": 0.1}}, "not a numeric reading of a cold_water meter"),
        ({"di_order": "big"}, "low_first"),
        ({"preamble": 5}, "less than or equal to 4"),
    ],
)
def test_the_config_refuses(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        device(**keys)
    assert message in str(caught.value)


def test_seven_data_bits_are_refused_at_the_bus(tmp_path: Path) -> None:
    bus = {"id": "line", "serial": {"port": "/dev/ttyS0", "baud": 2400, "data_bits": 7}}
    config = {"id": "m", "driver": "cjt188", "bus": "line", "address": "1", "meter_type": "gas"}
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, [config], buses=[bus]))
    assert "8 data bits" in str(caught.value)


def test_the_readme_has_the_sections_and_the_sample(tmp_path: Path) -> None:
    readme = (FOLDER / "README.md").read_text()
    for section in (
        "## Devices",
        "## Configuration",
        "## Readings",
        "## Health",
        "## Troubleshooting",
        "## Supported and not supported",
    ):
        assert section in readme
    sample = (FOLDER / "sample.yaml").read_text()
    begin, end = "<!-- sample:begin -->\n```yaml\n", "```\n<!-- sample:end -->"
    assert readme.split(begin, 1)[1].split(end, 1)[0] == sample
    parsed = yaml.safe_load(sample)
    loaded = load_config(write_config(tmp_path, parsed["devices"], buses=parsed["buses"]))
    assert {d.driver for d in loaded.devices} == {"cjt188"}
    assert all(d.code is not None and len(d.code) == 20 for d in loaded.devices)
    water, heat = loaded.devices
    assert isinstance(water, Cjt188Device)
    assert water.valve
    assert water.commands == ["valve.open", "valve.close"]
    assert (loaded.buses[0].serial.baud, loaded.buses[0].serial.parity) == (2400, "even")  # type: ignore[union-attr]
    assert heat.kind == "heat_meter"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="edge-agent")
    subparsers = top.add_subparsers(dest="command", required=True)
    dlt645_commands(subparsers)  # another family's scan/simulate groups come first
    add_commands(subparsers)
    return top


def test_the_cli_shares_the_scan_and_simulate_groups() -> None:
    args = parser().parse_args(
        ["scan", "cjt188", "--port", "/dev/ttyUSB0", "--search", "--type", "heat"]
    )
    assert (args.baud, args.parity, args.search, args.type, args.timeout) == (
        2400,
        "even",
        True,
        "heat",
        0.3,
    )
    args = parser().parse_args(
        ["simulate", "cjt188", "--port", "/tmp/x", "--address", "1", "--address", "2", "--valve"]
    )
    assert args.address == ["00000000000001", "00000000000002"]
    assert parser().parse_args(["scan", "dlt645", "--port", "/dev/ttyUSB0"]).search is False
    with pytest.raises(SystemExit):
        parser().parse_args(["simulate", "cjt188", "--port", "p", "--address", "1", "--type", "x"])


def test_edge_agent_scan_cjt188_on_a_simulated_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The CLI's scan opens the port itself (no agent), with the meter in a thread of its own.
    sim = SimulatedMeter(address=WATER)
    with pty_pair() as (fd, port):
        loop = asyncio.new_event_loop()
        served = loop.create_task(serve_line(fd, [sim], char_s=10 / 2400))

        def serve() -> None:
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(served)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            args = parser().parse_args(["scan", "cjt188", "--port", port, "--parity", "none"])
            code = args.func(args)
        finally:
            loop.call_soon_threadsafe(served.cancel)
            thread.join(10)
            loop.close()
    out = capsys.readouterr().out
    assert code == 0
    assert f"meter {WATER}  cold_water  (wildcard)  volume 123.45 m³" in out


def test_edge_agent_simulate_cjt188_answers_on_a_port(tmp_path: Path) -> None:
    script = (
        "import argparse, sys\n"
        "from drivers.cjt188.cli import add_commands\n"
        "p = argparse.ArgumentParser(); s = p.add_subparsers(dest='c'); add_commands(s)\n"
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
    )
    with pty_pair() as (fd, port):
        sim = subprocess.Popen(
            [
                *(sys.executable, "-c", script, "simulate", "cjt188", "--port", port),
                *("--parity", "none", "--address", HEAT, "--type", "heat", "--meters", "2"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert sim.stdout is not None
            line = sim.stdout.readline()
            assert "2 simulated CJ/T 188 heat meter(s)" in line, line
            request = Frame(0x20, parse_address("00000040314133"), 0x01, body(CURRENT, 9))
            os.write(fd, encode(request))
            reply = bytearray()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                ready, _, _ = select.select([fd], [], [], 0.1)
                if ready:
                    reply += os.read(fd, 256)
                    with contextlib.suppress(ValueError):
                        frame = decode(bytes(reply))
                        break
            else:
                raise AssertionError(f"no reply from the simulator: {reply.hex(' ')}")
        finally:
            sim.terminate()
            sim.communicate(timeout=10)  # and closes its pipes
    assert frame.address == parse_address("00000040314133")  # the second meter
    assert frame.meter_type == 0x20
    assert len(frame.data) == 0x2E
