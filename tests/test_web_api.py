"""``/api``, ``/metrics`` and the pages' embedded data, against a running agent's real server."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from agent_proc import buffer_records, sim_device
from test_web_support import WebClient, base_url, running_agent, wait_until

from agent.driver import Health

pytestmark = pytest.mark.slow

_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r'(?:\{(?P<labels>[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
    r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*)\})?'
    r" (?P<value>-?[0-9.e+-]+|NaN|[+-]Inf)$"
)


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A strict reader of the text format: every line must be a comment or a valid sample, and
    every sample must belong to a family declared with HELP and TYPE before it."""
    families: dict[str, list[tuple[dict[str, str], float]]] = {}
    typed: dict[str, str] = {}
    helped: set[str] = set()
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split()[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in ("gauge", "counter"), line
            assert name not in typed, f"{name} declared twice"
            typed[name] = kind
            families[name] = []
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a valid sample line: {line!r}"
        name = match["name"]
        assert name in typed, f"{name} has no TYPE"
        assert name in helped, f"{name} has no HELP"
        if typed[name] == "counter":
            assert name.endswith("_total"), name
        labels = dict(
            re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', match["labels"] or "")
        )
        families[name].append((labels, float(match["value"])))
    return families


def _one(
    families: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    found = [v for lab, v in families[name] if all(lab.get(k) == x for k, x in labels.items())]
    assert len(found) == 1, (name, labels, families[name])
    return found[0]


async def test_status_matches_the_agent(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as runtime, WebClient(base_url(runtime)) as client:
        await client.login()
        await wait_until(lambda: runtime.state.buffer.records > 0, what="buffer figures")
        status = await client.api("/api/status")
        assert status["gateway"] == {
            "id": "gw-test",
            "name": None,
            "code": runtime.config.gateway.code,
            "community": {"code": "350102001001", "name": "东街社区"},
            "timezone": "Asia/Shanghai",
        }
        assert status["version"] == runtime.state.version
        assert status["clock_synced"] is True
        assert status["devices"] == {
            "total": 3,
            "ok": 2,
            "degraded": 0,
            "down": 0,
            "starting": 0,
            "unknown": 0,
            "disabled": 1,
        }
        assert status["problems"] == []
        assert status["disk"]["free_bytes"] > 0
        assert status["disk"]["path"] == str(tmp_path)
        assert status["buffer"]["records"] > 0
        assert 0 <= status["buffer"]["oldest_age_s"] < 60
        assert status["uplink"]["configured"] is False
        assert status["memory_rss_bytes"] > 10 * 2**20
        assert 0 < status["uptime_s"] < 60


async def test_devices_filter_search_and_problems_first(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as runtime, WebClient(base_url(runtime)) as client:
        await client.login()
        listing = await client.api("/api/devices")
        assert [d["id"] for d in listing["devices"]] == ["meter-1", "meter-2", "spare"]
        first = listing["devices"][0]
        assert first["health"] == "ok"
        assert first["location"] == {"building": "3", "unit": "1", "room": "101"}
        assert first["last"]["point"] in ("energy", "power")
        assert listing["devices"][2]["health"] == "disabled"
        assert [d["id"] for d in (await client.api("/api/devices?q=1号"))["devices"]] == ["meter-1"]
        assert [d["id"] for d in (await client.api("/api/devices?q=SPARE"))["devices"]] == ["spare"]
        assert (await client.api("/api/devices?health=down"))["devices"] == []

        # meter-2 fails: it goes down, leads the list and shows on the overview with its reason.
        response = await client.api_post(
            "/api/devices/meter-2/commands",
            {"action": "simulate.fault", "args": {"mode": "timeout"}},
        )
        assert (await response.json())["status"] == "ok"
        await wait_until(
            lambda: runtime.state.devices["meter-2"].health is Health.DOWN, what="meter-2 down"
        )
        listing = await client.api("/api/devices")
        assert next(d["id"] for d in listing["devices"]) == "meter-2"
        down = listing["devices"][0]
        assert down["health"] == "down"
        assert down["errors"]["timeout"] >= 2
        assert down["last_error"].startswith("timeout")
        status = await client.api("/api/status")
        assert status["devices"]["down"] == 1
        assert status["problems"][0]["id"] == "meter-2"
        assert status["problems"][0]["last_error"].startswith("timeout")
        assert [d["id"] for d in (await client.api("/api/devices?health=down"))["devices"]] == [
            "meter-2"
        ]


async def test_device_detail_history_and_events(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as runtime, WebClient(base_url(runtime)) as client:
        await client.login()
        detail = await client.api("/api/devices/meter-1")
        assert detail["device"]["id"] == "meter-1"
        assert detail["device"]["code"] == runtime.config.devices[0].code
        assert {p["name"] for p in detail["points"]} == {"energy", "power"}
        assert detail["commands"] == [
            {"action": "output.set", "description": "switch a simulated output on or off"},
            {"action": "simulate.fault", "description": "change the fault at run time"},
        ]
        assert detail["can_test_read"] is True
        assert detail["driver_counters"] == {}
        assert any(e["type"] == "status.online" for e in detail["events"])
        # A driver that counts finer than the scheduler (Modbus: partial reads, CRC errors per
        # request) has its counters shown as they are.
        runtime.state.devices["meter-1"].driver_counters.update(crc_error=2)
        detail = await client.api("/api/devices/meter-1")
        assert detail["driver_counters"] == {"crc_error": 2}
        history = await client.api("/api/devices/meter-1/history")
        assert history["bucket_s"] == 60
        energy = history["points"]["energy"]
        assert energy["unit"] == "kWh"
        assert len(energy["t"]) == len(energy["v"]) >= 1
        missing = await client.get("/api/devices/nope")
        assert missing.status == 404
        assert (await missing.json())["error"] == "unknown_device"
        assert (await client.get("/devices/nope")).status == 404


async def test_test_read_and_commands_go_through_the_runtime(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as runtime, WebClient(base_url(runtime)) as client:
        await client.login()
        reads_before = runtime.state.devices["meter-1"].reads
        response = await client.api_post("/api/devices/meter-1/read")
        answer = await response.json()
        assert answer["ok"] is True, answer
        readings = {r["point"]: r for r in answer["records"] if r["kind"] == "reading"}
        assert set(readings) == {"energy", "power"}
        assert isinstance(readings["energy"]["value"], int | float)
        assert readings["energy"]["unit"] == "kWh"
        # A test read is not a poll: the device's own counters are the scheduler's.
        assert runtime.state.devices["meter-1"].reads - reads_before <= 3

        response = await client.api_post(
            "/api/devices/meter-1/commands",
            {"action": "output.set", "args": {"output": 2, "on": True}},
        )
        answer = await response.json()
        assert answer["status"] == "ok", answer
        assert answer["result"] == {"output": 2, "on": True}
        assert runtime.devices["meter-1"].driver.outputs == {2: True}
        assert runtime.state.commands[("web", "ok")] == 1

        for body, reason in (
            ({"action": "output.set", "args": {"on": "yes"}}, "bad_args"),
            ({"action": "door.open", "args": {}}, "not_allowed"),
        ):
            answer = await (await client.api_post("/api/devices/meter-1/commands", body)).json()
            assert (answer["status"], answer["reason"]) == ("failed", reason)
        malformed = await client.post(
            "/api/devices/meter-1/commands",
            data="not json",
            headers={"X-CSRF-Token": client.csrf, "Content-Type": "application/json"},
        )
        assert malformed.status == 400

        # The audit trail names the technician.
        events = await client.api("/api/events?type=agent.command&device=meter-1")
        sources = {e["data"]["source"] for e in events["events"]}
        assert sources == {"web:tech"}
        assert len(events["events"]) == 3

        # A failing device: the test read reports why.
        await client.api_post(
            "/api/devices/meter-1/commands",
            {"action": "simulate.fault", "args": {"mode": "timeout"}},
        )
        answer = await (await client.api_post("/api/devices/meter-1/read")).json()
        assert (answer["ok"], answer["reason"]) == (False, "timeout")


async def test_test_reads_do_not_shift_the_schedule(tmp_path: Path) -> None:
    """Technician reads queue on the device's bus lane between polls; the polls keep their grid
    and the test reads' values never reach the buffer."""
    devices = [
        sim_device("a", bus="line-1", interval_s=0.5, latency_ms=20),
        sim_device("b", bus="line-1", interval_s=0.5, latency_ms=20),
    ]
    buses = [{"id": "line-1", "serial": {"port": "/dev/ttyUSB0"}}]
    async with (
        running_agent(tmp_path, devices, buses=buses) as runtime,
        WebClient(base_url(runtime)) as client,
    ):
        await client.login()
        start_reads = runtime.state.devices["a"].reads
        for _ in range(20):
            answer = await (await client.api_post("/api/devices/a/read")).json()
            assert answer["ok"] is True
        await wait_until(lambda: runtime.state.devices["a"].reads >= start_reads + 8)
    times = [
        r["ts"]
        for r in buffer_records(tmp_path / "buffer.db")
        if r["kind"] == "reading" and r["device"] == "a"
    ]
    gaps = [(b - a) / 1000 for a, b in itertools.pairwise(times)]
    assert len(gaps) >= 8
    assert all(0.3 <= gap <= 0.7 for gap in gaps), gaps


async def test_events_filter_by_type_and_device(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as runtime, WebClient(base_url(runtime)) as client:
        await client.login()
        events = await client.api("/api/events")
        types = {e["type"] for e in events["events"]}
        assert {"agent.started", "status.online"} <= types
        assert set(events["types"]) == types
        assert events["events"] == sorted(events["events"], key=lambda e: -e["ts"])
        online = await client.api("/api/events?type=status")
        assert {e["type"] for e in online["events"]} == {"status.online"}
        mine = await client.api("/api/events?device=meter-2")
        assert {e["device"] for e in mine["events"]} == {"meter-2"}
        assert len((await client.api("/api/events?limit=1"))["events"]) == 1


async def test_config_is_redacted_and_validated(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as runtime, WebClient(base_url(runtime)) as client:
        await client.login()
        config = await client.api("/api/config")
        assert config["validation"]["valid"] is True
        assert config["validation"]["matches_running"] is True
        assert config["config"]["gateway"]["id"] == "gw-test"
        assert "password_hash: '***'" in config["yaml"]
        assert runtime.config_path is not None
        text = runtime.config_path.read_text()
        runtime.config_path.write_text(text.replace("interval_s: 0.5", "interval_s: fast", 1))
        config = await client.api("/api/config")
        assert config["validation"]["valid"] is False
        [error] = config["validation"]["errors"]
        assert error["path"] == "devices[0].interval_s"
        assert error["line"] > 1
        runtime.config_path.write_text(text.replace("interval_s: 0.5", "interval_s: 0.75", 1))
        config = await client.api("/api/config")
        assert config["validation"]["valid"] is True
        assert config["validation"]["matches_running"] is False


async def test_metrics_in_prometheus_text_format(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as runtime, WebClient(base_url(runtime)) as client:
        await client.login()
        await client.api_post(
            "/api/devices/meter-1/commands",
            {"action": "simulate.fault", "args": {"mode": "timeout"}},
        )
        await wait_until(
            lambda: runtime.state.devices["meter-1"].errors["timeout"] >= 1, what="a timeout"
        )
        response = await client.get("/metrics")
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        families = parse_metrics(await response.text())
        for name in (
            "edge_agent_device_up",
            "edge_agent_device_reads_total",
            "edge_agent_device_errors_total",
            "edge_agent_buffer_records",
            "edge_agent_buffer_bytes",
            "edge_agent_buffer_oldest_age_seconds",
            "edge_agent_buffer_dropped_total",
            "edge_agent_uplink_records_sent_total",
            "edge_agent_uplink_batches_failed_total",
            "edge_agent_uplink_latency_seconds",
            "edge_agent_commands_total",
            "edge_agent_disk_free_bytes",
        ):
            assert name in families, name
        assert _one(families, "edge_agent_device_up", device="meter-2") == 1
        assert (
            _one(families, "edge_agent_device_errors_total", device="meter-1", reason="timeout")
            >= 1
        )
        assert _one(families, "edge_agent_device_reads_total", device="meter-2") >= 1
        assert _one(families, "edge_agent_commands_total", source="web", status="ok") == 1
        assert _one(families, "edge_agent_buffer_records") >= 0
        # The timed-out meter held its lane for its whole timeout at least once.
        assert _one(families, "edge_agent_bus_busy_seconds_total", lane="device:meter-1") >= (
            runtime.config.devices[0].timeout_s
        )
        info = families["edge_agent_info"][0][0]
        assert info == {
            "version": runtime.state.version,
            "gateway": "gw-test",
            "community": "350102001001",
        }


def test_metrics_reader_rejects_bad_lines() -> None:
    with pytest.raises(AssertionError):
        parse_metrics('# HELP a x\n# TYPE a gauge\na{b="c} 1\n')
    with pytest.raises(AssertionError):
        parse_metrics("orphan 1\n")


def _boot(page: str) -> Any:
    match = re.search(r'<script type="application/json" id="boot">(.*?)</script>', page, re.DOTALL)
    assert match
    return json.loads(match.group(1))


async def test_pages_embed_the_api_data_and_speak_both_languages(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as runtime, WebClient(base_url(runtime)) as client:
        await client.login()
        page = await (await client.get("/")).text()
        assert '<html lang="zh-CN">' in page
        assert "网关诊断" in page
        boot = _boot(page)["data"]
        status = await client.api("/api/status")
        for key in ("gateway", "version", "clock_synced", "devices"):
            assert boot[key] == status[key], key
        response = await client.post(
            "/lang", data={"csrf": client.csrf, "lang": "en", "next": "/devices"}
        )
        assert response.status == 303
        assert response.headers["Location"] == "/devices"
        page = await (await client.get("/devices")).text()
        assert '<html lang="en">' in page
        assert "Gateway diagnostics" in page
        assert "网关诊断" not in page.split('id="i18n"')[0]
        # An open redirect is not possible through "next".
        response = await client.post(
            "/lang", data={"csrf": client.csrf, "lang": "zh-CN", "next": "//evil.example/"}
        )
        assert response.headers["Location"] == "/"


async def test_overview_with_its_assets_is_small(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as runtime, WebClient(base_url(runtime)) as client:
        await client.login()
        page = await (await client.get("/")).read()
        total = len(page)
        assets = re.findall(rb'(?:src|href)="(/static/[^"]+)"', page)
        assert len(assets) == 3
        for asset in assets:
            response = await client.get(asset.decode())
            assert response.status == 200
            total += len(await response.read())
        assert total <= 200 * 1024, total
        assert b"http://" not in page, "nothing from the internet"
        assert b"https://" not in page, "nothing from the internet"


async def test_a_failed_bus_is_shown_as_the_cause_of_its_devices(tmp_path: Path) -> None:
    gone = str(tmp_path / "ttyUSB7")
    meters = [
        {"id": f"m{u}", "driver": "modbus", "bus": "rs485-1", "unit": u, "interval_s": 0.2}
        | {"points": [{"name": "v", "address": 0}]}
        for u in (1, 2)
    ]

    def failing(runtime: Any) -> bool:
        states = [runtime.state.devices.get(m["id"]) for m in meters]
        return all(s is not None and s.health is Health.UNKNOWN for s in states)

    async with (
        running_agent(
            tmp_path,
            [sim_device("meter-1"), *meters],
            buses=[{"id": "rs485-1", "serial": {"port": gone}}],
            ready=failing,
        ) as runtime,
        WebClient(base_url(runtime)) as client,
    ):
        await client.login()
        status = await client.api("/api/status")
        [bus] = status["buses"]
        assert (bus["id"], bus["state"], bus["reason"]) == ("rs485-1", "down", "no_port")
        assert gone in bus["error"]
        assert bus["counters"]["no_port"] >= 1
        assert status["devices"]["unknown"] == 2
        problems = {p["id"]: p for p in status["problems"]}
        assert set(problems) == {"m1", "m2"}
        for problem in problems.values():
            assert problem["health"] == "unknown"
            assert problem["last_error"].startswith("bus rs485-1: no_port")
        text = await (await client.get("/metrics")).text()
        families = parse_metrics(text)
        assert _one(families, "edge_agent_bus_up", bus="rs485-1") == 0
        assert _one(families, "edge_agent_bus_events_total", bus="rs485-1", what="no_port") >= 1
    records = buffer_records(tmp_path / "buffer.db")
    assert [r["data"]["bus"] for r in records if r.get("type") == "bus.link_down"] == ["rs485-1"]
    assert not [r for r in records if r["kind"] == "status" and r["device"] in ("m1", "m2")]


async def test_doors_are_listed_with_their_state_and_link(tmp_path: Path) -> None:
    devices = [
        sim_device(
            "gate",
            name="北门",
            kind="access_controller",
            points=[
                {"name": "door_open", "kind": "constant", "value": True},
                {"name": "secure_channel", "kind": "constant", "value": False},
            ],
        ),
        sim_device("meter"),
    ]
    async with running_agent(tmp_path, devices) as runtime, WebClient(base_url(runtime)) as client:
        await client.login()
        status = await client.api("/api/status")
        [door] = status["doors"]
        assert (door["id"], door["name"], door["open"], door["secure_channel"]) == (
            "gate",
            "北门",
            True,
            False,
        )
        assert door["since_ms"] > 0
        page = await (await client.get("/")).text()
        assert 'id="doors-panel"' in page


async def test_tags_are_listed_missing_first_and_capped(tmp_path: Path) -> None:
    def tag(tag_id: str, presence: str | None, battery: float = 80) -> dict[str, Any]:
        points: list[dict[str, Any]] = [
            {"name": "battery", "kind": "constant", "value": battery, "unit": "%"}
        ]
        if presence is not None:
            points.append({"name": "presence", "kind": "constant", "value": presence})
        return sim_device(tag_id, kind="tag", points=points)

    devices = [tag(f"t{n:02}", "present") for n in range(32)]
    devices += [tag("gone", "away", battery=9), tag("silent", None), sim_device("meter")]
    devices.append(tag("spare", "away") | {"enabled": False})
    async with running_agent(tmp_path, devices) as runtime, WebClient(base_url(runtime)) as client:
        await client.login()

        async def tags() -> dict[str, Any]:
            status = await client.api("/api/status")
            return status["tags"]  # type: ignore[no-any-return]

        await wait_until(
            lambda: all(
                runtime.state.devices[d["id"]].points for d in devices if d.get("enabled", True)
            ),
            what="every tag read once",
        )
        shown = await tags()
        # Enabled tags only (not the meter, not the disabled spare); at most 30 shown.
        assert shown["total"] == 34
        assert len(shown["shown"]) == 30
        first, second = shown["shown"][:2]
        assert (first["id"], first["presence"], first["battery_low"]) == ("gone", "away", True)
        # A tag that never said where it is comes next: "never", not "present".
        assert (second["id"], second["presence"]) == ("silent", "never")
        assert {r["presence"] for r in shown["shown"][2:]} == {"present"}
        assert shown["shown"][2]["battery_low"] is False
        assert shown["shown"][2]["last_seen_ms"] > 0
