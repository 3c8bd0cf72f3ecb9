"""The core's buses and availability, on pty pairs with real peers: protocols sharing one line,
priorities on a saturated line, bus-scope drivers, stale streaming devices, a vanished port."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agent_proc import buffer_records, write_config
from peers import line_drivers
from peers.modbus_peers import FakeMeter, PtyPair, async_wait_until, registers_of

from agent.bus import Priority, ReplyTimeoutError, SerialLine, priority
from agent.clock import Clock
from agent.config.loader import load_config
from agent.config.models import Bus, SerialBus
from agent.driver import Health
from agent.runtime import Runtime

pytestmark = pytest.mark.slow


@pytest.fixture
def test_drivers(monkeypatch: pytest.MonkeyPatch) -> None:
    line_drivers.register(monkeypatch)


def meter_registers() -> dict[int, int]:
    registers = {0x10: 7}
    for address, value in ((0x2000, 230.2), (0x2002, 1.5)):
        registers[address], registers[address + 1] = registers_of(value, "float32")
    return registers


def modbus(device_id: str, unit: int, **extra: Any) -> dict[str, Any]:
    """A meter whose plan is two requests (the points are far apart)."""
    return {
        "id": device_id,
        "driver": "modbus",
        "bus": "line",
        "unit": unit,
        "timeout_s": 0.5,
        "points": [
            {"name": "status", "address": 0x10, "writable": True},
            {"name": "voltage", "address": 0x2000, "type": "float32"},
        ],
        **extra,
    }


async def run_until(
    runtime: Runtime, condition: Callable[[], Any], *, what: str, timeout_s: float = 60
) -> asyncio.Task[int]:
    task = asyncio.create_task(runtime.run(install_signals=False))
    try:
        await async_wait_until(lambda: task.done() or condition(), timeout_s=timeout_s, what=what)
    except BaseException:
        runtime.request_stop()
        await asyncio.wait_for(task, 30)
        raise
    assert not task.done(), "the runtime stopped by itself"
    return task


async def stop(runtime: Runtime, task: asyncio.Task[int]) -> None:
    runtime.request_stop()
    assert await asyncio.wait_for(task, 30) == 0


def reads(runtime: Runtime, device: str) -> int:
    state = runtime.state.devices.get(device)
    return 0 if state is None else state.reads


def statuses(records: list[dict[str, Any]], device: str) -> list[tuple[str, Any]]:
    return [
        (r["state"], r.get("reason"))
        for r in records
        if r["kind"] == "status" and r["device"] == device
    ]


def events(records: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [r for r in records if r["kind"] == "event" and r["type"] == type_]


@pytest.mark.usefixtures("test_drivers")
async def test_modbus_and_a_second_protocol_share_one_line_and_one_port(tmp_path: Path) -> None:
    with (
        PtyPair(tmp_path) as pty,
        FakeMeter(
            pty.peer, 1, meter_registers(), units=[2], other=line_drivers.echo_answer
        ) as peer,
    ):
        devices = [
            modbus("meter-1", 1, interval_s=0.1),
            modbus("meter-2", 2, interval_s=0.1),
            {"id": "echo-7", "driver": "echo", "bus": "line", "address": 7, "interval_s": 0.1},
        ]
        path = write_config(
            tmp_path, devices, buses=[{"id": "line", "serial": {"port": str(pty.agent)}}]
        )
        runtime = Runtime(load_config(path), clock=Clock("always"))
        task = await run_until(
            runtime,
            lambda: all(reads(runtime, d["id"]) >= 20 for d in devices),
            what="20 reads of each device, Modbus and echo",
        )
        [line] = runtime.bus_figures()
        await stop(runtime, task)
    # One port, opened once, carrying both protocols; nobody starved, nothing failed.
    assert line["counters"]["opens"] == 1
    assert line["state"] == "up"
    assert -1 in peer.log
    assert {1, 2} <= set(peer.log)
    for device in devices:
        state = runtime.state.devices[device["id"]]
        assert state.failures == 0, (device["id"], state.errors)
        assert state.health is Health.OK
    echoes = [r for r in buffer_records(tmp_path / "buffer.db") if r.get("point") == "n"]
    assert [r["value"] for r in echoes] == list(range(1, len(echoes) + 1))


async def test_a_test_read_and_a_command_wait_at_most_one_transaction(tmp_path: Path) -> None:
    # Six meters polled as fast as the line allows, every answer 20 ms late: the line is
    # saturated. The probe meter is read (and written) on demand only.
    with (
        PtyPair(tmp_path) as pty,
        FakeMeter(pty.peer, 1, meter_registers(), units=range(2, 10), delay_s=0.02) as peer,
    ):
        busy = [modbus(f"meter-{u}", u, interval_s=0.05) for u in range(1, 7)]
        probe = modbus("probe", 9, interval_s=3600, commands=["modbus.write"])
        path = write_config(
            tmp_path, [*busy, probe], buses=[{"id": "line", "serial": {"port": str(pty.agent)}}]
        )
        runtime = Runtime(load_config(path), clock=Clock("always"))
        # The probe's own first poll (within its 5 s start jitter) is out of the way first.
        task = await run_until(
            runtime,
            lambda: (
                reads(runtime, "probe") >= 1 and all(reads(runtime, d["id"]) >= 3 for d in busy)
            ),
            what="the line saturated and the probe read once",
        )
        bus = runtime._devices.buses["line"]
        try:
            waits = []
            for attempt in range(5):
                # Saturated: polls are queued for the line at the moment we ask.
                await async_wait_until(lambda: bus.waiting >= 2, what="polls queued")
                before = len(peer.log)
                assert runtime.devices["probe"].poller is not None
                await runtime.read_device("probe")
                waits.append(peer.log[before:].index(9))
                before = len(peer.log)
                await runtime.execute_command(
                    "probe",
                    "modbus.write",
                    {"point": "status", "value": attempt},
                    source="test",
                    command_id=f"c{attempt}",
                )
                waits.append(peer.log[before:].index(9))
        finally:
            await stop(runtime, task)
    # Requests of other meters that went out between asking and our first frame: at most the
    # one already in flight, though other polls were queued before us every time.
    assert max(waits) <= 1, waits


async def test_sessions_let_urgent_waiters_in_between_their_transactions(tmp_path: Path) -> None:
    """The mechanism itself, without a scheduler: polls hold the line for several frames each;
    a test read asked for in the middle goes next, not after the polls queued before it."""
    with PtyPair(tmp_path) as pty, FakeMeter(pty.peer, 1, {}, delay_s=0.005) as peer:
        line = SerialLine(Bus(id="line", serial=SerialBus(port=str(pty.agent))))
        request = bytes.fromhex("010300000001840a")

        def reply(data: bytes) -> int:
            return 7 if len(data) >= 7 else 0

        async def poll() -> None:
            async with line.hold():
                for _ in range(4):
                    await line.exchange(request, reply, 1.0)

        polls = [asyncio.create_task(poll()) for _ in range(5)]
        await async_wait_until(lambda: len(peer.log) >= 2, what="the first poll under way")
        asked = line.counters["requests"]
        with priority(Priority.TEST_READ):
            await line.exchange(request, reply, 1.0)
            mine = line.counters["requests"]
        await asyncio.gather(*polls)
        await line.aclose()
    assert mine - asked <= 2  # the frame in flight, then ours
    assert line.counters["requests"] == 21


async def test_a_silent_device_is_a_timeout_with_what_arrived(tmp_path: Path) -> None:
    with PtyPair(tmp_path) as pty, FakeMeter(pty.peer, 1, {}):
        line = SerialLine(Bus(id="line", serial=SerialBus(port=str(pty.agent))))
        started = time.monotonic()
        with pytest.raises(ReplyTimeoutError) as timed_out:
            await line.exchange(bytes.fromhex("050300000001"), lambda _: 0, 0.2)
        assert time.monotonic() - started >= 0.2
        assert timed_out.value.reason == "timeout"
        assert timed_out.value.received == b""
        await line.aclose()


@pytest.mark.usefixtures("test_drivers")
async def test_a_bus_scope_driver_serves_300_devices(tmp_path: Path) -> None:
    devices = [
        {"id": f"tag-{i:03d}", "driver": "swarm", "tag": i, "commands": ["tag.beep"]}
        for i in range(300)
    ]
    runtime = Runtime(load_config(write_config(tmp_path, devices)), clock=Clock("always"))
    task = await run_until(
        runtime,
        lambda: all(reads(runtime, d["id"]) >= 3 for d in devices),
        what="three records from each of 300 tags",
    )
    try:
        # One driver instance for all of them...
        assert len(line_drivers.INSTANCES) == 1
        assert {id(runtime.devices[d["id"]].driver) for d in devices} == {
            id(line_drivers.INSTANCES[0])
        }
        # ...whose records must be its own devices'.
        line_drivers.FOREIGN.append("meter-elsewhere")
        await async_wait_until(lambda: line_drivers.REFUSED, what="the foreign record refused")
        # A command reaches the one driver with its target.
        result = await runtime.execute_command(
            "tag-123", "tag.beep", {}, source="test", command_id="b1"
        )
        assert result == {"beeped": "tag-123"}
        assert all(runtime.state.devices[d["id"]].health is Health.OK for d in devices)
        # What the driver learnt from its devices goes into the platform's inventory.
        inventory = {d["id"]: d for d in runtime.inventory()["devices"]}
        assert inventory["tag-000"]["reported"] == {"firmware": "tag-fw-1"}
        assert "reported" not in inventory["tag-001"]
    finally:
        await stop(runtime, task)
    records = buffer_records(tmp_path / "buffer.db")
    assert "meter-elsewhere" in line_drivers.REFUSED[0]
    assert not [r for r in records if r["device"] == "meter-elsewhere"]
    for device in devices:
        # One status per device: online once, not once per advert.
        assert statuses(records, device["id"]) == [("online", None)]


@pytest.mark.usefixtures("test_drivers")
async def test_a_streaming_device_that_stops_goes_stale_once_and_comes_back_once(
    tmp_path: Path,
) -> None:
    devices = [
        {"id": f"tag-{i}", "driver": "swarm", "tag": i, "stale_after_s": 0.6} for i in range(3)
    ]
    runtime = Runtime(load_config(write_config(tmp_path, devices)), clock=Clock("always"))
    task = await run_until(
        runtime,
        lambda: all(reads(runtime, d["id"]) >= 2 for d in devices),
        what="the tags heard",
    )
    try:
        line_drivers.SILENT.add("tag-1")
        await async_wait_until(
            lambda: runtime.state.devices["tag-1"].health is Health.DOWN,
            what="tag-1 offline",
        )
        assert runtime.state.devices["tag-1"].last_error.startswith("stale")
        # Stays offline without repeating itself for a while...
        await asyncio.sleep(1.5)
        line_drivers.SILENT.clear()
        await async_wait_until(
            lambda: runtime.state.devices["tag-1"].health is Health.OK, what="tag-1 back"
        )
        await asyncio.sleep(0.3)
        assert runtime.state.devices["tag-0"].health is Health.OK
    finally:
        await stop(runtime, task)
    records = buffer_records(tmp_path / "buffer.db")
    assert statuses(records, "tag-1") == [("online", None), ("offline", "stale"), ("online", None)]
    assert statuses(records, "tag-0") == [("online", None)]


async def test_a_vanished_port_makes_its_devices_unknown_with_one_bus_event(
    tmp_path: Path,
) -> None:
    pty = PtyPair(tmp_path)
    pty.start()
    peer = FakeMeter(pty.peer, 1, meter_registers(), units=[2, 3])
    peer.__enter__()
    devices = [modbus(f"meter-{u}", u, interval_s=0.1, offline_after=2) for u in (1, 2, 3)]
    path = write_config(
        tmp_path, devices, buses=[{"id": "line", "serial": {"port": str(pty.agent)}}]
    )
    runtime = Runtime(load_config(path), clock=Clock("always"))
    ids = [d["id"] for d in devices]

    def all_health(health: Health) -> bool:
        found = [runtime.state.devices.get(i) for i in ids]
        return all(s is not None and s.health is health for s in found)

    try:
        task = await run_until(runtime, lambda: all_health(Health.OK), what="the meters online")
        try:
            # The USB adapter is pulled: the port vanishes with the meters behind it.
            peer.__exit__()
            pty.kill()
            await async_wait_until(lambda: all_health(Health.UNKNOWN), what="meters unknown")
            [line] = runtime.bus_figures()
            assert line["state"] == "down"
            assert line["reason"] in ("io_error", "no_port")
            cause = runtime.state.devices["meter-2"].last_error
            assert cause is not None
            assert cause.startswith("bus line:")
            # Many polls later, still unknown, never offline one by one.
            first = sum(runtime.state.devices[i].failures for i in ids)
            await async_wait_until(
                lambda: sum(runtime.state.devices[i].failures for i in ids) >= first + 9,
                what="polls while the port is gone",
            )
            assert all_health(Health.UNKNOWN)
            # Plugged back in, under the same name.
            pty.start()
            peer = FakeMeter(pty.peer, 1, meter_registers(), units=[2, 3])
            peer.__enter__()
            await async_wait_until(lambda: all_health(Health.OK), timeout_s=30, what="back")
        finally:
            await stop(runtime, task)
    finally:
        peer.__exit__()
        pty.kill()
    records = buffer_records(tmp_path / "buffer.db")
    downs, ups = events(records, "bus.link_down"), events(records, "bus.link_up")
    assert len(downs) == 1
    assert len(ups) == 1
    assert downs[0]["data"]["bus"] == "line"
    assert downs[0]["data"]["devices"] == ids
    assert ups[0]["seq"] > downs[0]["seq"]
    for device in ids:
        # The platform was told online once; the bus event speaks for the outage.
        assert statuses(records, device) == [("online", None)]


@pytest.mark.usefixtures("test_drivers")
async def test_a_streaming_driver_reports_health_through_its_context(tmp_path: Path) -> None:
    devices = [{"id": f"tag-{i}", "driver": "swarm", "tag": i} for i in range(2)]
    runtime = Runtime(load_config(write_config(tmp_path, devices)), clock=Clock("always"))
    task = await run_until(
        runtime, lambda: all(reads(runtime, d["id"]) >= 2 for d in devices), what="tags heard"
    )
    try:
        line_drivers.BROKEN["tag-1"] = "auth_failed"
        await async_wait_until(
            lambda: runtime.state.devices["tag-1"].health is Health.DOWN, what="tag-1 down"
        )
        assert runtime.state.devices["tag-1"].last_error == "auth_failed: the tag refused our key"
        del line_drivers.BROKEN["tag-1"]
        await async_wait_until(
            lambda: runtime.state.devices["tag-1"].health is Health.OK, what="tag-1 ok"
        )
    finally:
        await stop(runtime, task)
    records = buffer_records(tmp_path / "buffer.db")
    assert statuses(records, "tag-1") == [
        ("online", None),
        ("offline", "auth_failed"),
        ("online", None),
    ]


@pytest.mark.usefixtures("test_drivers")
async def test_a_reload_restarts_only_the_drivers_whose_devices_changed(tmp_path: Path) -> None:
    from agent_proc import sim_device

    tags = [{"id": f"tag-{i}", "driver": "swarm", "tag": i} for i in range(3)]
    path = write_config(tmp_path, [sim_device("sim-1", interval_s=0.1), *tags])
    runtime = Runtime(
        load_config(path), config_path=path, loader=load_config, clock=Clock("always")
    )
    task = await run_until(
        runtime, lambda: all(reads(runtime, d["id"]) >= 2 for d in tags), what="tags heard"
    )
    try:
        sim_task = runtime._devices.units["simulated:sim-1"].task
        write_config(
            tmp_path, [sim_device("sim-1", interval_s=0.1), *tags, {**tags[0], "id": "tag-9"}]
        )
        # tag-9 reuses tag 0's address on the same (no) bus: refused, the old config stays.
        assert not await runtime.reload()
        write_config(
            tmp_path,
            [sim_device("sim-1", interval_s=0.1), *tags, {**tags[0], "id": "tag-9", "tag": 9}],
        )
        assert await runtime.reload()
        await async_wait_until(lambda: reads(runtime, "tag-9") >= 1, what="tag-9 heard")
        # One scanner again (a new instance with four tags); the simulated device untouched.
        assert len(line_drivers.INSTANCES) == 2
        assert len(line_drivers.INSTANCES[1].ctx.devices) == 4
        assert runtime._devices.units["simulated:sim-1"].task is sim_task
    finally:
        await stop(runtime, task)


@pytest.mark.usefixtures("test_drivers")
async def test_a_streaming_driver_is_cancelled_at_stop_not_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The swarm driver's run() never returns by itself, as the contract allows ("until
    # cancelled"). The core used to wait out its unit timeout at every stop: with a timeout
    # longer than the test's wait, that stop would never finish in time.
    import agent.devices

    monkeypatch.setattr(agent.devices, "UNIT_STOP_TIMEOUT_S", 600.0)
    devices = [{"id": "tag-1", "driver": "swarm", "tag": 1}]
    runtime = Runtime(load_config(write_config(tmp_path, devices)), clock=Clock("always"))
    task = await run_until(runtime, lambda: reads(runtime, "tag-1") >= 1, what="a record")
    await stop(runtime, task)
