"""Configuration of the DL/T 645 driver: electricity meters on RS-485, 2007 or 1997.

A meter names its ``address`` (the 12 digits on its nameplate, leading zeros optional) and a
built-in profile (``drivers/dlt645/profiles/*.yaml``), its own points, or both. A point is a
name from the catalog (:mod:`drivers.dlt645.identifiers`), written alone or with keys
(``{name: voltage_a, deadband: 0.5}``), or an identifier the catalog lacks, with its format
(``{name: dc_voltage, di: "02800009", format: XXX.X, unit: V}``). Validation reads the profile
files and nothing else.
"""

from __future__ import annotations

import functools
import zoneinfo
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
from drivers.dlt645.codec import Dlt645Error, Fmt, Version, parse_address
from drivers.dlt645.identifiers import CATALOG
from drivers.dlt645.plan import Point

__all__ = ["PROFILE_DIR", "Dlt645Device", "PointSpec", "Profile", "load_profile", "profile_names"]

PROFILE_DIR: Final = Path(__file__).resolve().parent / "profiles"

_FORMAT: Final = r"^(X+(\.X+)?|YYMMDDWW|YYMMDD|hhmmss|YYMMDDhhmm|YYMMDDhhmmss|N+)$"


class PointSpec(StrictModel):
    """One point as written in YAML: a catalog name, or a DI with its format."""

    name: Ident
    di: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{4}([0-9A-Fa-f]{4})?$")] | None = None
    """The data identifier as the standard writes it (DI3 first): ``02800002``; 4 hex digits
    for a 1997 meter."""
    format: Annotated[str, Field(pattern=_FORMAT)] | None = None
    """As the standard writes it: ``XXXXXX.XX``, ``XXX.X``, ``YYMMDDWW``, ``hhmmss``."""
    signed: bool | None = None
    """The top bit of the value is its sign (currents, powers, power factors)."""
    unit: str | None = None
    deadband: Annotated[float, Field(ge=0)] | None = None
    """Report only when the value moved by more than this since the last report."""
    enabled: bool | None = None
    """false: leave a profile point out."""
    description: str | None = None


def _spec(item: Any) -> Any:
    return {"name": item} if isinstance(item, str) else item


class SerialDefaults(StrictModel):
    baud: int = 2400
    parity: str = "even"
    stop_bits: int = 1


class Profile(StrictModel):
    """A built-in meter profile (``drivers/dlt645/profiles/<name>.yaml``)."""

    name: Ident
    manufacturer: str
    model: str
    version: Literal[2007, 1997] = 2007
    blocks: bool = True
    serial: SerialDefaults = SerialDefaults()
    description: str | None = None
    points: Annotated[list[PointSpec], Field(min_length=1)]

    @field_validator("points", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return [_spec(v) for v in value] if isinstance(value, list) else value


@functools.cache
def profile_names() -> tuple[str, ...]:
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
    _, problems = _resolve(profile.points, None, profile.version)
    if problems:
        raise ValueError(f"profile {name}: " + "; ".join(m for _, _, m in problems))
    return profile


_Problem = tuple[int, str, str]


def _resolve(
    specs: list[PointSpec], profile: Profile | None, version: Version
) -> tuple[list[Point], list[_Problem]]:
    """The profile's points, overridden and extended by the device's, every problem with its
    place (index -1: the profile)."""
    merged: dict[str, tuple[int, dict[str, Any]]] = {}
    problems: list[_Problem] = []
    if profile is not None:
        for spec in profile.points:
            merged[spec.name] = (-1, spec.model_dump(exclude_none=True))
    seen: dict[str, int] = {}
    for index, spec in enumerate(specs):
        if spec.name in seen:
            message = f"point name {spec.name!r} is already used by points[{seen[spec.name]}]"
            problems.append((index, "name", message))
            continue
        seen[spec.name] = index
        base = merged.get(spec.name, (index, {}))[1]
        merged[spec.name] = (index, {**base, **spec.model_dump(exclude_none=True)})
    catalog = CATALOG[version]
    points: list[Point] = []
    for name, (index, keys) in merged.items():
        if not keys.get("enabled", True):
            continue
        known = catalog.get(name)
        if "di" in keys:
            di_text: str = keys["di"]
            if len(di_text) != (8 if version == 2007 else 4):
                digits = 8 if version == 2007 else 4
                problems.append(
                    (index, "di", f"a DL/T 645-{version} identifier has {digits} hex digits")
                )
                continue
            if "format" not in keys and known is None:
                problems.append((index, "format", "an identifier needs its 'format' (XXX.X...)"))
                continue
        elif known is None:
            close = did_you_mean(name, list(catalog))
            hint = f"; did you mean {close!r}?" if close else ""
            problems.append(
                (
                    index,
                    "name",
                    (
                        f"{name!r} is not a DL/T 645-{version} point the driver knows{hint}: "
                        "give its 'di' and 'format' to read it"
                    ),
                )
            )
            continue
        di = int(keys["di"], 16) if "di" in keys else known.di  # type: ignore[union-attr]
        if "format" in keys:
            fmt = Fmt(keys["format"], bool(keys.get("signed", False)))
        else:
            assert known is not None
            fmt = Fmt(known.fmt.pattern, keys.get("signed", known.fmt.signed))
        if "deadband" in keys and fmt.kind != "number":
            problems.append((index, "deadband", "only numeric points take a deadband"))
            continue
        points.append(
            Point(
                name=name,
                di=di,
                fmt=fmt,
                unit=keys.get("unit", known.unit if known else None),
                deadband=keys.get("deadband"),
                description=keys.get("description", known.description if known else None),
            )
        )
    return points, problems


class Dlt645Device(PolledDeviceConfig):
    """An electricity meter speaking DL/T 645 on an RS-485 line."""

    driver: Literal["dlt645"]
    kind: DeviceKind = DeviceKind.ELECTRICITY_METER
    address: str
    """The meter's address as its nameplate shows it (up to 12 digits)."""
    profile: str | None = None
    """A built-in profile: see drivers/dlt645/profiles/ (default for 2007 meters:
    dlt645-2007-single-phase; for 1997: dlt645-1997-single-phase)."""
    version: Literal[2007, 1997] | None = None
    """The protocol version; default: the profile's, else 2007."""
    points: list[PointSpec] = Field(default_factory=list)
    block_reads: bool | None = None
    """Read blocks (one frame for several values) where it saves wire time; default: the
    profile's. A block the meter refuses is read member by member from then on, by itself."""
    retries: Annotated[int, Field(ge=0, le=3)] = 0
    """Resends after a timeout or a corrupt reply."""
    preamble: Annotated[int, Field(ge=0, le=4)] = 4
    """FE bytes sent before each frame to wake the meter's receiver."""
    report_every_s: Annotated[float, Field(gt=0, le=86_400)] = 900
    """Points with a deadband are reported at least this often, moved or not."""
    meter_timezone: str = "Asia/Shanghai"
    """The zone of the meter's clock, for ``clock_offset_s``."""
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    """How long a meter may take to answer one frame (the standard allows 500 ms; 2400 Bd adds
    the reply's own time on the wire)."""

    bus_kinds: ClassVar[frozenset[str]] = frozenset({"serial", "tcp"})
    known_commands: ClassVar[frozenset[str]] = frozenset()
    address_key: ClassVar[str | None] = "address"

    @classmethod
    def line_problem(cls, line: SerialBus) -> str | None:
        if line.data_bits != 8:
            return "DL/T 645 needs 8 data bits (meters use 8E1, 2400 Bd by default)"
        return None

    @field_validator("points", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return [_spec(v) for v in value] if isinstance(value, list) else value

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        text = value.strip()
        if not text.isdigit() or not text.isascii() or len(text) > 12:
            raise ValueError(
                f"{value!r}: the meter's address is the up to 12 digits on its nameplate"
            )
        try:
            parse_address(text)
        except Dlt645Error as exc:
            raise ValueError(str(exc)) from None
        return text.rjust(12, "0")

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str | None) -> str | None:
        if value is not None and value not in profile_names():
            close = did_you_mean(value, profile_names())
            hint = f"; did you mean {close!r}?" if close else ""
            raise ValueError(
                f"unknown profile {value!r} (built in: {', '.join(profile_names())}{hint})"
            )
        return value

    @field_validator("meter_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (e.g. Asia/Shanghai)") from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _profile_identity(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("profile"), str):
            return data
        try:
            profile = load_profile(data["profile"])
        except KeyError:
            return data
        return {"manufacturer": profile.manufacturer, "model": profile.model, **data}

    @model_validator(mode="after")
    def _points_resolve(self) -> Dlt645Device:
        profile = self._profile()
        if profile is not None and self.version is not None and profile.version != self.version:
            raise ValueError(
                f"profile {profile.name} is for DL/T 645-{profile.version} meters, "
                f"but version is {self.version}"
            )
        _, problems = _resolve(self.points, profile, self.protocol)
        errors = [
            InitErrorDetails(
                type=PydanticCustomError("dlt645_point", message),
                loc=("profile",) if index < 0 else ("points", index, key),
                input=None,
            )
            for index, key, message in problems
        ]
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    def _profile(self) -> Profile | None:
        if self.profile is not None:
            return load_profile(self.profile)
        if self.points:
            return None
        default = "dlt645-1997-single-phase" if self.version == 1997 else "dlt645-2007-single-phase"
        return load_profile(default)

    @property
    def protocol(self) -> Version:
        """The version the meter speaks."""
        if self.version is not None:
            return self.version
        profile = self._profile()
        return profile.version if profile is not None else 2007

    @property
    def blocks(self) -> bool:
        if self.block_reads is not None:
            return self.block_reads
        profile = self._profile()
        return profile.blocks if profile is not None else True

    @property
    def wire_address(self) -> bytes:
        return parse_address(self.address)

    def resolved_points(self) -> list[Point]:
        points, problems = _resolve(self.points, self._profile(), self.protocol)
        assert not problems, "validated at load"
        return points
