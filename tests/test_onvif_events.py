"""ONVIF event logic (drivers/onvif/events.py): topics, reading a notification, start/end per
alarm with a held motion end. Pure logic; the driver against a camera is in test_onvif.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from drivers.onvif.events import (
    ALARM_TOPICS,
    Alarms,
    Notice,
    alarm_kind,
    normalise_topic,
    read_notice,
)


def _message(topic: Any, data: dict[str, str], source: dict[str, str] | None = None) -> Any:
    items = lambda d: SimpleNamespace(  # noqa: E731
        SimpleItem=[SimpleNamespace(Name=k, Value=v) for k, v in d.items()]
    )
    body = SimpleNamespace(
        PropertyOperation="Changed",
        UtcTime=None,
        Source=items(source or {"VideoSourceConfigurationToken": "VideoSourceToken"}),
        Data=items(data),
    )
    return SimpleNamespace(
        Topic=SimpleNamespace(_value_1=topic), Message=SimpleNamespace(_value_1=body)
    )


def _notice(source: str = "vs1", state: str = "true") -> Notice:
    return Notice(
        topic="tns1:RuleEngine/CellMotionDetector/Motion",
        source={"s": source},
        data={"IsMotion": state},
    )


class Recorder:
    def __init__(self) -> None:
        self.emitted: list[tuple[str, str, str, int]] = []

    def __call__(self, kind: str, state: str, notice: Notice, ts: int) -> None:
        self.emitted.append((kind, state, notice.source_key, ts))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("tns1:RuleEngine/CellMotionDetector/Motion", "tns1:RuleEngine/CellMotionDetector/Motion"),
        ("ns0:RuleEngine/CellMotionDetector/Motion", "tns1:RuleEngine/CellMotionDetector/Motion"),
        (" tns1:VideoSource/\n  SignalLoss ", "tns1:VideoSource/SignalLoss"),
    ],
)
def test_topics_are_normalised_to_the_onvif_prefix(raw: str, expected: str) -> None:
    assert normalise_topic(raw) == expected


def test_video_loss_is_our_own_mapping_and_motion_also_comes_from_the_parsers_class() -> None:
    assert alarm_kind("tns1:VideoSource/SignalLoss") == "video_loss"
    assert alarm_kind("tns1:RuleEngine/TamperDetector/Tamper") == "tamper"
    assert alarm_kind("tns1:RuleEngine/MyRuleDetector/PeopleDetect", "motion") == "motion"
    assert alarm_kind("tns1:Device/Trigger/DigitalInput", None) is None
    assert set(ALARM_TOPICS.values()) == {"motion", "tamper", "video_loss"}


def test_a_notification_is_read_into_bounded_plain_values() -> None:
    notice = read_notice(
        _message("tns1:RuleEngine/CellMotionDetector/Motion", {"IsMotion": "true"})
    )
    assert notice is not None
    assert notice.state is True
    assert notice.source_key == "VideoSourceToken"
    huge = read_notice(_message("tns1:X/Y", {f"k{i}": "v" * 10_000 for i in range(100)}))
    assert huge is not None
    assert len(huge.data) == 32
    assert all(len(v) == 256 for v in huge.data.values())


@pytest.mark.parametrize("topic", [None, "", "   ", 42])
def test_a_notification_without_a_topic_is_none(topic: Any) -> None:
    assert read_notice(_message(topic, {"IsMotion": "true"})) is None


@pytest.mark.parametrize(
    ("value", "state"), [("true", True), ("1", True), ("FALSE", False), ("0", False), ("x", None)]
)
def test_the_state_is_the_first_item_that_reads_as_on_or_off(
    value: str, state: bool | None
) -> None:
    assert Notice(topic="t", data={"IsMotion": value}).state is state


def test_tamper_starts_and_ends_at_once_and_repeats_are_ignored() -> None:
    out = Recorder()
    alarms = Alarms(out, hold_s=3)
    n = _notice()
    alarms.update("tamper", n, 1000, on=True)
    alarms.update("tamper", n, 1100, on=True)
    alarms.update("tamper", n, 1200, on=False)
    alarms.update("tamper", n, 1300, on=False)
    assert out.emitted == [("tamper", "start", "vs1", 1000), ("tamper", "end", "vs1", 1200)]


def test_a_flapping_motion_detector_gives_one_start_and_one_end() -> None:
    out = Recorder()
    alarms = Alarms(out, hold_s=3)
    n = _notice()
    for i in range(20):  # on and off every 100 ms for 2 s
        alarms.update("motion", n, 1000 + i * 100, on=i % 2 == 0)
        alarms.flush(1000 + i * 100)
    assert out.emitted == [("motion", "start", "vs1", 1000)]
    assert alarms.active() == [("motion", "vs1")]
    assert alarms.next_due() == 1000 + 19 * 100 + 3000
    alarms.flush(1000 + 19 * 100 + 2999)
    assert len(out.emitted) == 1
    alarms.flush(1000 + 19 * 100 + 3000)
    # The end carries the time motion really stopped, not when the hold ran out.
    assert out.emitted[-1] == ("motion", "end", "vs1", 2900)
    assert alarms.debounced == 9
    assert alarms.active() == []
    assert alarms.next_due() is None


def test_without_a_hold_motion_ends_at_once() -> None:
    out = Recorder()
    alarms = Alarms(out, hold_s=0)
    alarms.update("motion", _notice(), 1, on=True)
    alarms.update("motion", _notice(), 2, on=False)
    assert [e[1] for e in out.emitted] == ["start", "end"]


def test_sources_are_separate_alarms() -> None:
    out = Recorder()
    alarms = Alarms(out, hold_s=0)
    alarms.update("motion", _notice("a"), 1, on=True)
    alarms.update("motion", _notice("b"), 2, on=True)
    alarms.update("motion", _notice("a"), 3, on=False)
    assert out.emitted == [
        ("motion", "start", "a", 1),
        ("motion", "start", "b", 2),
        ("motion", "end", "a", 3),
    ]
    assert alarms.active() == [("motion", "b")]


def test_an_initialized_off_after_a_resubscribe_sends_nothing() -> None:
    out = Recorder()
    alarms = Alarms(out, hold_s=3)
    alarms.update("motion", _notice(state="false"), 1, on=False)
    alarms.update("motion", _notice(state="false"), 2, on=False)
    assert out.emitted == []
