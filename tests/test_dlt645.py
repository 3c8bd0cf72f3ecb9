"""The DL/T 645 driver on real lines: socat pty pairs with the simulated meters on the other end
(drivers/dlt645/simulator.py, at 2400 Bd wire time), through the driver alone and through the
real runtime, also on a line shared with CJ/T 188 meters; the installer's scan. The cross-check
against the PyPI ``dlt645`` package is tests/test_dlt645_crosscheck.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tty
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from agent_proc import AgentProcess, buffer_records, write_config
from peers.modbus_peers import PtyPair, async_wait_until
from test_bus import reads, run_until, stop
from test_fairness import achieved_intervals

from agent.clock import Clock
from agent.config.loader import load_config
from agent.driver import DeviceError
from agent.driver.simulation import LineDevice, serve_line
from agent.driver.testing import Standalone
from agent.records import Quality, Reading
from agent.runtime import Runtime
from drivers.cjt188.simulator import SimulatedMeter as WaterMeter
from drivers.dlt645.driver import Dlt645Driver
from drivers.dlt645.simulator import SimulatedMeter
from drivers.dlt645.tools import scan

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CHAR_S = 10 / 2400
"""2400 Bd 8N1 (a pty refuses parity; real meters run 8E1)."""


def address(n: int) -> str:
    return f"0000500101{n:02d}"


def meter(n: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"m{n}", "driver": "dlt645", "bus": "line", "address": address(n), **extra}


@contextlib.asynccontextmanager
async def simulated_line(tmp_path: Path, devices: Sequence[LineDevice]) -> AsyncIterator[PtyPair]:
    """A socat pty pair: the devices on the peer end, at 2400 Bd wire time."""
    with PtyPair(tmp_path) as pty:
        fd = os.open(pty.peer, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)
        served = asyncio.create_task(serve_line(fd, devices, char_s=CHAR_S))
        try:
            yield pty
        finally:
            served.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await served
            os.close(fd)


def line_config(tmp_path: Path, pty: PtyPair, devices: list[dict[str, Any]]) -> Path:
    buses = [{"id": "line", "serial": {"port": str(pty.agent), "baud": 2400}}]
    return write_config(tmp_path, devices, buses=buses)


@contextlib.asynccontextmanager
async def one_meter(
    tmp_path: Path, sim: SimulatedMeter, **device: Any
) -> AsyncIterator[tuple[Standalone, Dlt645Driver]]:
    async with simulated_line(tmp_path, [sim]) as pty:
        config = {"id": "m", "driver": "dlt645", "bus": "line", "address": sim.address, **device}
        loaded = load_config(line_config(tmp_path, pty, [config]))
        bench = Standalone(loaded.buses)
        try:
            yield bench, Dlt645Driver(loaded.devices[0], bench.context(loaded.devices[0]))
        finally:
            await bench.aclose()


def by_point(records: Sequence[Any]) -> dict[str, Reading]:
    return {r.point: r for r in records if isinstance(r, Reading)}


async def test_a_household_meter_is_read_with_block_reads(tmp_path: Path) -> None:
    sim = SimulatedMeter(address=address(1), energy_kwh=1000.0)
    async with one_meter(tmp_path, sim) as (bench, driver):
        records = await driver.read()
    got = by_point(records)
    tariffs = [got[f"energy_import_{t}"].value for t in ("sharp", "peak", "flat", "valley")]
    assert all(isinstance(v, float) for v in tariffs)
    energy = got["energy_import"].value
    assert isinstance(energy, float)
    assert abs(sum(tariffs) - energy) < 0.05  # type: ignore[arg-type]
    assert 210 < got["voltage_a"].value < 230  # type: ignore[operator]
    assert got["voltage_a"].unit == "V"
    assert got["energy_import"].unit == "kWh"
    assert 49.9 < got["frequency"].value < 50.1  # type: ignore[operator]
    assert abs(got["clock_offset_s"].value) < 3  # type: ignore[arg-type]
    # Energy total and four tariffs in one frame: eight frames for twelve points.
    assert len(driver.plan) == 8
    assert bench.counters["m"]["requests"] == 8
    assert sim.frames_answered == 8


async def test_follow_on_frames_are_joined(tmp_path: Path) -> None:
    # A meter that sends at most 6 value bytes per frame: the 20-byte energy block comes in
    # four frames, the driver asking for each follow-on in turn.
    sim = SimulatedMeter(address=address(1), frame_limit=6)
    async with one_meter(
        tmp_path,
        sim,
        points=[
            "energy_import",
            "energy_import_sharp",
            "energy_import_peak",
            "energy_import_flat",
            "energy_import_valley",
        ],
    ) as (_, driver):
        records = await driver.read()
    got = by_point(records)
    assert len(got) == 5
    assert all(r.quality is Quality.GOOD for r in got.values())
    assert sim.frames_answered == 4


async def test_a_meter_without_blocks_is_read_point_by_point_from_then_on(tmp_path: Path) -> None:
    sim = SimulatedMeter(address=address(1), faults={"no_blocks"})
    async with one_meter(tmp_path, sim) as (bench, driver):
        first = by_point(await driver.read())
        assert all(r.quality is Quality.GOOD for r in first.values()), first
        frames = sim.frames_answered
        await driver.read()
    assert bench.counters["m"]["plan_splits"] == 1
    assert len(driver.plan) == 12
    # The first poll asked the block once; the second went straight to the members.
    assert sim.frames_answered - frames == 12
    assert frames == 13


async def test_identifiers_the_meter_lacks_are_bad_and_the_rest_is_read(tmp_path: Path) -> None:
    # A single-phase meter asked for phase B: on its own, "no such data"; in a block with
    # phase A, FF-filled ("not available"). Both are reported bad with their reason.
    sim = SimulatedMeter(address=address(1))
    odd = {"name": "odd", "di": "0280FF99", "format": "XX.XX"}
    points = ["voltage_a", "voltage_b", "current_b", odd]
    async with one_meter(tmp_path, sim, points=points) as (bench, driver):
        got = by_point(await driver.read())
    assert got["voltage_a"].quality is Quality.GOOD
    assert (got["voltage_b"].quality, got["voltage_b"].reason) == (Quality.BAD, "not_available")
    assert (got["current_b"].quality, got["current_b"].reason) == (Quality.BAD, "no_such_data")
    assert got["odd"].reason == "no_such_data"
    assert bench.counters["m"]["partial_reads"] == 1


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("silent", "timeout"),
        ("garbage", "garbage"),
        ("checksum", "checksum_error"),
        ("truncated", "truncated"),
    ],
)
async def test_a_misbehaving_meter_fails_with_what_the_line_carried(
    tmp_path: Path, fault: Any, reason: str
) -> None:
    sim = SimulatedMeter(address=address(1), faults={fault})
    async with one_meter(tmp_path, sim, timeout_s=0.3) as (bench, driver):
        with pytest.raises(DeviceError) as caught:
            await driver.read()
        line = bench.bus("line")
    assert caught.value.reason == reason
    # A dead meter costs one frame, not its whole plan.
    assert line.counters["requests"] == 1
    if reason != "timeout":
        assert line.counters[reason] == 1


async def test_a_1997_meter(tmp_path: Path) -> None:
    sim = SimulatedMeter(address=address(7), version=1997, phases=3)
    async with one_meter(tmp_path, sim, version=1997, profile="dlt645-1997-three-phase") as (
        _,
        driver,
    ):
        got = by_point(await driver.read())
    assert isinstance(got["voltage_b"].value, int)  # whole volts in 1997
    assert got["power_c"].quality is Quality.GOOD
    assert "frequency" not in got
    assert [f"{r.di:04X}" for r in driver.plan if r.block] == ["901F", "B61F", "B62F", "B63F"]


async def test_several_meters_one_silent_the_others_keep_their_schedule(tmp_path: Path) -> None:
    sims = [SimulatedMeter(address=address(n)) for n in range(1, 6)]
    sims[2].faults.add("silent")
    async with simulated_line(tmp_path, sims) as pty:
        devices = [
            meter(n, interval_s=4, timeout_s=0.4, offline_after=2, points=["energy_import"])
            for n in range(1, 6)
        ]
        path = line_config(tmp_path, pty, devices)
        runtime = Runtime(load_config(path), clock=Clock("always"))
        healthy = ["m1", "m2", "m4", "m5"]
        task = await run_until(
            runtime,
            lambda: all(reads(runtime, d) >= 6 for d in healthy),
            what="six polls of each answering meter",
            timeout_s=90,
        )
        await stop(runtime, task)
    records = buffer_records(tmp_path / "buffer.db")
    achieved = achieved_intervals(records, healthy)
    for device, interval in achieved.items():
        assert abs(interval - 4) <= 0.4, (device, achieved)
    offline = [r for r in records if r["kind"] == "status" and r["device"] == "m3"]
    assert [(r["state"], r["reason"]) for r in offline] == [("offline", "timeout")]


async def test_a_saturated_line_gives_short_and_long_plans_the_same_share(tmp_path: Path) -> None:
    # Three meters read with one frame, three with a plan of six: about 2.7 s of line per
    # round at 2400 Bd, for an interval of 1 s. Every meter gets the same achieved interval.
    sims = [SimulatedMeter(address=address(n), phases=3) for n in range(1, 7)]
    long_plan = [
        "energy_import",
        "voltage_a",
        "current_a",
        "power_total",
        "frequency",
        "meter_time",
    ]
    async with simulated_line(tmp_path, sims) as pty:
        devices = [meter(n, interval_s=1, points=["energy_import"]) for n in (1, 2, 3)]
        devices += [meter(n, interval_s=1, points=long_plan) for n in (4, 5, 6)]
        path = line_config(tmp_path, pty, devices)
        runtime = Runtime(load_config(path), clock=Clock("always"))
        ids = [d["id"] for d in devices]
        task = await run_until(
            runtime,
            lambda: all(reads(runtime, i) >= 8 for i in ids),
            what="8 polls of each",
            timeout_s=120,
        )
        figures = {b["id"]: b for b in runtime.bus_figures()}["line"]
        await stop(runtime, task)
    achieved = achieved_intervals(buffer_records(tmp_path / "buffer.db"), ids, skip=2)
    assert min(achieved.values()) > 1.5, achieved
    assert max(achieved.values()) <= min(achieved.values()) * 1.10, achieved
    # The page's figures: the line is nearly always busy, and a full cycle is longer than the
    # interval asked of it.
    assert figures["utilisation"] > 0.8, figures
    assert figures["cycle_s"] > figures["interval_s"] == 1, figures


async def test_a_line_mixing_dlt645_and_cjt188_meters(tmp_path: Path) -> None:
    """Household electricity meters and water meters on one line: each protocol's meters ignore
    the other's frames, every meter keeps its interval, and a valve command goes through while
    the electricity meters are polled around it."""
    electricity = [SimulatedMeter(address=address(n)) for n in (1, 2, 3)]
    water = [
        WaterMeter(address="78330011223301", valve=True),
        WaterMeter(address="00000040314102", meter_type="heat", di_order="high_first"),
    ]
    async with simulated_line(tmp_path, [*electricity, *water]) as pty:
        devices = [meter(n, interval_s=3, points=["energy_import", "voltage_a"]) for n in (1, 2, 3)]
        devices += [
            {
                "id": "w1",
                "driver": "cjt188",
                "bus": "line",
                "address": water[0].address,
                "meter_type": "cold_water",
                "valve": True,
                "commands": ["valve.close"],
                "interval_s": 3,
            },
            {
                "id": "h2",
                "driver": "cjt188",
                "bus": "line",
                "address": water[1].address,
                "meter_type": "heat",
                "di_order": "high_first",
                "interval_s": 3,
            },
        ]
        path = line_config(tmp_path, pty, devices)
        runtime = Runtime(load_config(path), clock=Clock("always"))
        ids = [d["id"] for d in devices]
        task = await run_until(
            runtime, lambda: all(reads(runtime, i) >= 2 for i in ids), what="two polls of each"
        )
        result = await runtime.execute_command(
            "w1", "valve.close", {}, source="test", command_id="c1"
        )
        await async_wait_until(
            lambda: all(reads(runtime, i) >= 6 for i in ids), what="six polls of each", timeout_s=90
        )
        counters = {i: dict(runtime.state.devices[i].driver_counters) for i in ids}
        await stop(runtime, task)
    assert result["confirmed"] is True
    assert water[0].valve_operations == 1
    records = buffer_records(tmp_path / "buffer.db")
    achieved = achieved_intervals(records, ids, skip=1)
    for device, interval in achieved.items():
        assert abs(interval - 3) <= 0.3, (device, achieved)
    readings = [r for r in records if r["kind"] == "reading"]
    assert {r["device"] for r in readings} == set(ids)
    assert all(r["quality"] == "good" for r in readings), [
        r for r in readings if r["quality"] != "good"
    ][:3]
    assert {r["point"] for r in readings if r["device"] == "m1"} == {"energy_import", "voltage_a"}
    assert any(r["point"] == "supply_temp" for r in readings if r["device"] == "h2")
    # Nobody saw a frame of the other protocol as a reply of theirs.
    failures = {"garbage", "checksum_error", "wrong_address", "wrong_reply", "timeout"}
    assert all(not failures & set(c) for c in counters.values()), counters
    statuses = [r for r in records if r["kind"] == "status" and r["state"] != "online"]
    assert statuses == []


async def test_scan_finds_one_meter_by_the_wildcard_and_many_by_search(tmp_path: Path) -> None:
    numbers = [1, 2, 11, 21, 22, 35]
    sims = [SimulatedMeter(address=address(n)) for n in numbers]
    async with simulated_line(tmp_path, sims[:1]) as pty:
        loaded = load_config(line_config(tmp_path, pty, [meter(1)]))
        bench = Standalone(loaded.buses)
        alone = await scan(bench.bus("line"), {})
        await bench.aclose()
    assert [m["address"] for m in alone["meters"]] == [address(1)]
    assert alone["frames"] == 2  # the wildcard, and the confirming read
    async with simulated_line(tmp_path, sims) as pty:
        bench = Standalone(loaded.buses)
        # Without --search the replies collide, and the scan says so.
        collided = await scan(bench.bus("line"), {"timeout_s": 0.3})
        found = await scan(bench.bus("line"), {"search": True, "timeout_s": 0.2})
        await bench.aclose()
    assert collided["meters"] == []
    assert "--search" in collided["hint"]
    assert [m["address"] for m in found["meters"]] == [address(n) for n in numbers]
    assert all(isinstance(m["energy_import_kwh"], float) for m in found["meters"])
    # The low byte, then one more level where two meters share it (01 and 11, 21 and 22 do
    # not: 01/11/21/22/35 differ in the low byte, 00..99 once, plus the wildcard and the
    # confirming reads).
    assert found["frames"] <= 1 + 100 + len(numbers) + 100 * found["collisions"]


def edge_agent(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=timeout,
    )


def test_edge_agent_simulate_and_scan_through_the_running_agent(tmp_path: Path) -> None:
    # The simulator as an installer starts it, on one end of a socat pair; the agent (a real
    # process) polls the other end; `edge-agent scan dlt645 --search` goes through the agent's
    # control socket and takes its turns between the agent's polls.
    with PtyPair(tmp_path) as pty:
        sim = subprocess.Popen(
            [
                *(sys.executable, "-m", "agent.cli", "simulate", "dlt645"),
                *("--port", str(pty.peer), "--parity", "none", "--address", address(1)),
                *("--meters", "3", "--fault", f"{address(3)}:silent"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert sim.stdout is not None
            assert "3 simulated DL/T 645-2007 meter(s)" in sim.stdout.readline()
            path = write_config(
                tmp_path,
                [meter(1, interval_s=2), meter(2, interval_s=2)],
                buses=[{"id": "line", "serial": {"port": str(pty.agent), "baud": 2400}}],
                control={"socket": str(tmp_path / "control.sock")},
            )
            agent = AgentProcess(path)
            try:
                agent.wait_event("device.up", count=2)
                result = edge_agent(
                    *("scan", "dlt645", "--port", str(pty.agent), "--parity", "none"),
                    *("--config", str(path), "--search", "--timeout", "0.2", "--json"),
                )
                tool = agent.wait_event("tool.run")
                downs = agent.events("device.down")
            finally:
                assert agent.stop() == 0
        finally:
            sim.terminate()
            sim.communicate(timeout=10)  # and close its pipes
    assert result.returncode == 0, result.stderr
    assert "through the running agent" in result.stderr
    assert (tool["driver"], tool["tool"], tool["bus"]) == ("dlt645", "scan", "line")
    answer = json.loads(result.stdout)
    # The silent meter is not found; the two others are, with their energy.
    assert [m["address"] for m in answer["meters"]] == [address(1), address(2)]
    assert all(isinstance(m["energy_import_kwh"], float) for m in answer["meters"])
    # The agent's meters stayed up while the scan shared their line.
    assert downs == []
