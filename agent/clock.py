"""Is the system clock synchronised, and what to do about records stamped before it was.

A gateway without a real-time clock boots at a wrong time. Until NTP has set the clock, records
are stamped ``ts_synced=False``; when synchronisation is first seen, the jump of the wall clock
against the monotonic clock is the correction for everything stamped in this boot before it
(DESIGN.md section 3). The kernel's ``adjtimex`` answers TIME_ERROR while the clock is
unsynchronised; systemd-timesyncd also touches ``/run/systemd/timesync/synchronized``.
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

__all__ = ["Clock", "boot_id", "kernel_clock_synced"]

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

    async def watch(self, on_sync: Callable[[int], Awaitable[None]]) -> None:
        """Poll until the clock is synchronised, then call ``on_sync(delta_ms)`` once."""
        while not self.synced:
            self._offset = self._wall() - self._monotonic()
            await asyncio.sleep(self.poll_s)
            if self._check():
                delta_ms = round(((self._wall() - self._monotonic()) - self._offset) * 1000)
                self.synced = True
                with contextlib.suppress(asyncio.CancelledError):
                    await on_sync(delta_ms)
