"""The page in a real browser: Debian's Chromium, headless, driven by Playwright, against a real
``edge-agent run`` process with simulated devices. Screenshots of every page land in
``test-artifacts/web/`` for a person to look at."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import shutil
import time
import zoneinfo
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from agent_proc import ROOT, AgentProcess, sim_device, write_config
from test_web_support import (
    TECH_PASSWORD,
    VIEW_PASSWORD,
    default_devices,
    hanging_platform,
    uplink_to,
    web_section,
)

CHROMIUM = "/usr/bin/chromium"


def _missing(reason: str) -> None:
    # On a developer's machine a missing browser skips; CI installs it, so there a skip would
    # hide a broken install step and must fail instead.
    if os.environ.get("CI"):
        raise RuntimeError(f"{reason}; CI must run the browser tests")
    pytest.skip(reason, allow_module_level=True)


try:
    import playwright.async_api as playwright_api
except ImportError:
    _missing("playwright is not installed (pip install -e '.[test]')")
if shutil.which(CHROMIUM) is None:
    _missing("Debian's chromium is not installed (apt-get install chromium)")

from playwright.async_api import Browser, BrowserContext, Page, expect  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

ARTIFACTS = ROOT / "test-artifacts" / "web"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, str]]:
    directory = tmp_path_factory.mktemp("web-browser")
    devices = default_devices()
    devices += [
        sim_device(
            f"flat-{room}",
            name=f"5号楼{room}室 水表",
            kind="water_meter",
            interval_s=2,
            location={"building": "5", "room": str(room)},
            points=[{"name": "volume", "kind": "counter", "unit": "m³", "step": 0.01}],
        )
        for room in (101, 102, 201, 202)
    ]
    devices.append(
        sim_device(
            "gate-north",
            name="北门",
            kind="access_controller",
            interval_s=2,
            points=[
                {"name": "door_open", "kind": "constant", "value": True},
                {"name": "secure_channel", "kind": "constant", "value": True},
            ],
        )
    )
    # Two tags as a BLE driver reports them: a wristband in range, an SOS button away with a
    # low battery (the simulated driver plays their points; the BLE driver's own path is in
    # test_ble.py).
    for tag_id, name, presence, rssi, battery in (
        ("wrist-101", "张阿姨 手环", "present", -62, 78),
        ("sos-lobby", "大堂 紧急按钮", "away", -80, 12),
    ):
        devices.append(
            sim_device(
                tag_id,
                name=name,
                kind="tag",
                interval_s=2,
                points=[
                    {"name": "presence", "kind": "constant", "value": presence},
                    {"name": "rssi", "kind": "constant", "value": rssi, "unit": "dBm"},
                    {"name": "distance", "kind": "constant", "value": "room"},
                    {"name": "battery", "kind": "constant", "value": battery, "unit": "%"},
                ],
            )
        )
    path = write_config(
        directory,
        devices,
        web=web_section(),
        gateway={
            "id": "gw-test",
            "name": "东街社区 3号楼弱电间",
            "community": {"code": "350102001001", "name": "东街社区"},
        },
    )
    proc = AgentProcess(path)
    try:
        listening = proc.wait_event("web.listening")
        yield proc, f"http://127.0.0.1:{listening['port']}"
    finally:
        assert proc.stop() == 0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with playwright_api.async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()
    # Playwright closes its driver's pipes in a task of its own (``PipeTransport.run``). If the
    # module's event loop ends first, the pipes are left to the garbage collector, whose
    # ResourceWarning then fails the whole session at random. Let those tasks finish here.
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if others:
        await asyncio.wait(others, timeout=10)


@pytest_asyncio.fixture(loop_scope="module")
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context(viewport={"width": 1280, "height": 900}, locale="zh-CN")
    ctx.set_default_timeout(15_000)
    yield ctx
    await ctx.close()


async def login(context: BrowserContext, url: str, name: str, password: str) -> Page:
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.errors = errors  # type: ignore[attr-defined]
    await page.goto(url + "/")
    await expect(page).to_have_url(re.compile(r"/login\?next="))
    await page.fill("#username", name)
    await page.fill("#password", password)
    await page.click("#login-submit")
    await expect(page).to_have_url(url + "/")
    return page


async def shot(page: Page, name: str) -> None:
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def no_script_errors(page: Page) -> None:
    assert page.errors == []  # type: ignore[attr-defined]


async def test_wrong_password_refused_right_one_accepted(
    agent: tuple[AgentProcess, str], context: BrowserContext
) -> None:
    _, url = agent
    page = await context.new_page()
    await page.goto(url + "/devices")
    await expect(page).to_have_url(re.compile(r"/login\?next=(%2F|/)devices"))
    await page.fill("#username", "tech")
    await page.fill("#password", "not-the-password")
    await page.click("#login-submit")
    await expect(page.locator("#login-error")).to_have_text("用户名或密码错误。")
    await expect(page.locator("#password")).to_have_value("")
    await shot(page, "login")
    await page.fill("#username", "tech")
    await page.fill("#password", TECH_PASSWORD)
    await page.click("#login-submit")
    await expect(page).to_have_url(url + "/devices")
    await expect(page.locator("#user")).to_contain_text("tech")


async def test_overview_figures_equal_the_api(
    agent: tuple[AgentProcess, str], context: BrowserContext
) -> None:
    _, url = agent
    page = await login(context, url, "view", VIEW_PASSWORD)
    await expect(page.locator("#card-devices [data-f='devices.ok']")).to_have_text(
        re.compile(r"\d")
    )
    before = await (await page.request.get(url + "/api/status")).json()
    # Wait for one live refresh, so the figures on screen come from /api, not the first render.
    shown_at = int(await page.locator("#updated").get_attribute("data-value") or 0)
    await expect(page.locator("#updated")).not_to_have_attribute("data-value", str(shown_at))
    values: dict[str, Any] = {}
    for el in await page.locator("[data-f]").all():
        key = await el.get_attribute("data-f")
        raw = await el.get_attribute("data-value")
        assert key is not None
        values[key] = json.loads(raw) if raw else None
    after = await (await page.request.get(url + "/api/status")).json()

    def api(key: str, status: dict[str, Any]) -> Any:
        value: Any = status
        for part in key.split("."):
            value = value[part]
        return value

    for key in (
        "gateway.id",
        "gateway.name",
        "gateway.code",
        "gateway.community.name",
        "gateway.community.code",
        "gateway.timezone",
        "version",
        "clock_synced",
        "devices.total",
        "devices.disabled",
        "disk.total_bytes",
        "uplink.records_sent",
        "started_ms",
    ):
        assert values[key] == api(key, before) == api(key, after), key
    for key in ("records_accepted", "uptime_s"):
        assert api(key, before) - 2000 <= values[key] <= api(key, after), key
    assert before["devices"]["ok"] >= 6
    # What a person reads: the text, formatted, in Chinese.
    await expect(page.locator("#card-gateway [data-f='gateway.id']")).to_have_text("gw-test")
    await expect(page.locator("#card-gateway [data-f='clock_synced']")).to_have_text("已同步")
    await expect(page.locator("#uplink-state")).to_contain_text("未配置上行")
    # Times are the gateway's (Asia/Shanghai), whatever the laptop's zone is.
    started = datetime.datetime.fromtimestamp(
        values["started_ms"] / 1000, zoneinfo.ZoneInfo("Asia/Shanghai")
    )
    # ISO 8601 in both languages (the English page once showed the US month-first order).
    iso = started.strftime("%Y-%m-%d %H:%M:%S")
    await expect(page.locator("#card-gateway [data-f='started_ms']")).to_have_text(iso)
    await expect(page.locator("#card-devices [data-f='devices.total']")).to_have_text(
        str(after["devices"]["total"])
    )
    # An empty error field is a muted dash, not a red one.
    empty = page.locator(".err[data-empty]")
    assert await empty.count() >= 1
    assert await empty.first.evaluate("e => getComputedStyle(e).color") == "rgb(101, 109, 118)"
    await shot(page, "overview")
    await page.click("#lang-en")
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    await expect(page.locator("#card-gateway [data-f='started_ms']")).to_have_text(iso)
    await page.click("#lang-zh")
    await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    no_script_errors(page)


async def test_failing_device_turns_red_within_5_s_and_recovers(
    agent: tuple[AgentProcess, str], context: BrowserContext
) -> None:
    proc, url = agent
    devices = await login(context, url, "tech", TECH_PASSWORD)
    await devices.goto(url + "/devices")
    row = devices.locator("#devices tr[data-id='meter-2']")
    await expect(row).to_have_class(re.compile(r"\bhealth-ok\b"))

    control = await context.new_page()
    await control.goto(url + "/devices/meter-2")
    await control.select_option("#cmd-action", "simulate.fault")
    await control.fill("#cmd-args", "mode=timeout")
    await control.click("#cmd-send")
    started = time.monotonic()
    await expect(control.locator("#cmd-result")).to_have_attribute("data-ok", "true")
    # The one timed assertion: red on the devices page within 5 s of the command.
    await expect(row).to_have_class(re.compile(r"\bhealth-down\b"), timeout=5000)
    assert time.monotonic() - started < 5
    await expect(row.locator(".err")).to_contain_text("timeout")
    await expect(row.locator(".badge")).to_have_text("离线")
    await shot(devices, "devices-red")
    await devices.goto(url + "/")
    await expect(devices.locator("#problems tr[data-id='meter-2']")).to_be_visible()
    await shot(devices, "overview-problem")

    await control.fill("#cmd-args", "mode=none")
    await control.click("#cmd-send")
    await devices.goto(url + "/devices")
    await expect(row).to_have_class(re.compile(r"\bhealth-ok\b"), timeout=15_000)
    await expect(control.locator("#dev-health")).to_have_text("在线", timeout=15_000)
    assert proc.events("device.down")
    assert proc.events("device.up")
    no_script_errors(devices)


async def test_test_read_shows_a_value(
    agent: tuple[AgentProcess, str], context: BrowserContext
) -> None:
    proc, url = agent
    page = await login(context, url, "tech", TECH_PASSWORD)
    await page.goto(url + "/devices/meter-1")
    await page.click("#test-read")
    result = page.locator("#test-result")
    await expect(result).to_have_attribute("data-ok", "true")
    energy = result.locator("tr[data-point='energy'] td.value")
    await expect(energy).to_have_text(re.compile(r"^\d[\d,.]* kWh$"))
    await expect(result).to_contain_text("设备已应答")
    await expect(page.locator("#points tr[data-point='power']")).to_be_visible()
    await expect(page.locator("#chart svg polyline")).to_have_count(1)
    await shot(page, "device")
    assert proc.events("web.test_read")[-1]["user"] == "tech"
    no_script_errors(page)


async def test_technician_command_reaches_the_device(
    agent: tuple[AgentProcess, str], context: BrowserContext
) -> None:
    proc, url = agent
    page = await login(context, url, "tech", TECH_PASSWORD)
    await page.goto(url + "/devices/meter-1")
    await page.select_option("#cmd-action", "output.set")
    await page.fill("#cmd-args", "output=3 on=true")
    await page.click("#cmd-send")
    result = page.locator("#cmd-result")
    await expect(result).to_have_attribute("data-ok", "true")
    await expect(result).to_contain_text("output=3 on=true")
    done = proc.wait_event("command.done", count=len(proc.events("command.done")))
    assert (done["source"], done["target"], done["action"]) == ("web:tech", "meter-1", "output.set")
    await page.goto(url + "/events?type=agent.command")
    await expect(page.locator("#events tbody tr").first).to_contain_text("source=web:tech")
    await shot(page, "events")
    no_script_errors(page)


async def test_viewer_cannot_send_a_command(
    agent: tuple[AgentProcess, str], context: BrowserContext
) -> None:
    proc, url = agent
    page = await login(context, url, "view", VIEW_PASSWORD)
    await page.goto(url + "/devices/meter-1")
    await expect(page.locator("#command-form")).to_be_hidden()
    await expect(page.locator("#test-read")).to_be_hidden()
    await expect(page.locator("#card-commands .viewer-only")).to_have_text("仅技术员可操作。")
    # The driver's English description is replaced by the catalog's words.
    await expect(page.locator("#card-commands li").first).to_contain_text("开关输出")
    commands_before = len(proc.events("command.done")) + len(proc.events("command.refused"))
    # Even past the page, with a valid session and CSRF token, the server says no.
    status = await page.evaluate(
        """async () => {
            const csrf = document.querySelector('meta[name="csrf-token"]').content;
            const r = await fetch('/api/devices/meter-1/commands', {
                method: 'POST',
                headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf},
                body: JSON.stringify({action: 'output.set', args: {on: true}}),
            });
            return r.status;
        }"""
    )
    assert status == 403
    await asyncio.sleep(0.3)
    assert len(proc.events("command.done")) + len(proc.events("command.refused")) == commands_before


async def test_language_switch(agent: tuple[AgentProcess, str], context: BrowserContext) -> None:
    _, url = agent
    page = await login(context, url, "view", VIEW_PASSWORD)
    await expect(page.locator("nav a[data-nav='overview']")).to_have_text("概览")
    await page.click("#lang-en")
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    await expect(page.locator("nav a[data-nav='overview']")).to_have_text("Overview")
    await expect(page.locator("#card-gateway [data-f='clock_synced']")).to_have_text("synchronised")
    await shot(page, "overview-en")
    await page.goto(url + "/devices")
    await expect(page.locator("#devices tr[data-id='meter-1'] .badge")).to_have_text("online")
    await shot(page, "devices-en")
    await page.goto(url + "/devices/meter-1")
    await expect(page.locator("#card-info h2")).to_have_text("Device")
    await shot(page, "device-en")
    await page.click("#lang-zh")
    await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    await expect(page.locator("#card-info h2")).to_have_text("设备信息")
    no_script_errors(page)


async def test_devices_search_and_config_pages(
    agent: tuple[AgentProcess, str], context: BrowserContext
) -> None:
    _, url = agent
    page = await login(context, url, "view", VIEW_PASSWORD)
    await page.goto(url + "/devices")
    rows = page.locator("#devices tbody tr")
    await expect(rows).to_have_count(10)
    await page.fill("#q", "5号楼")
    await expect(rows).to_have_count(4)
    await expect(page).to_have_url(re.compile(r"\?q=5"))
    # Switching language keeps the filter (it once went back to the whole list).
    await page.click("#lang-en")
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    await expect(page).to_have_url(re.compile(r"\?q=5"))
    await expect(page.locator("#q")).to_have_value("5号楼")
    await expect(rows).to_have_count(4)
    await page.click("#lang-zh")
    await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    await page.fill("#q", "")
    await page.select_option("#health", "disabled")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-id", "spare")
    await page.select_option("#health", "")
    await shot(page, "devices")
    await page.goto(url + "/config")
    await expect(page.locator("#valid-state")).to_have_text("配置文件有效。")
    await expect(page.locator("#config-yaml")).to_contain_text("password_hash: '***'")
    await shot(page, "config")
    no_script_errors(page)


async def test_a_failed_bus_is_shown_as_the_cause(
    tmp_path_factory: pytest.TempPathFactory, context: BrowserContext
) -> None:
    directory = tmp_path_factory.mktemp("web-bus")
    meters = [
        {"id": f"b3-{u:02d}", "driver": "modbus", "bus": "rs485-b3", "unit": u, "interval_s": 1}
        | {"name": f"3号楼 电表 {u}", "points": [{"name": "v", "address": 0}]}
        for u in (1, 2, 3)
    ]
    path = write_config(
        directory,
        [sim_device("sim-1", interval_s=1), *meters],
        web=web_section(),
        buses=[{"id": "rs485-b3", "serial": {"port": str(directory / "ttyUSB3")}}],
    )
    proc = AgentProcess(path)
    try:
        url = f"http://127.0.0.1:{proc.wait_event('web.listening')['port']}"
        page = await login(context, url, "view", VIEW_PASSWORD)
        row = page.locator("#buses tbody tr[data-id='rs485-b3']")
        await expect(row).to_have_attribute("data-state", "down")
        await expect(row).to_contain_text("故障")
        await expect(row).to_contain_text("no_port")
        await expect(row).to_contain_text("ttyUSB3")
        # Its devices are listed as unknown, the bus named as the cause.
        for meter in meters:
            problem = page.locator(f"#problems tbody tr[data-id='{meter['id']}']")
            await expect(problem).to_contain_text("未知")
            await expect(problem).to_contain_text("bus rs485-b3: no_port")
        await shot(page, "overview-bus-down")
        no_script_errors(page)
    finally:
        assert proc.stop() == 0


async def test_tags_show_who_is_in_range_the_missing_first(
    agent: tuple[AgentProcess, str], context: BrowserContext
) -> None:
    _, url = agent
    page = await login(context, url, "view", VIEW_PASSWORD)
    await expect(page.locator("#tags-panel")).to_be_visible()
    rows = page.locator("#tags tbody tr")
    await expect(rows).to_have_count(2)
    # The tag that is away comes first, its low battery marked.
    await expect(rows.first).to_have_attribute("data-id", "sos-lobby")
    await expect(rows.first).to_have_attribute("data-presence", "away")
    await expect(rows.first).to_contain_text("离开")
    await expect(rows.first.locator("td[data-low]")).to_have_attribute("data-low", "yes")
    await expect(rows.first.locator("td[data-low]")).to_have_text("12 %")
    present = page.locator('#tags tr[data-id="wrist-101"]')
    await expect(present).to_have_attribute("data-presence", "present")
    await expect(present).to_contain_text("张阿姨 手环")
    await expect(present).to_contain_text("-62 dBm · 同一房间")
    await expect(present.locator("td[data-low]")).to_have_attribute("data-low", "no")
    # When it was last heard, in words ("… ago"), not blank.
    await expect(present.locator("td").nth(4)).not_to_have_text("–")
    await expect(page.locator("#tags-more")).to_be_hidden()
    await shot(page, "overview-tags")
    no_script_errors(page)


async def test_doors_show_their_state_on_the_overview(
    agent: tuple[AgentProcess, str], context: BrowserContext
) -> None:
    _, url = agent
    page = await login(context, url, "tech", TECH_PASSWORD)
    row = page.locator('#doors tr[data-id="gate-north"]')
    await expect(row).to_have_attribute("data-door", "open")
    await expect(row).to_contain_text("北门")
    await expect(row).to_contain_text("是")  # the link to the reader is encrypted
    await expect(page.locator("#doors-panel")).to_be_visible()


async def test_a_camera_snapshot_is_shown_as_the_picture(
    tmp_path_factory: pytest.TempPathFactory, context: BrowserContext
) -> None:
    """The technician checks a camera's view: the snapshot command's image, from the real
    camera simulator through a real agent, is shown as a picture, not as 4 KB of base64."""
    import subprocess
    import sys

    from drivers.onvif.simulator import DEFAULT_PASSWORD, SNAPSHOT

    directory = tmp_path_factory.mktemp("web-camera")
    ports = directory / "ports.json"
    argv = ["--cameras", "1", "--ports-file", str(ports), "--motion-every", "3600"]
    simulator = subprocess.Popen([sys.executable, "-m", "drivers.onvif.simulator", *argv], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not ports.exists() and simulator.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        [port] = json.loads(ports.read_text())["cameras"].values()
        secret = directory / "camera.password"
        secret.write_text(DEFAULT_PASSWORD + "\n")
        camera = {
            "id": "cam-gate",
            "driver": "onvif",
            "name": "北门 摄像机",
            "host": "127.0.0.1",
            "port": port,
            "username": "admin",
            "password": {"file": str(secret)},
            "commands": ["camera.snapshot"],
        }
        proc = AgentProcess(write_config(directory, [camera], web=web_section()))
        try:
            url = f"http://127.0.0.1:{proc.wait_event('web.listening')['port']}"
            proc.wait_event("camera.up", timeout_s=60)
            page = await login(context, url, "tech", TECH_PASSWORD)
            await page.goto(url + "/devices/cam-gate")
            # What the camera told the agent about itself, as the platform's inventory has it.
            reported = page.locator("#reported")
            await expect(reported.locator("tr[data-key='mac'] td")).to_have_text(
                "44:19:B6:00:00:01"
            )
            await expect(reported.locator("tr[data-key='manufacturer'] td")).to_have_text(
                "HIKVISION"
            )
            await expect(reported.locator("tr[data-key^='stream_uri.']").first).to_contain_text(
                "rtsp://127.0.0.1:"
            )
            # The camera embeds its login in its RTSP addresses; the agent strips it.
            assert DEFAULT_PASSWORD not in await page.content()
            await page.select_option("#cmd-action", "camera.snapshot")
            await page.click("#cmd-send")
            result = page.locator("#cmd-result")
            await expect(result).to_have_attribute("data-ok", "true")
            image = result.locator("img.snapshot")
            await expect(image).to_be_visible()
            await expect(image).to_have_attribute("alt", "cam-gate 的抓拍图片")
            # The browser decoded the camera's JPEG (320 x 180), within the page's CSP.
            size = await image.evaluate("i => [i.naturalWidth, i.naturalHeight]")
            assert size == [320, 180]
            text = await result.locator("p").inner_text()
            assert f"bytes={len(SNAPSHOT)}" in text
            assert "image_base64" not in text
            await shot(page, "device-camera-snapshot")
            no_script_errors(page)
        finally:
            assert proc.stop() == 0
    finally:
        simulator.terminate()
        simulator.wait(30)


async def test_a_hanging_platform_shows_stalled_then_the_reason(
    tmp_path_factory: pytest.TempPathFactory, context: BrowserContext
) -> None:
    """A platform that accepts and never answers is "stalled" on the overview once a request
    has waited stalled_after_s (not "connected" for the whole timeout); its 503 afterwards is
    shown translated, with the status, never as an exception's text."""
    async with hanging_platform() as (port, release):
        directory = tmp_path_factory.mktemp("web-stalled")
        uplink = uplink_to(directory, port, timeout_s=60, stalled_after_s=2)
        path = write_config(
            directory, [sim_device("sim-1", interval_s=1)], web=web_section(), uplink=uplink
        )
        proc = AgentProcess(path)
        try:
            url = f"http://127.0.0.1:{proc.wait_event('web.listening')['port']}"
            page = await login(context, url, "view", VIEW_PASSWORD)
            state = page.locator("#uplink-state")
            await expect(state).to_have_attribute("data-value", "stalled", timeout=10_000)
            await expect(state).to_contain_text("停滞：平台无应答")
            await shot(page, "overview-uplink-stalled")
            release.set()
            await expect(state).to_have_attribute("data-value", "disconnected", timeout=10_000)
            error = page.locator("#uplink-error")
            await expect(error).to_have_text("平台内部错误 (HTTP 503)")
            await expect(error).to_have_attribute("title", "server_error")
            no_script_errors(page)
        finally:
            release.set()
            assert proc.stop() == 0


async def test_keyboard_only_test_read_keeps_the_focus(
    agent: tuple[AgentProcess, str], context: BrowserContext
) -> None:
    """Tab to the test-read button, Enter, and the focus is still on it afterwards (a disabled
    button used to drop it to <body> while the read ran)."""
    _, url = agent
    page = await login(context, url, "tech", TECH_PASSWORD)
    await page.goto(url + "/devices/meter-1")
    await expect(page.locator("#points tr[data-point='energy']")).to_be_visible()
    for _ in range(60):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.id") == "test-read":
            break
    else:
        raise AssertionError("the test-read button cannot be reached with Tab")
    await page.keyboard.press("Enter")
    result = page.locator("#test-result")
    await expect(result).to_have_attribute("data-ok", "true")
    await expect(page.locator("#test-read")).not_to_have_attribute("aria-disabled", "true")
    assert await page.evaluate("document.activeElement.id") == "test-read"
    # Enter again: a second read, from the same place.
    await page.keyboard.press("Enter")
    await expect(result.locator("tr[data-point='energy']")).to_be_visible()
    assert await page.evaluate("document.activeElement.id") == "test-read"
    no_script_errors(page)
