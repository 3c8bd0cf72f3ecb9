"""CJ/T 188-2004 framing and values (water, heat and gas meters): pure functions, no I/O.

A frame on the wire is ``[FE ×0–4] 68 T A0..A6 C L DATA CS 16``:

- ``T`` is the meter type: ``10`` cold water, ``11`` hot water, ``12`` drinking water, ``13``
  reclaimed water, ``20`` heat (heating), ``21`` heat (cooling), ``30`` gas; ``AA`` is any type
  (the read-address request of a scan);
- the address is 7 BCD bytes, low byte first (nameplate 78330011223344 is
  ``44 33 22 11 00 33 78``); ``AA`` bytes are wildcards: ``AA×7`` reaches the one meter on a
  line, low bytes followed by ``AA`` high bytes the meters whose address ends in those digits
  (abbreviated addressing);
- ``C``: bit 7 a reply, bit 6 an abnormal reply, bits 0–5 the function (``01`` read data,
  ``03`` read address, ``04`` write data);
- ``L`` counts the DATA bytes, sent as they are (no +0x33 offset, unlike DL/T 645);
- ``CS`` is the sum of the bytes from ``68`` through DATA, mod 256.

DATA is ``DI0 DI1 SER payload``: the data identifier (``901F`` current data, ``810A`` address,
``A017`` valve control), a serial number the reply repeats, then the values. Vendors send the
identifier either way round (``1F 90`` or ``90 1F``): :func:`di_matches` accepts both, and
:func:`di_bytes` sends it as the meter's config says. Values are BCD, low byte first, with a unit
byte after most quantities; a value the meter does not have is ``FF``-filled.

:func:`reply_length` finds a frame in what a line carried (preamble, noise, a truncated frame
before it) without raising; every other function raises only :class:`Cjt188Error`.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from agent.driver import frames68
from agent.driver.bcd import address_bytes, address_text, from_bcd, is_bcd, sum8, to_bcd
from agent.driver.frames68 import END, START, frame_end

__all__ = [
    "ABNORMAL",
    "ADDRESS_SIZE",
    "ANY_TYPE",
    "CURRENT",
    "HEADER",
    "HEAT_FIELDS",
    "METER_TYPES",
    "READ_ADDRESS",
    "REPLY",
    "STATUS_SIZE",
    "TYPE_NAMES",
    "UNITS",
    "VALVE",
    "VALVE_CLOSE",
    "VALVE_OPEN",
    "WATER_FIELDS",
    "WILDCARD",
    "Cjt188Error",
    "CurrentData",
    "DiOrder",
    "Field",
    "Frame",
    "Func",
    "Measured",
    "Status",
    "Valve",
    "body",
    "decode",
    "decode_current",
    "decode_status",
    "di_bytes",
    "di_matches",
    "diagnose",
    "encode",
    "encode_current",
    "fields_of",
    "find_frame",
    "is_heat",
    "parse_address",
    "payload_size",
    "reply_length",
    "show_address",
    "split",
]

ADDRESS_SIZE: Final = 7
WILDCARD: Final = b"\xaa" * ADDRESS_SIZE
ANY_TYPE: Final = 0xAA
PREAMBLE: Final = b"\xfe\xfe\xfe\xfe"
HEADER: Final = 11
"""68 T A0..A6 C L."""

REPLY: Final = 0x80
ABNORMAL: Final = 0x40
FUNCTION: Final = 0x3F

CURRENT: Final = 0x901F
"""Current data (cumulative flow or heat, time, status)."""
READ_ADDRESS: Final = 0x810A
"""The meter's address (in the reply's address field)."""
VALVE: Final = 0xA017
"""Valve control (write data): one byte, :data:`VALVE_OPEN` or :data:`VALVE_CLOSE`."""
VALVE_OPEN: Final = 0x55
VALVE_CLOSE: Final = 0x99

METER_TYPES: Final[Mapping[str, int]] = {
    "cold_water": 0x10,
    "hot_water": 0x11,
    "drinking_water": 0x12,
    "reclaimed_water": 0x13,
    "heat": 0x20,
    "cooling": 0x21,
    "gas": 0x30,
}
"""Meter type names (as the config writes them) and their ``T`` codes."""
TYPE_NAMES: Final[Mapping[int, str]] = {code: name for name, code in METER_TYPES.items()}

DiOrder = Literal["low_first", "high_first"]


class Cjt188Error(ValueError):
    """Bytes that are not a valid CJ/T 188 frame or value; ``reason`` is a short word for the
    counters (``checksum_error``, ``garbage``, ``truncated``, ``bad_length``, ``bad_value``...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Func(enum.IntEnum):
    """Function codes (bits 0–5 of C)."""

    READ = 0x01
    READ_ADDRESS = 0x03
    WRITE = 0x04


def is_heat(meter_type: int) -> bool:
    """Heat (or cooling) meters answer ``901F`` with the heat layout, the others with water's."""
    return meter_type in (0x20, 0x21)


def di_bytes(di: int, order: DiOrder = "low_first") -> bytes:
    """A data identifier as sent: ``901F`` is ``1F 90`` low byte first, ``90 1F`` high first."""
    return di.to_bytes(2, "little" if order == "low_first" else "big")


def di_matches(raw: bytes | bytearray, di: int) -> bool:
    """Whether two identifier bytes are ``di``, in either order."""
    return len(raw) == 2 and raw in (di_bytes(di, "low_first"), di_bytes(di, "high_first"))


def parse_address(text: str) -> bytes:
    """A nameplate address (up to 14 digits, leading zeros optional; ``AA`` pairs as wildcards)
    as wire bytes. Raises :class:`Cjt188Error` (``bad_address``)."""
    try:
        return address_bytes(text, ADDRESS_SIZE)
    except ValueError as exc:
        raise Cjt188Error("bad_address", str(exc)) from None


def show_address(address: bytes) -> str:
    """Wire bytes of an address as the nameplate shows it."""
    return address_text(address)


def _address_byte(byte: int) -> bool:
    return byte == 0xAA or ((byte & 0x0F) < 10 and (byte >> 4) < 10)


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: ``data`` is DATA as sent (``DI0 DI1 SER payload``, see :func:`split`)."""

    meter_type: int
    address: bytes
    control: int
    data: bytes = b""

    @property
    def is_reply(self) -> bool:
        return bool(self.control & REPLY)

    @property
    def abnormal(self) -> bool:
        return bool(self.control & ABNORMAL)

    @property
    def function(self) -> int:
        return self.control & FUNCTION


def body(di: int, ser: int, payload: bytes = b"", order: DiOrder = "low_first") -> bytes:
    """DATA of a frame: the identifier, the serial number, the payload."""
    return di_bytes(di, order) + bytes((ser & 0xFF,)) + payload


def split(data: bytes) -> tuple[bytes, int, bytes]:
    """DATA as ``(identifier bytes, SER, payload)``."""
    if len(data) < 3:
        raise Cjt188Error("truncated", f"{len(data)} data bytes hold no identifier and SER")
    return data[:2], data[2], data[3:]


def encode(frame: Frame, *, preamble: int = 4) -> bytes:
    """The frame as sent, after ``preamble`` FE bytes (0–4)."""
    if len(frame.address) != ADDRESS_SIZE or not all(_address_byte(b) for b in frame.address):
        raise Cjt188Error(
            "bad_address", f"an address is {ADDRESS_SIZE} BCD bytes (or AA): {frame.address!r}"
        )
    if not 0 <= frame.meter_type <= 0xFF or not 0 <= frame.control <= 0xFF:
        raise Cjt188Error("bad_frame", "the type and the control code are one byte each")
    if len(frame.data) > 255:
        raise Cjt188Error("too_long", f"{len(frame.data)} data bytes (at most 255)")
    if not 0 <= preamble <= 4:
        raise Cjt188Error("bad_frame", f"a preamble is 0 to 4 FE bytes, not {preamble}")
    head = (START, frame.meter_type, *frame.address, frame.control, len(frame.data))
    raw = bytearray(head)
    raw += frame.data
    raw.append(sum8(raw))
    raw.append(END)
    return b"\xfe" * preamble + bytes(raw)


def _plausible(buf: bytes | bytearray, i: int) -> bool:
    """Whether the address bytes after a 68 at ``buf[i]`` (those that arrived) can be one:
    BCD or AA. The only redundancy a header has besides the checksum."""
    return all(_address_byte(b) for b in buf[i + 2 : min(len(buf), i + 2 + ADDRESS_SIZE)])


def _frame_at(buf: bytes | bytearray, i: int) -> int:
    """The end of a valid frame starting at ``buf[i]`` (a 68), 0 if it is not complete yet, -1
    if it cannot be one."""
    if not _plausible(buf, i):
        return -1
    return frame_end(buf, i, HEADER, 10)


def find_frame(buf: bytes | bytearray) -> tuple[int, int] | None:
    """``(start, end)`` of the first complete, valid frame in ``buf`` (preamble and noise
    before it skipped), or None."""
    return frames68.find_frame(buf, _frame_at)


def reply_length(buf: bytes) -> int:
    """For the bus's ``request``: how many bytes from the start make up the first complete
    frame (0: not yet)."""
    found = find_frame(buf)
    return 0 if found is None else found[1]


def decode(raw: bytes) -> Frame:
    """The one frame in ``raw`` (FE preamble and noise before it allowed)."""
    found = find_frame(raw)
    if found is None:
        raise Cjt188Error(diagnose(raw), f"no valid CJ/T 188 frame in {raw.hex(' ')!r}")
    start = found[0]
    length = raw[start + 10]
    data = bytes(raw[start + HEADER : start + HEADER + length])
    return Frame(raw[start + 1], bytes(raw[start + 2 : start + 9]), raw[start + 9], data)


def diagnose(raw: bytes) -> str:
    """Why ``raw`` holds no valid frame: ``timeout`` (nothing), ``truncated`` (a frame's start
    but not its end), ``checksum_error`` (a whole frame with a wrong checksum) or ``garbage``."""
    body = raw.lstrip(b"\xfe")
    if not body:
        return "timeout"
    i = body.find(START)
    while i >= 0:
        if _plausible(body, i):
            if len(body) - i < HEADER:
                return "truncated"
            end = i + HEADER + body[i + 10] + 2
            if len(body) < end:
                return "truncated"
            if body[end - 1] == END:
                return "checksum_error"
        i = body.find(START, i + 1)
    return "garbage"


# ---------------------------------------------------------------------- values

UNITS: Final[Mapping[int, tuple[str, int]]] = {
    0x01: ("J", 1),
    0x02: ("Wh", 1),
    0x05: ("kWh", 1),
    0x08: ("MWh", 1),
    0x0A: ("MWh", 100),
    0x0B: ("kJ", 1),
    0x0E: ("MJ", 1),
    0x11: ("GJ", 1),
    0x13: ("GJ", 100),
    0x14: ("W", 1),
    0x17: ("kW", 1),
    0x1A: ("MW", 1),
    0x29: ("L", 1),
    0x2C: ("m³", 1),
    0x32: ("L/h", 1),
    0x35: ("m³/h", 1),
}
"""Unit codes: the unit a value is reported in, and the factor (``0A`` is MWh × 100)."""


@dataclass(frozen=True, slots=True)
class Field:
    """One quantity of a ``901F`` reply: ``size`` BCD bytes with ``decimals``, then a unit byte
    (``unit`` None) or a fixed unit; or the meter's clock (``datetime``, 7 bytes)."""

    name: str
    size: int
    decimals: int = 0
    unit: str | None = None
    default_unit: int = 0x2C
    """The unit code the simulator sends (a field with a unit byte)."""
    kind: Literal["number", "datetime"] = "number"

    @property
    def unit_byte(self) -> bool:
        return self.kind == "number" and self.unit is None

    @property
    def wire_size(self) -> int:
        return self.size + self.unit_byte


_TIME: Final = Field("meter_time", 7, kind="datetime")
WATER_FIELDS: Final = (
    Field("volume", 4, 2),
    Field("volume_settlement", 4, 2),
    _TIME,
)
"""Water and gas meters (``L`` = 0x16): current and settlement-day cumulative flow, clock."""
HEAT_FIELDS: Final = (
    Field("heat_settlement", 4, 2, default_unit=0x05),
    Field("heat_energy", 4, 2, default_unit=0x05),
    Field("heat_power", 4, 2, default_unit=0x17),
    Field("flow_rate", 4, 4, default_unit=0x35),
    Field("volume", 4, 2),
    Field("supply_temp", 3, 2, unit="°C"),
    Field("return_temp", 3, 2, unit="°C"),
    Field("working_hours", 3, 0, unit="h"),
    _TIME,
)
"""Heat and cooling meters (``L`` = 0x2E): settlement-day and current heat, power, flow rate
(XXXX.XXXX), cumulative flow, supply and return temperature, working hours, clock."""
STATUS_SIZE: Final = 2


def fields_of(meter_type: int) -> tuple[Field, ...]:
    return HEAT_FIELDS if is_heat(meter_type) else WATER_FIELDS


def payload_size(meter_type: int) -> int:
    """Bytes after DI and SER in a ``901F`` reply: 19 (water, gas) or 43 (heat)."""
    return sum(f.wire_size for f in fields_of(meter_type)) + STATUS_SIZE


@dataclass(frozen=True, slots=True)
class Measured:
    """One decoded quantity; ``value`` None with ``reason`` (``not_available``: FF-filled,
    ``bad_value``: not BCD or no such date); a value with a ``reason`` (``unknown_unit``) is
    uncertain."""

    name: str
    value: float | int | str | None
    unit: str | None = None
    reason: str | None = None


Valve = Literal["open", "closed", "abnormal"]


@dataclass(frozen=True, slots=True)
class Status:
    """The two status bytes ``ST1 ST2``: ST1 bits 0–1 the valve (00 open, 01 closed, 11
    abnormal; 10, undefined, is taken as abnormal), bit 2 a low battery; the rest is the
    vendor's (kept in :attr:`raw`)."""

    raw: bytes

    @property
    def valve(self) -> Valve:
        bits = self.raw[0] & 0x03
        return "open" if bits == 0 else "closed" if bits == 1 else "abnormal"

    @property
    def battery_low(self) -> bool:
        return bool(self.raw[0] & 0x04)

    @property
    def text(self) -> str:
        """As sent, ``ST1ST2`` in hex."""
        return self.raw.hex().upper()


def decode_status(raw: bytes) -> Status:
    if len(raw) != STATUS_SIZE:
        raise Cjt188Error("bad_length", f"a status is {STATUS_SIZE} bytes, got {len(raw)}")
    return Status(bytes(raw))


@dataclass(frozen=True, slots=True)
class CurrentData:
    """A ``901F`` reply's payload, decoded."""

    values: tuple[Measured, ...]
    status: Status

    def get(self, name: str) -> Measured | None:
        return next((m for m in self.values if m.name == name), None)


def _decode_field(field: Field, raw: bytes, unit_code: int | None) -> Measured:
    if all(b == 0xFF for b in raw):
        return Measured(field.name, None, field.unit, "not_available")
    if not is_bcd(raw):
        return Measured(field.name, None, field.unit, "bad_value")
    if field.kind == "datetime":
        second, minute, hour, day, month = (from_bcd(raw[k : k + 1]) for k in range(5))
        year = from_bcd(raw[5:7])
        try:
            # The meter's local time, without a zone: the driver knows the meter's zone.
            stamp = dt.datetime(year, month, day, hour, minute, second)  # noqa: DTZ001
        except ValueError:
            return Measured(field.name, None, None, "bad_value")
        return Measured(field.name, stamp.isoformat())
    number = from_bcd(raw)
    unit, factor, reason = field.unit, 1, None
    if unit_code is not None:
        known = UNITS.get(unit_code)
        if known is None:
            reason = "unknown_unit"
        else:
            unit, factor = known
    if field.decimals == 0:
        return Measured(field.name, number * factor, unit, reason)
    value: float = round(number * factor / 10**field.decimals, field.decimals)
    return Measured(field.name, value, unit, reason)


def decode_current(meter_type: int, payload: bytes) -> CurrentData:
    """The quantities and status of a ``901F`` reply (the payload after DI and SER). A value
    that is FF-filled or not BCD comes back as None with its reason; a payload too short for
    the meter type raises (``bad_length``). Bytes after the status (vendor extras) are
    ignored."""
    need = payload_size(meter_type)
    if len(payload) < need:
        kind = "heat" if is_heat(meter_type) else "water/gas"
        raise Cjt188Error(
            "bad_length", f"a {kind} meter's current data is {need} bytes, got {len(payload)}"
        )
    values: list[Measured] = []
    at = 0
    for field in fields_of(meter_type):
        raw = payload[at : at + field.size]
        at += field.size
        unit_code = None
        if field.unit_byte:
            unit_code = payload[at]
            at += 1
        values.append(_decode_field(field, raw, unit_code))
    return CurrentData(tuple(values), decode_status(payload[at : at + STATUS_SIZE]))


def _encode_field(field: Field, value: float | str | None, unit_code: int) -> bytes:
    if value is None:
        return b"\xff" * field.size
    try:
        if field.kind == "datetime":
            if not isinstance(value, str):
                raise Cjt188Error("bad_value", f"{field.name} takes ISO text")
            t = dt.datetime.fromisoformat(value)
            pairs = [t.second, t.minute, t.hour, t.day, t.month]
            return bytes(to_bcd(p, 1)[0] for p in pairs) + to_bcd(t.year, 2)
        if isinstance(value, str):
            raise Cjt188Error("bad_value", f"{field.name} takes a number")
        factor = UNITS[unit_code][1] if field.unit_byte and unit_code in UNITS else 1
        return to_bcd(round(value / factor * 10**field.decimals), field.size)
    except ValueError as exc:
        if isinstance(exc, Cjt188Error):
            raise
        raise Cjt188Error("bad_value", f"{field.name} = {value!r}: {exc}") from None


def encode_current(
    meter_type: int,
    values: Mapping[str, float | str | None],
    status: bytes = b"\x00\x00",
    units: Mapping[str, int] | None = None,
) -> bytes:
    """The payload of a ``901F`` reply (the simulator's side, and round-trip tests): every
    field of the meter type from ``values`` (missing or None: FF-filled), each unit byte from
    ``units`` (default: m³, kWh, kW, m³/h), then the status."""
    units = units or {}
    out = bytearray()
    for field in fields_of(meter_type):
        unit_code = units.get(field.name, field.default_unit)
        out += _encode_field(field, values.get(field.name), unit_code)
        if field.unit_byte:
            out.append(unit_code)
    if len(status) != STATUS_SIZE:
        raise Cjt188Error("bad_length", f"a status is {STATUS_SIZE} bytes")
    return bytes(out + status)
