"""The push path: bounded, never waits, coalesces readings of one point, never drops an event
while a reading could go instead, and reports what it dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from agent.ingest import IngestQueue
from agent.logs import get_logger
from agent.records import Event, Reading, Record, Severity, now_ms


def reading(device: str, point: str, value: float) -> Reading:
    return Reading(device=device, ts=now_ms(), ts_synced=True, point=point, value=value)


def event(device: str, n: int) -> Event:
    return Event(
        device=device,
        ts=now_ms(),
        ts_synced=True,
        type="tag.sos",
        severity=Severity.ALARM,
        data={"n": n},
    )


class Sink:
    def __init__(self) -> None:
        self.batches: list[list[Record]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, records: Sequence[Record]) -> None:
        await self.gate.wait()
        self.batches.append(list(records))

    @property
    def records(self) -> list[Record]:
        return [r for batch in self.batches for r in batch]


def queue(sink: Sink, **kwargs: float) -> IngestQueue:
    return IngestQueue(
        sink, source="gw-test", stamp=lambda: (now_ms(), True), log=get_logger(), **kwargs
    )


def test_readings_of_one_point_are_coalesced_to_the_newest() -> None:
    q = queue(Sink())
    for n in range(3000):
        q.push([reading(f"tag-{n % 10}", "rssi", n)])
    assert len(q) == 10
    assert q.coalesced == 2990
    assert q.dropped_readings == q.dropped_events == 0


def test_events_push_out_readings_and_are_dropped_last() -> None:
    q = queue(Sink(), max_records=100)
    q.push([reading(f"tag-{n}", "rssi", n) for n in range(150)])
    assert (len(q), q.dropped_readings) == (100, 50)
    q.push([event("tag-1", n) for n in range(30)])
    # Each event took the place of the oldest queued reading.
    assert (len(q), q.dropped_readings, q.dropped_events) == (100, 80, 0)
    q.push([event("tag-2", n) for n in range(80)])
    assert (len(q), q.dropped_readings, q.dropped_events) == (100, 150, 10)
    q.push([reading("tag-x", "rssi", 1)])
    assert q.dropped_readings == 151  # a full queue of events takes no reading either


async def test_the_drain_sends_events_first_and_reports_drops() -> None:
    sink = Sink()
    q = queue(sink, max_records=50, report_every_s=0.05)
    sink.gate.clear()  # the buffer is slow: an fsync in progress
    task = asyncio.create_task(q.run())
    try:
        q.push([reading("tag-1", "rssi", 1)])
        await asyncio.sleep(0.05)  # the drain took it and waits on the sink
        # Pushing while the sink is blocked returns at once and queues within the bound.
        q.push([reading(f"tag-{n}", "rssi", n) for n in range(100)])
        q.push([event("tag-9", 0)])
        assert len(q) == 50
        sink.gate.set()
        for _ in range(100):
            if any(isinstance(r, Event) and r.type == "agent.ingest_dropped" for r in sink.records):
                break
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
    first, second = sink.batches[0], sink.batches[1]
    assert [r.device for r in first] == ["tag-1"]
    kinds = [isinstance(r, Event) for r in second]
    assert kinds == sorted(kinds, reverse=True), "events (the SOS, the drop report) go first"
    assert "tag.sos" in [r.type for r in second if isinstance(r, Event)]
    [report] = [
        r for r in sink.records if isinstance(r, Event) and r.type == "agent.ingest_dropped"
    ]
    assert report.device == "gw-test"
    assert report.data == {"readings": 51, "events": 0, "max_records": 50}


async def test_flush_hands_over_everything_queued() -> None:
    sink = Sink()
    q = queue(sink)
    q.push([event("tag-1", 1), reading("tag-1", "rssi", 2), reading("tag-2", "rssi", 3)])
    await q.flush()
    assert len(q) == 0
    assert [type(r).__name__ for r in sink.records] == ["Event", "Reading", "Reading"]
