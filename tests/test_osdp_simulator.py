"""The simulated reader (drivers/osdp/simulator.py) that the demo and ``edge-agent simulate
osdp`` use, against our control panel on a plain ``os.openpty`` pair (no socat, as in the demo).
It is our codec on both ends: interoperability is test_osdp.py's job, against libosdp."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agent_proc import write_config
from peers.modbus_peers import async_wait_until

from agent.config.loader import load_config
from agent.driver.testing import Standalone
from drivers.osdp.driver import OsdpDriver
from drivers.osdp.simulator import SimulatedReader

KEY = bytes(range(16))


@contextlib.asynccontextmanager
async def line(
    tmp_path: Path, sim: SimulatedReader, **device: Any
) -> AsyncIterator[tuple[Standalone, OsdpDriver]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    port = os.ttyname(slave)
    config = {
        "id": "gate",
        "driver": "osdp",
        "bus": "doors",
        "address": sim.address,
        "commands": ["door.open"],
        **device,
    }
    buses = [{"id": "doors", "serial": {"port": port, "baud": 9600}}]
    loaded = load_config(write_config(tmp_path, [config], buses=buses))
    bench = Standalone(loaded.buses)
    driver = OsdpDriver(bench.context(*loaded.devices))
    served = asyncio.create_task(sim.serve(master))
    run = asyncio.create_task(driver.run())
    try:
        yield bench, driver
    finally:
        for task in (run, served):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await bench.aclose()
        os.close(master)
        os.close(slave)


def types(bench: Standalone) -> list[str]:
    return [getattr(r, "type", "") for r in bench.records]


async def test_a_secure_reader_with_a_door(tmp_path: Path) -> None:
    key_file = tmp_path / "gate.key"
    key_file.write_text(KEY.hex())
    sim = SimulatedReader(address=3, key=KEY)
    async with line(tmp_path, sim, key_file=str(key_file)) as (bench, driver):
        await async_wait_until(lambda: "reader.online" in types(bench), what="online")
        sim.present()
        await async_wait_until(lambda: "access.card" in types(bench), what="a card")
        result = await driver.execute("door.open", {"device": "gate", "seconds": 1})
        assert result["secure_channel"] is True
        await async_wait_until(lambda: "door.closed" in types(bench), timeout_s=15, what="closed")
        assert "door.opened" in types(bench)
        assert "door.forced_open" not in types(bench)
        assert sim.outputs_on == 1


async def test_a_plain_reader_and_a_new_reader_s_key(tmp_path: Path) -> None:
    sim = SimulatedReader(address=4, key=None)
    async with line(tmp_path / "plain", sim, secure_channel="off") as (bench, _driver):
        await async_wait_until(lambda: "reader.online" in types(bench), what="online")
    # A reader that still has the install key gets ours only when asked.
    key_file = tmp_path / "new.key"
    key_file.write_text(KEY.hex())
    sim = SimulatedReader(address=5, key=bytes(range(0x30, 0x40)))
    device = {"key_file": str(key_file), "commands": ["reader.install_key"]}
    async with line(tmp_path / "new", sim, **device) as (bench, driver):
        await async_wait_until(lambda: "security.wrong_key" in types(bench), what="refused")
        await driver.execute("reader.install_key", {"device": "gate", "install_mode": True})
        assert sim.key == KEY
        await async_wait_until(lambda: "reader.online" in types(bench), what="online")


async def test_edge_agent_simulate_osdp_on_a_port(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    from agent_proc import ROOT
    from peers.modbus_peers import PtyPair

    with PtyPair(tmp_path, "sim") as pair:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "agent.cli", "simulate", "osdp", "--port", str(pair.peer)),
                *("--address", "9", "--card-every-s", "0.3", "--baud", "9600"),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            device = {"id": "gate", "driver": "osdp", "bus": "doors", "address": 9}
            device["secure_channel"] = "off"
            buses = [{"id": "doors", "serial": {"port": str(pair.agent), "baud": 9600}}]
            loaded = load_config(write_config(tmp_path, [device], buses=buses))
            bench = Standalone(loaded.buses)
            driver = OsdpDriver(bench.context(*loaded.devices))
            run = asyncio.create_task(driver.run())
            try:
                await async_wait_until(
                    lambda: "access.card" in types(bench), timeout_s=20, what="a card"
                )
            finally:
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run
                await bench.aclose()
        finally:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "card(s) presented" in out
