"""BLE advert decoding: the reference vectors (shared/reference/protocols.md), the encrypted
BTHome form against a key, our own Eddystone and vendor-beacon decoders, and garbage."""

from __future__ import annotations

import contextlib
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.ble.decode import (
    APPLE,
    BTHOME,
    EDDYSTONE,
    MIBEACON,
    Advert,
    BleDecodeError,
    Field,
    Press,
    TagDecoder,
    VendorFormat,
    load_ibeacon_vendors,
)

MAC = "58:2D:34:3B:2E:BF"
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")


def advert(**kw: object) -> Advert:
    return Advert(address=str(kw.pop("address", MAC)), rssi=-60, time=1.0, **kw)  # type: ignore[arg-type]


async def test_ibeacon_vector() -> None:
    await load_ibeacon_vendors()
    data = bytes.fromhex("02154142434445464748494041424344454600010002f8")
    got = TagDecoder().decode(advert(manufacturer_data={APPLE: data}))
    assert got.formats == ["ibeacon"]
    assert got.identities == ["ibeacon:41424344-4546-4748-4940-414243444546:1:2"]
    assert got.tx_power == -8


def test_eddystone_tlm_vector() -> None:
    data = bytes.fromhex("20000b18130000001467" + "00002ac4")
    got = TagDecoder().decode(advert(service_data={EDDYSTONE: data}))
    assert got.formats == ["eddystone_tlm"]
    assert got.values == {
        "battery_voltage": (2.84, "V"),
        "temperature": (19.0, "°C"),
        "advert_count": (5223, None),
        "uptime": (1094.8, "s"),
    }


def test_eddystone_uid() -> None:
    namespace, instance = bytes(range(10)), bytes.fromhex("a1b2c3d4e5f6")
    data = b"\x00" + struct.pack(">b", -20) + namespace + instance + b"\x00\x00"
    got = TagDecoder().decode(advert(service_data={EDDYSTONE: data}))
    assert got.identities == [f"eddystone:{namespace.hex()}:a1b2c3d4e5f6"]
    assert got.tx_power == -20


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"\x00\x10" + bytes(8), "truncated"),
        (b"\x20\x00\x0b", "truncated"),
        (b"\x20\x01" + bytes(12), "unsupported"),
    ],
)
def test_broken_eddystone_frames_raise_the_decoders_error(data: bytes, reason: str) -> None:
    with pytest.raises(BleDecodeError) as caught:
        TagDecoder().decode(advert(service_data={EDDYSTONE: data}))
    assert caught.value.reason == reason


def test_mibeacon_vector() -> None:
    data = bytes.fromhex("5020aa01a3bf2e3b342d580d1004b40095020a10013b")
    got = TagDecoder().decode(advert(service_data={MIBEACON: data}))
    assert got.formats == ["mibeacon"]
    assert got.values["temperature"] == (18.0, "°C")
    assert got.values["humidity"] == (66.1, "%")
    assert got.values["battery"] == (59, "%")
    assert got.counter == 0xA3


def test_mibeacon_for_another_address_is_not_taken() -> None:
    """The frame carries the tag's MAC: an advert relayed with another address is not it."""
    data = bytes.fromhex("5020aa01a3bf2e3b342d580d1004b40095020a10013b")
    got = TagDecoder().decode(advert(address="AA:BB:CC:DD:EE:FF", service_data={MIBEACON: data}))
    assert "mibeacon" not in got.formats
    assert "temperature" not in got.values


def test_bthome_vectors_and_one_press_per_packet() -> None:
    tag = TagDecoder()
    got = tag.decode(advert(service_data={BTHOME: bytes.fromhex("4002ca0903bf13")}))
    assert got.values["temperature"] == (25.06, "°C")
    assert got.values["humidity"] == (50.55, "%")
    press = bytes.fromhex("40005201643a01")
    got = tag.decode(advert(service_data={BTHOME: press}))
    assert got.counter == 82
    assert got.values["battery"] == (100, "%")
    assert got.presses == [Press("button", "press")]
    # The same advert heard again (BlueZ with duplicates on): no second press.
    again = tag.decode(advert(service_data={BTHOME: press}))
    assert again.presses == []
    assert again.counter == 82
    # The next press: the packet id moved on.
    nxt = tag.decode(advert(service_data={BTHOME: bytes.fromhex("40005301643a01")}))
    assert nxt.presses == [Press("button", "press")]
    assert nxt.counter == 83


def bthome_encrypted(key: bytes, plain: bytes, counter: int, mac: str = MAC) -> bytes:
    """A BTHome v2 encrypted advert as a tag sends it (AES-CCM, 4-byte MIC; the nonce is the
    MAC, the UUID, the info byte and the counter)."""
    info = 0x41  # version 2, encrypted
    count = counter.to_bytes(4, "little")
    nonce = bytes.fromhex(mac.replace(":", "")) + b"\xd2\xfc" + bytes((info,)) + count
    sealed = AESCCM(key, tag_length=4).encrypt(nonce, plain, None)
    return bytes((info,)) + sealed[:-4] + count + sealed[-4:]


def test_encrypted_bthome_with_the_tags_key() -> None:
    data = bthome_encrypted(KEY, bytes.fromhex("02ca0903bf13"), counter=7)
    got = TagDecoder(bindkey=KEY).decode(advert(service_data={BTHOME: data}))
    assert got.formats == ["bthome"]
    assert got.values["temperature"] == (25.06, "°C")


def test_encrypted_bthome_with_a_wrong_key_or_none_gives_nothing() -> None:
    data = bthome_encrypted(KEY, bytes.fromhex("02ca09"), counter=7)
    wrong = TagDecoder(bindkey=bytes(16)).decode(advert(service_data={BTHOME: data}))
    assert wrong.values == {}
    assert wrong.problems == ["bthome:decrypt_failed"]
    none = TagDecoder().decode(advert(service_data={BTHOME: data}))
    assert none.values == {}
    assert none.problems == ["bthome:no_key"]


def test_a_plain_advert_from_a_keyed_tag_is_refused() -> None:
    """A forged SOS in clear from a tag that encrypts: ignored, and said why."""
    got = TagDecoder(bindkey=KEY).decode(
        advert(service_data={BTHOME: bytes.fromhex("40005201643a01")})
    )
    assert got.presses == []
    assert got.problems == ["bthome:plain_while_keyed"]


def test_ruuvi_format_5() -> None:
    # Ruuvi's documented valid vector: 24.3 °C, 53.49 %, 1000.44 hPa, 2.977 V.
    data = bytes.fromhex("0512fc5394c37c0004fffc040cac364200cdcbb8334c884f")
    got = TagDecoder().decode(advert(manufacturer_data={0x0499: data}))
    assert got.formats == ["ruuvi"]
    assert got.values["temperature"] == (24.3, "°C")
    assert got.values["humidity"] == (53.49, "%")


VENDOR = VendorFormat(
    company_id=0x0A12,
    prefix=b"\x01",
    fields=(
        Field("counter", 1, "u8"),
        Field("button", 2, "u8"),
        Field("temperature", 3, "i16le", scale=0.01, unit="°C"),
        Field("battery", 5, "u8", unit="%"),
    ),
)


def test_a_vendor_beacon_described_in_config() -> None:
    data = bytes.fromhex("01 07 01 1ef6 55".replace(" ", ""))
    got = TagDecoder(vendor=[VENDOR]).decode(advert(manufacturer_data={0x0A12: data}))
    assert got.formats == ["vendor"]
    assert got.counter == 7
    assert got.presses == [Press("button", "press")]
    assert got.values == {"temperature": (-25.3, "°C"), "battery": (85, "%")}
    other = TagDecoder(vendor=[VENDOR]).decode(advert(manufacturer_data={0x0A12: b"\x02\x00"}))
    assert other.formats == []
    with pytest.raises(BleDecodeError, match="temperature needs bytes 3-4"):
        TagDecoder(vendor=[VENDOR]).decode(advert(manufacturer_data={0x0A12: b"\x01\x00\x00"}))


# What each format's first bytes look like, so that garbage gets past the formats' first checks.
_LEADS = [b"", b"\x05", b"\x03", b"\x40", b"\x41", b"\x44", b"\x00", b"\x20\x00", b"\x50\x20"]


@settings(max_examples=600, deadline=None)
@given(
    where=st.sampled_from(["bthome", "mibeacon", "eddystone", "ibeacon", "ruuvi", "vendor"]),
    lead=st.sampled_from(_LEADS),
    tail=st.binary(max_size=40),
)
def test_garbage_raises_only_the_decoders_error(where: str, lead: bytes, tail: bytes) -> None:
    data = lead + tail
    service: dict[str, bytes] = {}
    maker: dict[int, bytes] = {}
    if where in ("bthome", "mibeacon", "eddystone"):
        service[{"bthome": BTHOME, "mibeacon": MIBEACON, "eddystone": EDDYSTONE}[where]] = data
    elif where == "ibeacon":
        maker[APPLE] = b"\x02\x15" + data
    else:
        maker[0x0499 if where == "ruuvi" else 0x0A12] = data
    tag = TagDecoder(bindkey=KEY if data[:1] == b"\x01" else None, vendor=[VENDOR])
    with contextlib.suppress(BleDecodeError):
        tag.decode(advert(service_data=service, manufacturer_data=maker))


@pytest.mark.parametrize(
    ("kw", "raised"),
    [
        ({"service_data": {BTHOME: b""}}, "IndexError"),
        ({"manufacturer_data": {0x0499: b""}}, "IndexError"),
        ({"manufacturer_data": {0x0499: b"\x05" + bytes(24)}}, "error"),  # struct.error
    ],
)
def test_payloads_the_parsers_trip_on_are_our_error(kw: dict[str, object], raised: str) -> None:
    """bthome-ble 3.25 and ruuvitag-ble 0.4 raise IndexError on an empty payload, and
    ruuvitag-ble struct.error on a format 5 one a byte too long."""
    with pytest.raises(BleDecodeError) as caught:
        TagDecoder().decode(advert(**kw))
    assert caught.value.reason == "garbage"
    assert f"{raised}:" in str(caught.value)
