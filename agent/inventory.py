"""The inventory sent to the platform: the gateway and every enabled device, with what drivers
learnt from their devices (``reported``: firmware, serial number, model). One builder; the uplink
sends it at start and whenever it changes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agent import __version__

if TYPE_CHECKING:
    from agent.config.models import AgentConfig

__all__ = ["build_inventory"]


def build_inventory(
    config: AgentConfig, reported: Mapping[str, Mapping[str, str]]
) -> dict[str, Any]:
    """The inventory document of API v1 (``PUT …/inventory``)."""
    gw = config.gateway
    devices: list[dict[str, Any]] = []
    for d in config.devices:
        if not d.enabled:
            continue
        entry: dict[str, Any] = {
            "id": d.id,
            "code": d.code,
            "driver": d.driver,
            "kind": d.kind.value,
            "name": d.name,
            "manufacturer": d.manufacturer,
            "model": d.model,
            "firmware": d.firmware,
            "bus": d.bus,
            "location": d.location.model_dump() if d.location else None,
        }
        if d.id in reported:
            entry["reported"] = dict(reported[d.id])
        devices.append(entry)
    return {
        "gateway": {
            "id": gw.id,
            "code": gw.code,
            "name": gw.name,
            "community": {"code": gw.community.code, "name": gw.community.name},
            "timezone": gw.timezone,
            "agent_version": __version__,
        },
        "devices": devices,
    }
