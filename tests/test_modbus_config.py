"""Modbus device configuration: profiles, overrides, and errors at the installer's line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from agent_proc import write_config

from agent.config.errors import ConfigError
from agent.config.loader import load_config
from drivers.modbus.config import ModbusDevice, load_profile, profile_names

ROOT = Path(__file__).resolve().parent.parent
BUS = {"id": "line", "serial": {"port": "/dev/ttyUSB0"}}


def device(**keys: Any) -> ModbusDevice:
    return ModbusDevice.model_validate(
        {"id": "m", "driver": "modbus", "bus": "line", "unit": 1, **keys}
    )


@pytest.mark.parametrize("name", profile_names())
def test_every_profile_loads_and_is_consistent(name: str) -> None:
    profile = load_profile(name)
    points = device(profile=name).resolved_points()
    names = [p.name for p in points]
    assert len(names) == len(set(names))
    assert len(points) == len(profile.points)
    if profile.probe is not None:
        assert profile.probe.point in names
    assert all(p.size <= profile.max_registers for p in points)


def test_the_required_profiles_exist() -> None:
    assert {
        "eastron-sdm120",
        "eastron-sdm630",
        "chint-ddsu666",
        "chint-dtsu666",
        "acrel-adl3000-e",
    } <= set(profile_names())
    assert load_profile("eastron-sdm120").max_registers == 60
    assert load_profile("eastron-sdm630").max_registers == 60


def test_a_profiled_device_knows_what_it_is() -> None:
    meter = device(profile="chint-dtsu666")
    assert (meter.kind.value, meter.manufacturer, meter.model) == (
        "electricity_meter",
        "CHINT",
        "DTSU666",
    )
    assert device(profile="chint-dtsu666", model="DTSU666-H").model == "DTSU666-H"


def test_device_points_override_and_extend_the_profile() -> None:
    meter = device(
        profile="acrel-adl3000-e",
        word_order="CDAB",
        points=[
            {"name": "energy_total", "scale": 0.2, "deadband": 0.5},
            {"name": "energy_spike", "enabled": False},
            {"name": "status", "address": 0x40, "type": "bit", "bit": 1},
        ],
    )
    points = {p.name: p for p in meter.resolved_points()}
    total = points["energy_total"]
    assert (total.address, total.type, total.scale, total.deadband) == (0, "uint32", 0.2, 0.5)
    assert "energy_spike" not in points
    assert points["status"].table == "holding"
    assert points["status"].word_order == "CDAB"
    assert meter.register_limit == 60
    assert meter.gap_limit == 0


def test_defaults_for_custom_points() -> None:
    meter = device(
        points=[{"name": "a", "address": 3}, {"name": "b", "table": "coil", "address": 1}]
    )
    a, b = meter.resolved_points()
    assert (a.table, a.type, a.word_order, a.size) == ("holding", "uint16", "ABCD", 1)
    assert (b.table, b.type) == ("coil", "bool")
    assert (meter.register_limit, meter.gap_limit, meter.retries) == (125, 8, 0)


def test_errors_point_at_the_installers_line(tmp_path: Path) -> None:
    devices = [
        {"id": "m1", "driver": "modbus", "bus": "line", "unit": 1, "profile": "chint-ddsu66"},
        {
            "id": "m2",
            "driver": "modbus",
            "bus": "line",
            "unit": 2,
            "profile": "chint-ddsu666",
            "points": [
                {"name": "extra", "type": "float32"},
                {"name": "flag", "address": 10, "type": "bit"},
                {"name": "voltage", "deadband": 1},
                {"name": "voltage", "address": 3},
                {"name": "tag", "table": "input", "address": 3, "writable": True},
            ],
        },
        {"id": "m3", "driver": "modbus", "bus": "line", "unit": 3},
        {
            "id": "m4",
            "driver": "modbus",
            "bus": "line",
            "unit": 300,
            "max_registers": 10,
            "points": [{"name": "n", "address": 0, "type": "strng", "length": 20}],
        },
        {
            "id": "m5",
            "driver": "modbus",
            "bus": "line",
            "unit": 5,
            "max_registers": 10,
            "points": [
                {"name": "n", "address": 0, "type": "string", "length": 20},
                {"name": "c", "table": "coil", "address": 0, "type": "uint16"},
                {"name": "s", "address": 1, "type": "string", "length": 2, "deadband": 1},
            ],
            "commands": ["modbus.write", "modbus.reboot"],
        },
    ]
    path = write_config(tmp_path, devices, buses=[BUS])
    with pytest.raises(ConfigError) as failed:
        load_config(path)
    text = str(failed.value)
    expected = [
        (
            "devices[0].profile: unknown profile 'chint-ddsu66' (built in: acrel-adl3000-e, "
            "chint-ddsu666, chint-dtsu666, eastron-sdm120, eastron-sdm630; did you mean "
            "'chint-ddsu666'?)"
        ),
        "devices[1].points[0].address: missing required key 'address' (not a point of the profile)",
        "devices[1].points[1].bit: a bit point needs 'bit' (0-15)",
        "devices[1].points[3].name: point name 'voltage' is already used by points[2]",
        "devices[1].points[4].writable: input points are read-only in Modbus",
        "devices[2]: give a 'profile', 'points', or both",
        "devices[3].unit: must be at most 255, got 300",
        (
            "devices[3].points[0].type: 'strng' is not one of int16, uint16, int32, uint32, int64, "
            "uint64, float32, float64, string, bit, bool (did you mean 'string'?)"
        ),
        "devices[4].points[0].length: the point needs 20 registers, more than max_registers (10)",
        "devices[4].points[1].type: a coil point is a bool, not uint16",
        "devices[4].points[2].deadband: only numeric points take a deadband, not string",
        "devices[4].commands[1]: 'modbus.reboot' is not a command of driver 'modbus'",
    ]
    for message in expected:
        assert message in text, f"{message!r} not in:\n{text}"
    # Each names the file and the line of the key in question.
    source = path.read_text().splitlines()
    for issue in failed.value.issues:
        assert issue.file == str(path)
        assert 1 <= issue.line <= len(source)
    by_path = {i.path: i for i in failed.value.issues}
    assert "chint-ddsu66" in source[by_path["devices[0].profile"].line - 1]
    assert "strng" in source[by_path["devices[3].points[0].type"].line - 1]


def test_modbus_needs_a_serial_or_tcp_bus(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        [{"id": "m", "driver": "modbus", "unit": 1, "profile": "chint-ddsu666"}],
        buses=[BUS],
    )
    with pytest.raises(ConfigError, match="missing required key 'bus'"):
        load_config(path)


def test_the_sample_config_is_valid() -> None:
    config = load_config(ROOT / "config" / "modbus-sample.yaml")
    modbus = [d for d in config.devices if d.driver == "modbus"]
    assert len(modbus) >= 5
    assert {d.profile for d in modbus if isinstance(d, ModbusDevice)} >= {
        "chint-dtsu666",
        "chint-ddsu666",
        "eastron-sdm630",
        "eastron-sdm120",
        "acrel-adl3000-e",
    }
