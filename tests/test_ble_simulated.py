"""The simulated Bluetooth adapter (drivers/ble/simulated.py) through the real agent runtime, on
the demo's own tags: it plugs in at bleak's backend seam, so what it sends goes through the real
driver (decoders, presence, presses, battery).

The script's timings are shortened here (the demo's run in minutes). Proves: the wristband
leaves and comes back (present, away, present); each SOS press is one ``tag.sos``, none missed
and none twice although each is repeated; the button's low battery is told; the wheelchair's
iBeacon is recognised by its identity while its address rotates and it is never away; the
sensor's temperature and humidity arrive with units; ``edge-agent scan ble`` hears the simulated
air through the running agent.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from agent_proc import AgentProcess, buffer_records, write_config
from peers.modbus_peers import async_wait_until
from test_ble import adverts, events, presence
from test_bus import run_until, stop
from test_dlt645 import edge_agent

from agent.clock import Clock
from agent.config.loader import load_config
from agent.demo import _radio
from agent.runtime import Runtime
from drivers.ble import simulated

WRIST, SOS, CHAIR, SENSOR = "wrist-b5-101", "sos-b5-lobby", "wheelchair-07", "pump-room-temp"


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's script in seconds: the wearer is gone from 2.5 s to 6 s, the button is pressed
    at 1 s and then every 2 s (each press sent for 1 s), the beacon's address rotates every
    second."""
    monkeypatch.setattr(simulated, "_AWAY_EVERY_S", 600.0)
    monkeypatch.setattr(simulated, "_AWAY_FROM_S", 2.5)
    monkeypatch.setattr(simulated, "_AWAY_UNTIL_S", 6.0)
    monkeypatch.setattr(simulated, "_PRESS_HELD_S", 1.0)
    monkeypatch.setattr(simulated, "_ROTATE_S", 1.0)
    monkeypatch.setattr(simulated, "_DRIFT_S", 0.5)
    for tag_class in ("wristband", "sos_button", "asset"):
        monkeypatch.setitem(simulated._INTERVAL_S, tag_class, 0.2)
    monkeypatch.setitem(simulated._INTERVAL_S, "sensor", 0.5)
    monkeypatch.setitem(simulated._FIRST_PRESS_S, "sos_button", (1.0, 2.0))


def demo_radio(tmp_path: Path, **sections: Any) -> Path:
    bus, tags = _radio()
    for tag in tags:
        if tag["id"] == WRIST:
            tag["away_after_s"] = 1.5
    return write_config(tmp_path, tags, buses=[bus], **sections)


@pytest.mark.usefixtures("quick")
async def test_the_demo_tags_leave_return_press_and_measure(tmp_path: Path) -> None:
    runtime = Runtime(load_config(demo_radio(tmp_path)), clock=Clock("always"))
    task = await run_until(
        runtime, lambda: presence(runtime, WRIST) == "away", what="the wristband away"
    )
    await async_wait_until(
        lambda: presence(runtime, WRIST) == "present", what="the wristband back", timeout_s=30
    )
    assert adverts(runtime, CHAIR) >= 20  # heard from several addresses meanwhile
    await stop(runtime, task)
    records = buffer_records(tmp_path / "buffer.db")

    comings = [
        r["type"]
        for r in records
        if r["kind"] == "event"
        and r["device"] == WRIST
        and r["type"] in ("tag.present", "tag.away")
    ]
    assert comings[:3] == ["tag.present", "tag.away", "tag.present"], comings
    assert all(a != b for a, b in itertools.pairwise(comings)), comings
    presses = [e["data"]["counter"] for e in events(records, SOS, "tag.sos")]
    assert len(presses) >= 2  # presses at 1 s, 3 s, 5 s … and the run lasted over 6 s
    assert presses == list(range(presses[0], presses[0] + len(presses))), presses
    assert all(e["severity"] == "alarm" for e in events(records, SOS, "tag.sos"))
    assert events(records, SOS, "tag.button") == []  # an SOS button's press is an SOS
    assert len(events(records, SOS, "tag.battery_low")) == 1
    assert len(events(records, CHAIR, "tag.present")) == 1
    assert events(records, CHAIR, "tag.away") == []
    units = {
        r["point"]: r.get("unit")
        for r in records
        if r["kind"] == "reading" and r["device"] == SENSOR
    }
    assert units["temperature"] == "°C", units
    assert units["humidity"] == "%", units
    temperatures = [
        r["value"] for r in records if r["device"] == SENSOR and r.get("point") == "temperature"
    ]
    assert all(15 <= t <= 30 for t in temperatures), temperatures


async def test_scan_ble_hears_the_simulated_air_through_the_agent(tmp_path: Path) -> None:
    path = demo_radio(tmp_path, control={"socket": str(tmp_path / "control.sock")})
    agent = AgentProcess(path)
    try:
        await asyncio.to_thread(agent.wait_event, "device.up", timeout_s=60)
        argv = ["scan", "ble", "--seconds", "3", "--config", str(path), "--json"]
        result = await asyncio.to_thread(edge_agent, *argv)
    finally:
        assert await asyncio.to_thread(agent.stop) == 0
    assert result.returncode == 0, result.stderr
    assert "through the running agent" in result.stderr
    out = json.loads(result.stdout)
    assert out["where"] == "bluetooth hci0 (simulated)"
    heard = {d["address"]: d for d in out["devices"]}
    assert heard["A4:C1:38:00:11:22"]["formats"] == ["bthome"]
    assert "temperature" in heard["A4:C1:38:00:11:22"]["values"]
    beacons = [d for d in heard.values() if d["enrol_by"].startswith("ibeacon/eddystone")]
    assert beacons, heard
