"""The sink: where every record enters the buffer. Nothing is accepted that is not durable when
the sink returns; a full disk or a failing card is counted and reported, never a crash.

Polled drivers' records come here from the scheduler, streaming drivers' through the ingest queue
(:mod:`agent.ingest`), the agent's own events through :meth:`Sink.event`. Every record is seen by
:class:`agent.state.AgentState` on its way (last values, recent events).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from agent.records import Event, Record, Severity

if TYPE_CHECKING:
    import structlog

    from agent.state import AgentState
    from buffer import AsyncBuffer

__all__ = ["Sink"]


class Sink:
    """Accepts records into the buffer (``await sink(records)``)."""

    def __init__(
        self,
        buffer: Callable[[], AsyncBuffer | None],
        *,
        state: AgentState,
        source: str,
        where: str,
        stamp: Callable[[], tuple[int, bool]],
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._buffer = buffer
        self.state = state
        self._source = source
        self._where = where
        self._stamp = stamp
        self.log = log
        self._unwritable_since: int | None = None
        self._lost_at_failure = 0

    async def __call__(self, records: Sequence[Record], /) -> None:
        """Accept records: they are durable in the buffer when this returns."""
        if not records:
            return
        buffer = self._buffer()
        for record in records:
            self.state.observe(record)
        if buffer is None:
            # Not open (a card remounted read-only at start): the runtime keeps trying.
            self._buffer_write_failed(len(records), self.state.buffer.last_error or "not open")
            return
        try:
            # Shielded: a poll task cancelled at shutdown must not abandon records it handed over.
            await asyncio.shield(buffer.append(records))
        except (sqlite3.Error, OSError) as exc:
            # A full disk or a failing card: these records cannot be accepted. Polling goes on,
            # the loss is counted and reported, and appends resume when the buffer can write.
            self._buffer_write_failed(len(records), f"{type(exc).__name__}: {exc}")
            return
        self.state.records_accepted += len(records)
        if self._unwritable_since is not None:
            await self._buffer_writable_again()

    def _buffer_write_failed(self, count: int, error: str) -> None:
        self.state.records_lost_unwritable += count
        self.state.buffer.last_error = error
        if self._unwritable_since is None:
            self._unwritable_since = self._stamp()[0]
            self._lost_at_failure = self.state.records_lost_unwritable - count
            self.log.error(
                "buffer.write_failed",
                error=error,
                path=self._where,
                hint="free space on the gateway's flash, or check whether the card went "
                "read-only (dmesg); records are lost until it can write",
            )

    async def _buffer_writable_again(self) -> None:
        since, self._unwritable_since = self._unwritable_since, None
        lost = self.state.records_lost_unwritable - self._lost_at_failure
        error, self.state.buffer.last_error = self.state.buffer.last_error, None
        self.log.warning("buffer.write_recovered", records_lost=lost, since_ms=since)
        await self.event(
            "agent.buffer_write_failed",
            Severity.ALARM,
            records_lost=lost,
            since_ms=since,
            error=error,
        )

    async def event(self, type_: str, severity: Severity = Severity.INFO, **data: Any) -> None:
        ts, synced = self._stamp()
        await self(
            [
                Event(
                    device=self._source,
                    ts=ts,
                    ts_synced=synced,
                    type=type_,
                    severity=severity,
                    data=data,
                )
            ]
        )
