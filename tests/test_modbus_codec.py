"""The Modbus codec on its own: published vectors, round trips, garbage (STYLE.md)."""

from __future__ import annotations

import contextlib
import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from peers.modbus_peers import registers_of

from drivers.modbus.codec import (
    WORD_ORDERS,
    CodecError,
    crc16,
    decode,
    encode,
    exception_reason,
    frame_rtu,
    register_count,
    reply_length,
    scan_mbap,
    scan_rtu,
)

# --- published vectors ----------------------------------------------------------------------------


def test_sdm120_voltage_reply_vector() -> None:
    # reference/protocols.md: `01 04 04 43 66 33 34 1B 38` = 230.2 V
    frame = bytes.fromhex("010404436633341B38")
    assert crc16(frame[:-2]).to_bytes(2, "little") == frame[-2:]
    registers = list(struct.unpack(">2H", frame[3:7]))
    assert decode(registers, "float32", "ABCD") == 230.2
    assert frame_rtu(1, frame[1:-2]) == frame


def test_crc_of_a_read_request() -> None:
    # The classic FC03 request: unit 1, address 0, 10 registers -> CRC C5 CD.
    assert frame_rtu(1, bytes.fromhex("030000000a")).hex() == "01030000000ac5cd"


@pytest.mark.parametrize(
    ("order", "registers"),
    [
        ("ABCD", [0x4366, 0x3334]),
        ("CDAB", [0x3334, 0x4366]),
        ("BADC", [0x6643, 0x3433]),
        ("DCBA", [0x3433, 0x6643]),
    ],
)
def test_word_orders_of_one_float(order: str, registers: list[int]) -> None:
    assert decode(registers, "float32", order) == 230.2  # type: ignore[arg-type]
    assert encode(230.20001220703125, "float32", order) == registers  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("order", "registers"),
    [
        ("ABCD", [0x0102, 0x0304, 0x0506, 0x0708]),
        ("CDAB", [0x0708, 0x0506, 0x0304, 0x0102]),
        ("BADC", [0x0201, 0x0403, 0x0605, 0x0807]),
        ("DCBA", [0x0807, 0x0605, 0x0403, 0x0201]),
    ],
)
def test_word_orders_of_a_64_bit_integer(order: str, registers: list[int]) -> None:
    assert decode(registers, "uint64", order) == 0x0102030405060708  # type: ignore[arg-type]


def test_16_bit_values_swap_bytes_only_in_byte_swapped_orders() -> None:
    assert decode([0xFF38], "int16", "ABCD") == -200
    assert decode([0xFF38], "int16", "CDAB") == -200
    assert decode([0x38FF], "int16", "BADC") == -200
    assert decode([0x38FF], "int16", "DCBA") == -200


def test_strings_bits_and_bools() -> None:
    regs = [0x4444, 0x5355, 0x3636, 0x3600, 0x0000]  # "DDSU666" + NUL padding
    assert decode(regs, "string", length=5) == "DDSU666"
    assert decode([0x4444, 0x5353], "string", "BADC", length=2) == "DDSS"
    assert encode("DDSU666", "string", length=5) == regs
    assert decode([0b1000_0000_0000_0100], "bit", bit=2) is True
    assert decode([0b1000_0000_0000_0100], "bit", bit=3) is False
    assert decode([0b1000_0000_0000_0100], "bit", bit=15) is True
    on, off = True, False
    assert encode(on, "bit", bit=0, current=0x8000) == [0x8001]
    assert encode(off, "bit", bit=15, current=0x8001) == [0x0001]
    assert decode([7], "bool") is True
    assert encode(off, "bool") == [0]


def test_float32_is_reported_with_its_own_precision() -> None:
    # 0.1 is not a float32; what arrives is 0.100000001490116..., reported as 0.1.
    assert decode(registers_of(0.1, "float32"), "float32") == 0.1
    assert decode(registers_of(0.1, "float64"), "float64") == 0.1
    nan = decode([0x7FC0, 0x0000], "float32")
    assert isinstance(nan, float)
    assert math.isnan(nan)


@pytest.mark.parametrize(
    ("value", "data_type", "message"),
    [
        (70000, "uint16", "outside uint16"),
        (-1, "uint32", "outside uint32"),
        (1.5, "int16", "whole number"),
        ("x", "float32", "takes a number"),
        (1e39, "float32", "does not fit"),
        ("too long", "string", "needs 8 bytes"),
        (2, "bool", "true or false"),
    ],
)
def test_values_that_do_not_fit_are_refused(value: object, data_type: str, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        encode(value, data_type, length=2)  # type: ignore[arg-type]


def test_sizes_and_reasons() -> None:
    assert [register_count(t) for t in ("int16", "uint32", "float32", "float64", "bit")] == [
        1,
        2,
        2,
        4,
        1,
    ]
    assert register_count("string", 7) == 7
    assert reply_length(3, 10) == 25
    assert reply_length(1, 9) == 7
    assert exception_reason(2) == "exception_02"
    assert exception_reason(11) == "exception_0b"


# --- round trips ----------------------------------------------------------------------------------

_INT_TYPES = {
    "int16": st.integers(-(2**15), 2**15 - 1),
    "uint16": st.integers(0, 2**16 - 1),
    "int32": st.integers(-(2**31), 2**31 - 1),
    "uint32": st.integers(0, 2**32 - 1),
    "int64": st.integers(-(2**63), 2**63 - 1),
    "uint64": st.integers(0, 2**64 - 1),
}

orders = st.sampled_from(WORD_ORDERS)


@given(st.data(), orders)
def test_integers_round_trip_and_match_an_independent_encoder(
    data: st.DataObject, order: str
) -> None:
    data_type = data.draw(st.sampled_from(sorted(_INT_TYPES)))
    value = data.draw(_INT_TYPES[data_type])
    registers = encode(value, data_type, order)  # type: ignore[arg-type]
    assert registers == registers_of(value, data_type, order)
    assert decode(registers, data_type, order) == value  # type: ignore[arg-type]


@given(st.floats(allow_nan=False, width=64), orders)
def test_float64_round_trips(value: float, order: str) -> None:
    registers = encode(value, "float64", order)  # type: ignore[arg-type]
    assert registers == registers_of(value, "float64", order)
    assert decode(registers, "float64", order) == value  # type: ignore[arg-type]


@given(st.floats(allow_nan=False, allow_infinity=False, width=32), orders)
def test_float32_round_trips_to_seven_significant_digits(value: float, order: str) -> None:
    registers = encode(value, "float32", order)  # type: ignore[arg-type]
    assert registers == registers_of(value, "float32", order)
    decoded = decode(registers, "float32", order)  # type: ignore[arg-type]
    assert isinstance(decoded, float)
    assert decoded == pytest.approx(value, rel=1e-6, abs=1e-38)


@given(st.text(st.characters(codec="ascii", exclude_characters="\0"), max_size=20), orders)
def test_strings_round_trip(text: str, order: str) -> None:
    text = text.rstrip()
    registers = encode(text, "string", order, length=10)  # type: ignore[arg-type]
    assert decode(registers, "string", order, length=10) == text  # type: ignore[arg-type]


@given(
    st.lists(st.integers(), max_size=6),
    st.sampled_from(["int16", "uint32", "float32", "float64", "string", "bit"]),
)
def test_garbage_registers_raise_only_codec_errors(registers: list[int], data_type: str) -> None:
    with contextlib.suppress(CodecError):
        decode(registers, data_type, length=2, bit=3)  # type: ignore[arg-type]


# --- what came over the line instead of a reply ---------------------------------------------------


def test_scan_rtu_tells_line_problems_apart() -> None:
    good = frame_rtu(1, bytes.fromhex("030443663334"))
    other = frame_rtu(7, bytes.fromhex("030443663334"))
    assert scan_rtu(b"", 1, 3, 9) == "timeout"
    assert scan_rtu(other, 1, 3, 9) == "wrong_unit"
    assert scan_rtu(good[:-1] + bytes([good[-1] ^ 0xFF]), 1, 3, 9) == "crc_error"
    assert scan_rtu(good[:5], 1, 3, 9) == "short_reply"
    assert scan_rtu(bytes.fromhex("ff00fe"), 1, 3, 9) == "garbage"
    # Noise in front of an intact reply: the reply was there, the noise spoilt it.
    assert scan_rtu(bytes.fromhex("5a") + good, 1, 3, 9) == "garbage"


def test_scan_mbap_tells_line_problems_apart() -> None:
    reply = bytes.fromhex("0001 0000 0007 07 03 04 43663334".replace(" ", ""))
    assert scan_mbap(b"", 1) == "timeout"
    assert scan_mbap(reply, 1) == "wrong_unit"
    assert scan_mbap(reply[:9], 7) == "short_reply"
    assert scan_mbap(b"\x01\x02\x03\x04\x05\x06\x07\x08", 7) == "garbage"
