"""The platform's SQLite store: each ``(gateway, epoch, seq)`` once, inventories, commands and
their results."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

_T = TypeVar("_T")


# --- storage -------------------------------------------------------------------------------

# No secondary index on records: each one costs about a third more per insert, and the insert
# path is what keeps up with a draining gateway; queries by device scan, which suits a
# reference platform. The rowid is the arrival order the integrator GET pages by.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    gateway TEXT NOT NULL,
    epoch TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    device TEXT NOT NULL,
    ts INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (gateway, epoch, seq)
);
CREATE TABLE IF NOT EXISTS inventory (
    gateway TEXT PRIMARY KEY,
    body BLOB NOT NULL,
    updated_ms INTEGER NOT NULL,
    revision INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    body BLOB NOT NULL,
    raw INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER,
    delivered_ms INTEGER,
    result BLOB,
    error TEXT,
    result_ms INTEGER
);
CREATE INDEX IF NOT EXISTS commands_pending ON commands (gateway, status);
"""

_INSERT = (
    "INSERT OR IGNORE INTO records (gateway, epoch, seq, kind, device, ts, received_ms, body)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


class Store:
    """SQLite behind one worker thread: every call runs there, so the event loop never blocks
    and the connection is only ever used by one thread."""

    def __init__(self, path: Path, *, durability: str = "full") -> None:
        self._path = path
        self._durability = durability
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="refplatform-db"
        )
        self._conn: sqlite3.Connection | None = None

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        await self.run(self._open)

    def _open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per batch.
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        sync = "FULL" if self._durability == "full" else "NORMAL"
        conn.execute(f"PRAGMA synchronous={sync}")
        conn.executescript(_SCHEMA)
        self._conn = conn

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.run(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, params).fetchall()

    def insert_records(self, rows: Sequence[tuple[Any, ...]]) -> int:
        """Insert one batch in one transaction; the number of new rows (the rest are dups)."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            cur = conn.executemany(_INSERT, rows)
            added = cur.rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return added

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement in its own (autocommit) transaction; rows changed."""
        return self.conn.execute(sql, params).rowcount


# --- the application ------------------------------------------------------------------------
