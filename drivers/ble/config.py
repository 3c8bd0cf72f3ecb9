"""Configuration of a BLE tag (``driver: ble``): how it is recognised, its class, its key.

A tag is enrolled by exactly one of:
- ``mac``: its public or static address (``C0:12:34:56:78:9A``);
- ``ibeacon: {uuid, major, minor}``: for tags that rotate their address but send an iBeacon;
- ``eddystone: {namespace, instance}``: likewise for Eddystone-UID;
- ``irk_file``: for a tag that rotates its address (a resolvable private address) and sends no
  beacon identity: a file with its identity resolving key (16 bytes as 32 hex digits, as the
  tag's app or vendor gives it), by which each new address is resolved to the tag.
Its ``class`` (wristband, sos_button, key_fob, asset, sensor) sets the presence floor and
whether a press is an SOS. ``key_file`` holds an encrypted tag's key (BTHome or MiBeacon bind
key, 16 bytes as 32 hex digits): read at start, never logged, never sent. A ``vendor`` block
describes a simple beacon the parsers do not know.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, ClassVar, Final, Literal

from pydantic import Field, field_validator, model_validator

from agent.config.models import DeviceKind, StreamedDeviceConfig, StrictModel
from drivers.ble.decode import (
    Field as VendorField,
)
from drivers.ble.decode import (
    VendorFormat,
    eddystone_identity,
    ibeacon_identity,
)

__all__ = ["BleTag", "EddystoneId", "IBeaconId", "VendorSpec"]

_MAC: Final = r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$"

TagClass = Literal["wristband", "sos_button", "key_fob", "asset", "sensor"]


class IBeaconId(StrictModel):
    uuid: str
    major: Annotated[int, Field(ge=0, le=65535)]
    minor: Annotated[int, Field(ge=0, le=65535)]

    @field_validator("uuid")
    @classmethod
    def _uuid(cls, value: str) -> str:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise ValueError(
                "not a UUID: write it as 8-4-4-4-12 hex digits "
                "(e.g. fda50693-a4e2-4fb1-afcf-c6eb07647825)"
            ) from None


class EddystoneId(StrictModel):
    namespace: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{20}$")]
    """10 bytes, 20 hex digits."""
    instance: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{12}$")]
    """6 bytes, 12 hex digits."""


class VendorFieldSpec(StrictModel):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,47}$")]
    offset: Annotated[int, Field(ge=0, le=250)]
    """Bytes into the manufacturer data, after the 2-byte company id."""
    type: Literal[
        "u8", "i8", "u16le", "u16be", "i16le", "i16be", "u24le", "u32le", "u32be", "i32le", "i32be"
    ]
    scale: float = 1.0
    unit: str | None = None


class VendorSpec(StrictModel):
    company_id: Annotated[int, Field(ge=0, le=0xFFFF)]
    prefix: Annotated[str, Field(pattern=r"^([0-9A-Fa-f]{2})*$")] = ""
    """Hex bytes the data must start with (a frame type), none by default."""
    fields: Annotated[list[VendorFieldSpec], Field(min_length=1)]

    def format(self) -> VendorFormat:
        return VendorFormat(
            company_id=self.company_id,
            prefix=bytes.fromhex(self.prefix),
            fields=tuple(
                VendorField(f.name, f.offset, f.type, f.scale, f.unit) for f in self.fields
            ),
        )


class BleTag(StreamedDeviceConfig):
    """One tag heard by a Bluetooth adapter (its ``bus``, a ``ble:`` bus)."""

    driver: Literal["ble"]
    kind: DeviceKind = DeviceKind.TAG
    mac: Annotated[str, Field(pattern=_MAC)] | None = None
    ibeacon: IBeaconId | None = None
    eddystone: EddystoneId | None = None
    irk_file: Path | None = None
    tag_class: TagClass = Field("asset", alias="class")
    key_file: Path | None = None
    vendor: VendorSpec | None = None
    away_after_s: Annotated[float, Field(gt=0, le=86_400)] | None = None
    """A fixed presence timeout instead of the learned one (the class floor guards only the
    learned one)."""
    battery_low_pct: Annotated[float, Field(ge=1, le=99)] | None = None
    rssi_step_db: Annotated[float, Field(ge=1, le=30)] = 4.0
    rssi_every_s: Annotated[float, Field(ge=1, le=3600)] = 10.0
    tx_power_1m: Annotated[int, Field(ge=-100, le=0)] = -59

    bus_kinds: ClassVar[frozenset[str]] = frozenset({"ble"})
    address_key: ClassVar[str | None] = "identity"

    @field_validator("mac")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        return None if value is None else value.upper()

    @model_validator(mode="after")
    def _one_identity(self) -> BleTag:
        given = [
            k for k in ("mac", "ibeacon", "eddystone", "irk_file") if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "enrol the tag by exactly one of 'mac', 'ibeacon', 'eddystone' or 'irk_file'"
                + (f" (got {' and '.join(given)})" if given else "")
            )
        return self

    @property
    def identity(self) -> str:
        """What the tag is recognised by: ``mac:…``, ``ibeacon:…``, ``eddystone:…`` or
        ``irk:<key file>`` (the key itself is never part of it)."""
        if self.ibeacon is not None:
            return ibeacon_identity(self.ibeacon.uuid, self.ibeacon.major, self.ibeacon.minor)
        if self.eddystone is not None:
            return eddystone_identity(self.eddystone.namespace, self.eddystone.instance)
        if self.irk_file is not None:
            return f"irk:{self.irk_file}"
        return f"mac:{self.mac}"
