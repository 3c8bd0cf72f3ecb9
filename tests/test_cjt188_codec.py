"""CJ/T 188 framing and values: the reference vectors (shared/reference/protocols.md), reply
vectors whose checksums are summed here by hand, round trips, and bad input that raises only
the codec's own error."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.driver.bcd import to_bcd
from drivers.cjt188.codec import (
    CURRENT,
    HEAT_FIELDS,
    METER_TYPES,
    READ_ADDRESS,
    VALVE,
    VALVE_CLOSE,
    WATER_FIELDS,
    WILDCARD,
    Cjt188Error,
    Frame,
    Func,
    body,
    decode,
    decode_current,
    decode_status,
    di_bytes,
    di_matches,
    diagnose,
    encode,
    encode_current,
    find_frame,
    parse_address,
    payload_size,
    reply_length,
    show_address,
    split,
)

WATER = "78330011223344"
HEAT = "00000040314132"


def hexb(text: str) -> bytes:
    return bytes.fromhex(text)


def checked(text: str) -> bytes:
    """A frame written out byte by byte, its checksum summed here (not by the codec): the last
    two bytes are CS and 16."""
    raw = hexb(text)
    start = raw.index(0x68)
    assert sum(raw[start:-2]) % 256 == raw[-2], f"the vector's own checksum is wrong: {text}"
    assert raw[-1] == 0x16
    return raw


# A cold-water meter's 901F reply: 123.45 m³ now, 120.00 m³ on the settlement day, its clock at
# 2026-12-02 19:30:05, ST 04 00 (valve open, battery low).
WATER_REPLY = (
    "FE FE FE FE 68 10 44 33 22 11 00 33 78 81 16 1F 90 00"
    " 45 23 01 00 2C  00 20 01 00 2C  05 30 19 02 12 26 20  04 00  A1 16"
)
# A heat meter's, DI big-endian, SER 01: 12000.00 kWh settled, 12345.67 kWh now, 12.50 kW,
# 0.6250 m³/h, 12.34 m³, 60.00 / 45.50 °C, 9876 h, 2027-01-15 08:00:00, ST 01 00 (valve closed).
HEAT_REPLY = (
    "68 20 32 41 31 40 00 00 00 81 2E 90 1F 01"
    " 00 00 20 01 05  67 45 23 01 05  50 12 00 00 17  50 62 00 00 35  34 12 00 00 2C"
    " 00 60 00  50 45 00  76 98 00  00 00 08 15 01 27 20  01 00  01 16"
)


def test_the_address_goes_low_byte_first() -> None:
    assert parse_address(WATER) == hexb("44 33 22 11 00 33 78")
    assert show_address(hexb("44 33 22 11 00 33 78")) == WATER
    assert parse_address("40314132") == parse_address(HEAT) == hexb("32 41 31 40 00 00 00")
    assert parse_address("AA" * 7) == WILDCARD
    with pytest.raises(Cjt188Error):
        parse_address("123456789012345")
    with pytest.raises(Cjt188Error):
        parse_address("12345x")


def test_reference_requests() -> None:
    cold = Frame(0x10, parse_address(WATER), Func.READ, body(CURRENT, 0x00))
    assert encode(cold) == hexb("FE FE FE FE 68 10 44 33 22 11 00 33 78 01 03 1F 90 00 80 16")
    heat = Frame(0x20, parse_address(HEAT), Func.READ, body(CURRENT, 0x01, order="high_first"))
    assert encode(heat) == hexb("FE FE FE FE 68 20 32 41 31 40 00 00 00 01 03 90 1F 01 20 16")
    assert decode(encode(cold)) == cold
    assert di_bytes(CURRENT) == hexb("1F 90")
    assert di_bytes(CURRENT, "high_first") == hexb("90 1F")


def test_other_requests_and_replies_checked_by_hand() -> None:
    address = parse_address(WATER)
    close = Frame(0x10, address, Func.WRITE, body(VALVE, 0x02, bytes((VALVE_CLOSE,))))
    assert encode(close, preamble=0) == checked(
        "68 10 44 33 22 11 00 33 78 04 04 17 A0 02 99 27 16"
    )
    answer = decode(checked("68 10 44 33 22 11 00 33 78 84 05 17 A0 02 01 00 10 16"))
    di, ser, payload = split(answer.data)
    assert di_matches(di, VALVE)
    assert ser == 2
    assert decode_status(payload).valve == "closed"
    found = decode(checked("FE FE 68 10 44 33 22 11 00 33 78 83 03 0A 81 07 E5 16"))
    assert found.address == address
    assert found.function == Func.READ_ADDRESS
    assert di_matches(found.data[:2], READ_ADDRESS)


def test_a_water_meters_current_data() -> None:
    frame = decode(checked(WATER_REPLY))
    assert (frame.meter_type, frame.address, frame.control) == (0x10, parse_address(WATER), 0x81)
    assert frame.is_reply
    assert not frame.abnormal
    assert frame.function == Func.READ
    di, ser, payload = split(frame.data)
    assert di_matches(di, CURRENT)
    assert ser == 0
    data = decode_current(frame.meter_type, payload)
    got = {m.name: (m.value, m.unit, m.reason) for m in data.values}
    assert got == {
        "volume": (123.45, "m³", None),
        "volume_settlement": (120.0, "m³", None),
        "meter_time": ("2026-12-02T19:30:05", None, None),
    }
    assert data.status.battery_low
    assert data.status.valve == "open"
    assert data.status.text == "0400"
    # The encoder builds the same bytes.
    values = {k: v for k, (v, _, _) in got.items()}
    assert encode_current(0x10, values, hexb("04 00")) == payload


def test_a_heat_meters_current_data_with_the_identifier_big_endian() -> None:
    frame = decode(checked(HEAT_REPLY))
    di, ser, payload = split(frame.data)
    assert di == hexb("90 1F")
    assert di_matches(di, CURRENT)
    assert ser == 1
    data = decode_current(frame.meter_type, payload)
    got = {m.name: (m.value, m.unit) for m in data.values}
    assert got == {
        "heat_settlement": (12000.0, "kWh"),
        "heat_energy": (12345.67, "kWh"),
        "heat_power": (12.5, "kW"),
        "flow_rate": (0.625, "m³/h"),
        "volume": (12.34, "m³"),
        "supply_temp": (60.0, "°C"),
        "return_temp": (45.5, "°C"),
        "working_hours": (9876, "h"),
        "meter_time": ("2027-01-15T08:00:00", None),
    }
    assert data.status.valve == "closed"
    assert not data.status.battery_low
    assert len(frame.data) == 0x2E
    assert payload_size(0x20) == 43
    assert payload_size(0x30) == 19


def test_units_are_named_and_hundredfold_units_scaled() -> None:
    values: dict[str, float | str | None] = {
        "volume": 1.5,
        "volume_settlement": 1.0,
        "meter_time": "2026-01-01T00:00:00",
    }
    litres = encode_current(0x10, values, units={"volume": 0x29})
    assert decode_current(0x10, litres).values[0].unit == "L"
    heat: dict[str, float | str | None] = dict.fromkeys((f.name for f in HEAT_FIELDS), 0.0)
    heat["meter_time"] = None
    raw = encode_current(0x20, heat | {"heat_energy": 1200.0}, units={"heat_energy": 0x0A})
    energy = decode_current(0x20, raw).values[1]
    assert (energy.name, energy.value, energy.unit) == ("heat_energy", 1200.0, "MWh")
    # On the wire: 12.00 (× 100 MWh), then the unit code 0A.
    assert raw[5:10] == hexb("00 12 00 00 0A")
    gj = bytearray(raw)
    gj[9] = 0x13
    assert decode_current(0x20, bytes(gj)).values[1].unit == "GJ"


def test_bad_values_are_reported_not_raised() -> None:
    payload = bytearray(checked(WATER_REPLY)[18:-2])
    payload[0:4] = b"\xff" * 4  # volume: not available
    payload[5:9] = hexb("0A 00 00 00")  # settlement: not BCD
    payload[10:17] = hexb("05 30 19 32 12 26 20")  # 32 December
    data = decode_current(0x10, bytes(payload))
    assert [(m.value, m.reason) for m in data.values] == [
        (None, "not_available"),
        (None, "bad_value"),
        (None, "bad_value"),
    ]
    payload = bytearray(checked(WATER_REPLY)[18:-2])
    payload[4] = 0x77  # a unit code the standard does not have
    volume = decode_current(0x10, bytes(payload)).values[0]
    assert (volume.value, volume.unit, volume.reason) == (123.45, None, "unknown_unit")


def test_a_short_payload_raises_the_codec_error() -> None:
    payload = checked(WATER_REPLY)[18:-2]
    with pytest.raises(Cjt188Error) as caught:
        decode_current(0x20, payload)  # a water layout read as a heat meter's
    assert caught.value.reason == "bad_length"
    with pytest.raises(Cjt188Error):
        decode_current(0x10, payload[:-1])
    # Vendor bytes after the status are ignored.
    assert decode_current(0x10, payload + b"\x00\x00").status.text == "0400"
    with pytest.raises(Cjt188Error):
        split(b"\x1f\x90")


def test_a_frame_is_found_after_noise_and_a_truncated_frame() -> None:
    good = checked(WATER_REPLY)
    line = hexb("00 7F 68 10 44 33") + good + hexb("55")
    start, end = find_frame(line) or (0, 0)
    assert line[start:end] == good.lstrip(b"\xfe")
    assert reply_length(line) == end == len(line) - 1
    assert reply_length(good[:-1]) == 0  # not yet
    # A 68 in noise followed by bytes that cannot be an address is not waited for.
    assert reply_length(hexb("68 10 4F") + good) == 3 + len(good)


def test_why_there_is_no_frame() -> None:
    good = checked(WATER_REPLY)
    assert diagnose(b"") == "timeout"
    assert diagnose(b"\xfe\xfe") == "timeout"
    assert diagnose(good[:12]) == "truncated"
    assert diagnose(good[:-2] + b"\x00\x16") == "checksum_error"
    assert diagnose(hexb("01 02 03 04")) == "garbage"
    assert diagnose(hexb("68 10 FF FF FF 01 02 03 04 05 06 07")) == "garbage"
    with pytest.raises(Cjt188Error) as caught:
        decode(good[:-2] + b"\x00\x16")
    assert caught.value.reason == "checksum_error"


def test_the_encoder_refuses_what_cannot_go_on_the_wire() -> None:
    with pytest.raises(Cjt188Error):
        encode(Frame(0x10, hexb("44 33 22 11 00 33"), 0x01))  # 6 bytes
    with pytest.raises(Cjt188Error):
        encode(Frame(0x10, hexb("4F 33 22 11 00 33 78"), 0x01))  # not BCD
    with pytest.raises(Cjt188Error):
        encode(Frame(0x10, parse_address(WATER), 0x01, bytes(256)))
    with pytest.raises(Cjt188Error):
        encode(Frame(0x10, parse_address(WATER), 0x01), preamble=5)
    with pytest.raises(Cjt188Error):
        encode_current(0x10, {"volume": -1.0})
    with pytest.raises(Cjt188Error):
        encode_current(0x10, {"volume": 1e9})


def test_the_status_bits() -> None:
    assert decode_status(hexb("00 00")).valve == "open"
    assert decode_status(hexb("01 00")).valve == "closed"
    assert decode_status(hexb("03 00")).valve == "abnormal"
    assert decode_status(hexb("02 00")).valve == "abnormal"
    assert decode_status(hexb("F4 5A")).battery_low
    assert decode_status(hexb("F4 5A")).text == "F45A"
    with pytest.raises(Cjt188Error):
        decode_status(b"\x00")


address_byte = st.one_of(st.just(0xAA), st.integers(0, 99).map(lambda n: to_bcd(n, 1)[0]))
addresses = st.lists(address_byte, min_size=7, max_size=7).map(bytes)


@settings(max_examples=300, deadline=None)
@given(
    address=addresses,
    meter_type=st.integers(0, 255),
    control=st.integers(0, 255),
    data=st.binary(max_size=120),
    preamble=st.integers(0, 4),
)
def test_decode_of_encode_is_the_frame(
    address: bytes, meter_type: int, control: int, data: bytes, preamble: int
) -> None:
    frame = Frame(meter_type, address, control, data)
    wire = encode(frame, preamble=preamble)
    assert decode(wire) == frame
    assert reply_length(wire) == len(wire)
    assert reply_length(wire[:-1]) == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_garbage_raises_only_the_codec_error(data: bytes) -> None:
    if find_frame(data) is None:
        with pytest.raises(Cjt188Error) as caught:
            decode(data)
        assert caught.value.reason in {"timeout", "truncated", "checksum_error", "garbage"}
        assert caught.value.reason == diagnose(data)
    else:
        decode(data)
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
    original = Frame(0x10, parse_address(WATER), 0x81, data)
    wire = bytearray(encode(original, preamble=0))
    with pytest.raises(Cjt188Error):
        decode(bytes(wire[: cut % len(wire)]))
    position = flip % len(wire)
    wire[position] ^= 0x01
    try:
        frame = decode(bytes(wire))
    except Cjt188Error:
        return
    # A flipped bit can only survive in a frame that is still whole and checks: never the
    # original's type, address, control and data all at once.
    assert frame != original


@settings(max_examples=300, deadline=None)
@given(meter_type=st.sampled_from(sorted(METER_TYPES.values())), payload=st.binary(max_size=60))
def test_any_payload_decodes_or_raises_the_codec_error(meter_type: int, payload: bytes) -> None:
    if len(payload) < payload_size(meter_type):
        with pytest.raises(Cjt188Error) as caught:
            decode_current(meter_type, payload)
        assert caught.value.reason == "bad_length"
        return
    data = decode_current(meter_type, payload)
    assert all(m.value is not None or m.reason for m in data.values)


hundredths = st.integers(0, 99_999_999).map(lambda n: n / 100)
stamps = st.builds(
    dt.datetime.combine,
    st.dates(min_value=dt.date(2000, 1, 1), max_value=dt.date(2099, 12, 31)),
    st.times().map(lambda t: t.replace(microsecond=0)),
).map(lambda t: t.isoformat())


@settings(max_examples=200, deadline=None)
@given(
    volume=hundredths,
    settled=st.one_of(st.none(), hundredths),
    stamp=stamps,
    status=st.binary(min_size=2, max_size=2),
)
def test_water_values_round_trip(
    volume: float, settled: float | None, stamp: str, status: bytes
) -> None:
    values = {"volume": volume, "volume_settlement": settled, "meter_time": stamp}
    data = decode_current(0x10, encode_current(0x10, values, status))
    assert {m.name: m.value for m in data.values} == values
    assert data.status.raw == status
    assert [f.name for f in WATER_FIELDS] == list(values)


@settings(max_examples=200, deadline=None)
@given(
    energy=hundredths,
    flow=st.integers(0, 99_999_999).map(lambda n: n / 10_000),
    supply=st.integers(0, 999_999).map(lambda n: n / 100),
    hours=st.integers(0, 999_999),
    unit=st.sampled_from([0x02, 0x05, 0x08, 0x0A, 0x0E, 0x11, 0x13]),
)
def test_heat_values_round_trip(
    energy: float, flow: float, supply: float, hours: int, unit: int
) -> None:
    factor = 100 if unit in (0x0A, 0x13) else 1
    values: dict[str, float | str | None] = {
        "heat_settlement": None,
        "heat_energy": round(energy * factor, 2),
        "heat_power": energy,
        "flow_rate": flow,
        "volume": energy,
        "supply_temp": supply,
        "return_temp": supply,
        "working_hours": hours,
        "meter_time": "2026-06-30T23:59:59",
    }
    raw = encode_current(0x21, values, units={"heat_energy": unit})
    assert len(raw) == payload_size(0x21)
    data = decode_current(0x21, raw)
    assert {m.name: m.value for m in data.values} == values
