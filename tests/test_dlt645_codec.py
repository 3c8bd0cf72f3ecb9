"""DL/T 645 framing, values and planning: the reference vectors (shared/reference/protocols.md),
round trips, and bad input that raises only the codec's own error."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.dlt645.codec import (
    WILDCARD,
    Dlt645Error,
    Fmt,
    Frame,
    decode,
    decode_value,
    di_bytes,
    diagnose,
    encode,
    encode_value,
    error_reason,
    find_frame,
    parse_address,
    reply_length,
    show_address,
)
from drivers.dlt645.identifiers import BLOCKS, CATALOG
from drivers.dlt645.plan import Point, Timing, plan_reads, wire_time_s

METER = "129078563412"


def hexb(text: str) -> bytes:
    return bytes.fromhex(text)


def test_the_address_goes_low_byte_first() -> None:
    assert parse_address(METER) == hexb("12 34 56 78 90 12")
    assert show_address(hexb("12 34 56 78 90 12")) == METER
    assert parse_address("1") == hexb("01 00 00 00 00 00")
    assert parse_address("AAAAAAAAAAAA") == WILDCARD
    with pytest.raises(Dlt645Error):
        parse_address("1234567890123")
    with pytest.raises(Dlt645Error):
        parse_address("12345x")


def test_reference_read_of_total_energy_and_its_reply() -> None:
    request = encode(Frame(parse_address(METER), 0x11, di_bytes(0x00000000, 2007)))
    assert request == hexb("FE FE FE FE 68 12 34 56 78 90 12 68 11 04 33 33 33 33 67 16")
    reply = decode(hexb("FE FE FE FE 68 12 34 56 78 90 12 68 91 08 33 33 33 33 9A 78 56 34 87 16"))
    assert reply.is_reply
    assert not reply.abnormal
    assert not reply.follows
    assert reply.address == parse_address(METER)
    assert reply.data[:4] == bytes(4)
    assert decode_value(CATALOG[2007]["energy_total"].fmt, reply.data[4:]) == 12345.67


def test_reference_read_of_phase_a_voltage() -> None:
    request = encode(Frame(parse_address(METER), 0x11, di_bytes(0x02010100, 2007)))
    assert request == hexb("FE FE FE FE 68 12 34 56 78 90 12 68 11 04 33 34 34 35 6B 16")


def test_published_pair_without_preamble() -> None:
    address = parse_address("652022122003")
    request = encode(Frame(address, 0x11, di_bytes(0, 2007)), preamble=0)
    assert request == hexb("68 03 20 12 22 20 65 68 11 04 33 33 33 33 8D 16")
    reply = decode(hexb("68 03 20 12 22 20 65 68 91 08 33 33 33 33 33 33 33 33 DD 16"))
    assert decode_value(Fmt("XXXXXX.XX"), reply.data[4:]) == 0.0


def test_a_frame_is_found_after_noise_and_a_truncated_frame() -> None:
    good = hexb("68 03 20 12 22 20 65 68 91 08 33 33 33 33 33 33 33 33 DD 16")
    line = hexb("00 7F 68 03 20") + hexb("FE FE") + good + hexb("55")
    start, end = find_frame(line) or (0, 0)
    assert line[start:end] == good
    assert reply_length(line) == end == len(line) - 1
    assert reply_length(good[:-1]) == 0  # not yet


def test_why_there_is_no_frame() -> None:
    good = hexb("68 03 20 12 22 20 65 68 91 08 33 33 33 33 33 33 33 33 DD 16")
    assert diagnose(b"") == "timeout"
    assert diagnose(b"\xfe\xfe") == "timeout"
    assert diagnose(good[:12]) == "truncated"
    assert diagnose(good[:-2] + b"\x00\x16") == "checksum_error"
    assert diagnose(b"\x01\x02\x03\x04") == "garbage"
    with pytest.raises(Dlt645Error) as caught:
        decode(good[:-2] + b"\x00\x16")
    assert caught.value.reason == "checksum_error"


def test_abnormal_replies_say_why() -> None:
    assert error_reason(0x02) == "no_such_data"
    assert error_reason(0x04) == "unauthorised"
    assert error_reason(0x01) == "meter_error"
    assert error_reason(0x02, 1997) == "no_such_data"
    frame = decode(encode(Frame(parse_address(METER), 0xD1, b"\x02")))
    assert frame.abnormal
    assert frame.data == b"\x02"


@pytest.mark.parametrize(
    ("pattern", "signed", "raw", "value"),
    [
        ("XXX.X", False, "01 22", 220.1),
        ("XXX.XXX", True, "34 12 80", -1.234),
        ("XXX.XXX", True, "34 12 00", 1.234),
        ("XX.XXXX", True, "56 34 92", -12.3456),
        ("X.XXX", True, "50 09", 0.95),
        ("XX.XX", False, "02 50", 50.02),
        ("XXX", False, "20 02", 220),
        ("XXX.X", False, "FF FF", None),
        ("YYMMDDWW", False, "03 02 12 26", "2026-12-02"),
        ("hhmmss", False, "05 30 19", "19:30:05"),
        ("YYMMDDhhmm", False, "30 19 02 12 26", "2026-12-02T19:30:00"),
        ("NNNNNNNNNNNN", False, "12 34 56 78 90 12", METER),
    ],
)
def test_value_formats(pattern: str, signed: bool, raw: str, value: object) -> None:
    fmt = Fmt(pattern, signed)
    assert decode_value(fmt, hexb(raw)) == value
    if pattern != "YYMMDDWW":  # the weekday byte is computed, not carried
        assert encode_value(fmt, value) == hexb(raw)  # type: ignore[arg-type]


def test_bad_values_raise_the_codec_error() -> None:
    with pytest.raises(Dlt645Error):
        decode_value(Fmt("XXX.X"), hexb("0A 22"))  # not BCD
    with pytest.raises(Dlt645Error):
        decode_value(Fmt("XXX.X"), hexb("22"))  # short
    with pytest.raises(Dlt645Error):
        decode_value(Fmt("YYMMDDWW"), hexb("03 32 13 26"))  # no 32 December
    with pytest.raises(Dlt645Error):
        encode_value(Fmt("XXX.X"), -1.0)  # unsigned
    with pytest.raises(Dlt645Error):
        encode_value(Fmt("X.XXX", signed=True), 9.5)  # the top bit is the sign


@settings(max_examples=300, deadline=None)
@given(
    address=st.binary(min_size=6, max_size=6),
    control=st.integers(0, 255),
    data=st.binary(max_size=120),
    preamble=st.integers(0, 4),
)
def test_decode_of_encode_is_the_frame(
    address: bytes, control: int, data: bytes, preamble: int
) -> None:
    frame = Frame(address, control, data)
    wire = encode(frame, preamble=preamble)
    assert decode(wire) == frame
    assert reply_length(wire) == len(wire)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_garbage_raises_only_the_codec_error(data: bytes) -> None:
    reasons = {"timeout", "truncated", "checksum_error", "garbage"}
    if find_frame(data) is None:
        with pytest.raises(Dlt645Error) as caught:
            decode(data)
        assert caught.value.reason in reasons
    reply_length(data)  # never raises


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=40),
    cut=st.integers(0, 60),
    flip=st.integers(0, 60),
)
def test_truncated_and_corrupted_frames_raise_only_the_codec_error(
    data: bytes, cut: int, flip: int
) -> None:
    wire = bytearray(encode(Frame(parse_address(METER), 0x91, data), preamble=0))
    truncated = bytes(wire[: cut % len(wire)])
    with pytest.raises(Dlt645Error):
        decode(truncated)
    position = flip % len(wire)
    wire[position] ^= 0x01
    try:
        frame = decode(bytes(wire))
    except Dlt645Error:
        return
    # A flipped bit can only survive in a frame that is still whole and checks: never the
    # original's address, control and data all at once.
    assert frame != Frame(parse_address(METER), 0x91, data)


@settings(max_examples=200, deadline=None)
@given(
    pattern=st.sampled_from(["XXXXXX.XX", "XXX.X", "XXX.XXX", "XX.XXXX", "X.XXX", "XX.XX"]),
    signed=st.booleans(),
    digits=st.integers(0, 10**8),
    negative=st.booleans(),
)
def test_numbers_round_trip(pattern: str, signed: bool, digits: int, negative: bool) -> None:
    fmt = Fmt(pattern, signed)
    limit = 10 ** (2 * fmt.size) // (10 if signed else 1)
    number = digits % limit
    if signed and negative:
        number = -number
    value = number / 10**fmt.decimals
    assert decode_value(fmt, encode_value(fmt, value)) == round(value, fmt.decimals)


def test_every_catalog_block_member_is_known() -> None:
    for version, blocks in BLOCKS.items():
        known = {ident.di for ident in CATALOG[version].values()}
        for block, members in blocks.items():
            assert set(members) <= known, f"{version} {block:08X}"


def points(version: int, names: list[str]) -> list[Point]:
    catalog = CATALOG[version]  # type: ignore[index]
    return [Point(n, catalog[n].di, catalog[n].fmt) for n in names]


def test_blocks_cut_a_three_phase_meters_frames() -> None:
    names = [f"{q}_{p}" for q in ("voltage", "current", "power") for p in "abc"]
    names += ["power_total", "frequency"]
    pts = points(2007, names)
    timing = Timing()
    with_blocks = plan_reads(pts, 2007, timing)
    without = plan_reads(pts, 2007, timing, blocks=False)
    assert [f"{r.di:08X}" for r in with_blocks] == ["0201FF00", "0202FF00", "0203FF00", "02800002"]
    assert len(without) == 11
    assert wire_time_s(with_blocks, pts, 2007, timing) < wire_time_s(without, pts, 2007, timing)
    # A block the meter refused is read member by member.
    refused = plan_reads(pts, 2007, timing, refused=frozenset({0x0202FF00}))
    assert len(refused) == 6


def test_one_member_of_a_block_is_read_alone() -> None:
    pts = points(2007, ["voltage_a", "energy_import"])
    assert [r.block for r in plan_reads(pts, 2007, Timing())] == [False, False]


def test_the_1997_catalog_has_its_own_identifiers() -> None:
    pts = points(1997, ["voltage_a", "voltage_b", "voltage_c", "energy_import"])
    plan = plan_reads(pts, 1997, Timing())
    assert [f"{r.di:04X}" for r in plan] == ["B61F", "9010"]
    assert encode(Frame(parse_address(METER), 0x01, di_bytes(0x9010, 1997)), preamble=0) == hexb(
        "68 12 34 56 78 90 12 68 01 02 43 C3"
    ) + bytes([(sum(hexb("68 12 34 56 78 90 12 68 01 02 43 C3"))) & 0xFF, 0x16])
