"""Configuration of the Modbus driver: devices on RS-485 (RTU), Modbus TCP and RTU over TCP.

A device names its unit id and either a built-in profile (``drivers/modbus/profiles/*.yaml``),
its own points, or both: a point of the device with the name of a profile point overrides the
keys it gives (``{name: energy_import, deadband: 0.01}``); other points are added. Validation
reads the profile files shipped with the package and nothing else: no port, no network.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from agent.config.errors import did_you_mean
from agent.config.models import (
    DeviceKind,
    Ident,
    PolledDeviceConfig,
    SerialBus,
    StrictModel,
)
from drivers.modbus.codec import (
    BIT_TABLES,
    REGISTER_TABLES,
    DataType,
    Table,
    WordOrder,
    register_count,
)

__all__ = [
    "PROFILE_DIR",
    "ModbusDevice",
    "Point",
    "PointSpec",
    "Probe",
    "Profile",
    "load_profile",
    "profile_names",
]

PROFILE_DIR: Final = Path(__file__).resolve().parent / "profiles"

Address = Annotated[int, Field(ge=0, le=0xFFFF)]
UnitId = Annotated[int, Field(ge=0, le=255)]

_NUMERIC_TYPES: Final = frozenset(
    {"int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"}
)


class PointSpec(StrictModel):
    """One point as written in YAML. In a device, keys left out come from the profile point of
    the same name, or from the defaults (``table: holding``, ``type: uint16``, ...)."""

    name: Ident
    table: Table | None = None
    """holding (FC03), input (FC04), coil (FC01), discrete (FC02)."""
    address: Address | None = None
    """Zero-based protocol address (register 40001 is holding 0, 30001 is input 0)."""
    type: DataType | None = None
    length: Annotated[int, Field(ge=1, le=125)] | None = None
    """Registers of a ``string`` point."""
    bit: Annotated[int, Field(ge=0, le=15)] | None = None
    """Bit of a ``bit`` point, 0 = least significant."""
    word_order: WordOrder | None = None
    """ABCD, DCBA, BADC or CDAB; default: the device's."""
    scale: float | None = None
    """value = raw · scale + offset."""
    offset: float | None = None
    decimals: Annotated[int, Field(ge=0, le=9)] | None = None
    """Round readings to this many decimals (default: what the scale implies)."""
    unit: str | None = None
    deadband: Annotated[float, Field(ge=0)] | None = None
    """Report only when the value moved by more than this since the last report."""
    writable: bool | None = None
    """Allow ``modbus.write`` to this point (holding registers and coils only)."""
    enabled: bool | None = None
    """false: leave a profile point out (a meter variant without that register)."""
    description: str | None = None

    @field_validator("scale")
    @classmethod
    def _nonzero(cls, value: float | None) -> float | None:
        if value == 0:
            raise ValueError("must not be 0 (every reading would be 0)")
        return value


@dataclass(frozen=True, slots=True)
class Point:
    """A point ready to read: every key resolved."""

    name: str
    table: Table
    address: int
    type: DataType
    word_order: WordOrder
    length: int | None = None
    bit: int | None = None
    scale: float = 1.0
    offset: float = 0.0
    decimals: int | None = None
    unit: str | None = None
    deadband: float | None = None
    writable: bool = False
    description: str | None = None

    @property
    def size(self) -> int:
        """Registers (or bits, in coil and discrete tables) the point occupies."""
        if self.table in BIT_TABLES:
            return 1
        return register_count(self.type, self.length)


class Probe(StrictModel):
    """How ``edge-agent scan modbus`` recognises a device of this profile: a point whose value
    falls in a plausible range (a mains frequency, say)."""

    point: Ident
    min: float
    max: float


class SerialDefaults(StrictModel):
    baud: int = 9600
    parity: str = "none"
    stop_bits: int = 1


class Profile(StrictModel):
    """A built-in register map (``drivers/modbus/profiles/<name>.yaml``)."""

    name: Ident
    manufacturer: str
    model: str
    kind: DeviceKind = DeviceKind.ELECTRICITY_METER
    description: str | None = None
    serial: SerialDefaults = SerialDefaults()
    """The device's factory line settings (for scans and the hardware tests)."""
    max_registers: Annotated[int, Field(ge=1, le=125)] = 125
    max_gap: Annotated[int, Field(ge=0, le=124)] = 0
    word_order: WordOrder = "ABCD"
    probe: Probe | None = None
    points: Annotated[list[PointSpec], Field(min_length=1)]


@functools.cache
def profile_names() -> tuple[str, ...]:
    """The built-in profiles, by name."""
    return tuple(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))


@functools.cache
def load_profile(name: str) -> Profile:
    """A built-in profile; ``KeyError`` when there is none of that name."""
    if name not in profile_names():
        raise KeyError(name)
    data: Any = yaml.safe_load((PROFILE_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
    profile = Profile.model_validate(data)
    if profile.name != name:
        raise ValueError(f"profile file {name}.yaml names itself {profile.name!r}")
    # A profile must resolve on its own, so that a mistake in it fails the tests, not a site.
    points, problems = _resolve(profile.points, None, "ABCD", profile.max_registers)
    if problems:
        raise ValueError(f"profile {name}: " + "; ".join(m for _, _, m in problems))
    del points
    return profile


_Problem = tuple[int, str, str]
"""(index in the device's points, key, message)."""


def _resolve(
    specs: list[PointSpec],
    profile: Profile | None,
    word_order: WordOrder,
    max_registers: int,
) -> tuple[list[Point], list[_Problem]]:
    """Merge the profile's points with the device's; every problem found, with its place."""
    problems: list[_Problem] = []
    merged: dict[str, tuple[int | None, dict[str, Any]]] = {}
    if profile is not None:
        for spec in profile.points:
            merged[spec.name] = (None, spec.model_dump(exclude_none=True))
    seen: dict[str, int] = {}
    for position, spec in enumerate(specs):
        if spec.name in seen:
            message = f"point name {spec.name!r} is already used by points[{seen[spec.name]}]"
            problems.append((position, "name", message))
            continue
        seen[spec.name] = position
        base = merged.get(spec.name, (None, {}))[1]
        merged[spec.name] = (position, {**base, **spec.model_dump(exclude_none=True)})
    points: list[Point] = []
    for name, (index, keys) in merged.items():
        if not keys.get("enabled", True):
            continue
        where = -1 if index is None else index
        point, problem = _point(name, keys, word_order, max_registers)
        if problem is not None:
            problems.append((where, *problem))
        elif point is not None:
            points.append(point)
    return points, problems


def _point(
    name: str, keys: dict[str, Any], word_order: WordOrder, max_registers: int
) -> tuple[Point | None, tuple[str, str] | None]:
    if "address" not in keys:
        return None, ("address", "missing required key 'address' (not a point of the profile)")
    table: Table = keys.get("table", "holding")
    default_type: DataType = "bool" if table in BIT_TABLES else "uint16"
    data_type: DataType = keys.get("type", default_type)
    if table in BIT_TABLES and data_type != "bool":
        return None, ("type", f"a {table} point is a bool, not {data_type}")
    if data_type == "string" and "length" not in keys:
        return None, ("length", "a string point needs 'length' (registers)")
    if data_type == "bit" and "bit" not in keys:
        return None, ("bit", "a bit point needs 'bit' (0-15)")
    if "deadband" in keys and data_type not in _NUMERIC_TYPES:
        return None, ("deadband", f"only numeric points take a deadband, not {data_type}")
    if keys.get("writable") and table not in ("holding", "coil"):
        return None, ("writable", f"{table} points are read-only in Modbus")
    point = Point(
        name=name,
        table=table,
        address=keys["address"],
        type=data_type,
        word_order=keys.get("word_order", word_order),
        length=keys.get("length") if data_type == "string" else None,
        bit=keys.get("bit") if data_type == "bit" else None,
        scale=keys.get("scale", 1.0),
        offset=keys.get("offset", 0.0),
        decimals=keys.get("decimals"),
        unit=keys.get("unit"),
        deadband=keys.get("deadband"),
        writable=bool(keys.get("writable", False)),
        description=keys.get("description"),
    )
    if table in REGISTER_TABLES and point.size > max_registers:
        return None, (
            "type" if data_type != "string" else "length",
            f"the point needs {point.size} registers, more than max_registers ({max_registers})",
        )
    if point.address + point.size > 0x10000:
        return None, ("address", "the point runs past the last address (65535)")
    return point, None


class ModbusDevice(PolledDeviceConfig):
    """A Modbus device: a meter, a pump controller, a sensor."""

    driver: Literal["modbus"]
    unit: UnitId
    """Modbus unit id (slave address): 1-247 on a serial line; TCP devices often use 1 or 255."""
    profile: str | None = None
    """A built-in register map: see drivers/modbus/profiles/."""
    points: list[PointSpec] = Field(default_factory=list)
    retries: Annotated[int, Field(ge=0, le=3)] = 0
    """Resends after a timeout or a corrupt reply; a dead device costs timeout_s · (retries+1)."""
    max_registers: Annotated[int, Field(ge=1, le=125)] | None = None
    """Most registers per read; default: the profile's, else 125 (the protocol's limit)."""
    max_bits: Annotated[int, Field(ge=1, le=2000)] = 2000
    """Most coils or discrete inputs per read."""
    max_gap: Annotated[int, Field(ge=0, le=124)] | None = None
    """Unread registers one read may span between points; default: the profile's, else 8."""
    word_order: WordOrder | None = None
    """Default word order of the device's points; default: the profile's, else ABCD."""
    report_every_s: Annotated[float, Field(gt=0, le=86_400)] = 900
    """Points with a deadband are reported at least this often, moved or not."""

    bus_kinds: ClassVar[frozenset[str]] = frozenset({"serial", "tcp"})
    known_commands: ClassVar[frozenset[str]] = frozenset({"modbus.write"})
    address_key: ClassVar[str | None] = "unit"

    @classmethod
    def line_problem(cls, line: SerialBus) -> str | None:
        if line.data_bits != 8:
            return "Modbus RTU needs 8 data bits (7 is Modbus ASCII, which is not supported)"
        return None

    @model_validator(mode="before")
    @classmethod
    def _profile_identity(cls, data: Any) -> Any:
        # kind, manufacturer and model of a profiled device come from its profile unless the
        # installer says otherwise, so the platform's inventory knows what the meter is.
        if not isinstance(data, dict) or not isinstance(data.get("profile"), str):
            return data
        try:
            profile = load_profile(data["profile"])
        except KeyError:
            return data  # reported by the profile check, at its line
        defaults = {
            "kind": profile.kind.value,
            "manufacturer": profile.manufacturer,
            "model": profile.model,
        }
        return {**defaults, **data}

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str | None) -> str | None:
        if value is not None and value not in profile_names():
            known = ", ".join(profile_names())
            close = did_you_mean(value, profile_names())
            hint = f"; did you mean {close!r}?" if close else ""
            raise ValueError(f"unknown profile {value!r} (built in: {known}{hint})")
        return value

    @model_validator(mode="after")
    def _points_resolve(self) -> ModbusDevice:
        if self.profile is None and not self.points:
            raise ValueError("give a 'profile', 'points', or both")
        _, problems = _resolve(
            self.points, self._profile(), self.default_word_order, self.register_limit
        )
        errors: list[InitErrorDetails] = []
        for index, key, problem in problems:
            if index < 0:
                loc: tuple[str | int, ...] = ("profile",)
                message = f"profile point: {problem}"
            else:
                loc, message = ("points", index, key), problem
            errors.append(
                InitErrorDetails(
                    type=PydanticCustomError("modbus_point", message),
                    loc=loc,
                    input=None,
                )
            )
        if errors:
            # Raised as a ValidationError so that each error points at the point's own line.
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    def _profile(self) -> Profile | None:
        return load_profile(self.profile) if self.profile is not None else None

    @property
    def default_word_order(self) -> WordOrder:
        if self.word_order is not None:
            return self.word_order
        profile = self._profile()
        return profile.word_order if profile is not None else "ABCD"

    @property
    def register_limit(self) -> int:
        if self.max_registers is not None:
            return self.max_registers
        profile = self._profile()
        return profile.max_registers if profile is not None else 125

    @property
    def gap_limit(self) -> int:
        if self.max_gap is not None:
            return self.max_gap
        profile = self._profile()
        return profile.max_gap if profile is not None else 8

    def resolved_points(self) -> list[Point]:
        """The points to read: the profile's, overridden and extended by the device's."""
        points, problems = _resolve(
            self.points, self._profile(), self.default_word_order, self.register_limit
        )
        assert not problems, "validated at load"
        return points
