"""The OSDP codec and secure channel against the reference vectors (shared/reference/protocols.md),
round trips, and fuzz: nothing but the codec's own errors, and no hang."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.osdp.codec import (
    MARK,
    Cmd,
    Frame,
    FrameReader,
    OsdpError,
    Reply,
    Scb,
    build_frame,
    crc16,
    decode_wiegand,
    parse_frame,
)
from drivers.osdp.secure import (
    SCBK_D,
    SecureChannelError,
    Session,
    cp_cryptogram,
    derive_keys,
    mac,
    pad,
    pd_cryptogram,
    rmac_i,
    unpad,
    verify_ccrypt,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def test_crc16_aug_ccitt_check_value() -> None:
    assert crc16(b"123456789") == 0xE5CC


@pytest.mark.parametrize(
    ("frame", "wire"),
    [
        (
            Frame(0x65, reply=False, seq=0, code=Cmd.ID, data=b"\x00"),
            "FF 53 65 09 00 04 61 00 D9 7A",
        ),
        (Frame(0x65, reply=False, seq=2, code=Cmd.POLL), "FF 53 65 08 00 06 60 02 F6"),
        (
            Frame(0x65, reply=False, seq=1, code=Cmd.OUT, data=h("00 05 32 00")),
            "FF 53 65 0C 00 05 68 00 05 32 00 13 9D",
        ),
    ],
    ids=["ID", "POLL", "OUT"],
)
def test_commands_match_the_wire_vectors(frame: Frame, wire: str) -> None:
    assert build_frame(frame) == h(wire)
    assert parse_frame(h(wire)[1:]) == frame


@pytest.mark.parametrize(
    ("wire", "code", "data"),
    [
        ("53 E5 08 00 06 40 B0 F0", Reply.ACK, b""),
        (
            "53 E5 10 00 07 50 00 01 1A 00 7B 11 D7 80 5C BE",
            Reply.RAW,
            h("00 01 1A 00 7B 11 D7 80"),
        ),
        ("53 E5 09 00 07 41 04 CB B1", Reply.NAK, b"\x04"),
    ],
    ids=["ACK", "RAW", "NAK"],
)
def test_replies_match_the_wire_vectors(wire: str, code: int, data: bytes) -> None:
    frame = parse_frame(h(wire))
    assert (frame.address, frame.reply, frame.code, frame.data) == (0x65, True, code, data)
    assert build_frame(frame, mark=False) == h(wire)


def test_wiegand_26_and_34_and_other_lengths() -> None:
    raw = parse_frame(h("53 E5 10 00 07 50 00 01 1A 00 7B 11 D7 80 5C BE"))
    card = decode_wiegand(raw.data[4:], raw.data[2])
    assert card.raw == "01111011000100011101011110"
    assert (card.facility, card.card) == (0b11110110, 0b0010001110101111)
    # H10301 with valid parity: facility 1, card 1 -> P 00000001 0000000000000001 P.
    bits = "0" + "00000001" + "0000000000000001" + "0"
    bits = (
        ("1" if bits[1:13].count("1") % 2 else "0")
        + bits[1:25]
        + ("0" if bits[13:25].count("1") % 2 else "1")
    )
    data = int(bits + "000000", 2).to_bytes(4, "big")
    good = decode_wiegand(data, 26)
    assert (good.facility, good.card, good.parity_ok) == (1, 1, True)
    flipped = decode_wiegand(bytes([data[0] ^ 0x40]) + data[1:], 26)
    assert flipped.parity_ok is False
    w34 = decode_wiegand(h("80 01 00 02 40"), 34)
    assert (w34.facility, w34.card) == (0x0002, 0x0004)
    other = decode_wiegand(h("FF FF"), 12)
    assert (other.facility, other.card, other.parity_ok, other.raw) == (None, None, None, "1" * 12)
    with pytest.raises(OsdpError):
        decode_wiegand(b"\x00", 26)


# ---------------------------------------------------------------- secure channel

RND_A = h("d764c8cce93255c4")
RND_B = h("478d7aa05d83f3ea")


def test_session_keys_cryptograms_and_rmac_i_match_the_vector() -> None:
    keys = derive_keys(SCBK_D, RND_A)
    assert keys.enc == h("714452eb7abaa526dae1d32e7d719e0a")
    assert keys.mac1 == h("3670881f23b5de8e2ae2860223a07887")
    assert keys.mac2 == h("8f91853125b64a106d24cd0f8c3024f3")
    assert pd_cryptogram(keys, RND_A, RND_B) == h("366d14cd611369c8b412a4572bc7aad9")
    cp = cp_cryptogram(keys, RND_A, RND_B)
    assert cp == h("0613bd05f3a2a66266fa9985b4e74601")
    assert rmac_i(keys, cp) == h("3ec018f008a5521c2db964d186a569b7")


def test_a_wrong_key_fails_closed() -> None:
    keys = derive_keys(SCBK_D, RND_A)
    good = pd_cryptogram(keys, RND_A, RND_B)
    assert verify_ccrypt(SCBK_D, RND_A, RND_B, good).enc == keys.enc
    with pytest.raises(SecureChannelError) as info:
        verify_ccrypt(bytes(16), RND_A, RND_B, good)
    assert info.value.reason == "cryptogram"


def test_mac_chain_and_encryption_between_the_two_ends() -> None:
    keys = derive_keys(SCBK_D, RND_A)
    first = rmac_i(keys, cp_cryptogram(keys, RND_A, RND_B))
    cp = Session.for_cp(keys, first)
    # The reader's side of the chain, computed by hand: its chain starts where the CP's does.
    pd_last_reply = first
    for n in range(3):
        command = Frame(
            0x01,
            reply=False,
            seq=n % 3 + 1,
            code=Cmd.POLL,
            scb=bytes((2, Scb.SCS_15)),
            mac=b"\0" * 4,
        )
        tag = cp.seal(command.header())
        # The PD computes the same MAC on its side of the chain.
        assert mac(keys, pd_last_reply, command.header())[:4] == tag
        pd_last_command = mac(keys, pd_last_reply, command.header())
        reply = Frame(
            0x01,
            reply=True,
            seq=command.seq,
            code=Reply.ACK,
            scb=bytes((2, Scb.SCS_16)),
            mac=b"\0" * 4,
        )
        reply_mac = mac(keys, pd_last_command, reply.header())
        pd_last_reply = reply_mac
        cp.check(reply.header(), reply_mac[:4])
    # A replayed reply (the last one again, for the next command) and a forged one are refused,
    # and the chain does not move.
    cp.seal(command.header())
    before = cp.heard
    for wrong in (reply_mac[:4], b"\0\0\0\0"):
        with pytest.raises(SecureChannelError):
            cp.check(reply.header(), wrong)
    assert cp.heard == before
    # Encrypted data: the PD decrypts what the CP encrypts (IV from the other's MAC).
    secret = b"\x00\x05\x32\x00"
    sealed = cp.encrypt(secret)
    assert len(sealed) == 16
    assert secret not in sealed
    pd_view = Session.for_pd(keys, cp.heard)
    assert pd_view.decrypt(sealed) == secret


def test_padding() -> None:
    assert pad(b"") == b"\x80" + b"\0" * 15
    assert len(pad(b"x" * 16)) == 32
    assert unpad(pad(b"abc")) == b"abc"
    with pytest.raises(SecureChannelError):
        unpad(b"\0" * 16)


# ---------------------------------------------------------------- the stream reader


def test_reader_finds_frames_among_garbage_and_counts_it() -> None:
    ack = h("53 E5 08 00 06 40 B0 F0")
    nak = h("53 E5 09 00 07 41 04 CB B1")
    bad_crc = bytearray(ack)
    bad_crc[-1] ^= 0xFF
    reader = FrameReader()
    stream = b"\x00\x17garbage" + bytes([MARK]) + ack + bytes(bad_crc) + nak
    frames = [f for i in range(len(stream)) for f in reader.feed(stream[i : i + 1])]
    assert [f.code for f in frames] == [Reply.ACK, Reply.NAK]
    assert reader.errors.get("garbage", 0) >= 1
    assert reader.errors["crc"] == 1
    reader.feed(ack[:5])
    reader.discard()
    assert reader.errors["truncated"] == 1
    assert reader.feed(b"") == []


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise_anything_but_the_codecs_error(data: bytes) -> None:
    reader = FrameReader()
    reader.feed(data)
    assert len(reader.buffer) <= 2048
    try:
        frame = parse_frame(data)
    except OsdpError:
        return
    assert build_frame(frame, mark=False) == data


VALID = [
    h("53 E5 08 00 06 40 B0 F0"),
    h("53 E5 10 00 07 50 00 01 1A 00 7B 11 D7 80 5C BE"),
    h("53 E5 09 00 07 41 04 CB B1"),
    build_frame(
        Frame(0x01, reply=True, seq=1, code=Reply.ACK, scb=bytes((2, Scb.SCS_16)), mac=b"abcd"),
        mark=False,
    ),
]


@settings(max_examples=1000, deadline=None)
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 16),
)
def test_mutated_frames_raise_only_osdp_errors(
    wire: bytes, changes: list[tuple[int, int]], cut: int
) -> None:
    mutated = bytearray(wire)
    for pos, value in changes:
        if pos < len(mutated):
            mutated[pos] = value
    mutated = mutated[: len(mutated) - cut] if cut else mutated
    try:
        frame = parse_frame(bytes(mutated))
    except OsdpError:
        pass
    else:
        assert build_frame(frame, mark=False) == bytes(mutated)
    # Whatever the mutation left in the reader, the reply timeout's discard() resynchronises it.
    reader = FrameReader()
    reader.feed(bytes(mutated))
    reader.discard()
    assert [f.code for f in reader.feed(VALID[0])] == [Reply.ACK]


# ---------------------------------------------------------------- the door's state machine


def _panel(tmp_path: Path, **door: Any) -> tuple[Any, Any]:
    """A control panel on a line that is never opened: only its door logic is exercised (the
    libosdp 3.2.9 reader cannot send input status, so this part has no independent peer)."""
    from agent_proc import write_config

    from agent.config.loader import load_config
    from agent.driver.testing import Standalone
    from drivers.osdp.driver import OsdpDriver

    device = {
        "id": "door-1",
        "driver": "osdp",
        "bus": "b",
        "address": 1,
        "secure_channel": "off",
        "door": {"contact_input": 0, "rex_input": 1, **door},
    }
    buses = [{"id": "b", "serial": {"port": str(tmp_path / "no-such-port")}}]
    config = load_config(write_config(tmp_path, [device], buses=buses))
    bench = Standalone(config.buses)
    return bench, OsdpDriver(bench.context(*config.devices))


def _types(bench: Any) -> list[str]:
    return [r.type for r in bench.records if hasattr(r, "type")]


async def test_door_opened_forced_closed_and_held(tmp_path: Path) -> None:
    bench, driver = _panel(tmp_path, held_open_s=0.05)
    reader = driver.readers["door-1"]
    await driver._inputs(reader, bytes([0, 0]))  # the state at connect: closed, no event
    assert _types(bench) == []
    await driver._inputs(reader, bytes([1, 0]))  # opened: no grant, no request-to-exit
    assert _types(bench) == ["door.forced_open"]
    assert bench.records[-1].severity.value == "alarm"
    await driver._inputs(reader, bytes([1, 0]))  # no change, no event
    await asyncio.sleep(0.06)
    await driver._door_timers(reader)
    await driver._door_timers(reader)
    assert _types(bench) == ["door.forced_open", "door.held_open"]  # once per opening
    await driver._inputs(reader, bytes([0, 0]))
    assert _types(bench)[-1] == "door.closed"
    # Request-to-exit, then the door opens: a normal opening.
    await driver._inputs(reader, bytes([0, 1]))
    await driver._inputs(reader, bytes([1, 1]))
    assert _types(bench)[-1] == "door.opened"
    await bench.aclose()


async def test_an_opening_within_a_grant_is_not_forced(tmp_path: Path) -> None:
    bench, driver = _panel(tmp_path)
    reader = driver.readers["door-1"]
    await driver._inputs(reader, bytes([0, 0]))
    reader.door.granted_until = time.monotonic() + 5  # what door.open sets
    await driver._inputs(reader, bytes([1, 0]))
    assert _types(bench) == ["door.opened"]
    await bench.aclose()
