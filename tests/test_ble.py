"""The BLE driver through the real agent runtime and bleak's real BlueZ backend, without a radio:
a private D-Bus bus with a mocked bluetoothd (tests/peers/bluez_mock.py) sending the adverts.

Proves: an enrolled tag is present; identical adverts give no duplicate events; a press counter
change gives exactly one SOS; an unknown device is ignored; a beacon is recognised by its
identity; a silent tag goes away after its timeout; a bluetoothd restart is recovered from by the
watchdog with nobody declared away; an adapter powered off makes the bus down and the tags
unknown, and powered on again brings them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from agent_proc import AgentProcess, buffer_records, write_config
from peers.bluez_mock import BluezMock, system_bus
from peers.modbus_peers import async_wait_until
from test_bus import run_until, stop
from test_dlt645 import edge_agent

from agent.clock import Clock
from agent.config.errors import ConfigError
from agent.config.loader import load_config
from agent.driver import Health
from agent.runtime import Runtime
from drivers.ble import driver as ble_driver
from drivers.ble.decode import APPLE, BTHOME, is_resolvable_private

pytestmark = pytest.mark.slow

WRIST = "C0:11:22:33:44:01"
BEACON = "4A:55:66:77:88:02"  # a random (rotating) address: the tag is known by its iBeacon id
STRANGER = "D4:00:00:00:00:03"
UUID = "fda50693-a4e2-4fb1-afcf-c6eb07647825"


def bthome(packet: int, *, press: bool = False) -> dict[str, bytes]:
    data = b"\x40\x00" + bytes((packet,)) + b"\x01\x5a" + (b"\x3a\x01" if press else b"")
    return {BTHOME: data}


def ibeacon(minor: int = 7) -> dict[int, bytes]:
    return {
        APPLE: b"\x02\x15"
        + bytes.fromhex(UUID.replace("-", ""))
        + struct.pack(">HHb", 3, minor, -59)
    }


def tags_config(
    tmp_path: Path, *, silent_s: float = 2.0, control: bool = False, **wrist: Any
) -> Path:
    devices = [
        {
            "id": "wrist-101",
            "driver": "ble",
            "bus": "radio",
            "mac": WRIST,
            "class": "wristband",
            "away_after_s": 4,
            **wrist,
        },
        {
            "id": "wheelchair-7",
            "driver": "ble",
            "bus": "radio",
            "ibeacon": {"uuid": UUID, "major": 3, "minor": 7},
            "class": "asset",
        },
    ]
    buses = [{"id": "radio", "ble": {"adapter": "hci0", "silent_s": silent_s}}]
    extra = {"control": {"socket": str(tmp_path / "control.sock")}} if control else {}
    return write_config(tmp_path, devices, buses=buses, **extra)


class Air:
    """What the mock's radio hears: each device's current advert, sent every 0.2 s while on."""

    def __init__(self, bluez: BluezMock) -> None:
        self.bluez = bluez
        self.adverts: dict[str, dict[str, Any]] = {}
        self.on = True

    async def run(self) -> None:
        while True:
            if self.on:
                for mac, advert in list(self.adverts.items()):
                    with contextlib.suppress(RuntimeError):  # the mock is restarting
                        await self.bluez.advertise(mac, **advert)
            await asyncio.sleep(0.2)


async def populate(bluez: BluezMock) -> None:
    await bluez.add_adapter("hci0")
    for mac in (WRIST, BEACON, STRANGER):
        await bluez.add_device(mac)


@contextlib.asynccontextmanager
async def radio(tmp_path: Path) -> AsyncIterator[tuple[BluezMock, Air]]:
    with BluezMock(tmp_path) as bluez, system_bus(bluez.address):
        await bluez.start_mock()
        await populate(bluez)
        air = Air(bluez)
        air.adverts = {
            WRIST: {"service_data": bthome(1)},
            BEACON: {"manufacturer_data": ibeacon()},
            STRANGER: {"manufacturer_data": {0x0006: b"\x01\x09\x20"}},
        }
        sender = asyncio.create_task(air.run())
        try:
            yield bluez, air
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            await bluez.close()


def events(records: list[dict[str, Any]], device: str, type_: str) -> list[dict[str, Any]]:
    return [
        r for r in records if r["kind"] == "event" and r["device"] == device and r["type"] == type_
    ]


def adverts(runtime: Runtime, device: str) -> int:
    state = runtime.state.devices.get(device)
    return 0 if state is None else state.driver_counters["adverts"]


def presence(runtime: Runtime, device: str) -> object:
    state = runtime.state.devices.get(device)
    point = None if state is None else state.points.get("presence")
    return None if point is None else point.value


def bus_state(runtime: Runtime) -> str:
    return next(b["state"] for b in runtime.bus_figures() if b["id"] == "radio")


async def wait(condition: Callable[[], Any], what: str, timeout_s: float = 60) -> None:
    await async_wait_until(condition, what=what, timeout_s=timeout_s)


async def wristband_heard(tmp_path: Path) -> tuple[Runtime, asyncio.Task[int]]:
    """The runtime on the tags' config, running once the wristband was heard three times."""
    runtime = Runtime(load_config(tags_config(tmp_path)), clock=Clock("always"))
    task = await run_until(
        runtime, lambda: adverts(runtime, "wrist-101") >= 3, what="the wristband heard"
    )
    return runtime, task


async def test_present_one_sos_per_press_strangers_ignored_and_away(tmp_path: Path) -> None:
    async with radio(tmp_path) as (_, air):
        runtime = Runtime(load_config(tags_config(tmp_path)), clock=Clock("always"))
        task = await run_until(
            runtime,
            lambda: adverts(runtime, "wrist-101") >= 3 and adverts(runtime, "wheelchair-7") >= 3,
            what="adverts of both tags",
        )
        # A press: the packet id moves on and the button is set; the same advert is then
        # heard again and again (duplicate data is on). Then a second press.
        air.adverts[WRIST] = {"service_data": bthome(2, press=True)}
        seen = adverts(runtime, "wrist-101")
        await wait(lambda: adverts(runtime, "wrist-101") >= seen + 5, "the press heard 5 times")
        air.adverts[WRIST] = {"service_data": bthome(3, press=True)}
        seen = adverts(runtime, "wrist-101")
        await wait(lambda: adverts(runtime, "wrist-101") >= seen + 5, "the second press")
        # The wristband leaves; the wheelchair's beacon stays, so the scanner is known to hear.
        del air.adverts[WRIST]
        await wait(
            lambda: presence(runtime, "wrist-101") == "away",
            "the wristband away",
            timeout_s=30,
        )
        await stop(runtime, task)
    records = buffer_records(tmp_path / "buffer.db")
    assert len(events(records, "wrist-101", "tag.present")) == 1
    sos = events(records, "wrist-101", "tag.sos")
    assert len(sos) == 2, sos
    assert all(e["severity"] == "alarm" for e in sos)
    away = events(records, "wrist-101", "tag.away")
    assert len(away) == 1
    assert 4 <= away[0]["data"]["last_seen_s_ago"] < 8
    assert len(events(records, "wheelchair-7", "tag.present")) == 1
    assert events(records, "wheelchair-7", "tag.away") == []
    battery = [
        r["value"] for r in records if r["device"] == "wrist-101" and r.get("point") == "battery"
    ]
    assert battery == [90]  # once: it never changed
    assert not [r for r in records if STRANGER in str(r)]


async def test_a_bluetoothd_restart_is_recovered_and_nobody_is_away_meanwhile(
    tmp_path: Path,
) -> None:
    async with radio(tmp_path) as (bluez, air):
        runtime, task = await wristband_heard(tmp_path)
        air.on = False
        await bluez.restart()
        await asyncio.sleep(6)  # longer than the tag's 4 s: it would be away if we believed it
        await populate(bluez)
        air.on = True
        before = adverts(runtime, "wrist-101")
        await wait(
            lambda: adverts(runtime, "wrist-101") >= before + 5,
            "adverts through a new scanner",
            timeout_s=90,
        )
        figures = next(b for b in runtime.bus_figures() if b["id"] == "radio")
        await stop(runtime, task)
    records = buffer_records(tmp_path / "buffer.db")
    assert events(records, "wrist-101", "tag.away") == []
    assert len(events(records, "wrist-101", "tag.present")) == 1
    assert figures["state"] == "up"
    assert figures["counters"].get("scanner_restarts", 0) >= 1, figures


async def test_an_adapter_powered_off_makes_the_tags_unknown_until_it_is_back(
    tmp_path: Path,
) -> None:
    async with radio(tmp_path) as (bluez, air):
        runtime, task = await wristband_heard(tmp_path)
        air.on = False  # an adapter that is off hears nothing
        await bluez.power(on=False)
        await wait(lambda: bus_state(runtime) == "down", "the adapter down", timeout_s=60)
        figures = next(b for b in runtime.bus_figures() if b["id"] == "radio")
        health = {d: runtime.state.devices[d].health for d in ("wrist-101", "wheelchair-7")}
        await asyncio.sleep(6)
        await bluez.power(on=True)
        air.on = True
        await wait(lambda: bus_state(runtime) == "up", "the adapter back", timeout_s=90)
        before = adverts(runtime, "wrist-101")
        await wait(lambda: adverts(runtime, "wrist-101") > before, "adverts again")
        after = runtime.state.devices["wrist-101"].health
        await stop(runtime, task)
    assert figures["reason"] == "adapter_off", figures
    assert set(health.values()) == {Health.UNKNOWN}, health
    assert after is not Health.UNKNOWN
    records = buffer_records(tmp_path / "buffer.db")
    link = [r for r in records if r["kind"] == "event" and r["type"].startswith("bus.link_")]
    assert [r["type"] for r in link] == ["bus.link_down", "bus.link_up"], link
    assert sorted(link[0]["data"]["devices"]) == ["wheelchair-7", "wrist-101"]
    assert events(records, "wrist-101", "tag.away") == []


def radio_counters(runtime: Runtime) -> dict[str, int]:
    figures = next(b for b in runtime.bus_figures() if b["id"] == "radio")
    counters: dict[str, int] = figures["counters"]
    return counters


async def test_an_adapter_that_stays_off_is_reset_as_the_last_resort(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three failed starts in a row: the adapter is reset (the reset itself needs a kernel
    management socket, so here it is played by powering the mocked adapter on), by the
    address BlueZ gave for it, once within the hold-off."""
    resets: list[tuple[str, str, bool]] = []
    async with radio(tmp_path) as (bluez, air):

        async def reset(adapter: str, address: str, *, gone_silent: bool) -> tuple[bool, str]:
            resets.append((adapter, address, gone_silent))
            air.on = True
            await bluez.power(on=True)
            return True, ""

        monkeypatch.setattr(ble_driver, "reset_adapter", reset)
        runtime, task = await wristband_heard(tmp_path)
        air.on = False
        await bluez.power(on=False)
        await wait(lambda: resets, "a reset", timeout_s=60)
        await wait(lambda: bus_state(runtime) == "up", "the adapter back", timeout_s=60)
        before = adverts(runtime, "wrist-101")
        await wait(lambda: adverts(runtime, "wrist-101") > before, "adverts again")
        counters = radio_counters(runtime)
        await stop(runtime, task)
    assert resets == [("hci0", "00:01:02:03:04:05", False)]
    assert counters["adapter_resets"] == 1
    assert counters["scanner_adapter_off"] >= 3
    assert events(buffer_records(tmp_path / "buffer.db"), "wrist-101", "tag.away") == []


async def test_a_scanner_deaf_through_three_restarts_has_its_adapter_reset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The adapter is on but hears nothing (a stuck controller): after three restarts that
    heard nothing at all, the adapter is reset as one that went silent (a USB reset too)."""
    resets: list[tuple[str, str, bool]] = []

    async def reset(adapter: str, address: str, *, gone_silent: bool) -> tuple[bool, str]:
        resets.append((adapter, address, gone_silent))
        return True, ""

    monkeypatch.setattr(ble_driver, "reset_adapter", reset)
    async with radio(tmp_path) as (_, air):
        runtime, task = await wristband_heard(tmp_path)
        air.on = False
        # Restarts after 2, 4, 8 and 16 s of silence: the last three heard nothing at all.
        await wait(lambda: resets, "a reset", timeout_s=90)
        counters = radio_counters(runtime)
        await stop(runtime, task)
    assert resets == [("hci0", "00:01:02:03:04:05", True)]
    assert counters["scanner_restarts"] == 4
    assert counters["adapter_resets"] == 1


async def test_a_reset_that_cannot_be_done_is_counted_and_the_watchdog_goes_on(
    tmp_path: Path,
) -> None:
    """The real bluetooth-auto-recovery on a machine without the adapter's kernel device (as
    on a gateway whose unit lacks CAP_NET_ADMIN): the attempt fails, is counted and logged,
    and the scanner is still retried; when the adapter is powered on again, all is well."""
    async with radio(tmp_path) as (bluez, air):
        runtime, task = await wristband_heard(tmp_path)
        air.on = False
        await bluez.power(on=False)
        await wait(
            lambda: radio_counters(runtime).get("adapter_reset_failed"),
            "a failed reset",
            timeout_s=90,
        )
        failed_starts = radio_counters(runtime)["scanner_adapter_off"]
        await wait(
            lambda: radio_counters(runtime)["scanner_adapter_off"] > failed_starts,
            "the scanner retried after it",
            timeout_s=60,
        )
        await bluez.power(on=True)
        air.on = True
        await wait(lambda: bus_state(runtime) == "up", "the adapter back", timeout_s=90)
        counters = radio_counters(runtime)
        await stop(runtime, task)
    assert counters["adapter_reset_failed"] == 1  # once within the hold-off
    assert "adapter_resets" not in counters
    assert events(buffer_records(tmp_path / "buffer.db"), "wrist-101", "tag.away") == []


async def test_in_progress_at_start_is_retried_without_an_outage(tmp_path: Path) -> None:
    async with radio(tmp_path) as (bluez, _):
        await bluez.busy(2)
        runtime, task = await wristband_heard(tmp_path)
        figures = next(b for b in runtime.bus_figures() if b["id"] == "radio")
        await stop(runtime, task)
    assert figures["counters"]["scanner_in_progress"] == 2, figures
    records = buffer_records(tmp_path / "buffer.db")
    assert not [r for r in records if r["kind"] == "event" and r["type"].startswith("bus.link")]


@pytest.mark.parametrize(
    "keys",
    [{"key_file": "missing.key"}, {"mac": None, "irk_file": "missing.irk"}],
    ids=["key_file", "irk_file"],
)
async def test_a_tag_whose_key_cannot_be_read_is_down_and_nothing_it_sends_counts(
    tmp_path: Path, keys: dict[str, str | None]
) -> None:
    """Fail closed: without its key, a plain advert (a forged press) must not pass for it."""
    paths = {k: None if v is None else str(tmp_path / v) for k, v in keys.items()}
    config = tags_config(tmp_path, **paths)
    async with radio(tmp_path) as (_, air):
        air.adverts[WRIST] = {"service_data": bthome(9, press=True)}
        runtime = Runtime(load_config(config), clock=Clock("always"))
        task = await run_until(
            runtime, lambda: adverts(runtime, "wheelchair-7") >= 5, what="the beacon heard"
        )
        state = runtime.state.devices["wrist-101"]
        await stop(runtime, task)
    assert state.health is Health.DOWN
    assert "key_unreadable" in (state.last_error or "")
    records = buffer_records(tmp_path / "buffer.db")
    assert [r for r in records if r["device"] == "wrist-101" and r["kind"] != "status"] == []


IRK = "ec0234a357c8ad05341010a60a397d9b"  # the Bluetooth Core spec's sample key (Vol 3 H D.7)


def private_address(irk: str, prand: bytes) -> str:
    """A resolvable private address of the key ``irk``: prand (top bits 01) + ah(irk, prand),
    the low 3 bytes of AES-128(irk, 13 zero bytes + prand)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    encryptor = Cipher(algorithms.AES(bytes.fromhex(irk)), modes.ECB()).encryptor()  # noqa: S305
    hashed = (encryptor.update(bytes(13) + prand) + encryptor.finalize())[13:]
    return ":".join(f"{b:02X}" for b in prand + hashed)


def test_a_private_address_is_made_as_the_core_spec_says() -> None:
    from drivers.ble.simulated import private_address_hash

    assert private_address(IRK, bytes.fromhex("708194")) == "70:81:94:0D:FB:AA"
    assert private_address_hash(bytes.fromhex(IRK), bytes.fromhex("708194")).hex() == "0dfbaa"
    assert is_resolvable_private("70:81:94:0D:FB:AA")
    assert not is_resolvable_private(STRANGER)  # a static random address: top bits 11
    assert not is_resolvable_private("zz:00:00:00:00:00")


async def test_a_tag_enrolled_by_its_irk_is_known_through_its_address_rotating(
    tmp_path: Path,
) -> None:
    """A wristband that rotates its resolvable private address and sends no beacon identity:
    each new address resolves to it with its key; another key's addresses are strangers."""
    key = tmp_path / "wrist.irk"
    key.write_text(IRK + "\n")
    key.chmod(0o600)
    first, second = (private_address(IRK, p) for p in (b"\x4a\x01\x02", b"\x5b\x03\x04"))
    other = private_address("00" * 15 + "01", b"\x41\x05\x06")
    config = tags_config(tmp_path, mac=None, irk_file=str(key))
    async with radio(tmp_path) as (bluez, air):
        for address in (first, second, other):
            await bluez.add_device(address)
        del air.adverts[WRIST]
        air.adverts[first] = {"service_data": bthome(1)}
        air.adverts[other] = {"service_data": bthome(1, press=True)}
        runtime = Runtime(load_config(config), clock=Clock("always"))
        task = await run_until(
            runtime, lambda: adverts(runtime, "wrist-101") >= 3, what="the first address heard"
        )
        del air.adverts[first]  # the tag rotates its address
        air.adverts[second] = {"service_data": bthome(2, press=True)}
        seen = adverts(runtime, "wrist-101")
        await wait(lambda: adverts(runtime, "wrist-101") >= seen + 5, "the second address heard")
        await stop(runtime, task)
    records = buffer_records(tmp_path / "buffer.db")
    assert len(events(records, "wrist-101", "tag.present")) == 1
    assert events(records, "wrist-101", "tag.away") == []
    assert len(events(records, "wrist-101", "tag.sos")) == 1  # the press from its new address
    assert not [r for r in records if other in str(r)]


async def test_scan_ble_lists_what_is_heard_through_the_running_agent(tmp_path: Path) -> None:
    """The installer's list, from a real agent process that is scanning the same adapter."""
    async with radio(tmp_path):
        path = tags_config(tmp_path, control=True)
        agent = AgentProcess(path)
        try:
            await asyncio.to_thread(agent.wait_event, "ble.scanning", timeout_s=60)
            argv = ["scan", "ble", "--seconds", "2", "--config", str(path), "--json"]
            result = await asyncio.to_thread(edge_agent, *argv)
            tool = await asyncio.to_thread(agent.wait_event, "tool.run")
        finally:
            assert await asyncio.to_thread(agent.stop) == 0
    assert result.returncode == 0, result.stderr
    assert "through the running agent" in result.stderr
    assert (tool["driver"], tool["tool"], tool["bus"]) == ("ble", "scan", "radio")
    heard = {d["address"]: d for d in json.loads(result.stdout)["devices"]}
    assert set(heard) == {WRIST, BEACON, STRANGER}
    assert heard[WRIST]["formats"] == ["bthome"]
    assert heard[WRIST]["values"]["battery"] == 90
    assert heard[WRIST]["enrol_by"] == f"mac: {WRIST}"
    assert heard[BEACON]["enrol_by"] == f"ibeacon/eddystone: ibeacon:{UUID}:3:7"
    assert heard[STRANGER]["formats"] == []
    assert all(d["adverts"] >= 3 for d in heard.values())


# ---------------------------------------------------------------------- config


def load(tmp_path: Path, devices: list[dict[str, Any]], bus: dict[str, Any] | None = None) -> Any:
    buses = [bus or {"id": "radio", "ble": {"adapter": "hci0"}}]
    return load_config(write_config(tmp_path, devices, buses=buses))


def tag(**keys: Any) -> dict[str, Any]:
    return {"id": "t1", "driver": "ble", "bus": "radio", **keys}


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({}, "enrol the tag by exactly one of 'mac', 'ibeacon', 'eddystone' or 'irk_file'"),
        ({"mac": WRIST, "irk_file": "/etc/edge-agent/keys/t1.irk"}, "(got mac and irk_file)"),
        (
            {"mac": WRIST, "ibeacon": {"uuid": UUID, "major": 1, "minor": 2}},
            "(got mac and ibeacon)",
        ),
        ({"mac": "C0:11:22:33:44"}, "mac"),
        ({"ibeacon": {"uuid": "not-a-uuid", "major": 1, "minor": 2}}, "not a UUID"),
        ({"eddystone": {"namespace": "00", "instance": "a1b2c3d4e5f6"}}, "namespace"),
        ({"mac": WRIST, "class": "pet"}, "class"),
        (
            {
                "mac": WRIST,
                "vendor": {
                    "company_id": 70000,
                    "fields": [{"name": "x", "offset": 0, "type": "u8"}],
                },
            },
            "company_id",
        ),
    ],
)
def test_the_config_refuses(tmp_path: Path, keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, [tag(**keys)])
    assert message in str(caught.value)


def test_one_tag_enrolled_twice_and_a_serial_bus_are_refused(tmp_path: Path) -> None:
    twice = [tag(mac=WRIST.lower()), {**tag(mac=WRIST), "id": "t2"}]
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, twice)
    assert f"identity 'mac:{WRIST}' is already used" in str(caught.value)
    serial = {"id": "radio", "serial": {"port": "/dev/ttyUSB0"}}
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, [tag(mac=WRIST)], bus=serial)
    assert "bus 'radio' is a serial bus; driver 'ble' needs ble" in str(caught.value)


def test_the_config_normalises(tmp_path: Path) -> None:
    loaded = load(tmp_path, [tag(mac=WRIST.lower(), **{"class": "wristband"})])
    device = loaded.devices[0]
    assert device.identity == f"mac:{WRIST}"
    assert device.tag_class == "wristband"
    assert device.kind == "tag"
    assert loaded.buses[0].ble.silent_s == 120
