"""Configuration of the CJ/T 188 driver: water, heat and gas meters on RS-485 (often through an
M-Bus converter).

A meter names its ``address`` (the 14 digits on its nameplate, leading zeros optional) and its
``meter_type``; the readings follow from the type (:data:`drivers.cjt188.codec.WATER_FIELDS`,
:data:`~drivers.cjt188.codec.HEAT_FIELDS`). A meter with a valve says ``valve: true`` and may
then allow ``valve.open`` and ``valve.close`` in its ``commands``. Validation does no I/O.
"""

from __future__ import annotations

import zoneinfo
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import Field, field_validator, model_validator

from agent.config.errors import did_you_mean
from agent.config.models import DeviceKind, PolledDeviceConfig, SerialBus
from drivers.cjt188.codec import METER_TYPES, Cjt188Error, DiOrder, fields_of, parse_address

__all__ = ["KINDS", "NUMERIC_READINGS", "Cjt188Device", "MeterType"]

MeterType = Literal[
    "cold_water", "hot_water", "drinking_water", "reclaimed_water", "heat", "cooling", "gas"
]

KINDS: Final[dict[str, DeviceKind]] = {
    "cold_water": DeviceKind.WATER_METER,
    "hot_water": DeviceKind.WATER_METER,
    "drinking_water": DeviceKind.WATER_METER,
    "reclaimed_water": DeviceKind.WATER_METER,
    "heat": DeviceKind.HEAT_METER,
    "cooling": DeviceKind.HEAT_METER,
    "gas": DeviceKind.GAS_METER,
}
"""The device kind a meter type implies (when the config gives none)."""


def _numeric(meter_type: str) -> tuple[str, ...]:
    fields = fields_of(METER_TYPES[meter_type])
    return (*(f.name for f in fields if f.kind == "number"), "clock_offset_s")


NUMERIC_READINGS: Final[dict[str, tuple[str, ...]]] = {t: _numeric(t) for t in METER_TYPES}
"""The readings of each meter type that take a deadband."""

VALVE_COMMANDS: Final = frozenset({"valve.open", "valve.close"})


class Cjt188Device(PolledDeviceConfig):
    """A water, heat or gas meter speaking CJ/T 188-2004 on an RS-485 line."""

    driver: Literal["cjt188"]
    address: str
    """The meter's address as its nameplate shows it (up to 14 digits)."""
    meter_type: MeterType
    """What the meter measures: its type code ``T`` on the wire."""
    kind: DeviceKind = DeviceKind.WATER_METER
    """Default: from ``meter_type`` (water_meter, heat_meter, gas_meter)."""
    di_order: DiOrder = "low_first"
    """How the meter wants data identifiers: ``low_first`` (``1F 90``, the standard's) or
    ``high_first`` (``90 1F``). Replies are accepted either way."""
    valve: bool = False
    """The meter has a valve the agent may open and close (``valve.open``, ``valve.close``)."""
    retries: Annotated[int, Field(ge=0, le=3)] = 0
    """Resends after a timeout or a corrupt reply (an M-Bus converter that loses the odd frame:
    1)."""
    preamble: Annotated[int, Field(ge=0, le=4)] = 4
    """FE bytes sent before each frame to wake the meter's receiver."""
    report_every_s: Annotated[float, Field(gt=0, le=86_400)] = 900
    """Readings with a deadband are reported at least this often, moved or not."""
    deadbands: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    """Per reading name (``{volume: 0.01}``): report only when it moved by more than this."""
    meter_timezone: str = "Asia/Shanghai"
    """The zone of the meter's clock, for ``clock_offset_s``."""
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    """How long a meter may take to answer one frame (meters behind an M-Bus converter are
    slow; 2400 Bd adds the reply's own time on the wire)."""

    bus_kinds: ClassVar[frozenset[str]] = frozenset({"serial"})
    known_commands: ClassVar[frozenset[str]] = VALVE_COMMANDS
    address_key: ClassVar[str | None] = "address"

    @classmethod
    def line_problem(cls, line: SerialBus) -> str | None:
        if line.data_bits != 8:
            return "CJ/T 188 needs 8 data bits (meters use 8E1, 2400 Bd by default)"
        return None

    @model_validator(mode="before")
    @classmethod
    def _kind_from_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and "kind" not in data:
            kind = KINDS.get(data.get("meter_type"))  # type: ignore[arg-type]
            if kind is not None:
                return {**data, "kind": kind}
        return data

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        text = value.strip()
        if not text.isdigit() or not text.isascii() or len(text) > 14:
            raise ValueError(
                f"{value!r}: the meter's address is the up to 14 digits on its nameplate"
            )
        try:
            parse_address(text)
        except Cjt188Error as exc:
            raise ValueError(str(exc)) from None
        return text.rjust(14, "0")

    @field_validator("meter_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (e.g. Asia/Shanghai)") from None
        return value

    @model_validator(mode="after")
    def _valve_and_deadbands(self) -> Cjt188Device:
        valve_commands = sorted(c for c in self.commands if c in VALVE_COMMANDS)
        if valve_commands and not self.valve:
            raise ValueError(
                f"commands {valve_commands} need a meter with a valve: add 'valve: true' "
                "(only if the meter has one)"
            )
        known = NUMERIC_READINGS[self.meter_type]
        for name in self.deadbands:
            if name not in known:
                close = did_you_mean(name, known)
                hint = f"; did you mean {close!r}?" if close else ""
                raise ValueError(
                    f"deadbands: {name!r} is not a numeric reading of a {self.meter_type} "
                    f"meter ({', '.join(known)}){hint}"
                )
        return self

    @property
    def type_code(self) -> int:
        """``T`` on the wire."""
        return METER_TYPES[self.meter_type]

    @property
    def wire_address(self) -> bytes:
        return parse_address(self.address)
