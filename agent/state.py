"""The process's figures in one object, read by the web page, /metrics and the CLI.

Everything here is plain data updated from the event loop; readers take snapshots with
``as_dict``. Nothing here does I/O.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any

from agent.driver import Health
from agent.records import Event, Quality, Reading, Status, now_ms

__all__ = ["AgentState", "BufferFigures", "DeviceState", "PointValue", "UplinkState"]


@dataclasses.dataclass(slots=True)
class PointValue:
    value: Any
    ts: int
    quality: Quality
    unit: str | None = None
    reason: str | None = None


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
    next_poll_in_s: float | None = None
    points: dict[str, PointValue] = dataclasses.field(default_factory=dict)

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

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(slots=True)
class UplinkState:
    transport: str = "none"
    connected: bool = False
    last_success_ms: int | None = None
    last_error: str | None = None
    last_error_ms: int | None = None
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


@dataclasses.dataclass(slots=True)
class AgentState:
    gateway_id: str
    version: str
    started_monotonic: float = dataclasses.field(default_factory=time.monotonic)
    clock_synced: bool = True
    records_accepted: int = 0
    devices: dict[str, DeviceState] = dataclasses.field(default_factory=dict)
    buffer: BufferFigures = dataclasses.field(default_factory=BufferFigures)
    uplink: UplinkState = dataclasses.field(default_factory=UplinkState)
    recent_events: collections.deque[Event | Status] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=500)
    )
    task_restarts: int = 0

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
        else:
            self.recent_events.append(record)

    def as_dict(self) -> dict[str, Any]:
        devices = list(self.devices.values())
        return {
            "gateway_id": self.gateway_id,
            "version": self.version,
            "uptime_s": round(self.uptime_s, 1),
            "clock_synced": self.clock_synced,
            "records_accepted": self.records_accepted,
            "devices_total": len(devices),
            "devices_up": sum(d.health is Health.OK for d in devices),
            "task_restarts": self.task_restarts,
            "buffer": self.buffer.as_dict(),
            "uplink": self.uplink.as_dict(),
        }
