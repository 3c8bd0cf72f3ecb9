"""What the Chinese meter protocols share below their framing: BCD numbers sent low byte first
and the additive checksum (DL/T 645 and CJ/T 188 use both). Pure functions, no I/O.

A driver raises its own codec error around these: they raise :class:`ValueError` only.
"""

from __future__ import annotations

__all__ = [
    "address_bytes",
    "address_text",
    "from_bcd",
    "is_bcd",
    "sum8",
    "to_bcd",
]


def sum8(data: bytes | bytearray | memoryview) -> int:
    """The frames' checksum: the sum of the bytes, mod 256."""
    return sum(data) & 0xFF


def is_bcd(data: bytes | bytearray | memoryview) -> bool:
    """Every nibble a decimal digit."""
    # A nibble above 9 shows as a letter in hex: one C-level pass instead of a loop per byte.
    return not data or bytes(data).hex().isdigit()


def from_bcd(data: bytes | bytearray | memoryview) -> int:
    """BCD digits sent low byte first: ``78 56 34 12`` is 12345678. ValueError on a nibble
    above 9."""
    digits = bytes(data)[::-1].hex()
    if not digits.isdigit():
        if not digits:
            return 0
        raise ValueError(f"not BCD: {digits.upper()}")
    return int(digits)


def to_bcd(value: int, size: int) -> bytes:
    """``value`` as ``size`` BCD bytes, low byte first. ValueError if it is negative or does
    not fit."""
    if value < 0 or value >= 100**size:
        raise ValueError(f"{value} does not fit in {size} BCD bytes")
    out = bytearray(size)
    for i in range(size):
        value, pair = divmod(value, 100)
        out[i] = (pair // 10) << 4 | pair % 10
    return bytes(out)


def address_bytes(text: str, size: int) -> bytes:
    """A nameplate address (``129078563412``, most significant digit first) as it goes on the
    wire: ``size`` BCD bytes, low byte first (``12 34 56 78 90 12``). Shorter addresses are
    padded with leading zeros; ``AA`` pairs (wildcards) pass through."""
    digits = text.strip()
    if len(digits) > 2 * size:
        raise ValueError(f"an address has at most {2 * size} digits: {text!r}")
    digits = digits.upper().rjust(2 * size, "0")
    out = bytearray()
    for i in range(2 * size - 2, -2, -2):
        pair = digits[i : i + 2]
        if pair == "AA":
            out.append(0xAA)
        elif pair.isdigit() and pair.isascii():
            out.append(int(pair[0]) << 4 | int(pair[1]))
        else:
            raise ValueError(f"an address is decimal digits (or AA wildcards): {text!r}")
    return bytes(out)


def address_text(data: bytes | bytearray | memoryview) -> str:
    """Wire bytes of an address as its nameplate digits (``AA`` wildcards shown as ``AA``)."""
    return "".join(f"{b:02X}" for b in reversed(data))
