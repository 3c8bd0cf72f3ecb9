"""Tests that need real devices run only where the device is named; everywhere else they skip.

Each test names its rig with a marker::

    @pytest.mark.hardware("modbus")
    def test_reads_energy(rig):
        port = rig["EDGE_HW_MODBUS_PORT"]

It runs when every variable the rig requires is set (and non-empty), and otherwise skips with a
reason naming the variables that are missing. ``requires=`` adds variables for one test, typically
an opt-in for a test that changes the device's configuration::

    @pytest.mark.hardware("osdp", requires=("EDGE_HW_OSDP_ALLOW_KEYSET",))

The ``rig`` fixture is a dict of the rig's variables that are set (required, optional, extra).
Every test in this directory must carry the marker, with a rig listed in ``RIGS``: CI collects
this directory without devices, and an unmarked test would fail there for want of hardware.
The rigs and their wiring: README.md in this directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Rig:
    what: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()


RIGS: dict[str, Rig] = {
    "serial": Rig("a serial port, e.g. the USB-RS485 adapter", ("EDGE_HW_SERIAL_PORT",)),
    "modbus": Rig(
        "a Modbus RTU electricity meter on RS-485",
        ("EDGE_HW_MODBUS_PORT", "EDGE_HW_MODBUS_UNIT", "EDGE_HW_MODBUS_PROFILE"),
        (
            "EDGE_HW_MODBUS_BAUD",
            "EDGE_HW_MODBUS_PARITY",
            "EDGE_HW_MODBUS_WRITE_ADDRESS",
            "EDGE_HW_MODBUS_WRITE_TYPE",
        ),
    ),
    "dlt645": Rig(
        "a DL/T 645-2007 electricity meter on RS-485",
        ("EDGE_HW_DLT645_PORT",),
        ("EDGE_HW_DLT645_ADDRESS", "EDGE_HW_DLT645_BAUD"),
    ),
    "cjt188": Rig(
        "a CJ/T 188 water meter (RS-485 or M-Bus through a converter)",
        ("EDGE_HW_CJT188_PORT",),
        ("EDGE_HW_CJT188_ADDRESS", "EDGE_HW_CJT188_BAUD"),
    ),
    "osdp": Rig(
        "an OSDP 2.2 card reader on RS-485",
        ("EDGE_HW_OSDP_PORT",),
        ("EDGE_HW_OSDP_ADDRESS", "EDGE_HW_OSDP_BAUD", "EDGE_HW_OSDP_SCBK"),
    ),
    "onvif": Rig(
        "an ONVIF camera on the LAN",
        ("EDGE_HW_ONVIF_URL",),
        ("EDGE_HW_ONVIF_USER", "EDGE_HW_ONVIF_PASSWORD"),
    ),
    "ble": Rig(
        "a Bluetooth LE adapter with tags in range", ("EDGE_HW_BLE_ADAPTER",), ("EDGE_HW_BLE_TAGS",)
    ),
}


def pytest_configure(config: pytest.Config) -> None:
    # The root pyproject runs pytest with --strict-markers; this directory brings its own marker.
    config.addinivalue_line(
        "markers",
        "hardware(rig, requires=()): needs the named test rig (hardware-tests/README.md); "
        "skipped unless the rig's EDGE_HW_* variables and any extra `requires` are set",
    )


def _marker_args(item: pytest.Item) -> tuple[str, tuple[str, ...]] | None:
    marker = item.get_closest_marker("hardware")
    if marker is None:
        return None
    if len(marker.args) != 1 or not isinstance(marker.args[0], str):
        raise ValueError("write @pytest.mark.hardware(<one rig name>)")
    requires = marker.kwargs.get("requires", ())
    if isinstance(requires, str):
        raise ValueError(f"write requires=({requires!r},), a tuple of variable names")
    return marker.args[0], tuple(requires)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    del config
    problems = []
    for item in items:
        if not item.path.resolve().is_relative_to(HERE):
            continue  # this hook sees the whole session; only this directory is ours
        try:
            args = _marker_args(item)
        except ValueError as exc:
            problems.append(f"{item.nodeid}: {exc}")
            continue
        if args is None:
            problems.append(f"{item.nodeid}: no @pytest.mark.hardware(<rig>) marker")
        elif args[0] not in RIGS:
            problems.append(f"{item.nodeid}: unknown rig {args[0]!r} (known: {', '.join(RIGS)})")
        else:
            _skip_unless_named(item)
    if problems:
        raise pytest.UsageError(
            "every test in hardware-tests/ names its rig, so that it skips where the rig is "
            "absent:\n  " + "\n  ".join(problems)
        )


def _needed(item: pytest.Item) -> tuple[str, list[str]] | None:
    args = _marker_args(item)
    if args is None:
        return None
    name, extra = args
    return name, [*RIGS[name].required, *extra]


def _skip_unless_named(item: pytest.Item) -> None:
    # A skip marker rather than pytest.skip() at setup: the report then points at the test.
    needed = _needed(item)
    if needed is None:
        return
    name, variables = needed
    missing = [var for var in variables if not os.environ.get(var)]
    if missing:
        reason = (
            f"rig {name!r} ({RIGS[name].what}) not named: set {', '.join(missing)} "
            "(see hardware-tests/README.md)"
        )
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def rig(request: pytest.FixtureRequest) -> dict[str, str]:
    """The marked rig's environment variables that are set, by name."""
    needed = _needed(request.node)
    if needed is None:
        raise pytest.UsageError(f"{request.node.nodeid}: the rig fixture needs a hardware marker")
    name, variables = needed
    names = [*variables, *RIGS[name].optional]
    return {var: os.environ[var] for var in names if os.environ.get(var)}
