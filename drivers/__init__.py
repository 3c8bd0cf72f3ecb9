"""Drivers, one folder per protocol, and the registry that finds them without importing them.

Config models (``drivers/<name>/config.py``) import only pydantic and :mod:`agent.config`, so
validating a config never pulls in a protocol library; the driver module is imported only when a
device of that driver runs. See ``drivers/README.md`` for what a driver is and how to add one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import argparse

    from agent.config.models import DeviceConfig
    from agent.driver import BusTool
    from agent.driver.simulation import LineDevice

__all__ = [
    "DRIVERS",
    "DriverSpec",
    "bus_tool",
    "config_model",
    "driver_class",
    "load_cli",
    "load_peer",
    "load_simulator",
]

Scope = Literal["device", "bus"]


@dataclass(frozen=True, slots=True)
class DriverSpec:
    name: str
    config: str
    """``module:Class`` of the device config model."""
    driver: str
    """``module:Class`` of the driver."""
    extra: str | None = None
    """The pip extra that installs its protocol library (``community-edge-agent[modbus]``)."""
    scope: Scope = "device"
    """``device``: one driver instance per device. ``bus``: one per bus (or per driver for the
    devices without a bus), given all of them: a BLE scanner, an OSDP control panel."""
    cli: str | None = None
    """``module:function`` adding the family's installer commands (``scan modbus``) to the
    ``edge-agent`` parser; it must import no protocol library."""
    tools: tuple[tuple[str, str], ...] = ()
    """``(name, module:function)`` of its :class:`agent.driver.BusTool` s: ``scan`` (discovery),
    ``read``. The control socket runs them on the agent's own bus."""
    peer: str | None = None
    """``module:function(device)``: a simulated device of the family for ``device``, an
    :class:`agent.driver.simulation.LineDevice`. The demo puts one behind each of its devices
    on its pty lines, every device of a line on one end (:func:`agent.driver.simulation.
    serve_line`), whatever their families."""
    simulator: str | None = None
    """``module:Class``: simulated network devices of the family (cameras on 127.0.0.1), for
    the demo and the benchmarks; its constructor takes the devices' specs."""


DRIVERS: dict[str, DriverSpec] = {
    spec.name: spec
    for spec in (
        DriverSpec(
            "ble",
            "drivers.ble.config:BleTag",
            "drivers.ble.driver:BleDriver",
            extra="ble",
            scope="bus",
            cli="drivers.ble.cli:add_commands",
            tools=(("scan", "drivers.ble.tools:scan"),),
        ),
        DriverSpec(
            "cjt188",
            "drivers.cjt188.config:Cjt188Device",
            "drivers.cjt188.driver:Cjt188Driver",
            extra="cjt188",
            cli="drivers.cjt188.cli:add_commands",
            tools=(("scan", "drivers.cjt188.tools:scan"),),
            peer="drivers.cjt188.simulator:line_device",
        ),
        DriverSpec(
            "dlt645",
            "drivers.dlt645.config:Dlt645Device",
            "drivers.dlt645.driver:Dlt645Driver",
            extra="dlt645",
            cli="drivers.dlt645.cli:add_commands",
            tools=(("scan", "drivers.dlt645.tools:scan"),),
            peer="drivers.dlt645.simulator:line_device",
        ),
        DriverSpec(
            "modbus",
            "drivers.modbus.config:ModbusDevice",
            "drivers.modbus.driver:ModbusDriver",
            extra="modbus",
            cli="drivers.modbus.cli:add_commands",
            tools=(("scan", "drivers.modbus.tools:scan"), ("read", "drivers.modbus.tools:read")),
        ),
        DriverSpec(
            "onvif",
            "drivers.onvif.config:OnvifCamera",
            "drivers.onvif.driver:OnvifDriver",
            extra="onvif",
            cli="drivers.onvif.cli:add_commands",
            simulator="drivers.onvif.simulator:CameraSimulator",
        ),
        DriverSpec(
            "osdp",
            "drivers.osdp.config:OsdpDevice",
            "drivers.osdp.driver:OsdpDriver",
            scope="bus",
            cli="drivers.osdp.cli:add_commands",
            peer="drivers.osdp.simulator:line_device",
        ),
        DriverSpec(
            "simulated",
            "drivers.simulated.config:SimulatedDevice",
            "drivers.simulated.driver:SimulatedDriver",
        ),
    )
}


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def config_model(name: str) -> type[DeviceConfig]:
    model: type[DeviceConfig] = _load(DRIVERS[name].config)
    return model


def driver_class(name: str) -> type[Any]:
    spec = DRIVERS[name]
    try:
        return _load(spec.driver)  # type: ignore[no-any-return]
    except ImportError as exc:
        hint = f" (install community-edge-agent[{spec.extra}])" if spec.extra else ""
        raise ImportError(f"driver {name!r} cannot be loaded: {exc}{hint}") from exc


AddCommands = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]", Any, Any], None]
"""``add_commands(subparsers, runner, command)``: a driver family's installer commands.
``runner`` runs a bus tool through the agent or locally (:func:`agent.tools.agent_runner`);
``command`` runs a device command through the agent (:func:`agent.tools.agent_command`)."""


def load_cli(name: str) -> AddCommands:
    """The function that adds driver ``name``'s commands to the ``edge-agent`` parser."""
    ref = DRIVERS[name].cli
    if ref is None:
        raise KeyError(f"driver {name!r} has no command-line tools")
    add: AddCommands = _load(ref)
    return add


def bus_tool(name: str, tool: str) -> BusTool:
    """Driver ``name``'s bus tool ``tool`` (``scan``, ``read``); KeyError if it has none."""
    refs = dict(DRIVERS[name].tools)
    if tool not in refs:
        known = ", ".join(refs) or "none"
        raise KeyError(f"driver {name!r} has no {tool!r} tool (it has: {known})")
    spec = DRIVERS[name]
    try:
        found: BusTool = _load(refs[tool])
    except ImportError as exc:
        hint = f" (install community-edge-agent[{spec.extra}])" if spec.extra else ""
        raise ImportError(f"driver {name!r} cannot be loaded: {exc}{hint}") from exc
    return found


def load_peer(name: str) -> Callable[[DeviceConfig], LineDevice] | None:
    """The family's simulated device (:attr:`DriverSpec.peer`), or None."""
    ref = DRIVERS[name].peer
    if ref is None:
        return None
    peer: Callable[[DeviceConfig], LineDevice] = _load(ref)
    return peer


def load_simulator(name: str) -> Any:
    """The family's network simulator class (:attr:`DriverSpec.simulator`); KeyError if none."""
    ref = DRIVERS[name].simulator
    if ref is None:
        raise KeyError(f"driver {name!r} has no simulator")
    return _load(ref)
