"""On-change reporting for polled drivers: a point with a deadband is reported when it moved by
more than the deadband, when its quality changed, or when its heartbeat is due, so a meter read
every minute does not send the same energy figure 1,440 times a day."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from agent.records import Quality, Value

__all__ = ["OnChange"]

K = TypeVar("K")


@dataclass(slots=True)
class _Last:
    value: Value | None
    quality: Quality
    ts: int


class OnChange(Generic[K]):
    """What was last reported per point (keyed by ``K``), and whether a new value is due."""

    def __init__(self, heartbeat_s: float) -> None:
        self.heartbeat_ms = heartbeat_s * 1000
        self._last: dict[K, _Last] = {}

    def due(self, key: K, deadband: float, value: Value | None, quality: Quality, ts: int) -> bool:
        """Report this value? Remembers it when it is."""
        last = self._last.get(key)
        due = (
            last is None
            or last.quality is not quality
            or ts - last.ts >= self.heartbeat_ms
            or (
                isinstance(value, int | float)
                and isinstance(last.value, int | float)
                and abs(value - last.value) > deadband
            )
        )
        if due:
            self._last[key] = _Last(value, quality, ts)
        return due
