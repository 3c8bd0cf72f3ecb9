"""OSDP framing (IEC 60839-11-5 / SIA OSDP 2.2): pure functions, no I/O.

A frame on the wire is ``[FF] 53 ADDR LEN_L LEN_H CTRL [SCB] CODE DATA… [MAC 4] CRC_L CRC_H``:

- ``LEN`` counts from SOM (``53``) through the CRC; the ``FF`` mark byte is not counted;
- ``ADDR`` is 0x00–0x7E (0x7F broadcast); a reply sets bit 7;
- ``CTRL``: bits 0–1 the sequence number, 0x04 CRC-16 (we never send the 1-byte checksum),
  0x08 a security control block follows;
- the CRC is CRC-16/AUG-CCITT (poly 0x1021, init 0x1D0F), over SOM..MAC, low byte first.

:class:`FrameReader` finds frames in a byte stream that may hold garbage, truncated frames and
frames for other addresses; it never raises on bad input, it counts it. :func:`parse_frame`
raises only :class:`OsdpError`. The secure channel's cryptography is in :mod:`drivers.osdp.secure`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "MARK",
    "MAX_FRAME",
    "SOM",
    "Cmd",
    "Frame",
    "FrameReader",
    "Nak",
    "OsdpError",
    "Reply",
    "Scb",
    "Wiegand",
    "build_frame",
    "crc16",
    "decode_wiegand",
    "parse_frame",
]

MARK = 0xFF
SOM = 0x53
BROADCAST = 0x7F
REPLY_BIT = 0x80
CTRL_SQN = 0x03
CTRL_CRC = 0x04
CTRL_SCB = 0x08
MAX_FRAME = 1440
"""The largest frame we accept (the spec's default receive size is well below; PDs declare
theirs in CAP). A longer LEN is garbage, not a reason to wait for kilobytes."""
MIN_FRAME = 8
"""SOM ADDR LEN_L LEN_H CTRL CODE CRC_L CRC_H."""


class OsdpError(ValueError):
    """A frame that is not valid OSDP: the message says what is wrong (``reason`` for counts)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Cmd(enum.IntEnum):
    POLL = 0x60
    ID = 0x61
    CAP = 0x62
    LSTAT = 0x64
    ISTAT = 0x65
    OSTAT = 0x66
    RSTAT = 0x67
    OUT = 0x68
    LED = 0x69
    BUZ = 0x6A
    TEXT = 0x6B
    COMSET = 0x6E
    KEYSET = 0x75
    CHLNG = 0x76
    SCRYPT = 0x77
    ACURXSIZE = 0x7B
    MFG = 0x80
    KEEPACTIVE = 0xA7


class Reply(enum.IntEnum):
    ACK = 0x40
    NAK = 0x41
    PDID = 0x45
    PDCAP = 0x46
    LSTATR = 0x48
    ISTATR = 0x49
    OSTATR = 0x4A
    RSTATR = 0x4B
    RAW = 0x50
    FMT = 0x51
    KEYPAD = 0x53
    COM = 0x54
    CCRYPT = 0x76
    RMAC_I = 0x78
    BUSY = 0x79
    MFGREP = 0x90


class Nak(enum.IntEnum):
    NONE = 0
    CRC = 1
    LENGTH = 2
    UNKNOWN_COMMAND = 3
    SEQUENCE = 4
    SC_UNSUPPORTED = 5
    SC_CONDITIONS = 6
    BIO_TYPE = 7
    BIO_FORMAT = 8
    RECORD = 9


class Scb(enum.IntEnum):
    """Security control block types."""

    SCS_11 = 0x11  # CHLNG
    SCS_12 = 0x12  # CCRYPT
    SCS_13 = 0x13  # SCRYPT
    SCS_14 = 0x14  # RMAC_I
    SCS_15 = 0x15  # command, MAC, plain data
    SCS_16 = 0x16  # reply, MAC, plain data
    SCS_17 = 0x17  # command, MAC, encrypted data
    SCS_18 = 0x18  # reply, MAC, encrypted data


def crc16(data: bytes | bytearray | memoryview, crc: int = 0x1D0F) -> int:
    """CRC-16/AUG-CCITT: poly 0x1021, init 0x1D0F, no reflection (``crc16(b"123456789")`` is
    0xE5CC)."""
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        crc &= 0xFFFF
    return crc


@dataclass(frozen=True, slots=True)
class Frame:
    """One OSDP packet, as sent or received (without the mark byte)."""

    address: int
    """0x00–0x7F, without the reply bit."""
    reply: bool
    seq: int
    code: int
    data: bytes = b""
    scb: bytes = b""
    """The security control block, ``len type [data…]`` (empty: none)."""
    mac: bytes = b""
    """The 4 MAC bytes on the wire (empty: none)."""

    @property
    def scb_type(self) -> int | None:
        return self.scb[1] if len(self.scb) >= 2 else None

    def header(self) -> bytes:
        """SOM..DATA as on the wire: what the MAC is computed over."""
        return _encode(self)[: -(len(self.mac) + 2)]


def _encode(frame: Frame) -> bytes:
    if not 0 <= frame.address <= BROADCAST:
        raise OsdpError("address", f"address {frame.address} is not 0-127")
    if not 0 <= frame.seq <= 3:
        raise OsdpError("sequence", f"sequence number {frame.seq} is not 0-3")
    if frame.mac and len(frame.mac) != 4:
        raise OsdpError("mac", "a MAC is 4 bytes on the wire")
    ctrl = frame.seq | CTRL_CRC | (CTRL_SCB if frame.scb else 0)
    length = 5 + len(frame.scb) + 1 + len(frame.data) + len(frame.mac) + 2
    if length > MAX_FRAME:
        raise OsdpError("length", f"frame of {length} bytes is over {MAX_FRAME}")
    address = frame.address | (REPLY_BIT if frame.reply else 0)
    body = (
        bytes((SOM, address, length & 0xFF, length >> 8, ctrl))
        + frame.scb
        + bytes((frame.code,))
        + frame.data
        + frame.mac
    )
    crc = crc16(body)
    return body + bytes((crc & 0xFF, crc >> 8))


def build_frame(frame: Frame, *, mark: bool = True) -> bytes:
    """The bytes to send: mark byte (commands), SOM…CRC."""
    wire = _encode(frame)
    return (bytes((MARK,)) + wire) if mark else wire


def parse_frame(wire: bytes) -> Frame:
    """Parse one complete frame, SOM..CRC (no mark byte). Raises :class:`OsdpError`."""
    if len(wire) < MIN_FRAME:
        raise OsdpError("truncated", f"{len(wire)} bytes is shorter than any OSDP frame")
    if wire[0] != SOM:
        raise OsdpError("garbage", f"frame starts with {wire[0]:#04x}, not SOM 0x53")
    length = wire[2] | (wire[3] << 8)
    if length != len(wire):
        raise OsdpError("length", f"LEN says {length} bytes, the frame has {len(wire)}")
    ctrl = wire[4]
    if not ctrl & CTRL_CRC:
        raise OsdpError("checksum", "1-byte checksum frames are not accepted: use CRC-16")
    got = wire[-2] | (wire[-1] << 8)
    if crc16(wire[:-2]) != got:
        raise OsdpError("crc", f"CRC {got:#06x} does not match {crc16(wire[:-2]):#06x}")
    pos = 5
    scb = b""
    if ctrl & CTRL_SCB:
        scb_len = wire[pos]
        if scb_len < 2 or pos + scb_len > len(wire) - 3:
            raise OsdpError("scb", f"security block of length {scb_len} does not fit")
        scb = wire[pos : pos + scb_len]
        pos += scb_len
    code = wire[pos]
    pos += 1
    end = len(wire) - 2
    mac = b""
    if scb and scb[1] in (Scb.SCS_15, Scb.SCS_16, Scb.SCS_17, Scb.SCS_18):
        if end - 4 < pos:
            raise OsdpError("mac", "a secure frame without room for its MAC")
        mac = wire[end - 4 : end]
        end -= 4
    return Frame(
        address=wire[1] & 0x7F,
        reply=bool(wire[1] & REPLY_BIT),
        seq=ctrl & CTRL_SQN,
        code=code,
        data=bytes(wire[pos:end]),
        scb=bytes(scb),
        mac=bytes(mac),
    )


@dataclass(slots=True)
class FrameReader:
    """Finds frames in a byte stream. Garbage before a SOM, frames cut short by a timeout and
    frames that fail their CRC are dropped and counted (:attr:`errors` by reason); the reader
    then resynchronises on the next SOM. Never raises, never waits for more than ``MAX_FRAME``.
    """

    buffer: bytearray = field(default_factory=bytearray)
    errors: dict[str, int] = field(default_factory=dict)

    def _count(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def feed(self, data: bytes) -> list[Frame]:
        self.buffer += data
        frames: list[Frame] = []
        while True:
            start = self.buffer.find(SOM)
            if start < 0:
                if any(b != MARK for b in self.buffer):
                    self._count("garbage")
                self.buffer.clear()
                return frames
            if start and any(b != MARK for b in self.buffer[:start]):
                self._count("garbage")
            del self.buffer[:start]
            if len(self.buffer) < 4:
                return frames
            length = self.buffer[2] | (self.buffer[3] << 8)
            if not MIN_FRAME <= length <= MAX_FRAME:
                self._count("length")
                del self.buffer[:1]
                continue
            if len(self.buffer) < length:
                return frames
            wire = bytes(self.buffer[:length])
            try:
                frame = parse_frame(wire)
            except OsdpError as exc:
                self._count(exc.reason)
                del self.buffer[:1]  # resynchronise on the next SOM
                continue
            del self.buffer[:length]
            frames.append(frame)

    def discard(self) -> None:
        """Drop a partial frame (the reply timeout passed): it is counted as truncated."""
        if any(b != MARK for b in self.buffer):
            self._count("truncated")
        self.buffer.clear()


# ---------------------------------------------------------------- Wiegand


@dataclass(frozen=True, slots=True)
class Wiegand:
    bits: int
    raw: str
    """The bits as a string of 0/1, as read (parity included)."""
    facility: int | None
    card: int | None
    parity_ok: bool | None
    """None for a format whose parity rule we do not know."""


def _bits(data: bytes, count: int) -> str:
    text = "".join(f"{byte:08b}" for byte in data)
    return text[:count]


def _even(bits: str) -> bool:
    return bits.count("1") % 2 == 0


def decode_wiegand(data: bytes, bit_count: int) -> Wiegand:
    """Facility code and card number of the standard 26-bit (H10301) and 34-bit formats, with
    both parity bits checked; any other length keeps only its raw bits. Bits are MSB first, as
    readers send them in RAW."""
    if bit_count <= 0 or bit_count > len(data) * 8:
        raise OsdpError("card", f"{bit_count} bits do not fit in {len(data)} bytes")
    bits = _bits(data, bit_count)
    if bit_count == 26:
        half = 13
        fac_len, card_len = 8, 16
    elif bit_count == 34:
        half = 17
        fac_len, card_len = 16, 16
    else:
        return Wiegand(bits=bit_count, raw=bits, facility=None, card=None, parity_ok=None)
    # Even parity over the first half (with the leading bit), odd over the second.
    parity_ok = _even(bits[:half]) and not _even(bits[half:])
    payload = bits[1:-1]
    return Wiegand(
        bits=bit_count,
        raw=bits,
        facility=int(payload[:fac_len], 2),
        card=int(payload[fac_len : fac_len + card_len], 2),
        parity_ok=parity_ok,
    )
