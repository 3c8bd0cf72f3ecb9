"""DL/T 645-2007 and DL/T 645-1997 framing and values: pure functions, no I/O.

A frame on the wire is ``[FE ×0–4] 68 A0..A5 68 C L DATA CS 16``:

- the address is 6 BCD bytes, low byte first (nameplate 129078563412 is ``12 34 56 78 90 12``);
  ``AA`` bytes are wildcards: ``AA×6`` reaches the one meter on a line, and low bytes followed by
  ``AA`` high bytes reach the meters whose address ends in those digits (abbreviated
  addressing); ``99×6`` is the broadcast address (no reply);
- ``C``: bit 7 a reply, bit 6 an abnormal reply (its data is one error byte), bit 5 more data
  follows (a follow-on frame), bits 0–4 the function;
- ``L`` counts the DATA bytes, each sent +0x33 (this module adds and removes the offset:
  :attr:`Frame.data` is plain);
- ``CS`` is the sum of the bytes from the first ``68`` through DATA, mod 256.

In DATA, the data identifier (DI) comes first, low byte first: 4 bytes in 2007, 2 in 1997.
Values are BCD, low byte first; a signed value has its sign in the top bit of its last byte; a
value the meter does not have is ``FF``-filled.

:func:`reply_length` finds a frame in what a line carried (preamble, noise, a truncated frame
before it) without raising; :func:`decode` raises only :class:`Dlt645Error`.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Final, Literal

from agent.driver import frames68
from agent.driver.bcd import address_bytes, address_text, from_bcd, is_bcd, sum8, to_bcd
from agent.driver.frames68 import END, START, frame_end

__all__ = [
    "ADDRESS_SIZE",
    "BROADCAST",
    "WILDCARD",
    "Dlt645Error",
    "Fmt",
    "Frame",
    "Func",
    "Version",
    "decode",
    "decode_value",
    "di_bytes",
    "di_of",
    "diagnose",
    "encode",
    "encode_value",
    "error_reason",
    "find_frame",
    "parse_address",
    "reply_length",
    "show_address",
]

ADDRESS_SIZE: Final = 6
WILDCARD: Final = b"\xaa" * ADDRESS_SIZE
BROADCAST: Final = b"\x99" * ADDRESS_SIZE
PREAMBLE: Final = b"\xfe\xfe\xfe\xfe"
OFFSET: Final = 0x33
HEADER: Final = 10
"""68 A0..A5 68 C L."""

REPLY: Final = 0x80
ABNORMAL: Final = 0x40
FOLLOWS: Final = 0x20
FUNCTION: Final = 0x1F

Version = Literal[2007, 1997]


class Dlt645Error(ValueError):
    """Bytes that are not a valid DL/T 645 frame or value; ``reason`` is a short word for the
    counters (``checksum_error``, ``garbage``, ``truncated``, ``bad_value``...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Func(enum.IntEnum):
    """Function codes (bits 0–4 of C)."""

    BROADCAST_TIME = 0x08
    READ = 0x11
    READ_NEXT = 0x12
    READ_ADDRESS = 0x13
    WRITE = 0x14
    READ_1997 = 0x01
    READ_NEXT_1997 = 0x02


def di_bytes(di: int, version: Version) -> bytes:
    """A data identifier as sent: low byte first, 4 bytes (2007) or 2 (1997)."""
    return di.to_bytes(4 if version == 2007 else 2, "little")


def di_of(data: bytes, version: Version) -> int:
    """The data identifier at the start of a frame's (plain) data."""
    size = 4 if version == 2007 else 2
    if len(data) < size:
        raise Dlt645Error("truncated", f"the data holds no {size}-byte identifier")
    return int.from_bytes(data[:size], "little")


def parse_address(text: str) -> bytes:
    """A nameplate address (up to 12 digits, leading zeros optional; ``AA`` pairs as wildcards)
    as wire bytes. Raises :class:`Dlt645Error` (``bad_address``)."""
    try:
        return address_bytes(text, ADDRESS_SIZE)
    except ValueError as exc:
        raise Dlt645Error("bad_address", str(exc)) from None


def show_address(address: bytes) -> str:
    """Wire bytes of an address as the nameplate shows it."""
    return address_text(address)


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame; ``data`` is plain (the +0x33 offset removed)."""

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
    def follows(self) -> bool:
        """A reply with more data in a follow-on frame."""
        return bool(self.control & FOLLOWS)

    @property
    def function(self) -> int:
        return self.control & FUNCTION


def encode(frame: Frame, *, preamble: int = 4) -> bytes:
    """The frame as sent, after ``preamble`` FE bytes (0–4)."""
    if len(frame.address) != ADDRESS_SIZE:
        raise Dlt645Error("bad_address", f"an address is {ADDRESS_SIZE} bytes")
    if len(frame.data) > 255:
        raise Dlt645Error("too_long", f"{len(frame.data)} data bytes (at most 255)")
    body = bytearray((START, *frame.address, START, frame.control, len(frame.data)))
    body += bytes((b + OFFSET) & 0xFF for b in frame.data)
    body.append(sum8(body))
    body.append(END)
    return b"\xfe" * preamble + bytes(body)


def _frame_at(buf: bytes | bytearray, i: int) -> int:
    """The end of a valid frame starting at ``buf[i]`` (a 68), 0 if it is not complete yet, -1
    if it cannot be one."""
    if len(buf) - i < HEADER:
        # Not enough for a header yet: it can still become one unless the second 68 is wrong.
        return 0 if len(buf) - i <= 7 or buf[i + 7] == START else -1
    if buf[i + 7] != START:
        return -1
    return frame_end(buf, i, HEADER, 9)


def find_frame(buf: bytes | bytearray) -> tuple[int, int] | None:
    """``(start, end)`` of the first complete, valid frame in ``buf`` (preamble and noise
    before it skipped), or None."""
    return frames68.find_frame(buf, _frame_at)


def reply_length(buf: bytes) -> int:
    """For the bus's ``exchange``: how many bytes from the start make up the first complete
    frame (0: not yet)."""
    found = find_frame(buf)
    return 0 if found is None else found[1]


def decode(raw: bytes) -> Frame:
    """The one frame in ``raw`` (FE preamble and noise before it allowed)."""
    found = find_frame(raw)
    if found is None:
        raise Dlt645Error(diagnose(raw), f"no valid DL/T 645 frame in {raw.hex(' ')!r}")
    start = found[0]
    length = raw[start + 9]
    data = bytes((b - OFFSET) & 0xFF for b in raw[start + HEADER : start + HEADER + length])
    return Frame(bytes(raw[start + 1 : start + 7]), raw[start + 8], data)


def diagnose(raw: bytes) -> str:
    """Why ``raw`` holds no valid frame: ``timeout`` (nothing), ``truncated`` (a frame's start
    but not its end), ``checksum_error`` (a whole frame with a wrong checksum) or ``garbage``."""
    body = raw.lstrip(b"\xfe")
    if not body:
        return "timeout"
    i = body.find(START)
    while i >= 0:
        if len(body) - i >= HEADER and body[i + 7] == START:
            end = i + HEADER + body[i + 9] + 2
            if len(body) < end:
                return "truncated"
            if body[end - 1] == END:
                return "checksum_error"
        elif len(body) - i < HEADER and (len(body) - i <= 7 or body[i + 7] == START):
            return "truncated"
        i = body.find(START, i + 1)
    return "garbage"


# ---------------------------------------------------------------------- errors

_ERRORS_2007: Final = (
    (0x02, "no_such_data"),
    (0x04, "unauthorised"),
    (0x08, "baud_unchangeable"),
    (0x10, "too_many_zones"),
    (0x20, "too_many_periods"),
    (0x40, "too_many_tariffs"),
    (0x01, "meter_error"),
)
_ERRORS_1997: Final = (
    (0x02, "no_such_data"),
    (0x01, "illegal_data"),
    (0x04, "unauthorised"),
    (0x10, "too_many_zones"),
    (0x20, "too_many_periods"),
    (0x40, "too_many_tariffs"),
)


def error_reason(code: int, version: Version = 2007) -> str:
    """The error byte of an abnormal reply as a reason word; the most telling bit wins
    (bit 1, "no such data", is what a meter without an identifier or a block answers)."""
    for bit, reason in _ERRORS_2007 if version == 2007 else _ERRORS_1997:
        if code & bit:
            return reason
    return "meter_error"


# ---------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Fmt:
    """How a value is written: ``XXXXXX.XX`` (4 BCD bytes, 2 decimals), ``YYMMDDWW`` (a date
    with its weekday), ``hhmmss`` (a time), ``NNNNNNNNNNNN`` (a number such as an address,
    reported as text). ``signed``: the top bit of the last byte is the sign."""

    pattern: str
    signed: bool = False
    size: int = field(init=False, compare=False, repr=False)
    """Bytes: two digits each (``XXX`` whole volts of a 1997 meter take two)."""
    decimals: int = field(init=False, compare=False, repr=False)
    kind: Literal["number", "date", "time", "datetime", "text"] = field(
        init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        # Worked out once: a poll decodes every value with them.
        pattern = self.pattern
        object.__setattr__(self, "size", (len(pattern.replace(".", "")) + 1) // 2)
        object.__setattr__(self, "decimals", len(pattern.partition(".")[2]))
        kind: Literal["number", "date", "time", "datetime", "text"] = "number"
        if pattern in ("YYMMDDWW", "YYMMDD"):
            kind = "date"
        elif pattern == "hhmmss":
            kind = "time"
        elif pattern in ("YYMMDDhhmm", "YYMMDDhhmmss"):
            kind = "datetime"
        elif set(pattern) == {"N"}:
            kind = "text"
        object.__setattr__(self, "kind", kind)


def _not_available(raw: bytes) -> bool:
    return bool(raw) and all(b == 0xFF for b in raw)


def decode_value(fmt: Fmt, raw: bytes) -> float | int | str | None:
    """One value from its plain bytes; None when the meter filled it with FF (not available).
    Dates and times come back as ISO text (``2026-12-02``, ``19:30:05``)."""
    if len(raw) != fmt.size:
        raise Dlt645Error("bad_value", f"{fmt.pattern} is {fmt.size} bytes, got {len(raw)}")
    if _not_available(raw):
        return None
    kind = fmt.kind
    if kind == "number":
        body = bytearray(raw)
        negative = False
        if fmt.signed:
            negative = bool(body[-1] & 0x80)
            body[-1] &= 0x7F
        try:
            number = from_bcd(body)
        except ValueError:
            raise Dlt645Error("bad_value", f"not BCD: {raw.hex(' ')}") from None
        if negative:
            number = -number
        if fmt.decimals == 0:
            return number
        scaled: float = round(number / 10**fmt.decimals, fmt.decimals)
        return scaled
    if not is_bcd(raw):
        raise Dlt645Error("bad_value", f"not BCD: {raw.hex(' ')}")
    if kind == "text":
        return address_text(raw)
    digits = [f"{b:02X}" for b in reversed(raw)]
    try:
        if kind == "date":
            year, month, day = (int(d) for d in digits[:3])
            return dt.date(2000 + year, month, day).isoformat()
        if kind == "time":
            hour, minute, second = (int(d) for d in digits)
            return dt.time(hour, minute, second).isoformat()
        year, month, day, hour, minute, *rest = (int(d) for d in digits)
        second = rest[0] if rest else 0
        # The meter's local time, without a zone: the driver knows the meter's zone.
        return dt.datetime(2000 + year, month, day, hour, minute, second).isoformat()  # noqa: DTZ001
    except ValueError as exc:
        raise Dlt645Error("bad_value", f"{fmt.pattern}: {exc}") from None


def encode_value(fmt: Fmt, value: float | str | None) -> bytes:
    """The plain bytes of a value (the simulator's side, and round-trip tests); None is FF-filled.
    Dates take ``datetime.date``-style ISO text; a ``YYMMDDWW`` date adds its weekday (0 =
    Sunday, as meters count)."""
    if value is None:
        return b"\xff" * fmt.size
    kind = fmt.kind
    try:
        if kind == "number":
            if isinstance(value, str):
                raise Dlt645Error("bad_value", f"{fmt.pattern} takes a number")
            scaled = round(value * 10**fmt.decimals)
            out = bytearray(to_bcd(abs(scaled), fmt.size))
            if scaled < 0:
                if not fmt.signed:
                    raise Dlt645Error("bad_value", f"{fmt.pattern} is unsigned: {value}")
                if out[-1] & 0x80:
                    raise Dlt645Error("bad_value", f"{value} does not fit {fmt.pattern}")
                out[-1] |= 0x80
            elif fmt.signed and out[-1] & 0x80:
                raise Dlt645Error("bad_value", f"{value} does not fit {fmt.pattern}")
            return bytes(out)
        if not isinstance(value, str):
            raise Dlt645Error("bad_value", f"{fmt.pattern} takes text")
        if kind == "text":
            return to_bcd(int(value), fmt.size)
        if kind == "date":
            day = dt.date.fromisoformat(value)
            fields = [day.year % 100, day.month, day.day]
            if fmt.pattern == "YYMMDDWW":
                fields.append((day.weekday() + 1) % 7)
        elif kind == "time":
            moment = dt.time.fromisoformat(value)
            fields = [moment.hour, moment.minute, moment.second]
        else:
            stamp = dt.datetime.fromisoformat(value)
            fields = [stamp.year % 100, stamp.month, stamp.day, stamp.hour, stamp.minute]
            if fmt.pattern.endswith("ss"):
                fields.append(stamp.second)
        return bytes(to_bcd(f, 1)[0] for f in reversed(fields))
    except ValueError as exc:
        if isinstance(exc, Dlt645Error):
            raise
        raise Dlt645Error("bad_value", f"{value!r} as {fmt.pattern}: {exc}") from None
