"""Batches taken for upload, cut and split with exact seq ranges, and the buffer's figures."""

from __future__ import annotations

import dataclasses
from typing import Any, Final

__all__ = ["Batch", "BufferStats"]

_SEQ_PREFIX_LEN: Final = len(b'{"seq":')


@dataclasses.dataclass(frozen=True, slots=True)
class Batch:
    """Records taken for one upload, each already carrying its ``seq``."""

    epoch: str
    records: list[bytes]
    """Compact JSON objects, ``{"seq":N,...}``, ready to join into a JSON array."""
    ranges: tuple[tuple[int, int, int], ...]
    """``(priority, first_seq, last_seq)`` per priority class covered; ``ack`` deletes these."""
    size: int
    """Sum of ``len(records)``."""

    def body(self) -> bytes:
        return b"[" + b",".join(self.records) + b"]"

    def seqs(self) -> list[int]:
        """The seq of each record, in order."""
        return [int(r[_SEQ_PREFIX_LEN : r.index(b",", _SEQ_PREFIX_LEN)]) for r in self.records]

    def split(self) -> tuple[Batch, Batch]:
        """Two halves, in order, with exact ranges (to isolate a record the platform rejects)."""
        if len(self.records) < 2:
            raise ValueError("a batch of one record cannot be split")
        seqs, prios = self.seqs(), self._priorities()
        mid = len(self.records) // 2
        return (
            self._part(self.records[:mid], seqs[:mid], prios[:mid]),
            self._part(self.records[mid:], seqs[mid:], prios[mid:]),
        )

    def cut(self, max_records: int, max_bytes: int) -> list[Batch]:
        """Consecutive batches within both limits (each at least one record), exact ranges."""
        if len(self.records) <= max_records and self.size <= max_bytes:
            return [self]
        seqs, prios = self.seqs(), self._priorities()
        out: list[Batch] = []
        start = size = 0
        for j, record in enumerate(self.records):
            if j > start and (j - start >= max_records or size + len(record) > max_bytes):
                out.append(self._part(self.records[start:j], seqs[start:j], prios[start:j]))
                start, size = j, 0
            size += len(record)
        out.append(self._part(self.records[start:], seqs[start:], prios[start:]))
        return out

    def _priorities(self) -> list[int]:
        """The priority of each record. Slices of a batch keep exact ranges because ``take``
        returns, per priority, every record between a range's ends."""
        seqs = self.seqs()
        prios: list[int] = []
        i = 0
        for prio, _first, last in self.ranges:
            while i < len(seqs):
                prios.append(prio)
                i += 1
                if seqs[i - 1] == last:
                    break
        if len(prios) != len(seqs):
            raise ValueError("batch records do not match its ranges")
        return prios

    def _part(self, records: list[bytes], seqs: list[int], prios: list[int]) -> Batch:
        ranges: list[tuple[int, int, int]] = []
        for prio, seq in zip(prios, seqs, strict=True):
            if ranges and ranges[-1][0] == prio:
                ranges[-1] = (prio, ranges[-1][1], seq)
            else:
                ranges.append((prio, seq, seq))
        return Batch(self.epoch, records, tuple(ranges), sum(len(r) for r in records))


@dataclasses.dataclass(frozen=True, slots=True)
class BufferStats:
    epoch: str
    path: str
    records: int
    events: int
    """Events (alarms included) and status records."""
    readings: int
    bytes: int
    """Logical bytes counted against ``max_bytes`` (body + ROW_OVERHEAD per row)."""
    file_bytes: int
    """Database file plus its WAL on disk."""
    max_bytes: int
    oldest_ms: int | None
    """``ts`` of the oldest waiting record (lowest seq of either class)."""
    oldest_event_ms: int | None
    last_seq: int
    dropped_readings: int
    dropped_events: int
    poisoned: int
    durability: str
    recovered_from: str | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
