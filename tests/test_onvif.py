"""The ONVIF driver against our camera simulator (drivers/onvif/simulator.py), a SOAP server
answering from recorded camera responses over loopback, through the real onvif-zeep-async
client: inventory, events within 2 s, a reboot, a wrong password, a clock 10 minutes off,
faults, hostile answers, and snapshots behind digest auth."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from agent_proc import buffer_records, write_config
from peers.modbus_peers import async_wait_until
from test_bus import run_until, stop

from agent.clock import Clock
from agent.config.errors import ConfigError
from agent.config.loader import load_config
from agent.driver.testing import Standalone
from agent.records import Event
from agent.runtime import Runtime
from drivers.onvif.camera import CameraFault
from drivers.onvif.config import OnvifCamera
from drivers.onvif.driver import OnvifDriver
from drivers.onvif.simulator import (
    DEFAULT_PASSWORD,
    SNAPSHOT,
    CameraSimulator,
    CameraSpec,
    SimulatedCamera,
)

pytestmark = pytest.mark.timeout(120)


def camera_config(camera: SimulatedCamera, password_file: Path, **keys: Any) -> OnvifCamera:
    return OnvifCamera.model_validate(
        {
            "id": camera.spec.id,
            "driver": "onvif",
            "host": "127.0.0.1",
            "port": camera.port,
            "username": "admin",
            "password": {"file": str(password_file)},
            "timeout_s": 2,
            "pull_wait_s": 1,
            "lease_s": 10,
            "check_every_s": 5,
            "motion_hold_s": 0.5,
            "commands": ["camera.snapshot"],
            **keys,
        }
    )


class Rig:
    """A simulated camera and its driver on a Standalone context."""

    def __init__(self, camera: SimulatedCamera, config: OnvifCamera) -> None:
        self.camera = camera
        self.config = config
        self.bench = Standalone()
        self.driver = OnvifDriver(config, self.bench.context(config))
        self.task: asyncio.Task[None] | None = None

    @property
    def counters(self) -> dict[str, int]:
        return dict(self.bench.counters[self.config.id])

    def health(self) -> tuple[str, str | None] | None:
        return self.bench.health.get(self.config.id)

    def events(self, type_: str) -> list[Event]:
        return self.bench.events(type_)

    def states(self, type_: str) -> list[str]:
        return [e.data["state"] for e in self.events(type_)]

    async def until(self, condition: Any, what: str, timeout_s: float = 15) -> Any:
        return await async_wait_until(condition, what=what, timeout_s=timeout_s)

    async def start(self) -> None:
        self.task = asyncio.create_task(self.driver.run())

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.driver.stop()
        await self.bench.aclose()


async def run_until_health(config: OnvifCamera, health: tuple[str, str | None]) -> None:
    """The driver alone on a Standalone context (no simulated camera) until its camera's health
    is ``health``; then stopped."""
    bench = Standalone()
    task = asyncio.create_task(OnvifDriver(config, bench.context(config)).run())
    try:
        await async_wait_until(
            lambda: bench.health.get(config.id) == health, what=f"health {health}"
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await bench.aclose()


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path,
    spec: CameraSpec | None = None,
    *,
    password: str = DEFAULT_PASSWORD,
    up: bool = True,
    **keys: Any,
) -> AsyncIterator[Rig]:
    password_file = tmp_path / "camera.password"
    password_file.write_text(password + "\n")
    async with CameraSimulator([spec or CameraSpec(id="cam-1")]) as simulator:
        [camera] = simulator.cameras.values()
        bench = Rig(camera, camera_config(camera, password_file, **keys))
        try:
            await bench.start()
            if up:
                await bench.until(
                    lambda: (
                        bench.health() == ("ok", None)
                        and bench.counters.get("subscriptions", 0) >= 1
                        and camera.stats["SetSynchronizationPoint"] >= 1
                    ),
                    "the camera connected and subscribed",
                )
            yield bench
        finally:
            await bench.close()


# ---------------------------------------------------------------------- inventory and health


async def test_the_inventory_is_the_camera_s_identity_profiles_and_addresses(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        inventory = r.driver.device_inventory()["cam-1"]
        spec = r.camera.spec
        base = r.camera.base
    assert inventory == {
        "manufacturer": spec.manufacturer,
        "model": spec.model,
        "firmware": spec.firmware,
        "serial": spec.serial,
        "hardware_id": spec.hardware_id,
        "mac": spec.mac.upper(),
        "profiles": "Profile_1 Profile_2",
        "profile.Profile_1": "H264 2560x1440",
        "profile.Profile_2": "H264 640x360",
        # The camera puts the login into its RTSP URI; the inventory never carries it.
        "stream_uri.Profile_1": "rtsp://127.0.0.1:554/Streaming/Channels/101?transportmode=unicast",
        "stream_uri.Profile_2": "rtsp://127.0.0.1:554/Streaming/Channels/102?transportmode=unicast",
        "snapshot_uri.Profile_1": f"{base}/onvif/snapshot/101.jpg",
        "snapshot_uri.Profile_2": f"{base}/onvif/snapshot/102.jpg",
    }
    assert DEFAULT_PASSWORD not in str(inventory)
    assert r.bench.inventory_changes == 1


async def test_the_clock_offset_is_a_reading_and_liveness_is_checked(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        checks = r.camera.stats["GetSystemDateAndTime"]
        await r.until(
            lambda: r.camera.stats["GetSystemDateAndTime"] > checks, "a liveness check", 15
        )
    offsets = [x for x in r.bench.records if getattr(x, "point", None) == "clock_offset_s"]
    assert len(offsets) == 1  # the same offset again is not sent again
    assert abs(float(offsets[0].value)) < 1.5  # type: ignore[arg-type]
    assert r.events("camera.clock_drift") == []


# ---------------------------------------------------------------------- events


async def test_motion_start_and_end_arrive_within_2_s(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        loop = asyncio.get_running_loop()
        started = loop.time()
        r.camera.motion(on=True)
        await r.until(lambda: r.states("camera.motion") == ["start"], "motion start", 2)
        start_s = loop.time() - started
        ended = loop.time()
        r.camera.motion(on=False)
        # The end is held for motion_hold_s (0.5 s) in case motion comes back.
        await r.until(lambda: r.states("camera.motion") == ["start", "end"], "motion end", 2)
        end_s = loop.time() - ended
    start, _ = r.events("camera.motion")
    assert start.data["topic"] == "tns1:RuleEngine/CellMotionDetector/Motion"
    assert start.data["source"] == "VideoSourceToken/VideoAnalyticsToken/MyMotionDetectorRule"
    assert start.data["camera_time"]
    assert start.severity == "info"
    assert start_s < 2
    assert 0.5 <= end_s < 2


async def test_tamper_video_loss_and_raw_topics(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.camera.tamper(on=True)
        r.camera.video_loss(on=True)
        r.camera.raw_event(
            "tns1:Device/Trigger/DigitalInput", {"InputToken": "DI_1"}, {"LogicalState": "true"}
        )
        await r.until(
            lambda: (
                r.events("camera.tamper")
                and r.events("camera.video_loss")
                and r.events("camera.event")
            ),
            "tamper, video loss and the raw event",
        )
        r.camera.tamper(on=False)
        r.camera.video_loss(on=False)
        await r.until(
            lambda: (
                r.states("camera.tamper") == ["start", "end"]
                and r.states("camera.video_loss") == ["start", "end"]
            ),
            "their ends (not held)",
            2,
        )
    assert [e.severity for e in r.events("camera.tamper")] == ["alarm", "info"]
    assert r.events("camera.video_loss")[0].data["topic"] == "tns1:VideoSource/SignalLoss"
    [raw] = r.events("camera.event")
    assert raw.data["topic"] == "tns1:Device/Trigger/DigitalInput"
    assert raw.data["source"] == {"InputToken": "DI_1"}
    assert raw.data["data"] == {"LogicalState": "true"}


async def test_a_flapping_motion_detector_is_debounced(tmp_path: Path) -> None:
    async with rig(tmp_path, motion_hold_s=1.0) as r:
        for _ in range(10):
            r.camera.motion(on=True)
            await asyncio.sleep(0.1)
            r.camera.motion(on=False)
            await asyncio.sleep(0.1)
        await r.until(lambda: r.states("camera.motion") == ["start", "end"], "one pair", 5)
        await asyncio.sleep(1.2)
        assert r.states("camera.motion") == ["start", "end"]
        assert r.counters["debounced"] >= 5


async def test_a_reboot_gives_a_new_subscription_and_later_events_arrive(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.camera.motion(on=True)
        await r.until(lambda: r.states("camera.motion") == ["start"], "motion before")
        r.camera.reboot(down_s=2)  # drops every subscription and the alarm states
        await r.until(lambda: r.counters.get("subscriptions", 0) >= 2, "a new subscription", 20)
        assert r.counters["subscription_lost"] >= 1
        assert len(r.camera.subscriptions) == 1
        # After the reboot motion is off (Initialized false): the open motion ends.
        await r.until(lambda: r.states("camera.motion") == ["start", "end"], "the end")
        r.camera.motion(on=True)
        await r.until(
            lambda: r.states("camera.motion") == ["start", "end", "start"], "motion after", 2
        )
        # Its profiles may change with a reboot: the inventory was read again.
        assert r.camera.stats["GetProfiles"] >= 2
        assert r.health() == ("ok", None)


async def test_the_subscription_is_renewed_before_its_lease_runs_out(tmp_path: Path) -> None:
    async with rig(tmp_path, lease_s=10, pull_wait_s=1) as r:
        await r.until(lambda: r.camera.stats["Renew"] >= 2, "two renewals", 25)
        assert r.counters["subscriptions"] == 1
        r.camera.motion(on=True)
        await r.until(lambda: r.events("camera.motion"), "motion on the renewed subscription", 2)


async def test_the_subscription_is_unsubscribed_at_stop(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        camera = r.camera
    # The link is closed; the camera-side subscription lapses with its short lease.
    assert camera.stats["CreatePullPointSubscription"] == 1


# ---------------------------------------------------------------------- failures


async def test_a_wrong_password_is_auth_failed_and_retried_with_backoff(tmp_path: Path) -> None:
    async with rig(tmp_path, password="wrong", up=False) as r:
        await r.until(lambda: r.health() == ("down", "auth_failed"), "auth_failed")
        await asyncio.sleep(3)
        # Backoff from 2 s: a handful of attempts, not a crash loop.
        assert 1 <= r.counters["auth_failed"] <= 3
        # Each attempt is refused twice (GetServices, then its fallback GetCapabilities).
        assert r.camera.stats["auth_refused"] <= 2 * r.counters["auth_failed"]
        assert r.task is not None
        assert not r.task.done()
        # The password is fixed on the camera's side: the next attempt gets in.
        r.camera.password = "wrong"
        await r.until(lambda: r.health() == ("ok", None), "ok after the fix", 20)


async def test_a_clock_10_minutes_off_is_reported_and_authentication_still_works(
    tmp_path: Path,
) -> None:
    spec = CameraSpec(id="cam-1", clock_offset_s=600, time_mode="NTP")
    async with rig(tmp_path, spec) as r:
        [drift] = r.events("camera.clock_drift")
    # WS-Security timestamps follow the camera's clock (onvif's adjust_time), so the camera,
    # which refuses a UsernameToken more than 5 minutes off, accepted every call.
    assert r.camera.stats["auth_refused"] == 0
    assert drift.data["state"] == "start"
    assert 598 < drift.data["offset_s"] < 602
    assert drift.severity == "warning"
    # An NTP camera is not touched: its own NTP is wrong, and that is the installer's fix.
    assert r.camera.stats["SetSystemDateAndTime"] == 0


async def test_a_manual_clock_is_set_when_allowed_and_the_drift_ends(tmp_path: Path) -> None:
    spec = CameraSpec(id="cam-1", clock_offset_s=-600, time_mode="Manual")
    async with rig(tmp_path, spec, clock={"set_manual": True}, up=False) as r:
        await r.until(lambda: r.events("camera.clock_set"), "the camera's clock set")
        await r.until(lambda: r.states("camera.clock_drift") == ["start", "end"], "drift ended")
        assert r.camera.last_set_time is not None
        assert abs(r.camera.clock_offset_s) < 2
        await r.until(lambda: r.health() == ("ok", None), "reconnected")
        assert r.counters["clock_set"] == 1


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("fault", "soap_fault"), ("http_500", "http_error"), ("garbage", "bad_xml")],
)
async def test_a_camera_fault_is_down_with_its_reason_then_recovers(
    tmp_path: Path, mode: str, reason: str
) -> None:
    spec = CameraSpec(id="cam-1")
    async with rig(tmp_path, spec, up=False) as r:
        r.camera.fail("GetDeviceInformation", mode, times=3)  # type: ignore[arg-type]
        await r.until(lambda: r.health() == ("down", reason), f"down with {reason}")
        await r.until(lambda: r.health() == ("ok", None), "recovered", 30)
        assert r.counters[reason] >= 1


async def test_a_hanging_camera_is_a_timeout_and_others_are_not_delayed(tmp_path: Path) -> None:
    password_file = tmp_path / "camera.password"
    password_file.write_text(DEFAULT_PASSWORD)
    specs = [CameraSpec(id="slow"), CameraSpec(id="fast", serial="S2", mac="44:19:b6:00:00:02")]
    async with CameraSimulator(specs) as simulator:
        slow, fast = simulator.cameras["slow"], simulator.cameras["fast"]
        rigs = [Rig(c, camera_config(c, password_file)) for c in (slow, fast)]
        try:
            for r in rigs:
                await r.start()
            for r in rigs:
                await r.until(lambda r=r: r.counters.get("subscriptions"), "subscribed")
            slow.fail("*", "hang", times=1000)
            await rigs[0].until(lambda: rigs[0].health() == ("down", "timeout"), "timeout")
            for _ in range(3):
                fast.motion(on=True)
                await asyncio.sleep(0.3)
                fast.motion(on=False)
                await asyncio.sleep(0.8)
            assert rigs[1].states("camera.motion") == ["start", "end"] * 3
        finally:
            for r in rigs:
                await r.close()


async def test_cameras_connecting_at_once_share_one_parsed_wsdl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At start-up every camera connects at once. ``onvif`` caches a parsed WSDL only after
    parsing it, so without our lock each camera parsed and kept its own copy: 64 cameras cost
    the agent 300 MB instead of about 40."""
    import onvif.client

    from drivers.onvif.camera import CameraLink

    monkeypatch.setattr(onvif.client, "_DOCUMENT_CACHE", {})  # as in a fresh agent
    specs = [CameraSpec(id=f"cam-{i}") for i in range(6)]
    async with CameraSimulator(specs) as simulator:
        links = [
            CameraLink("127.0.0.1", camera.port, "admin", DEFAULT_PASSWORD, timeout_s=5)
            for camera in simulator.cameras.values()
        ]
        try:
            await asyncio.gather(*(link.open() for link in links))
            media = await asyncio.gather(
                *(link.call(link.camera.create_media_service) for link in links)
            )
            devices = [link.camera.services[("devicemgmt", None)] for link in links]
            assert len({id(service.document) for service in devices}) == 1
            assert len({id(service.document) for service in media}) == 1
        finally:
            await asyncio.gather(*(link.close() for link in links))


@pytest.mark.parametrize(
    ("mode", "reason"), [("entity_attack", "xml_forbidden"), ("oversize", "too_large")]
)
async def test_a_hostile_answer_is_refused_with_bounded_memory(
    tmp_path: Path, mode: str, reason: str
) -> None:
    process = psutil.Process(os.getpid())
    async with rig(tmp_path, up=False, max_response_kb=256) as r:
        before = process.memory_info().rss
        r.camera.fail("GetDeviceInformation", mode, times=1000)  # type: ignore[arg-type]
        await r.until(lambda: r.counters.get(reason, 0) >= 3, f"three {reason} refusals", 60)
        grown_mb = (process.memory_info().rss - before) / 2**20
        assert r.health() == ("down", reason)
        # A billion laughs expands to 10^9 "lol"s (3 GB); 8 MB streamed without a length.
        assert grown_mb < 40, grown_mb
        assert r.camera.stats[f"fail_{mode}"] >= 3


async def test_classify_re_raises_what_no_camera_causes() -> None:
    from drivers.onvif.camera import classify

    with pytest.raises(ZeroDivisionError):
        classify(ZeroDivisionError("a bug"), 1.0)
    assert classify(TimeoutError(), 2.0) == CameraFault("timeout", "no answer within 2 s")


async def test_an_unreachable_camera_is_down_and_its_secret_never_logged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    password_file = tmp_path / "camera.password"
    password_file.write_text("Very-secret-1\n")
    config = OnvifCamera.model_validate(
        {
            "id": "gone",
            "driver": "onvif",
            "host": "127.0.0.1",
            "port": 9,
            "username": "admin",
            "password": {"file": str(password_file)},
        }
    )
    await run_until_health(config, ("down", "unreachable"))
    assert "Very-secret-1" not in capsys.readouterr().err


async def test_a_password_file_that_cannot_be_read_is_secret_unreadable(tmp_path: Path) -> None:
    config = OnvifCamera.model_validate(
        {
            "id": "c",
            "driver": "onvif",
            "host": "127.0.0.1",
            "username": "admin",
            "password": {"file": str(tmp_path / "missing")},
        }
    )
    await run_until_health(config, ("down", "secret_unreadable"))


# ---------------------------------------------------------------------- snapshots


async def test_a_snapshot_behind_digest_auth(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        result = await r.driver.execute("camera.snapshot", {})
        second = await r.driver.execute("camera.snapshot", {"profile": "Profile_2"})
        with pytest.raises(Exception, match="no snapshot URI"):
            await r.driver.execute("camera.snapshot", {"profile": "Profile_9"})
    image = base64.b64decode(result["image_base64"])
    assert image == SNAPSHOT
    assert result["content_type"] == "image/jpeg"
    assert result["bytes"] == len(SNAPSHOT)
    assert result["sha256"] == hashlib.sha256(SNAPSHOT).hexdigest()
    assert result["profile"] == "Profile_1"
    assert second["profile"] == "Profile_2"
    assert r.camera.stats["snapshot"] == 2
    # Never stored by the driver: the buffer gets no image.
    assert not [x for x in r.bench.records if "image" in str(getattr(x, "data", ""))]


async def test_a_snapshot_falls_back_to_basic_auth_and_is_size_limited(tmp_path: Path) -> None:
    spec = CameraSpec(id="cam-1", snapshot_auth="basic")
    async with rig(tmp_path, spec) as r:
        result = await r.driver.execute("camera.snapshot", {})
        assert base64.b64decode(result["image_base64"]) == SNAPSHOT
    async with rig(tmp_path, spec, snapshot={"auth": "digest"}) as r:
        with pytest.raises(Exception, match="refused the login"):
            await r.driver.execute("camera.snapshot", {})
    async with rig(tmp_path, snapshot={"max_kb": 16}) as r:
        r.camera.image = SNAPSHOT * 10  # 34 KB
        with pytest.raises(Exception, match="larger than"):
            await r.driver.execute("camera.snapshot", {})
        assert r.driver.counters["snapshot_too_large"] == 1


async def test_a_snapshot_of_a_camera_that_is_down_says_offline(tmp_path: Path) -> None:
    async with rig(tmp_path, password="wrong", up=False) as r:
        await r.until(lambda: r.health() == ("down", "auth_failed"), "down")
        with pytest.raises(Exception, match="not connected"):
            await r.driver.execute("camera.snapshot", {})


async def test_the_snapshot_command_through_the_agent_audits_without_the_image(
    tmp_path: Path,
) -> None:
    password_file = tmp_path / "camera.password"
    password_file.write_text(DEFAULT_PASSWORD)
    async with CameraSimulator([CameraSpec(id="cam-1")]) as simulator:
        camera = simulator.cameras["cam-1"]
        device = {
            "id": "cam-1",
            "driver": "onvif",
            "host": "127.0.0.1",
            "port": camera.port,
            "username": "admin",
            "password": {"file": str(password_file)},
            "commands": ["camera.snapshot"],
        }
        runtime = Runtime(load_config(write_config(tmp_path, [device])), clock=Clock("always"))
        task = await run_until(
            runtime,
            lambda: (s := runtime.state.devices.get("cam-1")) is not None and s.health == "ok",
            what="the camera online",
        )
        result = await runtime.execute_command(
            "cam-1", "camera.snapshot", {}, source="test", command_id="c-1"
        )
        assert base64.b64decode(result["image_base64"]) == SNAPSHOT
        camera.motion(on=True)
        await async_wait_until(
            lambda: runtime.state.devices["cam-1"].driver_counters["events"] >= 1, what="event"
        )
        await stop(runtime, task)
    records = buffer_records(tmp_path / "buffer.db")
    [audit] = [r for r in records if r.get("type") == "agent.command"]
    assert audit["data"]["result"]["image_base64"] == f"<{len(result['image_base64'])} characters>"
    assert audit["data"]["result"]["sha256"] == result["sha256"]
    assert any(r.get("type") == "camera.motion" for r in records)
    online = [r for r in records if r["kind"] == "status" and r["device"] == "cam-1"]
    assert online[0]["state"] == "online"


# ---------------------------------------------------------------------- config


def test_config_errors_are_precise(tmp_path: Path) -> None:
    def load(**keys: Any) -> str:
        device = {"id": "c", "driver": "onvif", "host": "192.168.1.64", **keys}
        with pytest.raises(ConfigError) as info:
            load_config(write_config(tmp_path, [device]))
        return str(info.value)

    assert "username" in load(username="admin")
    assert "pull_wait_s" in load(lease_s=10, pull_wait_s=6)
    assert "host" in load(host="http://192.168.1.64")
    assert "camera.snapshot" in load(commands=["door.open"]) or "door.open" in load(
        commands=["door.open"]
    )
    ok = load_config(write_config(tmp_path, [{"id": "c", "driver": "onvif", "host": "cam-1.lan"}]))
    [camera] = ok.devices
    assert camera.kind == "camera"
    assert camera.bus is None
