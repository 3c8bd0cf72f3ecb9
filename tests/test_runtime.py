"""The runtime against real SQLite buffers: scheduling, supervision, signals, clock."""

from __future__ import annotations

import asyncio
import itertools
import signal
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agent_proc import AgentProcess, buffer_records, sim_device, wait_for, write_config

from agent.clock import Clock
from agent.config.loader import load_config
from agent.driver import Health
from agent.records import Event
from agent.runtime import Runtime


async def _run_until(
    runtime: Runtime, condition: Any, *, timeout_s: float = 60.0, what: str = "condition"
) -> None:
    task = asyncio.create_task(runtime.run(install_signals=False))
    deadline = time.monotonic() + timeout_s
    try:
        while not condition():
            if task.done():
                await task
                pytest.fail("the runtime stopped by itself")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)
    finally:
        runtime.request_stop()
        await asyncio.wait_for(task, 30)


def _reads(runtime: Runtime, device: str) -> int:
    state = runtime.state.devices.get(device)
    return 0 if state is None else state.reads


def _restarts(runtime: Runtime, device: str) -> int:
    state = runtime.state.devices.get(device)
    return 0 if state is None else state.restarts


def _reading_times(records: list[dict[str, Any]], device: str) -> list[int]:
    return [r["ts"] for r in records if r["kind"] == "reading" and r["device"] == device]


async def test_silent_device_backs_off_while_others_keep_their_interval(tmp_path: Path) -> None:
    interval = 0.5
    healthy = [f"meter-{i}" for i in range(7)]
    devices = [sim_device(i, bus="line-1", interval_s=interval, latency_ms=20) for i in healthy]
    devices.append(
        sim_device(
            "dead",
            bus="line-1",
            interval_s=interval,
            timeout_s=0.4,
            offline_after=2,
            backoff_max_s=4,
            failure={"mode": "silent"},
        )
    )
    path = write_config(
        tmp_path, devices, buses=[{"id": "line-1", "serial": {"port": "/dev/ttyUSB0"}}]
    )
    runtime = Runtime(load_config(path), clock=Clock("always"))
    await _run_until(
        runtime,
        lambda: all(_reads(runtime, i) >= 20 for i in healthy),
        what="20 reads of every healthy meter",
    )
    dead = runtime.state.devices["dead"]
    records = buffer_records(tmp_path / "buffer.db")

    for device in healthy:
        times = _reading_times(records, device)
        gaps = [(b - a) / 1000 for a, b in itertools.pairwise(times)]
        assert abs(statistics.mean(gaps) - interval) <= 0.1 * interval, (device, gaps)
    # The dead meter was tried far less often than the healthy ones were read...
    assert dead.health is Health.DOWN
    assert dead.failures <= runtime.state.devices["meter-0"].reads / 2
    assert dead.errors["timeout"] == dead.failures
    # ...and reported offline exactly once, with the reason.
    offline = [r for r in records if r["kind"] == "status" and r["device"] == "dead"]
    assert [(r["state"], r["reason"]) for r in offline] == [("offline", "timeout")]


async def test_crashing_driver_is_restarted_with_backoff_and_an_event(tmp_path: Path) -> None:
    devices = [
        sim_device("steady", interval_s=0.2),
        sim_device("buggy", interval_s=0.2, failure={"mode": "crash", "after_polls": 2}),
    ]
    runtime = Runtime(load_config(write_config(tmp_path, devices)), clock=Clock("always"))
    await _run_until(runtime, lambda: _restarts(runtime, "buggy") >= 2, what="two restarts")
    steady_reads = runtime.state.devices["steady"].reads
    records = buffer_records(tmp_path / "buffer.db")
    crashes = [r for r in records if r["kind"] == "event" and r["type"] == "agent.task_crashed"]
    assert [c["data"]["restarts"] for c in crashes[:2]] == [1, 2]
    assert crashes[0]["data"]["task"] == "driver[simulated:buggy]"
    assert "simulated driver crash" in crashes[0]["data"]["error"]
    # Backoff grows: the second wait is longer than the first (1 s then 2 s, +-20 % jitter).
    assert crashes[1]["data"]["restart_in_s"] > crashes[0]["data"]["restart_in_s"]
    # The platform hears the device went offline (once, with the reason) and came back.
    status = [
        (r["state"], r.get("reason"))
        for r in records
        if r["kind"] == "status" and r["device"] == "buggy"
    ]
    assert status[:3] == [("online", None), ("offline", "driver_error"), ("online", None)]
    # The steady device kept polling all along (about 5 reads a second over >= 1 s of backoff).
    assert steady_reads >= 5
    assert runtime.state.devices["buggy"].reads >= 2


@pytest.mark.parametrize("flag_late", [False, True], ids=["flag-with-step", "flag-after-step"])
async def test_records_stamped_before_clock_sync_are_corrected(
    tmp_path: Path, flag_late: bool
) -> None:
    """With ``flag_late`` NTP steps the clock and the kernel's sync flag comes seconds later:
    the correction used to come out 0 while the records were marked synced."""
    synced = [False]
    skew = [-3600.0]  # the gateway booted an hour behind

    clock = Clock("auto", probe=lambda: synced[0], wall=lambda: time.time() + skew[0], poll_s=0.05)
    runtime = Runtime(
        load_config(write_config(tmp_path, [sim_device("m", interval_s=0.1)])), clock=clock
    )
    task = asyncio.create_task(runtime.run(install_signals=False))
    try:
        await asyncio.wait_for(_until(lambda: _reads(runtime, "m") >= 3), 30)
        skew[0] = 0.0  # NTP steps the clock
        if flag_late:
            await asyncio.wait_for(_until(lambda: runtime._unsynced_shift_ms != 0), 30)
            reads_at_step = runtime.state.devices["m"].reads
            await asyncio.wait_for(_until(lambda: _reads(runtime, "m") > reads_at_step + 2), 30)
            assert not runtime.state.clock_synced
        synced[0] = True
        await asyncio.wait_for(_until(lambda: runtime.state.clock_synced), 30)
        reads_at_sync = runtime.state.devices["m"].reads
        await asyncio.wait_for(_until(lambda: _reads(runtime, "m") > reads_at_sync), 30)
    finally:
        runtime.request_stop()
        await asyncio.wait_for(task, 30)
    records = buffer_records(tmp_path / "buffer.db")
    readings = [r for r in records if r["kind"] == "reading"]
    now_ms = time.time() * 1000
    assert all(r["ts_synced"] for r in readings)
    # Every stamp, early ones included, is now within a minute of the true time, not an hour off.
    assert all(abs(r["ts"] - now_ms) < 60_000 for r in readings)
    synced_events = [
        r for r in records if r["kind"] == "event" and r["type"] == "agent.clock_synced"
    ]
    assert len(synced_events) == 1
    assert abs(synced_events[0]["data"]["correction_ms"] - 3_600_000) < 5_000
    assert synced_events[0]["data"]["records_corrected"] >= 3


async def test_a_step_after_synchronisation_is_reported_not_applied(tmp_path: Path) -> None:
    skew = [0.0]
    clock = Clock("always", wall=lambda: time.time() + skew[0], poll_s=0.05)
    runtime = Runtime(
        load_config(write_config(tmp_path, [sim_device("m", interval_s=0.1)])), clock=clock
    )
    task = asyncio.create_task(runtime.run(install_signals=False))
    try:
        await asyncio.wait_for(_until(lambda: _reads(runtime, "m") >= 3), 30)
        skew[0] = -120.0  # someone set the clock back two minutes
        await asyncio.wait_for(
            _until(lambda: any(e.type == "agent.clock_step" for e in _events(runtime))), 30
        )
    finally:
        runtime.request_stop()
        await asyncio.wait_for(task, 30)
    records = buffer_records(tmp_path / "buffer.db")
    (step,) = [r for r in records if r["kind"] == "event" and r["type"] == "agent.clock_step"]
    assert abs(step["data"]["step_ms"] + 120_000) < 5_000
    assert all(r["ts_synced"] for r in records)


def _events(runtime: Runtime) -> list[Any]:
    return [e for e in runtime.state.recent_events if isinstance(e, Event)]


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.02)


async def test_commands_are_allowlisted_validated_and_audited(tmp_path: Path) -> None:
    from agent.driver import CommandError

    devices = [
        sim_device("door", commands=["output.set"]),
        sim_device("other"),
    ]
    runtime = Runtime(load_config(write_config(tmp_path, devices)), clock=Clock("always"))
    task = asyncio.create_task(runtime.run(install_signals=False))
    try:
        await asyncio.wait_for(_until(lambda: "door" in runtime.devices), 30)
        result = await runtime.execute_command(
            "door", "output.set", {"output": 1, "on": True}, source="test", command_id="c1"
        )
        assert result == {"output": 1, "on": True}
        with pytest.raises(CommandError) as refused:
            await runtime.execute_command(
                "door", "simulate.fault", {"mode": "silent"}, source="test", command_id="c2"
            )
        assert refused.value.reason == "not_allowed"
        with pytest.raises(CommandError) as bad:
            await runtime.execute_command(
                "door", "output.set", {"output": 1, "on": "yes"}, source="test", command_id="c3"
            )
        assert bad.value.reason == "bad_args"
        with pytest.raises(CommandError) as unknown:
            await runtime.execute_command("ghost", "output.set", {}, source="test", command_id="c4")
        assert unknown.value.reason == "unknown_device"
    finally:
        runtime.request_stop()
        await asyncio.wait_for(task, 30)
    audit = [
        r["data"]
        for r in buffer_records(tmp_path / "buffer.db")
        if r["kind"] == "event" and r["type"] == "agent.command"
    ]
    assert [(a["id"], a["status"], a.get("reason")) for a in audit] == [
        ("c1", "ok", None),
        ("c2", "failed", "not_allowed"),
        ("c3", "failed", "bad_args"),
        ("c4", "failed", "unknown_device"),
    ]


@pytest.mark.slow
def test_sigterm_leaves_everything_accepted_in_the_buffer(tmp_path: Path) -> None:
    devices = [sim_device(f"m{i}", interval_s=0.05, latency_ms=30) for i in range(20)]
    agent = AgentProcess(write_config(tmp_path, devices))
    try:
        agent.wait_event("agent.starting")
        wait_for(
            lambda: (
                (tmp_path / "buffer.db").exists()
                and len(buffer_records(tmp_path / "buffer.db")) > 200
            ),
            what="records in the buffer",
        )
    finally:
        code = agent.stop()
    assert code == 0, "".join(agent.raw[-20:])
    stopped = agent.events("agent.stopped")
    assert stopped, "".join(agent.raw[-20:])
    records = buffer_records(tmp_path / "buffer.db")
    # Every record the agent accepted (its own count, logged at exit) is in the buffer...
    assert len(records) == stopped[-1]["records_accepted"]
    # ...with no gap in seq, and the last one is the stop event written during shutdown.
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert records[-1]["kind"] == "event"
    assert records[-1]["type"] == "agent.stopped"


BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(6)
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda good: BOMB + good, "more than 250,000 values"),
        (lambda good: good.replace("id: a", "id: a\x01"), "control character U+0001"),
        (lambda good: good.replace("interval_s: 0.1", "interval_s: !!float soon"), "!!float"),
        (lambda good: good + "x: " + "[" * 600 + "]" * 600 + "\n", "levels deep"),
    ],
    ids=["alias-bomb", "control-character", "bad-tag", "deep-nesting"],
)
def test_sighup_with_a_hostile_config_rejects_it_in_bounded_memory(
    tmp_path: Path, damage: Callable[[str], str], expected: str
) -> None:
    import psutil

    path = write_config(tmp_path, [sim_device("a", interval_s=0.1)])
    agent = AgentProcess(path)
    try:
        agent.wait_event("agent.starting")
        rss_before = psutil.Process(agent.proc.pid).memory_info().rss
        path.write_text(damage(path.read_text()))
        agent.signal(signal.SIGHUP)
        rejected = agent.wait_event("config.rejected")
        assert any(expected in e for e in rejected["errors"]), rejected
        rss_after = psutil.Process(agent.proc.pid).memory_info().rss
        assert agent.proc.poll() is None
    finally:
        code = agent.stop()
    assert code == 0
    assert (rss_after - rss_before) / 2**20 < 150, "well within the unit's MemoryMax"
    types = [r["type"] for r in buffer_records(tmp_path / "buffer.db") if r["kind"] == "event"]
    assert "agent.config_rejected" in types


@pytest.mark.slow
def test_sighup_with_a_broken_config_keeps_the_old_one(tmp_path: Path) -> None:
    path = write_config(tmp_path, [sim_device("a", interval_s=0.1)])
    agent = AgentProcess(path)
    try:
        agent.wait_event("agent.starting")
        good = path.read_text()
        path.write_text(good.replace("interval_s: 0.1", "interval_s: soon"))
        agent.signal(signal.SIGHUP)
        rejected = agent.wait_event("config.rejected")
        assert any("devices[0].interval_s" in e for e in rejected["errors"]), rejected
        assert rejected["hint"] == "still running on the previous config"
        reads_before = len(buffer_records(tmp_path / "buffer.db"))
        wait_for(
            lambda: len(buffer_records(tmp_path / "buffer.db")) > reads_before + 5,
            what="the old config still producing records",
        )
        assert agent.proc.poll() is None
        # A valid change is applied: a new device starts.
        path.write_text(
            good.replace(
                "devices:\n",
                "devices:\n- id: b\n  driver: simulated\n  interval_s: 0.1\n"
                "  points: [{name: w, kind: constant, value: 7}]\n",
            )
        )
        agent.signal(signal.SIGHUP)
        reloaded = agent.wait_event("config.reloaded")
        assert reloaded["devices_added"] == ["b"]
        wait_for(
            lambda: any(
                r["device"] == "b" and r["kind"] == "reading"
                for r in buffer_records(tmp_path / "buffer.db")
            ),
            what="readings of the new device",
        )
    finally:
        code = agent.stop()
    assert code == 0
    records = buffer_records(tmp_path / "buffer.db")
    types = [r["type"] for r in records if r["kind"] == "event"]
    assert "agent.config_rejected" in types
    assert "agent.config_reloaded" in types


@pytest.mark.slow
def test_corrupt_buffer_at_start_is_moved_aside_and_the_agent_runs(tmp_path: Path) -> None:
    path = write_config(tmp_path, [sim_device("a", interval_s=0.1)])
    agent = AgentProcess(path)
    agent.wait_event("agent.starting")
    assert agent.stop() == 0
    first_epoch = agent.events("agent.starting")[0]["epoch"]
    db = tmp_path / "buffer.db"
    for leftover in tmp_path.glob("buffer.db-*"):
        leftover.unlink()
    garbage = b"this is not a database, it is what a failing SD card returns" * 100
    db.write_bytes(garbage)

    agent = AgentProcess(path)
    try:
        starting = agent.wait_event("agent.starting")
        recovered = agent.events("buffer.recovered")
        assert recovered, "".join(agent.raw)
        wait_for(lambda: len(buffer_records(db)) > 3, what="records in the new buffer")
        assert agent.proc.poll() is None
    finally:
        assert agent.stop() == 0
    assert starting["epoch"] != first_epoch
    moved = Path(recovered[0]["moved_to"])
    assert moved.read_bytes() == garbage
    records = buffer_records(db)
    assert records[0]["type"] == "agent.buffer_corrupt"
    assert records[0]["data"]["moved_to"] == str(moved)


async def test_a_driver_that_cannot_be_imported_is_reported_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import drivers

    spec = drivers.DRIVERS["simulated"]
    monkeypatch.setitem(
        drivers.DRIVERS,
        "simulated",
        drivers.DriverSpec(spec.name, spec.config, "drivers.not_installed:Driver", extra="sim"),
    )
    runtime = Runtime(load_config(write_config(tmp_path, [sim_device("a")])), clock=Clock("always"))
    await _run_until(
        runtime,
        lambda: "a" in runtime.state.devices and runtime.state.uptime_s > 0.2,
        what="the start",
    )
    state = runtime.state.devices["a"]
    assert state.health is Health.DOWN
    assert state.last_error is not None
    assert "install community-edge-agent[sim]" in state.last_error
    events = [
        r["data"]
        for r in buffer_records(tmp_path / "buffer.db")
        if r["kind"] == "event" and r["type"] == "agent.driver_unavailable"
    ]
    assert [e["device"] for e in events] == ["a"]


async def test_a_full_disk_loses_no_accepted_record_and_polling_goes_on(tmp_path: Path) -> None:
    """SQLite's max_page_count stands in for a full disk: the same SQLITE_FULL error."""
    runtime = Runtime(
        load_config(write_config(tmp_path, [sim_device("m", interval_s=0.05)])),
        clock=Clock("always"),
    )
    task = asyncio.create_task(runtime.run(install_signals=False))

    async def on_buffer_thread(sql: str) -> None:
        assert runtime.buffer is not None
        buf = runtime.buffer
        await asyncio.get_running_loop().run_in_executor(
            buf._executor, lambda: buf._buffer._conn.execute(sql).fetchall()
        )

    try:
        await asyncio.wait_for(_until(lambda: _reads(runtime, "m") >= 3), 30)
        await on_buffer_thread("PRAGMA max_page_count = 1")  # no page more: the disk is full
        await asyncio.wait_for(_until(lambda: runtime.state.records_lost_unwritable >= 20), 30)
        reads_while_full = _reads(runtime, "m")
        assert runtime.state.buffer.last_error is not None
        assert "full" in runtime.state.buffer.last_error
        await asyncio.wait_for(_until(lambda: _reads(runtime, "m") > reads_while_full + 5), 30)
        await on_buffer_thread("PRAGMA max_page_count = 1073741823")  # space again
        await asyncio.wait_for(_until(lambda: runtime.state.buffer.last_error is None), 30)
        lost = runtime.state.records_lost_unwritable
    finally:
        runtime.request_stop()
        await asyncio.wait_for(task, 30)
    records = buffer_records(tmp_path / "buffer.db")
    # Every record the runtime accepted is there, seqs without a gap: nothing was half-stored.
    assert len(records) == runtime.state.records_accepted
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    reports = [
        r["data"]
        for r in records
        if r["kind"] == "event" and r["type"] == "agent.buffer_write_failed"
    ]
    assert len(reports) == 1
    assert reports[0]["records_lost"] <= lost
    assert reports[0]["records_lost"] >= 20
    assert "full" in reports[0]["error"]


async def test_the_buffer_figures_survive_an_sqlite_error(tmp_path: Path) -> None:
    import sqlite3

    runtime = Runtime(
        load_config(write_config(tmp_path, [sim_device("m", interval_s=0.1)])),
        clock=Clock("always"),
    )
    await runtime.start()
    try:
        assert runtime.buffer is not None
        real = runtime.buffer.stats
        failures = [sqlite3.OperationalError("disk I/O error")]

        async def flaky() -> Any:
            if failures:
                raise failures.pop()
            return await real()

        runtime.buffer.stats = flaky  # type: ignore[method-assign]
        runtime.state.buffer.records = -1
        deadline = time.monotonic() + 30
        while runtime.state.buffer.records <= 0:
            assert time.monotonic() < deadline, "the figures stopped for good"
            await asyncio.sleep(0.05)
        assert not failures
        assert runtime.state.task_restarts >= 1
    finally:
        await runtime.shutdown()
    crashed = [
        r["data"]["task"]
        for r in buffer_records(tmp_path / "buffer.db")
        if r.get("type") == "agent.task_crashed"
    ]
    assert "buffer-figures" in crashed
