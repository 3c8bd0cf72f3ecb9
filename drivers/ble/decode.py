"""What one BLE advertisement says: its beacon identity, its values with units, its button presses
and its counter.

The formats Home Assistant's Bluetooth team maintains parsers for are decoded by them:
``bthome-ble`` (BTHome v2, also encrypted with a per-tag key), ``xiaomi-ble`` (MiBeacon, also
encrypted with a bind key), ``ruuvitag-ble`` (data format 5) and ``ibeacon-ble``. Those parsers
keep state per tag (the last advert, the encryption counter, the values seen so far), so a
:class:`TagDecoder` is made per tag and kept. What they lack is written here: Eddystone UID and
TLM, and a vendor beacon described in config (:class:`VendorFormat`: company id, byte offsets,
types, scale), so an installer can add a cheap tag without code.

Pure: no I/O and no clock (the advert carries its time). Garbage raises only
:class:`BleDecodeError`, or is ignored as "not this format".
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData
    from bluetooth_sensor_state_data import BluetoothData
    from habluetooth import BluetoothServiceInfoBleak
    from ibeacon_ble import iBeaconParser

__all__ = [
    "Advert",
    "BleDecodeError",
    "Decoded",
    "Field",
    "Press",
    "TagDecoder",
    "VendorFormat",
    "eddystone",
    "eddystone_identity",
    "ibeacon_identity",
    "is_resolvable_private",
    "load_ibeacon_vendors",
    "service_uuid",
]

APPLE: Final = 0x004C


def service_uuid(short: int) -> str:
    """A 16-bit service UUID in the 128-bit form bleak's ``service_data`` keys use."""
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


EDDYSTONE: Final = service_uuid(0xFEAA)
BTHOME: Final = service_uuid(0xFCD2)
MIBEACON: Final = service_uuid(0xFE95)
RUUVI: Final = 0x0499

Value = float | int | str


class BleDecodeError(ValueError):
    """An advert that claims a format and breaks it. ``reason`` is a short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Advert:
    """One advertisement as bleak delivers it (``manufacturer_data`` without the company id,
    ``service_data`` without the 16-bit UUID), with the monotonic time it was heard."""

    address: str
    rssi: int
    time: float
    name: str | None = None
    manufacturer_data: Mapping[int, bytes] = field(default_factory=dict)
    service_data: Mapping[str, bytes] = field(default_factory=dict)
    service_uuids: Sequence[str] = ()
    tx_power: int | None = None

    @classmethod
    def of(cls, device: BLEDevice, data: AdvertisementData, time: float) -> Advert:
        """What bleak's detection callback hands over, heard at ``time``."""
        return cls(
            address=device.address.upper(),
            rssi=data.rssi,
            time=time,
            name=data.local_name,
            manufacturer_data=data.manufacturer_data,
            service_data=data.service_data,
            service_uuids=tuple(data.service_uuids),
            tx_power=data.tx_power,
        )


@dataclass(frozen=True, slots=True)
class Press:
    """A button event in an advert: ``button`` (or ``button_2``…) and its kind (``press``,
    ``long_press``, ``double_press``…)."""

    button: str
    kind: str


@dataclass(slots=True)
class Decoded:
    """What an advert said. ``counter``: the payload's own counter (BTHome packet id,
    MiBeacon frame counter, Ruuvi measurement sequence), which tells a new press or reading
    from the same advert heard again."""

    formats: list[str] = field(default_factory=list)
    identities: list[str] = field(default_factory=list)
    values: dict[str, tuple[Value, str | None]] = field(default_factory=dict)
    presses: list[Press] = field(default_factory=list)
    counter: int | None = None
    tx_power: int | None = None
    problems: list[str] = field(default_factory=list)
    """Why a part was not used: ``decrypt_failed``, ``no_key``, ``plain_while_keyed``…"""


# ---------------------------------------------------------------------- own decoders


def ibeacon_identity(uuid_: uuid.UUID | str, major: int, minor: int) -> str:
    """The enrolment key of an iBeacon: ``ibeacon:<uuid>:<major>:<minor>``."""
    return f"ibeacon:{uuid.UUID(str(uuid_))}:{major}:{minor}"


def is_resolvable_private(address: str) -> bool:
    """Whether ``address`` (``4A:55:…``) is a resolvable private address (its top bits 01): one
    that rotates, and that only the tag's identity resolving key tells apart."""
    try:
        return int(address[:2], 16) & 0xC0 == 0x40
    except ValueError:
        return False


def eddystone_identity(namespace: bytes | str, instance: bytes | str) -> str:
    """``eddystone:<namespace hex>:<instance hex>`` (lower case)."""
    ns = namespace.hex() if isinstance(namespace, bytes) else namespace.lower()
    inst = instance.hex() if isinstance(instance, bytes) else instance.lower()
    return f"eddystone:{ns}:{inst}"


def eddystone(data: bytes, out: Decoded) -> None:
    """Eddystone UID (``00``: tx power, namespace 10, instance 6) and TLM (``20 00``: battery
    mV, temperature 8.8, advert count, uptime in 0.1 s); URL and EID are ignored."""
    if not data:
        raise BleDecodeError("truncated", "an empty Eddystone frame")
    kind = data[0]
    if kind == 0x00:
        if len(data) < 18:
            raise BleDecodeError("truncated", f"Eddystone-UID is 18 bytes, not {len(data)}")
        out.formats.append("eddystone_uid")
        out.tx_power = struct.unpack_from(">b", data, 1)[0]
        out.identities.append(eddystone_identity(data[2:12], data[12:18]))
    elif kind == 0x20:
        if len(data) < 14:
            raise BleDecodeError("truncated", f"Eddystone-TLM is 14 bytes, not {len(data)}")
        if data[1] != 0x00:
            raise BleDecodeError("unsupported", f"Eddystone-TLM version {data[1]} (only 0)")
        millivolts, temp, count, uptime = struct.unpack_from(">HhII", data, 2)
        out.formats.append("eddystone_tlm")
        if millivolts:  # 0: the tag is mains powered
            out.values["battery_voltage"] = (millivolts / 1000, "V")
        if temp != -0x8000:  # 0x8000: not supported
            out.values["temperature"] = (round(temp / 256, 2), "°C")
        out.values["advert_count"] = (count, None)
        out.values["uptime"] = (round(uptime / 10, 1), "s")


_TYPES: Final[dict[str, str]] = {
    "u8": "<B",
    "i8": "<b",
    "u16le": "<H",
    "u16be": ">H",
    "i16le": "<h",
    "i16be": ">h",
    "u24le": "<I",
    "u32le": "<I",
    "u32be": ">I",
    "i32le": "<i",
    "i32be": ">i",
}
FieldType = Literal[
    "u8", "i8", "u16le", "u16be", "i16le", "i16be", "u24le", "u32le", "u32be", "i32le", "i32be"
]


@dataclass(frozen=True, slots=True)
class Field:
    """One value of a vendor beacon: ``offset`` into the manufacturer data (after the company
    id), its type, ``scale`` (the value is raw × scale), its unit. The names ``counter`` and
    ``button`` are special: the payload's counter, and a button flag (non-zero: pressed)."""

    name: str
    offset: int
    type: FieldType
    scale: float = 1.0
    unit: str | None = None

    @property
    def size(self) -> int:
        return 3 if self.type == "u24le" else struct.calcsize(_TYPES[self.type])

    def read(self, data: bytes) -> int:
        raw = data[self.offset : self.offset + self.size]
        if len(raw) < self.size:
            raise BleDecodeError(
                "truncated", f"{self.name} needs bytes {self.offset}-{self.offset + self.size - 1}"
            )
        if self.type == "u24le":
            return int.from_bytes(raw, "little")
        value: int = struct.unpack(_TYPES[self.type], raw)[0]
        return value

    def pack(self, raw: int) -> bytes:
        """The field's bytes for ``raw`` (what :meth:`read` gives back): for simulated tags."""
        if self.type == "u24le":
            return raw.to_bytes(3, "little")
        return struct.pack(_TYPES[self.type], raw)


@dataclass(frozen=True, slots=True)
class VendorFormat:
    """A simple vendor beacon: manufacturer data of ``company_id`` that starts with ``prefix``
    (hex in config), holding ``fields``."""

    company_id: int
    fields: tuple[Field, ...]
    prefix: bytes = b""

    def decode(self, data: bytes, out: Decoded) -> None:
        if not data.startswith(self.prefix):
            return
        out.formats.append("vendor")
        for f in self.fields:
            raw = f.read(data)
            if f.name == "counter":
                out.counter = raw
            elif f.name == "button":
                if raw:
                    out.presses.append(Press("button", "press"))
            else:
                value: Value = raw if f.scale == 1 else round(raw * f.scale, 6)
                out.values[f.name] = (value, f.unit)


# ---------------------------------------------------------------------- the parsers' seam

_SKIP: Final = frozenset({"signal_strength", "packet_id", "rssi"})


def _service_info(advert: Advert) -> BluetoothServiceInfoBleak:
    """The parsers' input type, from our advert."""
    from bleak.backends.device import BLEDevice  # noqa: PLC0415
    from habluetooth import BluetoothServiceInfoBleak  # noqa: PLC0415

    return BluetoothServiceInfoBleak(
        advert.name or "",
        advert.address,
        advert.rssi,
        dict(advert.manufacturer_data),
        dict(advert.service_data),
        list(advert.service_uuids),
        "edge-agent",
        BLEDevice(advert.address, advert.name, None),
        None,
        False,  # noqa: FBT003 - connectable: the parsers' positional signature
        advert.time,
        advert.tx_power,
    )


def _take_update(
    name: str, parser: BluetoothData, info: BluetoothServiceInfoBleak, out: Decoded
) -> bool:
    """Run a Home Assistant parser on one advert; its values, presses and counter into
    ``out``. False when the parser found nothing of its format in it. The parsers index into
    the payload without checking its length (``tests/test_ble_decode.py`` found an empty
    BTHome or Ruuvi payload raising IndexError, a Ruuvi format 5 one a byte too long struct.error):
    whatever they raise becomes our error."""
    try:
        update = parser.update(info)
    except (ArithmeticError, LookupError, TypeError, ValueError, struct.error) as exc:
        raise BleDecodeError("garbage", f"{name}: {type(exc).__name__}: {exc}") from None
    descriptions = update.entity_descriptions
    got = False
    for key, sensor in update.entity_values.items():
        value = sensor.native_value
        if key.key == "packet_id" and isinstance(value, int):
            out.counter = value
            got = True
            continue
        if key.key in _SKIP or value is None or isinstance(value, bool):
            continue
        if isinstance(value, int | float | str):
            description = descriptions.get(key)
            unit = None if description is None else description.native_unit_of_measurement
            out.values[key.key] = (value, None if unit is None else str(unit.value))
            got = True
    for key, binary in update.binary_entity_values.items():
        if binary.native_value is not None:
            out.values[key.key] = (int(bool(binary.native_value)), None)
            got = True
    for event in update.events.values():
        out.presses.append(Press(event.device_key.key, event.event_type))
        got = True
    return got


@dataclass(slots=True)
class TagDecoder:
    """Decodes one tag's adverts (the parsers keep per-tag state: keep one per tag).
    ``bindkey``: the tag's BTHome or MiBeacon key (16 bytes)."""

    bindkey: bytes | None = None
    vendor: Sequence[VendorFormat] = ()
    _bthome: BluetoothData | None = None
    _xiaomi: BluetoothData | None = None
    _ruuvi: BluetoothData | None = None
    _ibeacon: iBeaconParser | None = None
    _last: tuple[Mapping[str, bytes], Mapping[int, bytes], Decoded] | None = None

    def decode(self, advert: Advert) -> Decoded:
        """Everything the advert says. Raises :class:`BleDecodeError` only for an own-format
        frame that breaks its layout; a parser that cannot read its part leaves it out.

        An advert whose payload is the last one's (a beacon repeats itself until a value
        changes) says the same again, without a press: it is not run through the parsers."""
        last = self._last
        if (
            last is not None
            and advert.service_data == last[0]
            and advert.manufacturer_data == last[1]
        ):
            again = last[2]
            return Decoded(
                formats=list(again.formats),
                identities=list(again.identities),
                values=dict(again.values),
                counter=again.counter,
                tx_power=again.tx_power,
                problems=list(again.problems),
            )
        out = self._decode(advert)
        self._last = (dict(advert.service_data), dict(advert.manufacturer_data), out)
        return out

    def _decode(self, advert: Advert) -> Decoded:
        out = Decoded(tx_power=advert.tx_power)
        info: BluetoothServiceInfoBleak | None = None

        def service_info() -> BluetoothServiceInfoBleak:
            nonlocal info
            if info is None:
                info = _service_info(advert)
            return info

        if BTHOME in advert.service_data:
            if self._bthome is None:
                from bthome_ble import BTHomeBluetoothDeviceData  # noqa: PLC0415

                self._bthome = BTHomeBluetoothDeviceData(bindkey=self.bindkey)
            if _take_update("bthome", self._bthome, service_info(), out):
                out.formats.append("bthome")
            else:
                out.problems.append(_why_not(self._bthome, "bthome"))
        if MIBEACON in advert.service_data:
            if self._xiaomi is None:
                from xiaomi_ble import XiaomiBluetoothDeviceData  # noqa: PLC0415

                self._xiaomi = XiaomiBluetoothDeviceData(bindkey=self.bindkey)
            frame = advert.service_data[MIBEACON]
            if _take_update("mibeacon", self._xiaomi, service_info(), out):
                out.formats.append("mibeacon")
                if len(frame) >= 5 and out.counter is None:
                    out.counter = frame[4]
            else:
                out.problems.append(_why_not(self._xiaomi, "mibeacon"))
        if RUUVI in advert.manufacturer_data:
            if self._ruuvi is None:
                from ruuvitag_ble import RuuvitagBluetoothDeviceData  # noqa: PLC0415

                self._ruuvi = RuuvitagBluetoothDeviceData()
            if _take_update("ruuvi", self._ruuvi, service_info(), out):
                out.formats.append("ruuvi")
        apple = advert.manufacturer_data.get(APPLE)
        if apple is not None and apple[:2] == b"\x02\x15":
            if self._ibeacon is None:
                from ibeacon_ble import iBeaconParser  # noqa: PLC0415

                self._ibeacon = iBeaconParser()
            beacon = self._ibeacon.parse(service_info())
            if beacon is not None:
                out.formats.append("ibeacon")
                out.identities.append(ibeacon_identity(beacon.uuid, beacon.major, beacon.minor))
                out.tx_power = beacon.power
        if EDDYSTONE in advert.service_data:
            eddystone(advert.service_data[EDDYSTONE], out)
        for fmt in self.vendor:
            data = advert.manufacturer_data.get(fmt.company_id)
            if data is not None:
                fmt.decode(data, out)
        return out


def _why_not(parser: BluetoothData, name: str) -> str:
    if getattr(parser, "downgrade_detected", False):
        return f"{name}:plain_while_keyed"
    scheme = getattr(parser, "encryption_scheme", None)
    if scheme is not None and getattr(scheme, "value", "none") != "none":
        if getattr(parser, "bindkey", None) is None:
            return f"{name}:no_key"
        return f"{name}:decrypt_failed"
    return f"{name}:unreadable"


async def load_ibeacon_vendors() -> None:
    """``ibeacon-ble`` looks up the vendor of every address in an OUI table that must be loaded
    first (about 1 MB): call once before decoding."""
    import aiooui  # noqa: PLC0415

    if not aiooui.is_loaded():
        await aiooui.async_load()
