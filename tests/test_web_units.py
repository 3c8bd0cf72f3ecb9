"""The web page's parts that need no server: passwords, sessions, throttling, the config model,
point history, message catalogs and the hash-password command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from agent_proc import ROOT
from pydantic import ValidationError

from agent.config.models import PASSWORD_HASH, DeviceKind, WebConfig, WebUser
from agent.driver import Health
from agent.records import Event, Quality, Reading, Severity, Status, StatusState
from agent.state import AgentState, DeviceState, PointHistory
from agent.web.auth import LoginThrottle, SessionStore, hash_password, verify_password
from agent.web.i18n import LANGUAGES, catalog

WEB = ROOT / "agent" / "web"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- passwords


def test_password_hash_round_trip_and_format() -> None:
    first = hash_password("correct horse")
    second = hash_password("correct horse")
    assert re.fullmatch(PASSWORD_HASH, first)
    assert first != second, "every hash has its own salt"
    assert verify_password("correct horse", first)
    assert verify_password("correct horse", second)
    assert not verify_password("correct horsE", first)
    assert not verify_password("", first)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "correct horse",
        "scrypt$16384$8$1$c2FsdA==",
        "scrypt$16384$8$1$!!!!$a2V5",
        "scrypt$1000$8$1$c2FsdA==$a2V5",  # N not a power of two
        "scrypt$1073741824$8$1$c2FsdA==$a2V5",  # 1 TiB of memory: refused, not attempted
        "bcrypt$16384$8$1$c2FsdA==$a2V5",
    ],
)
def test_malformed_hashes_never_verify(bad: str) -> None:
    assert verify_password("correct horse", bad) is False


def test_unicode_passwords() -> None:
    assert verify_password("密码-正确-123", hash_password("密码-正确-123"))


# ---------------------------------------------------------------- sessions and throttle


def test_sessions_expire_when_idle_and_when_old() -> None:
    clock = FakeClock()
    store = SessionStore(idle_s=60, max_age_s=300, clock=clock)
    session = store.create("tech", "technician", "fp")
    assert session.csrf != session.token
    assert store.get(session.token) is session
    clock.now += 59
    assert store.get(session.token) is session  # activity keeps it alive...
    for _ in range(5):
        clock.now += 50
        store.get(session.token)
    assert store.get(session.token) is None  # ...but not past its maximum age
    other = store.create("view", "viewer", "fp")
    clock.now += 61
    assert store.get(other.token) is None
    assert store.get(None) is None
    assert store.get("forged") is None


def test_session_store_is_bounded() -> None:
    store = SessionStore(idle_s=60, max_age_s=300, max_sessions=3)
    tokens = [store.create("tech", "technician", "fp").token for _ in range(5)]
    assert len(store) == 3
    assert store.get(tokens[0]) is None
    assert store.get(tokens[-1]) is not None


def test_sessions_are_bounded_per_user_first() -> None:
    store = SessionStore(idle_s=60, max_age_s=300, per_user=2, max_sessions=64)
    tech = store.create("tech", "technician", "fp")
    views = [store.create("view", "viewer", "fp") for _ in range(5)]
    assert store.get(tech.token) is tech
    assert [store.get(v.token) is not None for v in views] == [False] * 3 + [True] * 2
    # Past the total, the user holding the most loses their oldest: not the technician.
    store = SessionStore(idle_s=60, max_age_s=300, per_user=4, max_sessions=4)
    tech = store.create("tech", "technician", "fp")
    views = [store.create("view", "viewer", "fp") for _ in range(4)]
    assert store.get(tech.token) is tech
    assert store.get(views[0].token) is None
    assert len(store) == 4


def test_a_look_without_touch_keeps_the_idle_clock_running() -> None:
    clock = FakeClock()
    store = SessionStore(idle_s=60, max_age_s=3600, clock=clock)
    session = store.create("tech", "technician", "fp")
    for _ in range(5):
        clock.now += 20
        if store.get(session.token, touch=False) is None:
            break
    assert store.get(session.token, touch=False) is None


def test_throttle_knows_who_failed() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(max_failures=3, lockout_s=10, clock=clock)
    assert not throttle.has_failed("ip:a")
    throttle.failed("ip:a")
    assert throttle.has_failed("ip:a")
    throttle.succeeded("ip:a")
    assert not throttle.has_failed("ip:a")
    throttle.failed("ip:b")
    clock.now += LoginThrottle.MAX_LOCKOUT_S + 1
    assert not throttle.has_failed("ip:b")


def test_throttle_locks_out_and_doubles() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(max_failures=3, lockout_s=10, clock=clock)
    assert not throttle.failed("ip:a")
    assert not throttle.failed("ip:a")
    assert throttle.failed("ip:a")
    assert throttle.retry_after("ip:a") == pytest.approx(10)
    assert throttle.retry_after("ip:b") == 0
    clock.now += 10.5
    assert throttle.retry_after("ip:a") == 0
    for _ in range(3):
        throttle.failed("ip:a")
    assert throttle.retry_after("ip:a") == pytest.approx(20), "the second lockout is longer"
    throttle.succeeded("ip:a")
    assert throttle.retry_after("ip:a") == 0


def test_throttle_memory_is_bounded() -> None:
    throttle = LoginThrottle(max_failures=3, lockout_s=10, max_keys=100)
    for i in range(1000):
        throttle.failed(f"ip:{i}")
    assert len(throttle._keys) == 100


# ---------------------------------------------------------------- config model


def test_web_config_defaults_and_shape() -> None:
    config = WebConfig()
    assert config.enabled
    assert config.users == []
    assert (config.host, config.port) == ("0.0.0.0", 8080)  # noqa: S104 - the LAN default
    assert config.language == "zh-CN"
    assert config.metrics == "login"
    assert WebConfig(listen="[::1]:0").host == "::1"
    user = WebUser(name="demo", role="technician", password_hash=hash_password("demo-pass"))
    demo = WebConfig(users=[user], listen="127.0.0.1:0")
    assert demo.user("demo") is user
    assert demo.user("nobody") is None


@pytest.mark.parametrize("listen", ["8080", "0.0.0.0:", ":8080", "host:http", "host:70000"])
def test_web_config_rejects_bad_listen(listen: str) -> None:
    with pytest.raises(ValidationError, match="host:port"):
        WebConfig(listen=listen)


def test_web_config_rejects_a_plain_password_and_duplicate_users() -> None:
    with pytest.raises(ValidationError, match="hash-password"):
        WebUser(name="tech", password_hash="hunter2")
    good = hash_password("whatever1")
    with pytest.raises(ValidationError, match="twice"):
        WebConfig(users=[WebUser(name="a", password_hash=good)] * 2)


# ---------------------------------------------------------------- history and state


def test_point_history_keeps_per_minute_means_of_the_last_hour() -> None:
    history = PointHistory()
    base = 1_700_000_000_000 // 60_000 * 60_000
    for i in range(6):
        history.add(base + i * 10_000, float(i))  # one minute: 0..5, mean 2.5
    history.add(base + 60_000, 10.0)
    assert history.series() == [(base, 2.5), (base + 60_000, 10.0)]
    # Two hours later the old minutes are gone.
    history.add(base + 120 * 60_000, 7.0)
    assert history.series() == [(base + 120 * 60_000, 7.0)]
    # 90 minutes of readings leave exactly the last 60.
    for minute in range(121, 211):
        history.add(base + minute * 60_000, float(minute))
    series = history.series()
    assert len(series) == 60
    assert series[0] == (base + 151 * 60_000, 151.0)
    # The clock stepped back by two hours (NTP after a boot without RTC): start afresh.
    history.add(base, 1.0)
    assert history.series() == [(base, 1.0)]


def test_device_state_charts_numbers_only() -> None:
    state = AgentState(gateway_id="gw", version="0")
    state.devices["d"] = DeviceState(id="d", driver="simulated")
    for value in (1, 2.5, True, "text", None, float("nan")):
        state.observe(Reading(device="d", ts=60_000, point=f"p{value}", value=value))
    state.observe(
        Reading(device="d", ts=60_000, point="bad", value=9, quality=Quality.BAD, reason="x")
    )
    assert sorted(state.devices["d"].history) == ["p1", "p2.5", "pTrue"]
    assert state.devices["d"].history["pTrue"].series() == [(60_000, 1.0)]


def test_commands_are_counted_from_their_audit_events() -> None:
    state = AgentState(gateway_id="gw", version="0")
    for source, status in [("web:tech", "ok"), ("web:view", "failed"), ("platform", "ok")]:
        state.observe(
            Event(
                device="gw",
                ts=1,
                type="agent.command",
                severity=Severity.INFO,
                data={"source": source, "status": status},
            )
        )
    state.observe(Status(device="d", ts=1, state=StatusState.OFFLINE, reason="timeout"))
    assert state.commands == {("web", "ok"): 1, ("web", "failed"): 1, ("platform", "ok"): 1}


def test_history_of_500_devices_with_20_points_fits_a_pi() -> None:
    state = AgentState(gateway_id="gw", version="0")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for d in range(500):
            device = state.devices[f"d{d}"] = DeviceState(id=f"d{d}", driver="simulated")
            for p in range(20):
                device.remember(f"p{p}", 0, float(p))
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used < 12 * 2**20, f"{used / 2**20:.1f} MiB for 10,000 point histories"
    # The ring is allocated once: an hour of readings later it is the same size.
    history = state.devices["d0"].history["p0"]
    sizes = (history._means.buffer_info(), history._counts.buffer_info())
    for second in range(0, 3600, 5):
        history.add(second * 1000, 1.0)
    assert (history._means.buffer_info()[1], history._counts.buffer_info()[1]) == (
        sizes[0][1],
        sizes[1][1],
    )


# ---------------------------------------------------------------- catalogs


def _used_keys() -> set[str]:
    keys: set[str] = set()
    for template in (WEB / "templates").glob("*.html"):
        keys |= set(re.findall(r"\{\{\s*t:([A-Za-z0-9_.\-]+)\s*\}\}", template.read_text()))
    script = (WEB / "static" / "app.js").read_text()
    keys |= set(re.findall(r'\bT\("([^"]+)"', script))
    # Keys the script picks through a variable, and the families it builds from values.
    keys |= set(re.findall(r'"((?:uplink|config|events)\.[a-z_]+)"', script))
    keys |= {f"health.{h.value}" for h in Health} | {"health.disabled"}
    keys |= {f"kind.{k.value}" for k in DeviceKind}
    keys |= {f"quality.{q.value}" for q in Quality}
    keys |= {f"severity.{s.value}" for s in Severity}
    keys |= {"role.viewer", "role.technician"}
    for module in WEB.glob("*.py"):
        keys |= set(re.findall(r'\.t\("([^"]+)"', module.read_text()))
    return keys


def test_catalogs_are_complete_and_agree() -> None:
    catalogs: dict[str, dict[str, Any]] = {
        lang: json.loads((WEB / "i18n" / f"{lang}.json").read_text()) for lang in LANGUAGES
    }
    zh, en = catalogs["zh-CN"], catalogs["en"]
    assert set(zh) == set(en)
    missing = _used_keys() - set(en)
    assert not missing, f"keys used but not in the catalogs: {sorted(missing)}"
    for key in en:
        assert zh[key], key
        assert en[key], key
        placeholders = set(re.findall(r"\{(\w+)\}", en[key]))
        assert placeholders == set(re.findall(r"\{(\w+)\}", zh[key])), key
    # The Chinese catalog is Chinese: every sentence-like message has CJK characters.
    latin_only = [
        k
        for k, v in zh.items()
        if not re.search(r"[\u4e00-\u9fff]", v) and not k.startswith(("lang.", "loc."))
    ]
    assert latin_only == [], latin_only
    assert catalog("xx").language == "zh-CN"
    assert catalog("en").t("login.throttled", s=5) == "Too many failed attempts. Try again in 5 s."


def test_no_literal_text_in_templates() -> None:
    """Text between tags comes from the catalogs; only symbols may be written inline."""
    for template in (WEB / "templates").glob("*.html"):
        text = template.read_text()
        text = re.sub(r"<script.*?</script>", "", text, flags=re.DOTALL)
        text = re.sub(r"\{\{[^}]*\}\}", "", text)
        for chunk in re.findall(r">([^<]+)<", text):
            assert not re.search(r"[A-Za-z\u4e00-\u9fff]{2,}", chunk), (template.name, chunk)


# ---------------------------------------------------------------- CLI


def test_hash_password_command(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "agent.cli", "hash-password", "--stdin"],
        input="a-good-password\n",
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    printed = run.stdout.strip()
    assert re.fullmatch(PASSWORD_HASH, printed)
    assert verify_password("a-good-password", printed)
    assert "web.users" in run.stderr
    assert "a-good-password" not in run.stdout + run.stderr

    short = subprocess.run(
        [sys.executable, "-m", "agent.cli", "hash-password"],
        input="short\n",
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert short.returncode == 1
    assert short.stdout == ""
    assert "at least 8" in short.stderr
