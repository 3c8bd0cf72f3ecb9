"""Pure Modbus codecs: register words <-> typed values, RTU frames and their CRC.

Nothing here does I/O or imports a protocol library, so the config models, the planner, the CLI
and the tests can use it freely. Registers are 16-bit words as they travel on the wire; a value
of several registers is assembled according to its word order:

- ``ABCD``: big-endian, most significant register first (the Modbus convention);
- ``DCBA``: fully little-endian (registers reversed, bytes in each register swapped);
- ``BADC``: registers in big-endian order, bytes swapped within each register;
- ``CDAB``: least significant register first, bytes big-endian within each register.

For 16-bit values only the byte order matters (``BADC``/``DCBA`` swap the two bytes); strings
keep their registers in order and swap bytes within each register for ``BADC``/``DCBA``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from typing import Final, Literal, get_args

__all__ = [
    "BIT_TABLES",
    "DATA_TYPES",
    "REGISTER_TABLES",
    "TABLES",
    "WORD_ORDERS",
    "CodecError",
    "DataType",
    "Decoder",
    "Table",
    "Value",
    "WordOrder",
    "crc16",
    "decode",
    "decoder",
    "encode",
    "exception_reason",
    "frame_rtu",
    "function_code",
    "register_count",
    "reply_length",
    "rtu_crc_ok",
    "rtu_reply_size",
    "scan_mbap",
    "scan_rtu",
]

Table = Literal["holding", "input", "coil", "discrete"]
DataType = Literal[
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "string",
    "bit",
    "bool",
]
WordOrder = Literal["ABCD", "DCBA", "BADC", "CDAB"]
Value = int | float | bool | str

TABLES: Final[tuple[Table, ...]] = get_args(Table)
DATA_TYPES: Final[tuple[DataType, ...]] = get_args(DataType)
WORD_ORDERS: Final[tuple[WordOrder, ...]] = get_args(WordOrder)
REGISTER_TABLES: Final[frozenset[str]] = frozenset({"holding", "input"})
BIT_TABLES: Final[frozenset[str]] = frozenset({"coil", "discrete"})

_READ_FUNCTION: Final[dict[str, int]] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}

# struct letter and register count of each numeric type.
_NUMERIC: Final[dict[str, tuple[str, int]]] = {
    "int16": ("h", 1),
    "uint16": ("H", 1),
    "int32": ("i", 2),
    "uint32": ("I", 2),
    "int64": ("q", 4),
    "uint64": ("Q", 4),
    "float32": ("f", 2),
    "float64": ("d", 4),
}


class CodecError(ValueError):
    """A value does not fit its type, or registers do not hold what was asked for."""


def function_code(table: str) -> int:
    """The read function code of a table (FC01 coils ... FC04 input registers)."""
    return _READ_FUNCTION[table]


def register_count(data_type: DataType, length: int | None = None) -> int:
    """Registers a value of ``data_type`` occupies (``length`` registers for strings)."""
    if data_type in _NUMERIC:
        return _NUMERIC[data_type][1]
    if data_type == "string":
        if length is None or length < 1:
            raise CodecError("a string needs its length in registers")
        return length
    return 1  # bit, bool


def _order(count: int, word_order: WordOrder) -> tuple[str, tuple[int, ...]]:
    """How to turn ``count`` wire registers into big-endian bytes: the struct byte order for
    packing each register and the order in which to take them."""
    forward = tuple(range(count))
    backward = forward[::-1]
    if word_order == "ABCD":
        return ">", forward
    if word_order == "CDAB":
        return ">", backward
    if word_order == "BADC":
        return "<", forward
    return "<", backward  # DCBA


Decoder = Callable[[Sequence[int], int], Value]
"""``decoder(registers, start)``: the value whose first register is ``registers[start]``."""


def decoder(
    data_type: DataType,
    word_order: WordOrder = "ABCD",
    *,
    length: int | None = None,
    bit: int | None = None,
) -> Decoder:
    """A fast decoder for one point, built once (the poll loop calls it for every reading)."""
    if data_type == "bit":
        if bit is None or not 0 <= bit <= 15:
            raise CodecError("a bit point needs 'bit' between 0 and 15")
        mask = 1 << bit
        return lambda regs, at: bool(regs[at] & mask)
    if data_type == "bool":
        return lambda regs, at: bool(regs[at])
    if data_type == "string":
        count = register_count("string", length)
        swap = word_order in ("BADC", "DCBA")
        words = struct.Struct(f"{'<' if swap else '>'}{count}H")

        def text(regs: Sequence[int], at: int) -> str:
            raw = words.pack(*regs[at : at + count])
            return raw.split(b"\0", 1)[0].decode("utf-8", "replace").rstrip()

        return text
    letter, count = _NUMERIC[data_type]
    endian, order = _order(count, word_order)
    pack = struct.Struct(f"{endian}{count}H").pack
    unpack = struct.Struct(f">{letter}").unpack
    if data_type == "float32":
        # float32 carries about 7 significant digits; more would be noise (230.2 V arrives as
        # 230.20001220703125).
        def f32(regs: Sequence[int], at: int) -> float:
            value: float = unpack(pack(*[regs[at + i] for i in order]))[0]
            return float(f"{value:.7g}") if math.isfinite(value) else value

        return f32
    if count == 1:
        return lambda regs, at: unpack(pack(regs[at]))[0]
    if order == (0, 1):
        return lambda regs, at: unpack(pack(regs[at], regs[at + 1]))[0]
    return lambda regs, at: unpack(pack(*[regs[at + i] for i in order]))[0]


def decode(
    registers: Sequence[int],
    data_type: DataType,
    word_order: WordOrder = "ABCD",
    *,
    length: int | None = None,
    bit: int | None = None,
) -> Value:
    """The value held by ``registers`` (exactly the registers of one point)."""
    need = register_count(data_type, length)
    if len(registers) != need:
        raise CodecError(f"{data_type} needs {need} register(s), got {len(registers)}")
    if any(not 0 <= r <= 0xFFFF for r in registers):
        raise CodecError("registers are 16-bit words (0-65535)")
    return decoder(data_type, word_order, length=length, bit=bit)(registers, 0)


_INT_RANGE: Final[dict[str, tuple[int, int]]] = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


def encode(
    value: Value,
    data_type: DataType,
    word_order: WordOrder = "ABCD",
    *,
    length: int | None = None,
    bit: int | None = None,
    current: int = 0,
) -> list[int]:
    """The registers that hold ``value``. For a ``bit`` point, ``current`` is the register's
    present content, of which only the one bit changes."""
    if data_type == "bit":
        if bit is None or not 0 <= bit <= 15:
            raise CodecError("a bit point needs 'bit' between 0 and 15")
        if not isinstance(value, bool | int) or value not in (0, 1):
            raise CodecError(f"a bit takes true or false, not {value!r}")
        return [(current | (1 << bit)) if value else (current & ~(1 << bit) & 0xFFFF)]
    if data_type == "bool":
        if not isinstance(value, bool | int) or value not in (0, 1):
            raise CodecError(f"a bool takes true or false, not {value!r}")
        return [1 if value else 0]
    if data_type == "string":
        count = register_count("string", length)
        if not isinstance(value, str):
            raise CodecError(f"a string point takes text, not {value!r}")
        raw = value.encode("utf-8")
        if len(raw) > 2 * count:
            raise CodecError(f"{value!r} needs {len(raw)} bytes; the point holds {2 * count}")
        raw = raw.ljust(2 * count, b"\0")
        swap = word_order in ("BADC", "DCBA")
        return list(struct.unpack(f"{'<' if swap else '>'}{count}H", raw))
    letter, count = _NUMERIC[data_type]
    if isinstance(value, str):
        raise CodecError(f"{data_type} takes a number, not {value!r}")
    if data_type in _INT_RANGE:
        if isinstance(value, float):
            if not value.is_integer():
                raise CodecError(f"{data_type} takes a whole number, not {value!r}")
            value = int(value)
        low, high = _INT_RANGE[data_type]
        if not low <= value <= high:
            raise CodecError(f"{value} is outside {data_type} ({low} to {high})")
    try:
        raw = struct.pack(f">{letter}", value)
    except (OverflowError, struct.error) as exc:
        raise CodecError(f"{value!r} does not fit {data_type}: {exc}") from None
    endian, order = _order(count, word_order)
    words = struct.unpack(f">{count}H", raw)
    # ``order`` maps wire position -> big-endian word; invert it to place each word on the wire.
    wire = [0] * count
    for position, index in enumerate(order):
        wire[position] = words[index]
    if endian == "<":
        wire = [((w & 0xFF) << 8) | (w >> 8) for w in wire]
    return wire


# --- RTU frames ----------------------------------------------------------------------------------


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE: Final = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def frame_rtu(unit: int, pdu: bytes) -> bytes:
    """An RTU frame: unit, PDU, CRC (low byte first)."""
    body = bytes([unit]) + pdu
    return body + crc16(body).to_bytes(2, "little")


def reply_length(function: int, count: int) -> int:
    """Bytes of a normal RTU reply to a read of ``count`` registers or bits."""
    if function in (1, 2):
        return 5 + (count + 7) // 8
    if function in (3, 4):
        return 5 + 2 * count
    return 8  # writes echo address and value/quantity


def exception_reason(code: int) -> str:
    """The reason word of a Modbus exception reply: ``exception_02``, ``exception_0b``."""
    return f"exception_{code:02x}"


def rtu_reply_size(data: bytes, unit: int, function: int, expected: int) -> int:
    """Bytes of our reply at the start of ``data`` once they have all arrived, else 0: a read's
    reply is as long as its byte count says (a device may truncate: the driver tells), a write's
    ``expected`` bytes, an exception reply 5. The CRC is not checked here: a complete reply with
    a bad CRC ends the wait at once, and :func:`rtu_crc_ok` tells."""
    if len(data) < 5 or data[0] != unit or data[1] not in (function, function | 0x80):
        return 0
    if data[1] & 0x80:
        size = 5
    elif function in (1, 2, 3, 4):
        size = 5 + data[2]
    else:
        size = expected
    return size if len(data) >= size else 0


def rtu_crc_ok(frame: bytes) -> bool:
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


def _rtu_frame_at(data: bytes, start: int) -> int:
    """Length of the CRC-valid reply frame starting at ``start``, or 0."""
    if len(data) - start < 5:
        return 0
    function = data[start + 1]
    candidates: list[int] = []
    if function & 0x80:
        candidates.append(5)
    elif function in (1, 2, 3, 4):
        candidates.append(5 + data[start + 2])
    elif function in (5, 6, 15, 16):
        candidates.append(8)
    for size in candidates:
        end = start + size
        if end <= len(data) and crc16(data[start : end - 2]) == int.from_bytes(
            data[end - 2 : end], "little"
        ):
            return size
    return 0


def scan_rtu(data: bytes, unit: int, function: int, expected: int) -> str:
    """Why ``data`` (everything received after a request) held no acceptable reply.

    ``wrong_unit``: a valid frame from another unit (two devices on one address, or a late reply
    to an earlier request); ``crc_error``: a frame for us whose CRC fails; ``short_reply``: the
    beginning of our reply and then silence; ``garbage``: bytes that form no frame (noise, a
    baud rate or parity mismatch); ``timeout``: nothing at all.
    """
    if not data:
        return "timeout"
    for start in range(len(data)):
        if _rtu_frame_at(data, start) and data[start] != unit:
            return "wrong_unit"
    for start in range(len(data) - 1):
        if data[start] != unit or data[start + 1] not in (function, function | 0x80):
            continue
        if _rtu_frame_at(data, start):
            # Our reply was there, intact, but noise before it made the framer drop it.
            continue
        size = 5 if data[start + 1] & 0x80 else expected
        return "crc_error" if len(data) - start >= size else "short_reply"
    return "garbage"


def scan_mbap(data: bytes, unit: int) -> str:
    """``scan_rtu`` for Modbus TCP (MBAP) replies: ``wrong_unit``, ``short_reply``, ``garbage``
    or ``timeout``."""
    if not data:
        return "timeout"
    at = 0
    while len(data) - at >= 7:
        protocol = int.from_bytes(data[at + 2 : at + 4], "big")
        length = int.from_bytes(data[at + 4 : at + 6], "big")
        if protocol != 0 or not 2 <= length <= 254:
            return "garbage"
        if len(data) - at < 6 + length:
            return "short_reply"
        if data[at + 6] != unit:
            return "wrong_unit"
        at += 6 + length
    return "short_reply" if at < len(data) else "garbage"
