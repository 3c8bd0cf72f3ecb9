"""The bound: when the buffer is full the oldest set-aside (poison) records go first, then the
oldest readings, then events, alarms last, and every drop is counted and reported by an
``agent.buffer_overflow`` event in the same transaction (DESIGN.md section 4, promise 4). What is
in flight to the platform is spared first, so the platform's gaps are exactly the drops
reported. Poison counts against the bound: records the platform refused must not grow the file
past it (with a 256 KiB bound it reached 17 MB)."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import structlog

from agent.records import PRIORITY_READING, Event, Record, Severity, now_ms

from ._encode import RecordEncoder
from ._meta import MAX_SEQ, ROW_OVERHEAD, TABLE, TS, Counters

__all__ = ["EVICT_SLACK_DIVISOR", "Dropped", "Eviction"]

EVICT_SLACK_DIVISOR: Final = 32
"""When the bound is hit, free 1/32 of it beyond what is needed, so a full buffer drops in chunks
(one overflow event per chunk) instead of once per append."""

_log = structlog.get_logger("buffer")


@dataclasses.dataclass(slots=True)
class Dropped:
    readings: int = 0
    events: int = 0
    poison: int = 0
    """Set-aside records dropped (they count in neither readings nor events)."""
    bytes: int = 0
    oldest_ms: int | None = None
    newest_ms: int | None = None

    def add(self, prio: int, count: int, nbytes: int, oldest: Any, newest: Any) -> None:
        if prio == PRIORITY_READING:
            self.readings += count
        else:
            self.events += count
        self.bytes += nbytes
        if isinstance(oldest, int) and (self.oldest_ms is None or oldest < self.oldest_ms):
            self.oldest_ms = oldest
        if isinstance(newest, int) and (self.newest_ms is None or newest > self.newest_ms):
            self.newest_ms = newest


class Eviction:
    """The bound's half of :class:`buffer.core.Buffer` (a mixin: it works on the buffer's
    connection and counters)."""

    _conn: sqlite3.Connection
    _reserve: int
    _taken: dict[int, int]
    _next_age_check: float
    _age_check_interval_s: float
    _encode: RecordEncoder
    max_bytes: int
    max_age_s: float | None

    if TYPE_CHECKING:

        def _insert(self, c: Counters, records: Sequence[Record]) -> list[int]: ...

        def _own_event(self, type_: str, severity: Severity, data: dict[str, Any]) -> Event: ...

        @staticmethod
        def _forget(c: Counters, prio: int, count: int, nbytes: int) -> None: ...

    def _overflow_event(self, dropped: Dropped, reason: str) -> Event:
        return self._own_event(
            "agent.buffer_overflow",
            Severity.WARNING,
            {
                "dropped_readings": dropped.readings,
                "dropped_events": dropped.events,
                "dropped_poison": dropped.poison,
                "reason": reason,
                "oldest_dropped_ms": dropped.oldest_ms,
                "newest_dropped_ms": dropped.newest_ms,
                "bytes_freed": dropped.bytes,
            },
        )

    def _overflow_reserve(self) -> int:
        """Room kept free so the overflow event itself always fits under the bound."""
        big = -(2**63)
        worst = Dropped(big, big, big, big, big, big)
        event = self._overflow_event(worst, "size")
        return len(self._encode(dataclasses.replace(event, ts=big))) + ROW_OVERHEAD

    def _report_drop(self, c: Counters, dropped: Dropped, reason: str) -> None:
        c.dropped_readings += dropped.readings
        c.dropped_events += dropped.events
        self._insert(c, [self._overflow_event(dropped, reason)])
        _log.warning(
            "buffer.overflow",
            reason=reason,
            dropped_readings=dropped.readings,
            dropped_events=dropped.events,
            dropped_poison=dropped.poison,
            bytes_freed=dropped.bytes,
            max_bytes=self.max_bytes,
        )

    def _enforce_size(self, c: Counters) -> None:
        if c.bytes + self._reserve <= self.max_bytes:
            return
        slack = self.max_bytes // EVICT_SLACK_DIVISOR
        target = max(0, self.max_bytes - self._reserve - slack)
        dropped = Dropped()
        self._drop_oldest_poison(c, dropped, c.bytes - target)
        for prio in reversed(TABLE):  # readings, events, alarms
            # First spare what is in flight; only if that is not enough, drop it too.
            for after in dict.fromkeys((self._taken.get(prio, 0), 0)):
                need = c.bytes - target
                if need <= 0:
                    break
                self._drop_oldest(c, dropped, prio, after, need)
        if dropped.readings or dropped.events or dropped.poison:
            self._report_drop(c, dropped, "size")

    def _drop_oldest_poison(self, c: Counters, dropped: Dropped, need: int) -> None:
        """Drop the oldest set-aside records until ``need`` bytes are free."""
        if need <= 0:
            return
        count, nbytes, _oldest, _newest = self._cut_oldest("poison", 0, need)
        c.bytes -= nbytes
        dropped.poison += count
        dropped.bytes += nbytes

    def _drop_oldest(self, c: Counters, dropped: Dropped, prio: int, after: int, need: int) -> None:
        """Drop the oldest records of ``prio`` after seq ``after`` until ``need`` bytes are free."""
        count, nbytes, oldest, newest = self._cut_oldest(TABLE[prio], after, need)
        if not count:
            return
        self._forget(c, prio, count, nbytes)
        dropped.add(prio, count, nbytes, oldest, newest)

    def _cut_oldest(self, table: str, after: int, need: int) -> tuple[int, int, Any, Any]:
        """Delete the oldest rows of ``table`` after seq ``after`` until ``need`` bytes (with
        ``ROW_OVERHEAD``) are free; (rows, bytes, oldest ts, newest ts) of what went."""
        # Running total in seq order; SQLite streams the window, so this stops at the cut.
        row = self._conn.execute(
            f"SELECT seq FROM (SELECT seq, sum(length(body) + {ROW_OVERHEAD}) "  # noqa: S608
            f"OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) AS total FROM {table} "
            "WHERE seq > ?) WHERE total >= ? LIMIT 1",
            (after, need),
        ).fetchone()
        cut = row[0] if row is not None else MAX_SEQ
        count, nbytes, oldest, newest = self._conn.execute(
            f"SELECT count(*), coalesce(sum(length(body)), 0), min({TS}), max({TS}) "  # noqa: S608
            f"FROM {table} WHERE seq > ? AND seq <= ?",
            (after, cut),
        ).fetchone()
        if count:
            self._conn.execute(f"DELETE FROM {table} WHERE seq > ? AND seq <= ?", (after, cut))  # noqa: S608
        return int(count), int(nbytes) + ROW_OVERHEAD * int(count), oldest, newest

    def _maybe_enforce_age(self, c: Counters) -> None:
        if self.max_age_s is None:
            return
        now = time.monotonic()
        if now < self._next_age_check:
            return
        self._next_age_check = now + self._age_check_interval_s
        cutoff = now_ms() - int(self.max_age_s * 1000)
        # Age is judged on trusted stamps only: a reading stamped before clock sync (a gateway
        # without RTC boots in 1970) is kept until corrected, then aged normally. Only the old
        # prefix is visited: the scan stops at the first trusted young reading.
        row = self._conn.execute(
            f"SELECT seq FROM readings WHERE boot IS NULL AND {TS} >= ? "  # noqa: S608
            "ORDER BY seq LIMIT 1",
            (cutoff,),
        ).fetchone()
        limit = row[0] if row is not None else MAX_SEQ
        count, nbytes, oldest, newest = self._conn.execute(
            f"SELECT count(*), coalesce(sum(length(body)), 0), min({TS}), max({TS}) "  # noqa: S608
            "FROM readings WHERE seq < ? AND boot IS NULL",
            (limit,),
        ).fetchone()
        if not count:
            return
        self._conn.execute("DELETE FROM readings WHERE seq < ? AND boot IS NULL", (limit,))
        nbytes += ROW_OVERHEAD * count
        self._forget(c, PRIORITY_READING, count, nbytes)
        dropped = Dropped()
        dropped.add(PRIORITY_READING, count, nbytes, oldest, newest)
        self._report_drop(c, dropped, "age")
