"""Store-and-forward buffer: durable, ordered, bounded, acknowledged (DESIGN.md section 4).

:class:`Buffer` is the synchronous core on the standard ``sqlite3``; :class:`AsyncBuffer` runs it
on a worker thread of its own with group commit for the asyncio runtime and uplink. See
``buffer/README.md`` for the promises, the schema and the bound policy.

The package stands alone: of the agent it imports :mod:`agent.records` only (no pydantic, no
config), so a maintenance tool or another process can use it as it is.
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
from .durability import Durability

__all__ = [
    "ROW_OVERHEAD",
    "AsyncBuffer",
    "Batch",
    "Buffer",
    "BufferClosedError",
    "BufferStats",
    "BufferUnreadableError",
    "BufferVersionError",
    "Durability",
]
