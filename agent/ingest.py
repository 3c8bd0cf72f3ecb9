"""The push path: records from callbacks reach the buffer without the callback ever waiting.

A BlueZ advertisement callback or a camera's event listener must not wait for an fsync. It calls
``ctx.push(records)``, which only queues them; one task hands the queue to the sink (the buffer)
batch by batch. The queue is bounded by a record count:

- a reading of a point that is still queued replaces it (a tag advertising ten times a second
  does not need ten records waiting: the newest value and its time are what matter);
- when the queue is full, a new reading is dropped; a new event or status first pushes out the
  oldest queued reading, and is itself dropped only when nothing but events is queued. Events
  are never dropped before readings.

Every drop and every replacement is counted (``/metrics``, the page), and drops are reported to
the platform as one ``agent.ingest_dropped`` event per period while they happen.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from agent.records import Event, Reading, Record, Severity

if TYPE_CHECKING:
    import structlog

__all__ = ["IngestQueue"]

Sink = Callable[[Sequence[Record]], Awaitable[None]]
_BATCH = 2000


class IngestQueue:
    """Bounded, non-blocking, events before readings."""

    def __init__(
        self,
        sink: Sink,
        *,
        source: str,
        stamp: Callable[[], tuple[int, bool]],
        log: structlog.typing.FilteringBoundLogger,
        max_records: int = 20_000,
        report_every_s: float = 60.0,
    ) -> None:
        self._sink = sink
        self._source = source
        self._stamp = stamp
        self._log = log
        self.max_records = max_records
        self._report_every_s = report_every_s
        self._events: collections.deque[Record] = collections.deque()
        self._readings: dict[tuple[str, str], Reading] = {}
        """Queued readings by (device, point), oldest first (dicts keep insertion order)."""
        self._ready = asyncio.Event()
        self.coalesced = 0
        self.dropped_readings = 0
        self.dropped_events = 0
        self._reported = (0, 0)

    def __len__(self) -> int:
        return len(self._events) + len(self._readings)

    def push(self, records: Sequence[Record]) -> None:
        """Queue ``records``; never waits, never raises for a full queue."""
        for record in records:
            if isinstance(record, Reading):
                self._push_reading(record)
            else:
                self._push_event(record)
        if len(self):
            self._ready.set()

    def _push_reading(self, reading: Reading) -> None:
        key = (reading.device, reading.point)
        if key in self._readings:
            # Takes the old one's place in the queue: a dict keeps a key's first position.
            self._readings[key] = reading
            self.coalesced += 1
            return
        if len(self) >= self.max_records:
            self.dropped_readings += 1
            return
        self._readings[key] = reading

    def _push_event(self, record: Record) -> None:
        if len(self) >= self.max_records:
            if self._readings:
                del self._readings[next(iter(self._readings))]
                self.dropped_readings += 1
            else:
                self.dropped_events += 1
                return
        self._events.append(record)

    def _take(self) -> list[Record]:
        batch: list[Record] = []
        while self._events and len(batch) < _BATCH:
            batch.append(self._events.popleft())
        while self._readings and len(batch) < _BATCH:
            key = next(iter(self._readings))
            batch.append(self._readings.pop(key))
        if not len(self):
            self._ready.clear()
        return batch

    def _drop_report(self) -> Event | None:
        readings = self.dropped_readings - self._reported[0]
        events = self.dropped_events - self._reported[1]
        if not readings and not events:
            return None
        self._reported = (self.dropped_readings, self.dropped_events)
        self._log.warning(
            "ingest.dropped", readings=readings, events=events, hint="a push driver floods"
        )
        ts, synced = self._stamp()
        return Event(
            device=self._source,
            ts=ts,
            ts_synced=synced,
            type="agent.ingest_dropped",
            severity=Severity.WARNING,
            data={"readings": readings, "events": events, "max_records": self.max_records},
        )

    async def flush(self) -> None:
        """Hand everything queued to the sink now (at stop)."""
        while len(self):
            await self._sink(self._take())
        report = self._drop_report()
        if report is not None:
            await self._sink([report])

    async def run(self) -> None:
        """Drain until cancelled."""
        loop = asyncio.get_running_loop()
        next_report = loop.time() + self._report_every_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), max(0.0, next_report - loop.time()))
            batch = self._take()
            if loop.time() >= next_report:
                next_report = loop.time() + self._report_every_s
                report = self._drop_report()
                if report is not None:
                    batch.insert(0, report)
            if batch:
                await self._sink(batch)
