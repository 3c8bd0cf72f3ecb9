"""Drivers, one folder per protocol, and the registry that finds them without importing them.

Config models (``drivers/<name>/config.py``) import only pydantic and :mod:`agent.config`, so
validating a config never pulls in a protocol library; the driver module is imported only when a
device of that driver runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.config.models import DeviceConfig

__all__ = ["DRIVERS", "DriverSpec", "config_model", "driver_class"]


@dataclass(frozen=True, slots=True)
class DriverSpec:
    name: str
    config: str
    """``module:Class`` of the device config model."""
    driver: str
    """``module:Class`` of the driver."""
    extra: str | None = None
    """The pip extra that installs its protocol library (``community-edge-agent[modbus]``)."""


DRIVERS: dict[str, DriverSpec] = {
    spec.name: spec
    for spec in (
        DriverSpec(
            "modbus",
            "drivers.modbus.config:ModbusDevice",
            "drivers.modbus.driver:ModbusDriver",
            extra="modbus",
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
