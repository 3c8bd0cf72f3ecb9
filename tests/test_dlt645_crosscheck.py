"""Our DL/T 645 code against an independent implementation: the PyPI package ``dlt645`` (3.2).

- Its meter (``MeterServerService``, tests/peers/dlt645_meter.py) on one end of a socat pty pair,
  read by our driver: our requests, preamble, address order and +0x33 offset must be what an
  implementation written by others answers, and its replies must decode to the values it was
  given.
- Its master (``MeterClientService``, tests/peers/dlt645_client.py) reading our simulator: our
  simulated meters must be readable by a third-party master, since the demo and the installers'
  bench tests rely on them.

The library knows a subset of the 2007 identifiers and no blocks; what it lacks it answers with
an abnormal reply, which exercises our block fallback against a real peer too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agent_proc import write_config
from peers.modbus_peers import PtyPair, missing_peer
from test_dlt645 import simulated_line

from agent.config.loader import load_config
from agent.driver.testing import Standalone
from agent.records import Quality, Reading
from drivers.dlt645.driver import Dlt645Driver
from drivers.dlt645.simulator import SimulatedMeter

PEERS = Path(__file__).resolve().parent / "peers"
ADDRESS = "000050010107"

pytestmark = pytest.mark.slow


def require_library() -> None:
    try:
        import dlt645  # noqa: F401
    except ImportError:
        missing_peer("the dlt645 package is not installed (pip install -e '.[test]')")


@contextlib.asynccontextmanager
async def library_meter(pty: PtyPair, *values: str) -> AsyncIterator[None]:
    """The library's meter on the peer end, with ``DI=VALUE`` settings."""
    require_library()
    argv = ["--port", str(pty.peer), "--address", ADDRESS]
    if values:
        argv += ["--value", *values]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PEERS / "dlt645_meter.py"),
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if line != b"ready\n":
            err = await asyncio.wait_for(proc.stderr.read(), 30)
            pytest.fail(f"the library's meter did not start: {line!r} {err.decode()}")
        yield
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.communicate(), 30)


async def read_with_our_driver(
    tmp_path: Path, pty: PtyPair, **device: Any
) -> tuple[dict[str, Reading], dict[str, int]]:
    config = {"id": "m", "driver": "dlt645", "bus": "line", "address": ADDRESS, **device}
    buses = [{"id": "line", "serial": {"port": str(pty.agent), "baud": 2400}}]
    loaded = load_config(write_config(tmp_path, [config], buses=buses))
    bench = Standalone(loaded.buses)
    try:
        driver = Dlt645Driver(loaded.devices[0], bench.context(loaded.devices[0]))
        records = await driver.read()
        counters = dict(bench.counters["m"])
    finally:
        await bench.aclose()
    return {r.point: r for r in records if isinstance(r, Reading)}, counters


async def test_our_driver_reads_the_librarys_meter(tmp_path: Path) -> None:
    values = (
        "00010000=10234.56",
        "02010100=231.7",
        "02020100=12.345",
        "02030000=-2.5123",  # exporting: the sign bit
        "02800002=49.98",
        "04000101=26120304",  # YYMMDDWW: 2026-12-03, a Thursday
        "04000102=104530",
    )
    with PtyPair(tmp_path) as pty:
        async with library_meter(pty, *values):
            got, counters = await read_with_our_driver(tmp_path, pty)
    assert got["energy_import"].value == 10234.56
    assert got["energy_import"].unit == "kWh"
    assert got["voltage_a"].value == 231.7
    assert got["current_a"].value == 12.345
    assert got["power_total"].value == -2.5123
    assert got["frequency"].value == 49.98
    assert got["meter_date"].value == "2026-12-03"
    assert got["meter_time"].value == "10:45:30"
    assert all(r.quality is Quality.GOOD for r in got.values()), got
    # The library has no blocks: the tariff block is refused once and read member by member.
    assert counters["plan_splits"] == 1
    assert counters["no_such_data"] == 1


async def test_a_date_the_librarys_meter_leaves_at_zero_is_a_bad_value(tmp_path: Path) -> None:
    """Unset, the library answers 00000000 for the date: month 0 is no date, and the rest of the
    meter is still read."""
    with PtyPair(tmp_path) as pty:
        async with library_meter(pty):
            got, _ = await read_with_our_driver(tmp_path, pty)
    assert got["meter_date"].quality is Quality.BAD
    assert got["meter_date"].reason == "bad_value"
    assert got["energy_import"].value == 12000.25  # the peer's default
    assert got["voltage_a"].quality is Quality.GOOD


async def library_client(port: Path, *argv: str) -> dict[str, Any]:
    require_library()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PEERS / "dlt645_client.py"),
        "--port",
        str(port),
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


async def test_the_librarys_master_reads_our_simulated_meter(tmp_path: Path) -> None:
    sim = SimulatedMeter(address=ADDRESS, energy_kwh=4000.0)
    async with simulated_line(tmp_path, [sim]) as pty:
        got = await library_client(
            pty.agent,
            "--read-address",
            "00010000",  # forward active energy
            "02010100",  # phase A voltage
            "02020100",  # phase A current
            "02030000",  # total active power
            "02800002",  # frequency
            "02800007",  # meter temperature
            "02ABCDEF",  # no such identifier
        )
    assert got["address"] == ADDRESS
    assert 4000.0 <= got["00010000"] < 4000.1
    assert 210 < got["02010100"] < 230
    assert 0 < got["02020100"] < 60
    assert 0 < got["02030000"] < 10
    assert 49.9 < got["02800002"] < 50.1
    assert got["02800007"] == 31.5
    # Our meter answers an unknown identifier as the standard says: abnormal, "no such data".
    assert got["02ABCDEF"] is None
    assert "error=0x02" in got["errors"]["02ABCDEF"], got["errors"]
    assert set(got["errors"]) == {"02ABCDEF"}, got["errors"]
    assert sim.frames_answered == 8
