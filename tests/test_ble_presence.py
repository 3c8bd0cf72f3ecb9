"""The tag state machine: presence with a learned timeout and class floors, scanner health
gating the away decision, RSSI smoothing and its publishing rate, presses once each, battery."""

from __future__ import annotations

import itertools

from drivers.ble.decode import Decoded, Press
from drivers.ble.presence import TagTracker, distance_band


def kinds(happenings: list[object]) -> list[str]:
    return [h.kind for h in happenings]  # type: ignore[attr-defined]


def advertise(tag: TagTracker, start: float, every: float, count: int, rssi: int = -60) -> float:
    at = start
    for _ in range(count):
        tag.heard(at, rssi, Decoded())
        at += every
    return at - every


def test_present_once_then_away_after_the_learned_interval() -> None:
    tag = TagTracker(tag_class="sensor")  # floor 600 s
    first = tag.heard(0.0, -60, Decoded())
    assert kinds(first) == ["present", "rssi"]
    last = advertise(tag, 200.0, 200.0, 5)  # a slow sensor: one advert per 200 s
    assert tag.timeout_s() == 600  # 205 s learned, below the floor
    slow = TagTracker(tag_class="wristband")  # floor 60 s
    last = advertise(slow, 0.0, 30.0, 6)
    assert slow.timeout_s() == 60
    wide = TagTracker(tag_class="wristband")
    last = advertise(wide, 0.0, 90.0, 6)  # beyond the floor: learned 90 + 5
    assert wide.timeout_s() == 95
    assert wide.sweep(last + 94, scanner_healthy=True) == []
    away = wide.sweep(last + 96, scanner_healthy=True)
    assert kinds(away) == ["away"]
    assert wide.sweep(last + 200, scanner_healthy=True) == []  # once
    assert kinds(wide.heard(last + 300, -60, Decoded())) == ["present"]


def test_no_tag_is_away_while_the_scanner_is_unhealthy_nor_right_after() -> None:
    tag = TagTracker(tag_class="wristband")
    last = advertise(tag, 0.0, 5.0, 10)
    assert tag.sweep(last + 600, scanner_healthy=False) == []
    assert tag.present is True
    tag.scanner_back(last + 600)
    assert tag.sweep(last + 630, scanner_healthy=True) == []  # its silence restarted
    assert kinds(tag.sweep(last + 661, scanner_healthy=True)) == ["away"]


def test_a_configured_timeout_is_the_installers_choice() -> None:
    assert TagTracker(tag_class="wristband", away_after_s=10).timeout_s() == 10
    assert TagTracker(tag_class="sensor", away_after_s=120).timeout_s() == 120
    assert TagTracker(tag_class="sensor").timeout_s() == 600


def test_rssi_is_smoothed_and_published_on_change_at_a_bounded_rate() -> None:
    tag = TagTracker(tag_class="asset", rssi_step=4, rssi_every_s=10)
    out = tag.heard(0.0, -60, Decoded())
    assert [h.value for h in out if h.kind == "rssi"] == [-60]
    # One reflection spike: the median swallows it, nothing published.
    published = []
    for i, rssi in enumerate([-61, -30, -60, -59, -60]):
        published += [h for h in tag.heard(11.0 + i, rssi, Decoded()) if h.kind == "rssi"]
    assert published == []
    # Walking away: published, but not more than once per 10 s.
    published = []
    for i in range(40):
        published += [h for h in tag.heard(20.0 + i, -80, Decoded()) if h.kind == "rssi"]
    assert 1 <= len(published) <= 4
    times = [h.at for h in published]
    assert all(b - a >= 10 for a, b in itertools.pairwise(times))
    assert published[-1].detail["band"] in ("far", "edge")


def test_distance_bands() -> None:
    assert distance_band(-50) == "near"
    assert distance_band(-65) == "room"
    assert distance_band(-80) == "far"
    assert distance_band(-95) == "edge"


def test_a_press_counts_once_per_counter_and_is_an_sos_on_a_wristband() -> None:
    tag = TagTracker(tag_class="wristband")
    press = Decoded(counter=82, presses=[Press("button", "press")])
    assert kinds(tag.heard(0.0, -60, press)).count("sos") == 1
    # The same advert again (duplicates on, or a parser that does not dedup): nothing.
    assert "sos" not in kinds(tag.heard(0.5, -60, press))
    nxt = Decoded(counter=83, presses=[Press("button", "press")])
    assert kinds(tag.heard(1.0, -60, nxt)).count("sos") == 1
    fob = TagTracker(tag_class="key_fob")
    assert "press" in kinds(fob.heard(0.0, -60, press))
    assert "sos" not in kinds(fob.heard(0.0, -60, press))


def test_battery_low_is_smoothed_and_reported_once_with_hysteresis() -> None:
    tag = TagTracker(tag_class="sensor")
    events: list[str] = []
    for i, pct in enumerate([30, 25, 10, 25, 19, 18, 17, 19, 18, 24, 26, 27, 28, 30]):
        out = tag.heard(float(i), -60, Decoded(values={"battery": (pct, "%")}))
        events += [h.kind for h in out if h.kind.startswith("battery")]
    # The single 10 % reading does not trigger; the steady fall below 20 % does, once; it
    # clears only at 25 % and more.
    assert events == ["battery_low", "battery_ok"]


def test_values_are_passed_on_when_they_change() -> None:
    tag = TagTracker(tag_class="sensor")
    first = tag.heard(0.0, -60, Decoded(values={"temperature": (21.5, "°C")}))
    assert [(h.name, h.value, h.unit) for h in first if h.kind == "value"] == [
        ("temperature", 21.5, "°C")
    ]
    assert not [
        h
        for h in tag.heard(1.0, -60, Decoded(values={"temperature": (21.5, "°C")}))
        if h.kind == "value"
    ]
