"""The records that flow driver -> buffer -> uplink (DESIGN.md section 3).

Drivers create records without a ``seq``; the buffer assigns it on acceptance. Records are
plain frozen dataclasses so that ``orjson`` serialises them at C speed on the hot path.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from pathlib import Path
from typing import Any, Literal

import orjson

__all__ = [
    "PRIORITY_ALARM",
    "PRIORITY_EVENT",
    "PRIORITY_READING",
    "Event",
    "Quality",
    "Reading",
    "Record",
    "RecordKind",
    "Severity",
    "Status",
    "StatusState",
    "boot_id",
    "decode_record",
    "encode_record",
    "now_ms",
]

Value = float | int | bool | str


class RecordKind(enum.StrEnum):
    READING = "reading"
    EVENT = "event"
    STATUS = "status"


class Quality(enum.StrEnum):
    GOOD = "good"
    BAD = "bad"
    UNCERTAIN = "uncertain"


class Severity(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ALARM = "alarm"
    CRITICAL = "critical"


class StatusState(enum.StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


# Buffer priority classes: lower leaves first. Events and status leave before bulk readings,
# so a week of meter readings never delays a door-forced alarm; alarms (events of severity alarm
# or critical: an SOS, a forced door) leave before every other event, so a backlog of status
# changes after an outage never delays them either.
PRIORITY_ALARM = -1
PRIORITY_EVENT = 0
PRIORITY_READING = 1
PRIORITIES = (PRIORITY_ALARM, PRIORITY_EVENT, PRIORITY_READING)
"""Every class, in the order they leave."""


def boot_id() -> str:
    """The kernel's id of this boot; monotonic time is only comparable within one boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return "unknown"


def now_ms() -> int:
    """Wall-clock time in UTC milliseconds."""
    return time.time_ns() // 1_000_000


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Base:
    device: str
    ts: int
    """UTC milliseconds since the epoch."""
    ts_synced: bool = True
    """False when the stamp was taken before the system clock was known to be synchronised."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Reading(_Base):
    point: str
    value: Value | None
    unit: str | None = None
    quality: Quality = Quality.GOOD
    reason: str | None = None
    """Why the quality is not good (``timeout``, ``crc_error``, ``exception_02``...)."""
    kind: Literal["reading"] = "reading"

    @property
    def priority(self) -> int:
        return PRIORITY_READING


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Event(_Base):
    type: str
    """Dotted event type such as ``door.forced_open`` or ``agent.buffer_overflow``."""
    severity: Severity = Severity.INFO
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    kind: Literal["event"] = "event"

    @property
    def priority(self) -> int:
        return PRIORITY_ALARM if self.severity in _ALARMING else PRIORITY_EVENT


_ALARMING = frozenset({Severity.ALARM, Severity.CRITICAL})


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Status(_Base):
    state: StatusState
    reason: str | None = None
    """Why the device went offline (``timeout``, ``crc_error``, ``auth_failed``...)."""
    kind: Literal["status"] = "status"

    @property
    def priority(self) -> int:
        return PRIORITY_EVENT


Record = Reading | Event | Status

_KINDS: dict[str, type[Reading | Event | Status]] = {
    "reading": Reading,
    "event": Event,
    "status": Status,
}


def encode_record(record: Record) -> bytes:
    """Encode one record as compact JSON (without ``seq``; the buffer adds it on the way out)."""
    return orjson.dumps(record)


def decode_record(data: bytes | str | dict[str, Any]) -> Record:
    """Decode a record from JSON or a dict; ``seq`` and ``epoch`` keys are ignored."""
    obj: dict[str, Any] = orjson.loads(data) if isinstance(data, (bytes, str)) else dict(data)
    kind = obj.pop("kind", None)
    obj.pop("seq", None)
    obj.pop("epoch", None)
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown record kind {kind!r}")
    if cls is Reading and "quality" in obj:
        obj["quality"] = Quality(obj["quality"])
    if cls is Event and "severity" in obj:
        obj["severity"] = Severity(obj["severity"])
    if cls is Status:
        obj["state"] = StatusState(obj["state"])
    return cls(**obj)
