"""ONVIF event notifications: what a topic means, and the start/end state of each alarm.

A camera sends ``tt:Message`` notifications, each with a topic (``tns1:RuleEngine/
CellMotionDetector/Motion``), source items (which video source or rule) and data items (``IsMotion
= true``). :data:`ALARM_TOPICS` and the parsers of ``onvif-parsers`` say which topics are motion,
tamper or video loss; every other topic is kept raw. :class:`Alarms` turns the notifications into
one start and one end per alarm and source, holding a motion end back for ``hold_s`` so a
flapping detector does not send one pair per frame.

Pure logic, no I/O: tested in ``tests/test_onvif_events.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "ALARM_TOPICS",
    "AlarmKind",
    "Alarms",
    "Notice",
    "alarm_kind",
    "normalise_topic",
    "read_notice",
]

AlarmKind = Literal["motion", "tamper", "video_loss"]

ALARM_TOPICS: Final[Mapping[str, AlarmKind]] = {
    # ONVIF's own rule engine topics (Profile S/T), and what onvif-parsers knows as motion.
    "tns1:RuleEngine/CellMotionDetector/Motion": "motion",
    "tns1:RuleEngine/MotionRegionDetector/Motion": "motion",
    "tns1:VideoSource/MotionAlarm": "motion",
    "tns1:RuleEngine/tnsajax:MotionDetector/Detection": "motion",
    "tns1:RuleEngine/TamperDetector/Tamper": "tamper",
    "tns1:RuleEngine/CellMotionDetector/Tamper": "tamper",
    "tns1:VideoSource/GlobalSceneChange/AnalyticsService": "tamper",
    "tns1:VideoSource/GlobalSceneChange/ImagingService": "tamper",
    "tns1:VideoSource/GlobalSceneChange/RecordingService": "tamper",
    # Not in onvif-parsers: our own mapping. ONVIF's core spec names SignalLoss under
    # VideoSource; Hikvision and Dahua firmware send it when the sensor or its cable fails.
    "tns1:VideoSource/SignalLoss": "video_loss",
    "tns1:VideoSource/tnshik:VideoLoss": "video_loss",
    "tns1:Device/HardwareFailure/VideoLoss": "video_loss",
}

_ON: Final = frozenset({"true", "1", "on", "active"})
_OFF: Final = frozenset({"false", "0", "off", "inactive"})
_MAX_ITEMS: Final = 32
_MAX_TEXT: Final = 256
_PREFIX: Final = re.compile(r"^[A-Za-z_][\w.-]*:")


def normalise_topic(topic: str) -> str:
    """The topic with the camera's prefix for the ONVIF topic namespace written as ``tns1``
    (cameras declare it under names of their own), without whitespace."""
    topic = "".join(topic.split())
    return _PREFIX.sub("tns1:", topic, count=1)


def _text(value: object) -> str:
    return str(value)[:_MAX_TEXT]


@dataclass(frozen=True, slots=True)
class Notice:
    """One notification, read out of the camera's XML into plain, bounded values."""

    topic: str
    operation: str | None = None
    """``Initialized`` (the state as it is, after a (re)subscribe or a synchronisation point),
    ``Changed`` or ``Deleted``."""
    utc_time: str | None = None
    source: Mapping[str, str] = field(default_factory=dict)
    data: Mapping[str, str] = field(default_factory=dict)

    @property
    def source_key(self) -> str:
        """Which instance of the topic (a video source, a rule): its source values."""
        return "/".join(self.source.values())

    @property
    def state(self) -> bool | None:
        """The first data item that reads as on or off (IsMotion, State, IsTamper, ...)."""
        for value in self.data.values():
            word = value.strip().lower()
            if word in _ON:
                return True
            if word in _OFF:
                return False
        return None


def _items(container: Any) -> dict[str, str]:
    items = getattr(container, "SimpleItem", None) or []
    found: dict[str, str] = {}
    for item in list(items)[:_MAX_ITEMS]:
        name, value = getattr(item, "Name", None), getattr(item, "Value", None)
        if name is not None and value is not None:
            found[_text(name)] = _text(value)
    return found


def read_notice(message: Any) -> Notice | None:
    """A zeep ``NotificationMessage`` as a :class:`Notice`; None when it has no topic."""
    topic_holder = getattr(message, "Topic", None)
    topic = getattr(topic_holder, "_value_1", None)
    if not isinstance(topic, str) or not topic.strip():
        return None
    body = getattr(getattr(message, "Message", None), "_value_1", None)
    operation = getattr(body, "PropertyOperation", None)
    utc = getattr(body, "UtcTime", None)
    return Notice(
        topic=normalise_topic(topic)[:_MAX_TEXT],
        operation=_text(operation) if operation is not None else None,
        utc_time=(utc.isoformat() if hasattr(utc, "isoformat") else _text(utc)) if utc else None,
        source=_items(getattr(body, "Source", None)),
        data=_items(getattr(body, "Data", None)),
    )


def alarm_kind(topic: str, device_class: str | None = None) -> AlarmKind | None:
    """Motion, tamper or video loss, by our table and then by the class ``onvif-parsers`` gives
    the topic (``motion``); None: a raw event."""
    kind = ALARM_TOPICS.get(topic)
    if kind is not None:
        return kind
    if device_class == "motion":
        return "motion"
    if device_class == "tamper":
        return "tamper"
    return None


Emit = Callable[[AlarmKind, Literal["start", "end"], Notice, int], None]
"""``(kind, "start" | "end", the notice, ts ms)``."""


@dataclass(slots=True)
class _State:
    on: bool
    since: int
    ending: tuple[Notice, int] | None = None
    """A motion end held back: the notice and when motion went off."""


class Alarms:
    """Each alarm's state per source; emits one start and one end per activation."""

    def __init__(self, emit: Emit, hold_s: float) -> None:
        self._emit = emit
        self._hold_ms = int(hold_s * 1000)
        self._states: dict[tuple[AlarmKind, str], _State] = {}
        self.debounced = 0
        """Ends that were taken back because the alarm came on again within the hold."""

    def update(self, kind: AlarmKind, notice: Notice, ts: int, *, on: bool) -> None:
        key = (kind, notice.source_key)
        state = self._states.get(key)
        if on:
            if state is not None and state.on:
                if state.ending is not None:
                    state.ending = None
                    self.debounced += 1
                return
            self._states[key] = _State(on=True, since=ts)
            self._emit(kind, "start", notice, ts)
            return
        if state is None or not state.on:
            # Already off (an Initialized "false" after a resubscribe, a repeated end): the
            # platform was told, or nothing ever started.
            self._states[key] = _State(on=False, since=ts)
            return
        if kind == "motion" and self._hold_ms > 0:
            if state.ending is None:
                state.ending = (notice, ts)
            return
        self._end(key, state, notice, ts)

    def _end(self, key: tuple[AlarmKind, str], state: _State, notice: Notice, ts: int) -> None:
        state.on, state.since, state.ending = False, ts, None
        self._emit(key[0], "end", notice, ts)

    def flush(self, now: int) -> None:
        """Emit the held ends whose hold has passed."""
        for key, state in self._states.items():
            if state.ending is not None and now - state.ending[1] >= self._hold_ms:
                notice, ts = state.ending
                self._end(key, state, notice, ts)

    def next_due(self) -> int | None:
        """When the earliest held end is due (ms), or None."""
        due = [s.ending[1] + self._hold_ms for s in self._states.values() if s.ending is not None]
        return min(due) if due else None

    def active(self) -> list[tuple[AlarmKind, str]]:
        """The alarms that are on (a held end still counts as on)."""
        return sorted(key for key, state in self._states.items() if state.on)
