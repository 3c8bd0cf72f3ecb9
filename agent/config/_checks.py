"""Checks across entries that no single model can make: unique ids and codes, bus references,
bus kinds, command allowlists."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from agent.config._validate import device_model
from agent.config._yaml import Source
from agent.config.errors import ConfigIssue, PathKey, format_path, known_hint
from agent.config.identity import gateway_code, resolved_code
from agent.config.models import AgentConfig, Bus

__all__ = ["cross_check"]

Path_ = tuple[PathKey, ...]


def _entries(source: Source, section: str) -> list[tuple[int, dict[str, Any]]]:
    items = source.data.get(section) if isinstance(source.data, dict) else None
    if not isinstance(items, list):
        return []
    return [(i, item) for i, item in enumerate(items) if isinstance(item, dict)]


def _ref(source: Source, path: Path_, label: str = "") -> str:
    """Another entry, named so the installer can find it: ``devices[0] ('m-1') at site.yaml:12``."""
    mark = source.mark(path)
    return f"{format_path(source.local(path))}{label} at {mark.file}:{mark.line}"


def _unique_ids(source: Source, section: str, what: str) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    first: dict[str, int] = {}
    for i, item in _entries(source, section):
        ident = item.get("id")
        if not isinstance(ident, str):
            continue
        if ident in first:
            other = _ref(source, (section, first[ident]))
            message = f"duplicate {what} id {ident!r} (already used by {other})"
            issues.append(source.at((section, i, "id"), message))
        else:
            first[ident] = i
    return issues


def _bus_kind(raw: dict[str, Any]) -> str | None:
    try:
        bus = Bus.model_validate(raw)
    except ValidationError:
        # Still declared for reference checks; its own errors are reported by validation.
        return None
    return bus.kind


def _check_bus(
    source: Source, i: int, raw: dict[str, Any], buses: dict[str, str | None]
) -> list[ConfigIssue]:
    driver = raw.get("driver")
    model = device_model(driver) if isinstance(driver, str) else None
    bus = raw.get("bus")
    path: Path_ = ("devices", i, "bus")
    if bus is None:
        if model is not None and model.bus_kinds and not model.bus_optional:
            needs = " or ".join(sorted(model.bus_kinds))
            message = (
                f"missing required key 'bus' (driver {driver!r} talks over a {needs} bus "
                "declared under buses:)"
            )
            return [source.at(path[:-1], message)]
        return []
    if not isinstance(bus, str):
        return []  # Validation reports the wrong type.
    if model is not None and not model.bus_kinds and not model.bus_optional:
        message = f"driver {driver!r} does not use a bus: remove 'bus'"
        return [source.at(path, message)]
    if bus not in buses:
        if buses:
            message = f"unknown bus {bus!r} {known_hint(bus, buses, 'declared')}"
        else:
            message = f"unknown bus {bus!r} (no buses are declared under buses:)"
        return [source.at(path, message)]
    kind = buses[bus]
    if model is not None and model.bus_kinds and kind is not None and kind not in model.bus_kinds:
        needs = " or ".join(sorted(model.bus_kinds))
        message = f"bus {bus!r} is a {kind} bus; driver {driver!r} needs {needs}"
        return [source.at(path, message)]
    return []


def _check_commands(source: Source, i: int, raw: dict[str, Any]) -> list[ConfigIssue]:
    driver = raw.get("driver")
    model = device_model(driver) if isinstance(driver, str) else None
    actions = raw.get("commands")
    if model is None or not isinstance(actions, list):
        return []
    known = model.known_commands
    issues: list[ConfigIssue] = []
    for j, action in enumerate(actions):
        if not isinstance(action, str) or action in known:
            continue
        path: Path_ = ("devices", i, "commands", j)
        if known:
            hint = known_hint(action, sorted(known))
            message = f"{action!r} is not a command of driver {driver!r} {hint}"
        else:
            message = f"driver {driver!r} accepts no commands"
        issues.append(source.at(path, message))
    return issues


def _unique_codes(source: Source, config: AgentConfig) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    owners: dict[str, str] = {gateway_code(config.gateway): "the gateway"}
    ids: set[str] = set()
    for i, device in enumerate(config.devices):
        if device.id in ids:
            continue  # Equal ids derive equal codes; the duplicate id is reported already.
        ids.add(device.id)
        code = resolved_code(config, device)
        other = owners.get(code)
        if other is None:
            owners[code] = _ref(source, ("devices", i), f" ({device.id!r})")
            continue
        path: Path_
        if device.code is not None:
            path = ("devices", i, "code")
            message = f"code {code} is already used by {other}"
        elif device.serial_no is not None:
            path = ("devices", i, "serial_no")
            message = (
                f"serial_no {device.serial_no} gives code {code}, already used by {other}: "
                "choose another serial_no"
            )
        else:
            path = ("devices", i)
            message = (
                f"derived code {code} collides with {other}: "
                "set 'serial_no' or 'code' on one of them"
            )
        issues.append(source.at(path, message))
    return issues


def _shared_lines(source: Source, config: AgentConfig) -> list[ConfigIssue]:
    """Devices sharing a bus: each address once per driver, and line settings every protocol on
    the line can use."""
    issues: list[ConfigIssue] = []
    owners: dict[tuple[str | None, str, object], int] = {}
    for i, device in enumerate(config.devices):
        if not device.enabled:
            continue
        key = device.address_key
        if key is not None:
            # Devices without a bus share their driver's default adapter (a BLE radio).
            slot = (device.bus, device.driver, device.bus_address)
            first = owners.setdefault(slot, i)
            if first != i:
                other = _ref(source, ("devices", first), f" ({config.devices[first].id!r})")
                where = f"on bus {device.bus!r}" if device.bus else "without a bus"
                message = (
                    f"{key} {device.bus_address!r} is already used {where} by {other}: "
                    "two devices cannot answer to one address"
                )
                issues.append(source.at(("devices", i, key), message))
        if device.bus is None:
            continue
        bus = config.bus(device.bus)
        problem = device.line_problem(bus.serial) if bus and bus.serial else None
        if problem is not None:
            j = next(n for n, b in enumerate(config.buses) if b.id == device.bus)
            where = _ref(source, ("buses", j, "serial"))
            issues.append(
                source.at(
                    ("devices", i, "bus"),
                    f"bus {device.bus!r} ({where}) does not suit driver {device.driver!r}: "
                    f"{problem}",
                )
            )
    return issues


def cross_check(source: Source, config: AgentConfig | None) -> list[ConfigIssue]:
    """Issues across entries. Works on the raw data so that it runs, and reports, even when some
    entries failed validation; code uniqueness needs the fully validated ``config``."""
    issues = _unique_ids(source, "buses", "bus") + _unique_ids(source, "devices", "device")
    buses: dict[str, str | None] = {}
    for _, raw in _entries(source, "buses"):
        ident = raw.get("id")
        if isinstance(ident, str) and ident not in buses:
            buses[ident] = _bus_kind(raw)
    for i, raw in _entries(source, "devices"):
        issues += _check_bus(source, i, raw, buses)
        issues += _check_commands(source, i, raw)
    if config is not None:
        issues += _unique_codes(source, config)
        issues += _shared_lines(source, config)
    return issues
