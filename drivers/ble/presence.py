"""Per-tag state: presence with a timeout learned from the advert interval, smoothed RSSI with a
coarse distance band, presses once each, a smoothed battery against its threshold.

Pure: the adverts and the sweeps bring their own times (monotonic seconds), so it is tested
without waiting and benchmarked without a radio. The driver turns what comes out into records.

Why these rules (``shared/reference/protocols.md``, presence defaults):
- Home Assistant marks a beacon away after its learned advert interval plus a margin; a fixed
  timeout either flaps on a slow tag or reports a lost wristband minutes late. We learn the
  median gap of the last adverts and never go below the class's floor.
- ESPresense smooths RSSI with a median (outliers from reflections) before anything else; an
  EWMA after it keeps the value steady without lagging far. A value is published when it moved
  by ``rssi_step`` dB, and never more often than ``rssi_every_s``.
- A silent scanner must never turn into "everyone left": :meth:`TagTracker.sweep` decides away
  only while the scanner is healthy, and a scanner that comes back restarts every tag's clock.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Final, Literal

from drivers.ble.decode import Decoded, Press

__all__ = ["CLASS_DEFAULTS", "ClassDefaults", "Happening", "TagTracker", "distance_band"]

TagClass = Literal["wristband", "sos_button", "key_fob", "asset", "sensor"]


@dataclass(frozen=True, slots=True)
class ClassDefaults:
    away_floor_s: float
    """Never away sooner than this after the last advert."""
    sos: bool
    """A button press is an SOS (alarm) rather than a plain ``tag.button``."""
    battery_low_pct: float = 20.0


CLASS_DEFAULTS: Final[dict[str, ClassDefaults]] = {
    # Worn by a resident: a leaving resident should be noticed within a minute or two.
    "wristband": ClassDefaults(away_floor_s=60, sos=True),
    "sos_button": ClassDefaults(away_floor_s=300, sos=True),
    "key_fob": ClassDefaults(away_floor_s=60, sos=False),
    # Asset tags and sensors advertise slowly to save their batteries.
    "asset": ClassDefaults(away_floor_s=300, sos=False),
    "sensor": ClassDefaults(away_floor_s=600, sos=False),
}

_GAPS: Final = 16
"""Advert gaps kept to learn the interval."""
_MARGIN_S: Final = 5.0
_RSSI_WINDOW: Final = 5
_EWMA: Final = 0.3
_BATTERY_WINDOW: Final = 5
_BATTERY_HYSTERESIS: Final = 5.0


def distance_band(rssi: float, tx_power_1m: float = -59.0, exponent: float = 2.7) -> str:
    """A coarse band from the log-distance model (10^((P1m − RSSI) / (10·n))): ``near``
    (< 1 m), ``room`` (< 4 m), ``far`` (< 10 m), ``edge``. Walls and bodies make anything finer
    a guess."""
    metres = math.pow(10, (tx_power_1m - rssi) / (10 * exponent))
    if metres < 1:
        return "near"
    if metres < 4:
        return "room"
    if metres < 10:
        return "far"
    return "edge"


@dataclass(frozen=True, slots=True)
class Happening:
    """Something a record is due for. ``kind``: ``present``, ``away``, ``rssi``, ``press``,
    ``sos``, ``battery_low``, ``battery_ok``, ``value``."""

    kind: str
    at: float
    name: str | None = None
    value: float | int | str | None = None
    unit: str | None = None
    detail: dict[str, object] = field(default_factory=dict)


@dataclass(slots=True)
class TagTracker:
    """One enrolled tag."""

    tag_class: str = "asset"
    away_after_s: float | None = None
    """The installer's timeout instead of the learned one (the floors guard only the learned
    one)."""
    battery_low_pct: float | None = None
    rssi_step: float = 4.0
    rssi_every_s: float = 10.0
    tx_power_1m: float = -59.0

    present: bool | None = None
    """None until the first advert or the first away decision."""
    last_seen: float | None = None
    rssi: float | None = None
    battery: float | None = None
    battery_low: bool = False
    _gaps: deque[float] = field(default_factory=lambda: deque(maxlen=_GAPS))
    _rssi_raw: deque[int] = field(default_factory=lambda: deque(maxlen=_RSSI_WINDOW))
    _rssi_sent: tuple[float, float] | None = None
    _battery_raw: deque[float] = field(default_factory=lambda: deque(maxlen=_BATTERY_WINDOW))
    _counter: int | None = None
    _values: dict[str, float | int | str] = field(default_factory=dict)

    @property
    def defaults(self) -> ClassDefaults:
        return CLASS_DEFAULTS[self.tag_class]

    def timeout_s(self) -> float:
        """How long after the last advert the tag is away: the configured timeout, else the
        learned interval (median gap) plus a margin, never below the class floor."""
        floor = self.defaults.away_floor_s
        if self.away_after_s is not None:
            return self.away_after_s
        if len(self._gaps) < 3:
            return floor
        return max(floor, statistics.median(self._gaps) + _MARGIN_S)

    def heard(self, at: float, rssi: int, decoded: Decoded) -> list[Happening]:
        """One advert of this tag."""
        out: list[Happening] = []
        if self.last_seen is not None and at > self.last_seen:
            self._gaps.append(at - self.last_seen)
        self.last_seen = at
        if self.present is not True:
            self.present = True
            out.append(Happening("present", at, value=rssi))
        out += self._smooth_rssi(at, rssi, decoded.tx_power)
        fresh = decoded.counter is None or decoded.counter != self._counter
        if decoded.counter is not None:
            self._counter = decoded.counter
        if fresh:
            out += [self._press(at, p, decoded.counter) for p in decoded.presses]
        for name, (value, unit) in decoded.values.items():
            if name == "battery" and isinstance(value, int | float):
                out += self._battery(at, float(value))
            if self._values.get(name) != value:
                self._values[name] = value
                out.append(Happening("value", at, name=name, value=value, unit=unit))
        return out

    def sweep(self, now: float, scanner_healthy: bool) -> list[Happening]:
        """Away decisions, made only while the scanner hears: a scanner that stopped says
        nothing about the tags."""
        if not scanner_healthy or self.present is not True or self.last_seen is None:
            return []
        silent = now - self.last_seen
        if silent < self.timeout_s():
            return []
        self.present = False
        return [Happening("away", now, detail={"last_seen_s_ago": round(silent, 1)})]

    def scanner_back(self, now: float) -> None:
        """The scanner hears again after an outage: every tag's silence restarts now, so the
        outage itself is not taken for the tags leaving."""
        if self.last_seen is not None:
            self.last_seen = max(self.last_seen, now)

    # ------------------------------------------------------------------ parts

    def _smooth_rssi(self, at: float, rssi: int, tx_power: int | None) -> list[Happening]:
        self._rssi_raw.append(rssi)
        middle = statistics.median(self._rssi_raw)
        self.rssi = middle if self.rssi is None else self.rssi + _EWMA * (middle - self.rssi)
        sent = self._rssi_sent
        if sent is not None and (
            at - sent[0] < self.rssi_every_s or abs(self.rssi - sent[1]) < self.rssi_step
        ):
            return []
        self._rssi_sent = (at, self.rssi)
        # An iBeacon's measured power is its RSSI at 1 m; others use the configured one.
        reference = tx_power if tx_power is not None and -100 < tx_power < 0 else self.tx_power_1m
        band = distance_band(self.rssi, reference)
        return [Happening("rssi", at, value=round(self.rssi, 1), unit="dBm", detail={"band": band})]

    def _press(self, at: float, press: Press, counter: int | None) -> Happening:
        kind = "sos" if self.defaults.sos and press.kind == "press" else "press"
        # The payload's counter goes with it: the platform can tell presses apart by it too.
        detail: dict[str, object] = {} if counter is None else {"counter": counter}
        return Happening(kind, at, name=press.button, value=press.kind, detail=detail)

    def _battery(self, at: float, percent: float) -> list[Happening]:
        self._battery_raw.append(percent)
        self.battery = statistics.median(self._battery_raw)
        threshold = (
            self.battery_low_pct
            if self.battery_low_pct is not None
            else self.defaults.battery_low_pct
        )
        if not self.battery_low and self.battery < threshold:
            self.battery_low = True
            return [Happening("battery_low", at, value=self.battery, unit="%")]
        if self.battery_low and self.battery >= threshold + _BATTERY_HYSTERESIS:
            self.battery_low = False
            return [Happening("battery_ok", at, value=self.battery, unit="%")]
        return []
