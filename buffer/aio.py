"""The buffer for asyncio code: every SQLite call runs on one worker thread, with group commit.

The event loop never touches SQLite; it only awaits futures of a single-thread executor that
owns the connection. Appends are grouped: one that finds the buffer idle opens a window of
``commit_interval_ms``; everything appended within it, or while a commit is running, or until
``group_max_records`` are waiting, goes into ONE transaction (one fsync), and each caller's await
completes when that transaction has committed. Work in flight is bounded by the callers, who all
wait.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from agent.records import Record

from .core import Batch, Buffer, BufferClosedError, BufferStats
from .durability import Durability
from .recovery import is_corruption

__all__ = ["AsyncBuffer"]

T = TypeVar("T")

_Pending = tuple[Sequence[Record], "asyncio.Future[list[int]]"]


def _append(buffer: Buffer, records: Sequence[Record]) -> list[int]:
    return buffer.append(records)


class AsyncBuffer:
    """What the runtime and the uplink use; same operations as :class:`Buffer`, awaited."""

    def __init__(
        self,
        buffer: Buffer,
        executor: ThreadPoolExecutor,
        *,
        commit_interval_ms: int = 50,
        group_max_records: int = 2000,
    ) -> None:
        self._buffer = buffer
        self._executor = executor
        self._interval_s = max(0, commit_interval_ms) / 1000
        self._group_max = max(1, group_max_records)
        self._pending: list[_Pending] = []
        self._pending_records = 0
        self._first_pending_at = 0.0
        self._committing = False
        self._urgent = False
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._retired: set[str] = set()
        """Epochs of files moved aside after corruption found while running."""
        self.recoveries = 0

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        commit_interval_ms: int = 50,
        group_max_records: int = 2000,
        max_bytes: int = 1024 * 2**20,
        max_age_s: float | None = None,
        durability: Durability | str = "full",
        source: str = "agent",
        boot_id: str | None = None,
        clock_synced: Callable[[], bool] | None = None,
    ) -> AsyncBuffer:
        """Open like :meth:`Buffer.open` (on the worker thread: ``quick_check`` reads the whole
        file). ``group_max_records`` starts a commit before the window ends once that many
        records wait."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer-sqlite")
        opener = functools.partial(
            Buffer.open,
            path,
            max_bytes=max_bytes,
            max_age_s=max_age_s,
            durability=durability,
            source=source,
            boot_id=boot_id,
            clock_synced=clock_synced,
        )
        try:
            buffer = await asyncio.get_running_loop().run_in_executor(executor, opener)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(
            buffer,
            executor,
            commit_interval_ms=commit_interval_ms,
            group_max_records=group_max_records,
        )

    @property
    def epoch(self) -> str:
        return self._buffer.epoch

    @property
    def recovered_from(self) -> Path | None:
        return self._buffer.recovered_from

    @property
    def path(self) -> Path:
        return self._buffer.path

    @property
    def commits(self) -> int:
        """Write transactions committed so far (fewer than appends when grouping works)."""
        return self._buffer.commits

    async def append(self, records: Sequence[Record]) -> list[int]:
        """Store ``records``; returns their seqs once the group's transaction has committed.

        If the caller is cancelled before its group starts committing, its records are not
        stored; once the commit has started they are (and the seqs are lost to the caller).
        """
        if self._closing:
            raise BufferClosedError(f"{self._buffer.path}: buffer is closing")
        if not records:
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        if not self._pending:
            self._first_pending_at = loop.time()
        self._pending.append((tuple(records), future))
        self._pending_records += len(records)
        if self._committing:
            self._urgent = True
        if self._pending_records >= self._group_max:
            self._wake.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="buffer-commit")
        return await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            if not (self._urgent or self._closing) and self._pending_records < self._group_max:
                delay = self._first_pending_at + self._interval_s - loop.time()
                if delay > 0:
                    self._wake.clear()
                    timer = loop.call_later(delay, self._wake.set)
                    try:
                        await self._wake.wait()
                    finally:
                        timer.cancel()
            group = [(recs, fut) for recs, fut in self._pending if not fut.done()]
            self._pending = []
            self._pending_records = 0
            self._urgent = False
            if not group:
                continue
            flat = list(itertools.chain.from_iterable(recs for recs, _ in group))
            self._committing = True
            try:
                seqs = await self._worker(functools.partial(_append, records=flat))
            except asyncio.CancelledError:
                for _, fut in group:
                    fut.cancel()
                raise
            except Exception as exc:
                if len(group) == 1:
                    if not group[0][1].done():
                        group[0][1].set_exception(exc)
                else:
                    # One caller's bad record must not fail the others: commit them one by one.
                    await self._append_each(group)
                continue
            finally:
                self._committing = False
            start = 0
            for recs, fut in group:
                end = start + len(recs)
                if not fut.done():
                    fut.set_result(seqs[start:end])
                start = end

    async def _append_each(self, group: list[_Pending]) -> None:
        for recs, fut in group:
            try:
                seqs = await self._worker(functools.partial(_append, records=recs))
            except Exception as exc:
                if not fut.done():
                    fut.set_exception(exc)
            else:
                if not fut.done():
                    fut.set_result(seqs)

    async def _worker(self, op: Callable[[Buffer], T]) -> T:
        """``op(buffer)`` on the worker thread. When SQLite finds the file corrupt while
        running, the file is moved aside and a new epoch starts (:meth:`Buffer.recover`), then
        ``op`` runs once more on the fresh file: an append is not lost to it."""
        loop = asyncio.get_running_loop()
        buffer = self._buffer
        try:
            return await loop.run_in_executor(self._executor, op, buffer)
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise
            if self._buffer is buffer:  # not already recovered by a call that overlapped
                self._retired.add(buffer.epoch)
                self._buffer = await loop.run_in_executor(
                    self._executor, buffer.recover, f"{type(exc).__name__}: {exc}"
                )
                self.recoveries += 1
        return await loop.run_in_executor(self._executor, op, self._buffer)

    async def _call(self, op: Callable[[Buffer], T]) -> T:
        if self._closed:
            raise BufferClosedError(f"{self._buffer.path}: buffer is closed")
        return await self._worker(op)

    def _retired_batch(self, batch: Batch) -> bool:
        """A batch of a file moved aside: its records went with that file."""
        return batch.epoch in self._retired and batch.epoch != self._buffer.epoch

    async def take(self, max_records: int, max_bytes: int) -> Batch | None:
        return await self._call(lambda b: b.take(max_records, max_bytes))

    async def ack(self, batch: Batch) -> int:
        if self._retired_batch(batch):
            return 0
        return await self._call(lambda b: b.ack(batch))

    async def set_aside(self, batch: Batch, reason: str) -> None:
        if not self._retired_batch(batch):
            await self._call(lambda b: b.set_aside(batch, reason))

    async def requeue_poison(self) -> int:
        return await self._call(lambda b: b.requeue_poison())

    async def claim_command(self, command_id: str, expires_ms: int) -> bool:
        return await self._call(lambda b: b.claim_command(command_id, expires_ms))

    async def ping(self) -> None:
        """A round trip through the buffer's thread (after whatever it is writing)."""
        await self._call(lambda _b: None)

    async def stats(self) -> BufferStats:
        return await self._call(lambda b: b.stats())

    async def correct_unsynced(
        self, boot_id: str, delta_ms: int, *, mark_synced: bool = True
    ) -> int:
        return await self._call(
            lambda b: b.correct_unsynced(boot_id, delta_ms, mark_synced=mark_synced)
        )

    async def close(self) -> None:
        """Commit every append already made (without waiting out the window), then close.
        Appends made after close() began raise :class:`BufferClosedError`."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            await asyncio.wait([flusher])
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._buffer.close)
        finally:
            self._executor.shutdown(wait=False)
