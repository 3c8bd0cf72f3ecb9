"""The process's figures in one object, read by the web page, /metrics and the CLI.

Everything here is plain data updated from the event loop; readers take snapshots with
``as_dict``. Nothing here does I/O.
"""

from __future__ import annotations

import array
import collections
import dataclasses
import math
import time
from collections.abc import Iterable
from typing import Any

from agent.driver import Health
from agent.records import Event, Quality, Reading, Status, now_ms

__all__ = [
    "AgentState",
    "BufferFigures",
    "DeviceState",
    "PointHistory",
    "PointValue",
    "UplinkState",
]


@dataclasses.dataclass(slots=True)
class PointValue:
    value: Any
    ts: int
    quality: Quality
    unit: str | None = None
    reason: str | None = None


class PointHistory:
    """The last hour of one numeric point as per-minute means, for the diagnostic page's chart.

    Memory is what matters (500 devices x 20 points on a 1 GB Pi): a fixed ring of 60 float32
    means and 60 uint16 counts, about 0.5 KB a point, whatever the read interval.
    """

    SLOTS = 60
    SLOT_MS = 60_000

    __slots__ = ("_counts", "_head", "_means")

    def __init__(self) -> None:
        self._means = array.array("f", bytes(4 * self.SLOTS))
        self._counts = array.array("H", bytes(2 * self.SLOTS))
        self._head = -1
        """The newest minute (ms // SLOT_MS) written; -1 before the first value."""

    def add(self, ts_ms: int, value: float) -> None:
        minute = ts_ms // self.SLOT_MS
        if self._head < 0 or minute > self._head + self.SLOTS or minute <= self._head - self.SLOTS:
            # First value, a gap of over an hour, or the clock stepped back by over an hour
            # (NTP after a boot without RTC): start afresh rather than stall.
            self._clear(range(self.SLOTS))
            self._head = minute
        elif minute > self._head:
            self._clear(m % self.SLOTS for m in range(self._head + 1, minute + 1))
            self._head = minute
        slot = minute % self.SLOTS
        count = self._counts[slot]
        if count < 0xFFFF:
            count += 1
            self._counts[slot] = count
            self._means[slot] += (value - self._means[slot]) / count

    def _clear(self, slots: Iterable[int]) -> None:
        for slot in slots:
            self._means[slot] = 0.0
            self._counts[slot] = 0

    def series(self) -> list[tuple[int, float]]:
        """``(minute start in UTC ms, mean)`` for each minute that has values, oldest first."""
        if self._head < 0:
            return []
        out: list[tuple[int, float]] = []
        for minute in range(self._head - self.SLOTS + 1, self._head + 1):
            slot = minute % self.SLOTS
            if self._counts[slot]:
                out.append((minute * self.SLOT_MS, float(self._means[slot])))
        return out


_MAX_HISTORY_POINTS = 64
"""Charted points per device: a streaming driver inventing point names cannot grow memory."""


@dataclasses.dataclass(slots=True)
class DeviceState:
    id: str
    driver: str
    health: Health = Health.STARTING
    since_ms: int = dataclasses.field(default_factory=now_ms)
    last_error: str | None = None
    last_error_ms: int | None = None
    last_success_ms: int | None = None
    reads: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    errors: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    """Failures by reason (timeout, crc_error, exception_02, ...)."""
    restarts: int = 0
    driver_counters: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    """What the driver counts finer than the scheduler (``ctx.counters``): Modbus requests,
    partial reads, plan splits..."""
    next_poll_in_s: float | None = None
    points: dict[str, PointValue] = dataclasses.field(default_factory=dict)
    history: dict[str, PointHistory] = dataclasses.field(default_factory=dict)
    """The last hour of each numeric point with good quality (see :class:`PointHistory`)."""

    def remember(self, point: str, ts_ms: int, value: Any) -> None:
        """Add a good reading to the point's history; text values are not charted."""
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int | float) or not math.isfinite(value):
            return
        history = self.history.get(point)
        if history is None:
            if len(self.history) >= _MAX_HISTORY_POINTS:
                return
            history = self.history[point] = PointHistory()
        history.add(ts_ms, float(value))

    def set_health(self, health: Health) -> bool:
        """Set the health; True when it changed (callers log and emit status only then)."""
        if health is self.health:
            return False
        self.health = health
        self.since_ms = now_ms()
        return True

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "driver": self.driver,
            "health": self.health.value,
            "since_ms": self.since_ms,
            "last_error": self.last_error,
            "last_error_ms": self.last_error_ms,
            "last_success_ms": self.last_success_ms,
            "reads": self.reads,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "errors": dict(self.errors),
            "restarts": self.restarts,
            "points": {
                name: {
                    "value": p.value,
                    "ts": p.ts,
                    "quality": p.quality.value,
                    "unit": p.unit,
                    "reason": p.reason,
                }
                for name, p in self.points.items()
            },
        }


@dataclasses.dataclass(slots=True)
class BufferFigures:
    epoch: str = ""
    records: int = 0
    bytes: int = 0
    oldest_ms: int | None = None
    dropped: int = 0
    poisoned: int = 0
    last_error: str | None = None
    """Why the buffer cannot write right now (a full disk); None while it can."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(slots=True)
class UplinkState:
    transport: str = "none"
    connected: bool = False
    last_success_ms: int | None = None
    last_error: str | None = None
    """The full text, for the log and tests; the page gets only the reason and status."""
    last_error_reason: str | None = None
    """The last error as a code (:data:`agent.uplink.base.LINK_REASONS`)."""
    last_error_status: int | None = None
    last_error_ms: int | None = None
    last_ack_ms: int | None = None
    """When the platform last acknowledged a batch of records."""
    sending_since_ms: int | None = None
    """A batch has been in flight since then; ``None`` when none is."""
    records_sent: int = 0
    bytes_sent: int = 0
    batches_sent: int = 0
    batches_failed: int = 0
    batches_poisoned: int = 0
    last_latency_ms: float | None = None
    clock_skew_ms: int = 0
    next_attempt_ms: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def link(self, now_ms: int, stalled_after_s: float) -> str:
        """``sending`` (a batch in flight), ``stalled`` (in flight for longer than
        ``stalled_after_s``: a platform that accepted the connection and does not answer),
        ``disconnected`` (the last attempt failed, or none has been made) or ``connected``.
        A retry after a failure stays ``disconnected`` until it succeeds."""
        failed = not self.connected and self.last_error_ms is not None
        if self.sending_since_ms is not None:
            if now_ms - self.sending_since_ms > stalled_after_s * 1000:
                return "stalled"
            return "disconnected" if failed else "sending"
        return "connected" if self.connected else "disconnected"


@dataclasses.dataclass(slots=True)
class AgentState:
    gateway_id: str
    version: str
    started_monotonic: float = dataclasses.field(default_factory=time.monotonic)
    started_ms: int = dataclasses.field(default_factory=now_ms)
    """Wall time of the start, fixed once: derived from now - uptime it would wobble by a ms."""
    clock_synced: bool = True
    records_accepted: int = 0
    records_lost_unwritable: int = 0
    """Records the buffer could not store (disk full, I/O error): never accepted, counted here."""
    devices: dict[str, DeviceState] = dataclasses.field(default_factory=dict)
    buffer: BufferFigures = dataclasses.field(default_factory=BufferFigures)
    uplink: UplinkState = dataclasses.field(default_factory=UplinkState)
    recent_events: collections.deque[Event | Status] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=500)
    )
    task_restarts: int = 0
    commands: collections.Counter[tuple[str, str]] = dataclasses.field(
        default_factory=collections.Counter
    )
    """Commands run, by (source: platform, local, web; status: ok, failed), from their audit
    events."""

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started_monotonic

    def observe(self, record: Reading | Event | Status) -> None:
        """Keep last values and recent events from records on their way to the buffer."""
        if isinstance(record, Reading):
            dev = self.devices.get(record.device)
            if dev is not None:
                dev.points[record.point] = PointValue(
                    record.value, record.ts, record.quality, record.unit, record.reason
                )
                if record.quality is Quality.GOOD:
                    dev.remember(record.point, record.ts, record.value)
        else:
            self.recent_events.append(record)
            if isinstance(record, Event) and record.type == "agent.command":
                source = str(record.data.get("source", "unknown")).partition(":")[0]
                self.commands[source, str(record.data.get("status", "unknown"))] += 1

    def as_dict(self) -> dict[str, Any]:
        devices = list(self.devices.values())
        return {
            "gateway_id": self.gateway_id,
            "version": self.version,
            "uptime_s": round(self.uptime_s, 1),
            "clock_synced": self.clock_synced,
            "records_accepted": self.records_accepted,
            "records_lost_unwritable": self.records_lost_unwritable,
            "devices_total": len(devices),
            "devices_up": sum(d.health is Health.OK for d in devices),
            "task_restarts": self.task_restarts,
            "buffer": self.buffer.as_dict(),
            "uplink": self.uplink.as_dict(),
        }
