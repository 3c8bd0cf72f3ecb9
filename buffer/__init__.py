"""Store-and-forward buffer: durable, ordered, bounded, acknowledged (DESIGN.md section 4).

:class:`Buffer` is the synchronous core on the standard ``sqlite3``; :class:`AsyncBuffer` runs it
on a worker thread of its own with group commit for the asyncio runtime and uplink. See
``buffer/README.md`` for the promises, the schema and the bound policy.
"""

from __future__ import annotations

from ._schema import BufferVersionError
from .aio import AsyncBuffer
from .core import (
    ROW_OVERHEAD,
    Batch,
    Buffer,
    BufferClosedError,
    BufferStats,
    BufferUnreadableError,
)

__all__ = [
    "ROW_OVERHEAD",
    "AsyncBuffer",
    "Batch",
    "Buffer",
    "BufferClosedError",
    "BufferStats",
    "BufferUnreadableError",
    "BufferVersionError",
]
