"""The disk reserve: room kept beside the buffer so that an acknowledgement can always delete.

In WAL mode even a DELETE writes: its pages go to the WAL first, and the checkpoint then moves
them into the database file. On a full card the delete of an acknowledged batch failed with
``database or disk is full``: the uplink resent the same batch for ever and every new reading
was lost. So the buffer keeps a file of ``size`` bytes (``<buffer>-reserve``) and gives it back
to the filesystem when a delete finds the disk full; while it is given back, appends may not
grow the database into the last ``size`` bytes of the disk (records then go to the pages the
acknowledged batches freed). Once the disk has room again the reserve is made again.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Final

__all__ = ["DiskFullError", "DiskReserve", "reserve_size"]

RESERVE_MAX_BYTES: Final = 8 * 2**20
RESERVE_MIN_BYTES: Final = 256 * 2**10
_CHUNK: Final = 64 * 2**10


class DiskFullError(OSError):
    """The buffer refuses to append: the disk is full and its reserve is spent on deletes."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)


def reserve_size(max_bytes: int) -> int:
    """An eighth of the buffer's bound, between 256 KiB and 8 MiB: more than a checkpoint of
    the WAL (SQLite checkpoints at 4 MiB) needs to land in the database file."""
    return max(RESERVE_MIN_BYTES, min(RESERVE_MAX_BYTES, max_bytes // 8))


class DiskReserve:
    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    @property
    def present(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size
        except OSError:
            return False

    def free_bytes(self) -> int:
        """Bytes an unprivileged writer may still use on the buffer's filesystem."""
        st = os.statvfs(self.path.parent)
        return st.f_bavail * st.f_frsize

    def ensure(self) -> bool:
        """Make the reserve if it is missing and the disk has room for it and as much again;
        True when it is there afterwards."""
        if self.present:
            return True
        try:
            if self.free_bytes() < 2 * self.size:
                return False
            # Written, not fallocate'd or truncated: a sparse file would reserve nothing.
            with self.path.open("wb") as f:
                block = b"\0" * _CHUNK
                for _ in range(0, self.size, _CHUNK):
                    f.write(block)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                self.path.unlink()
            return False
        return True

    def release(self) -> bool:
        """Give the reserve back to the filesystem; True when there was one to give."""
        if not self.path.exists():
            return False
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        return True
