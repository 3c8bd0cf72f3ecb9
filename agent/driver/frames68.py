"""The ``68 … L data CS 16`` frames that DL/T 645 and CJ/T 188 share: where one ends in a byte
stream (its length byte, additive checksum and end byte checked), the first one in a buffer, and,
for the simulated meters, a stream of the frames a line carried, address matching with the
abbreviated (AA-filled) and wildcard addresses, and the faults a misbehaving meter puts on the
wire. Each codec keeps its own header layout and error type. Pure functions, no I/O.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterator
from typing import Final

from agent.driver.bcd import sum8

__all__ = ["END", "START", "FrameStream", "addressed", "find_frame", "frame_end", "spoil"]

START: Final = 0x68
END: Final = 0x16
_KEEP: Final = 300
"""Bytes of an unfinished frame a stream keeps (more than the longest frame)."""

FrameAt = Callable[[bytes | bytearray, int], int]
"""A codec's check of a frame starting at ``buf[i]``: its end, 0 if incomplete, -1 if not one."""


def frame_end(buf: bytes | bytearray, i: int, header: int, length_at: int) -> int:
    """The end of a frame starting at ``buf[i]`` (a 68) whose header is ``header`` bytes with
    the length byte at offset ``length_at``: 0 if it is not complete yet, -1 if the end byte or
    the checksum is wrong."""
    n = len(buf)
    if n - i < header:
        return 0
    end = i + header + buf[i + length_at] + 2
    if n < end:
        return 0
    if buf[end - 1] != END or sum8(memoryview(buf)[i : end - 2]) != buf[end - 2]:
        return -1
    return end


def find_frame(buf: bytes | bytearray, frame_at: FrameAt) -> tuple[int, int] | None:
    """``(start, end)`` of the first complete, valid frame in ``buf`` (preamble and noise
    before it skipped), or None."""
    i = buf.find(START)
    while i >= 0:
        end = frame_at(buf, i)
        if end > 0:
            return i, end
        i = buf.find(START, i + 1)
    return None


class FrameStream:
    """The frames in what a line carries, fed as it arrives."""

    def __init__(self, find: Callable[[bytearray], tuple[int, int] | None]) -> None:
        self._find = find
        """The codec's ``find_frame``."""
        self._rx = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Every complete frame ``data`` finishes, in order; noise is dropped."""
        self._rx += data
        while True:
            found = self._find(self._rx)
            if found is None:
                del self._rx[: max(0, len(self._rx) - _KEEP)]
                return
            start, end = found
            raw = bytes(self._rx[start:end])
            del self._rx[:end]
            yield raw


def addressed(address: bytes, own: bytes) -> bool:
    """Whether a frame to ``address`` is for the meter at ``own`` (wire order, low byte first):
    its own address, or an abbreviated one (its high bytes AA: every meter whose low bytes
    match), all AA being the wildcard."""
    if address == own:
        return True
    for i, byte in enumerate(address):
        if byte == 0xAA:
            return all(b == 0xAA for b in address[i:])
        if byte != own[i]:
            return False
    return False


def spoil(raw: bytes, faults: Collection[str], rng: random.Random) -> bytes:
    """A reply as a faulty meter sends it: ``garbage`` (noise of its length), ``checksum`` (one
    off), ``truncated`` (its first half); unchanged otherwise."""
    if "garbage" in faults:
        return bytes(rng.randrange(256) for _ in range(len(raw)))
    if "checksum" in faults:
        return raw[:-2] + bytes(((raw[-2] + 1) & 0xFF, raw[-1]))
    if "truncated" in faults:
        return raw[: len(raw) // 2]
    return raw
