"""Simulated devices on a line: what the demo, ``edge-agent simulate …`` and the tests put on
the other end of a pty pair.

A :class:`LineDevice` hears every byte the agent sends on the line and answers what is meant for
it, as a device on a two-wire RS-485 bus does. :func:`serve_line` runs any number of them, of any
protocols, on one file descriptor: a DL/T 645 meter and a CJ/T 188 meter on one line each ignore
the other's frames. Two devices answering at once collide, as on a real line: the agent sees
their bytes mixed, not one clean reply.

A pty has no baud rate: with ``char_s`` the line waits the request's and the reply's time on the
wire before it writes the reply (plus the device's own ``answer_delay_s``), so the agent's cycle
times look like a real line's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

__all__ = ["LineDevice", "collide", "serve_line"]


@runtime_checkable
class LineDevice(Protocol):
    """A simulated device on a line."""

    answer_delay_s: float
    """How long the device takes to start answering (its processing time)."""

    def hear(self, data: bytes, /) -> bytes | None:
        """Bytes that came over the line (part of a frame, a frame, several); what the device
        sends back, or None to stay silent."""
        ...


def collide(replies: Sequence[bytes]) -> bytes:
    """What the line carries when several devices answer at once: the bits ORed (the line's
    idle state is 1), longer frames' tails as they are."""
    if len(replies) == 1:
        return replies[0]
    out = bytearray(max(len(r) for r in replies))
    for reply in replies:
        for i, byte in enumerate(reply):
            out[i] |= byte
    return bytes(out)


async def serve_line(
    fd: int,
    devices: Sequence[LineDevice],
    *,
    char_s: float = 0.0,
    quiet_s: float = 0.003,
) -> None:
    """Answer on ``fd`` (a pty end or serial port, raw mode) until cancelled. What arrives is
    gathered until the line has been quiet for ``quiet_s`` and then heard by every device."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    arrived = asyncio.Event()
    loop.add_reader(fd, arrived.set)
    heard = bytearray()
    try:
        while True:
            if heard:
                try:
                    await asyncio.wait_for(arrived.wait(), quiet_s)
                except TimeoutError:
                    await _answer(fd, devices, bytes(heard), char_s)
                    heard.clear()
                    continue
            else:
                await arrived.wait()
            arrived.clear()
            try:
                heard += os.read(fd, 4096)
            except BlockingIOError:
                continue
            except OSError:
                await asyncio.sleep(0.2)  # the other end is not open yet (EIO)
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(fd)


async def _answer(fd: int, devices: Sequence[LineDevice], data: bytes, char_s: float) -> None:
    replies: list[tuple[float, bytes]] = []
    for device in devices:
        reply = device.hear(data)
        if reply:
            replies.append((device.answer_delay_s, reply))
    if not replies:
        return
    delay = min(d for d, _ in replies)
    line = collide([r for _, r in replies])
    # The request's and the reply's time on the wire, and the device's own delay.
    wait = delay + (len(data) + len(line)) * char_s
    if wait > 0:
        await asyncio.sleep(wait)
    with contextlib.suppress(BlockingIOError, OSError):
        os.write(fd, line)
