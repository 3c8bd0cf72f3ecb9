"""Is the system clock synchronised, and what to do about records stamped before it was.

A gateway without a real-time clock boots at a wrong time. Until NTP has set the clock, records
are stamped ``ts_synced=False``. The watch compares the wall clock with the monotonic clock every
few seconds: a jump while unsynchronised (NTP stepping the clock, often seconds before the
kernel's flag appears) shifts what was stamped before it at once, still marked unsynced; when
synchronisation is seen, what jumped since the last look is the last correction and the records
are marked synced (DESIGN.md section 3). A jump after synchronisation is reported, not applied:
those stamps were right when they were made. The kernel's ``adjtimex`` answers TIME_ERROR while
the clock is unsynchronised; systemd-timesyncd also touches
``/run/systemd/timesync/synchronized``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.records import boot_id

__all__ = ["JUMP_MS", "Clock", "boot_id", "kernel_clock_synced"]

JUMP_MS = 1000
"""A change of the wall clock against the monotonic one larger than this is a step."""

_TIME_ERROR = 5
_TIMESYNCD_MARKER = Path("/run/systemd/timesync/synchronized")


def kernel_clock_synced() -> bool | None:
    """Ask adjtimex (read-only: modes = 0). None when it cannot be asked."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        # struct timex is about 208 bytes on 64-bit; a zeroed, generous buffer means modes=0.
        buf = ctypes.create_string_buffer(512)
        state = libc.adjtimex(buf)
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return bool(state != _TIME_ERROR)


def _probe() -> bool:
    if _TIMESYNCD_MARKER.exists():
        return True
    synced = kernel_clock_synced()
    # Unknown (no adjtimex here): trust the clock rather than mark everything unsynced forever.
    return True if synced is None else synced


class Clock:
    """Stamps records and notices the moment the clock becomes synchronised."""

    def __init__(
        self,
        mode: str = "auto",
        *,
        probe: Callable[[], bool] = _probe,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        poll_s: float = 5.0,
    ) -> None:
        self._mode = mode
        self.poll_s = poll_s
        self._probe = probe
        self._wall = wall
        self._monotonic = monotonic
        self.boot_id = boot_id()
        self.synced = self._check()
        self._offset = self._wall() - self._monotonic()

    def _check(self) -> bool:
        if self._mode == "always":
            return True
        if self._mode == "never":
            return False
        return self._probe()

    def stamp(self) -> tuple[int, bool]:
        return int(self._wall() * 1000), self.synced

    def _jump_ms(self) -> int:
        """How far the wall clock moved against the monotonic one since the last look."""
        offset = self._wall() - self._monotonic()
        jumped = round((offset - self._offset) * 1000)
        self._offset = offset
        return jumped

    async def watch(
        self,
        on_sync: Callable[[int], Awaitable[None]],
        on_step: Callable[[int, bool], Awaitable[None]],
    ) -> None:
        """Look every ``poll_s``. While unsynchronised, ``on_step(delta_ms, False)`` for each
        step and ``on_sync(delta_ms)`` once when synchronisation appears (``delta_ms``: what
        moved since the last look); after that, ``on_step(delta_ms, True)`` for each step."""
        self._offset = self._wall() - self._monotonic()
        while True:
            await asyncio.sleep(self.poll_s)
            if not self.synced and self._check():
                self.synced = True
                with contextlib.suppress(asyncio.CancelledError):
                    await on_sync(self._jump_ms())
                continue
            jumped = self._jump_ms()
            if abs(jumped) > JUMP_MS:
                await on_step(jumped, self.synced)
