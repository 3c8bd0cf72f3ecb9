"""On-change reporting for polled drivers: a point with a deadband is reported when it moved by
more than the deadband, when its quality changed, or when its heartbeat is due, so a meter read
every minute does not send the same energy figure 1,440 times a day."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from agent.records import Quality, Reading, Value

__all__ = ["OnChange", "ReadPoint", "point_readings"]

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


class ReadPoint(Protocol):
    """What :func:`point_readings` needs of a driver's point."""

    @property
    def name(self) -> str: ...
    @property
    def unit(self) -> str | None: ...
    @property
    def deadband(self) -> float | None: ...


def point_readings(
    device: str,
    points: Sequence[ReadPoint],
    values: Mapping[int, Value | None],
    bad: Mapping[int, str],
    ts: int,
    synced: bool,
    reported: OnChange[int],
) -> list[Reading]:
    """One poll's readings, in the points' order: ``values`` good and ``bad`` with their
    reasons (both keyed by the point's index); a point in neither is left out, and so is a
    point with a deadband whose value is not due."""
    readings: list[Reading] = []
    for key, point in enumerate(points):
        if key in values:
            value, quality, reason = values[key], Quality.GOOD, None
        elif key in bad:
            value, quality, reason = None, Quality.BAD, bad[key]
        else:
            continue
        if point.deadband is not None and not reported.due(key, point.deadband, value, quality, ts):
            continue
        readings.append(
            Reading(
                device=device,
                ts=ts,
                ts_synced=synced,
                point=point.name,
                value=value,
                unit=point.unit,
                quality=quality,
                reason=reason,
            )
        )
    return readings
