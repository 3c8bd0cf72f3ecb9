"""The whole path with real processes: simulated devices -> agent -> HTTP -> reference platform."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_proc import ROOT, AgentProcess, buffer_records, sim_device, wait_for, write_config
from platform_proc import GATEWAY, PlatformProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[PlatformProcess]:
    proc = PlatformProcess(tmp_path)
    try:
        yield proc
    finally:
        proc.stop()


def test_the_platform_harness_takes_an_admin_token_that_starts_with_a_dash(
    tmp_path: Path,
) -> None:
    # CI once failed to start the platform: a generated token began with "-" and argparse took
    # "--admin-token -…" for a missing value (exit 2), one start in 64.
    proc = PlatformProcess(tmp_path, token="-starts-with-a-dash")
    try:
        assert proc.admin("GET", "/admin/fault")["fault"]["mode"] == "none"
    finally:
        proc.stop()


def buffer_stats(path: Path) -> dict[str, Any]:
    """The running agent's buffer figures, read the way a technician does (read-only)."""
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", "buffer", "stats", "--path", str(path), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def producers(interval_s: float = 0.05, meters: int = 4) -> list[dict[str, Any]]:
    devices = [sim_device(f"meter-{i}", interval_s=interval_s) for i in range(meters)]
    devices.append(
        sim_device(
            "door",
            interval_s=interval_s,
            events=[{"type": "door.opened", "every_polls": 3}],
            commands=["output.set"],
        )
    )
    return devices


def test_kill_9_twenty_times_then_every_seq_arrives_once(
    tmp_path: Path, platform: PlatformProcess
) -> None:
    config = write_config(tmp_path, producers(), uplink=platform.uplink_config())
    rng = random.Random(20261128)
    epochs = set()
    for _ in range(20):
        agent = AgentProcess(config)
        try:
            epochs.add(agent.wait_event("agent.starting")["epoch"])
            time.sleep(rng.uniform(0.1, 1.2))  # the moment of the kill is the thing under test
        finally:
            agent.kill()
    assert len(epochs) == 1, "the buffer file must survive every kill with its epoch"
    assert len(platform.records()) > 0

    # The final clean run: no more producers, let the backlog drain, then check the platform.
    quiet = write_config(
        tmp_path,
        [dict(d, enabled=False) for d in producers()],
        name="quiet.yaml",
        uplink=platform.uplink_config(),
    )
    agent = AgentProcess(quiet)
    try:
        agent.wait_event("agent.starting")
        db = tmp_path / "buffer.db"

        def drained() -> bool:
            stats = buffer_stats(db)
            return stats["records"] == 0 and len(platform.records()) >= stats["last_seq"]

        wait_for(drained, timeout_s=120, what="the backlog to drain to the platform")
        last_seq = buffer_stats(db)["last_seq"]
    finally:
        assert agent.stop() == 0
    stored = platform.records()
    assert {r["epoch"] for r in stored} == epochs
    seqs = [r["seq"] for r in stored]
    # Every seq from 1 to the last, none missing, none twice (after the platform's dedup).
    assert seqs == list(range(1, last_seq + 1))
    assert len({(r["epoch"], r["seq"]) for r in stored}) == len(stored)
    starts = [r for r in stored if r["kind"] == "event" and r["type"] == "agent.started"]
    assert len(starts) == 21


def test_full_buffer_during_an_outage_drops_readings_keeps_events(
    tmp_path: Path, platform: PlatformProcess
) -> None:
    platform.fault("refuse")
    config = write_config(
        tmp_path,
        producers(meters=10),
        buffer={"path": str(tmp_path / "buffer.db"), "max_size_mb": 0.2, "commit_interval_ms": 5},
        # Small batches: what is in flight must stay well under the bound for exact accounting.
        uplink=platform.uplink_config(batch_max_records=50),
    )
    db = tmp_path / "buffer.db"
    agent = AgentProcess(config)
    try:
        agent.wait_event("agent.starting")
        # The outage: the agent keeps polling, the bound is hit, readings are dropped.
        wait_for(
            lambda: db.exists() and buffer_stats(db)["dropped_readings"] > 500,
            timeout_s=60,
            what="the buffer to overflow",
        )
        assert platform.records() == []
        platform.fault("none")
        wait_for(
            lambda: any(
                r["kind"] == "event" and r["type"] == "agent.buffer_overflow"
                for r in platform.records()
            ),
            timeout_s=60,
            what="the overflow event at the platform",
        )
    finally:
        assert agent.stop() == 0
    stats = buffer_stats(db)
    assert stats["dropped_events"] == 0
    stored = platform.records()
    remaining = buffer_records(db)
    # A batch in flight at the stop is both at the platform and still in the buffer (its ack
    # did not come back): one record per seq, as the platform's dedup counts them.
    by_seq = {r["seq"]: r for r in stored + remaining}
    overflow = [
        r["data"]
        for r in by_seq.values()
        if r["kind"] == "event" and r["type"] == "agent.buffer_overflow"
    ]
    assert overflow
    assert all(o["dropped_events"] == 0 for o in overflow)
    assert sum(o["dropped_readings"] for o in overflow) == stats["dropped_readings"]
    # Everything the buffer ever accepted is at the platform, still in the buffer, or counted
    # as dropped: nothing vanished silently.
    seen = {r["seq"] for r in stored} | {r["seq"] for r in remaining}
    missing = set(range(1, stats["last_seq"] + 1)) - seen
    assert len(missing) == stats["dropped_readings"]
    # Events leave before readings: by the time the platform had the first overflow event, it
    # had every door event accepted before it too, although the buffer was full of readings.
    first_overflow = min(
        r["seq"] for r in stored if r["kind"] == "event" and r["type"] == "agent.buffer_overflow"
    )
    door_before = [
        r["seq"]
        for r in stored + remaining
        if r["kind"] == "event" and r["type"] == "door.opened" and r["seq"] < first_overflow
    ]
    assert door_before
    assert set(door_before) <= {r["seq"] for r in stored}


def test_commands_from_the_platform_and_on_site(tmp_path: Path, platform: PlatformProcess) -> None:
    config = write_config(
        tmp_path,
        [sim_device("door", interval_s=0.5, commands=["output.set"])],
        uplink=platform.uplink_config(),
        control={"socket": str(tmp_path / "control.sock")},
    )
    agent = AgentProcess(config)
    try:
        agent.wait_event("agent.starting")

        def outcome(device: str, action: str, args: dict[str, Any]) -> dict[str, Any]:
            queued = platform.admin(
                "POST",
                f"/v1/gateways/{GATEWAY}/commands",
                {"device": device, "action": action, "args": args},
            )
            path = f"/v1/gateways/{GATEWAY}/commands/{queued['command']['id']}"
            return wait_for(  # type: ignore[no-any-return]
                lambda: (
                    (c := platform.admin("GET", path))["status"] not in ("queued", "delivered")
                    and c
                ),
                what=f"the outcome of {action} at the platform",
            )

        done = outcome("door", "output.set", {"output": 2, "on": True})
        assert done["status"] == "ok", done
        assert done["result"] == {"output": 2, "on": True}, done
        # Not in the allowlist: refused by the agent, reported as refused with the reason.
        refused = outcome("door", "simulate.fault", {"mode": "silent"})
        assert (refused["status"], refused["reason"]) == ("refused", "not_allowed"), refused

        # On site: the CLI through the local control socket takes the same path.
        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "agent.cli", "command", "--config", str(config), *args],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )

        ok = cli("door", "output.set", "output=3", "on=true")
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["result"] == {"output": 3, "on": True}
        no = cli("door", "simulate.fault", "mode=silent")
        assert no.returncode == 1
        assert json.loads(no.stdout)["reason"] == "not_allowed"
    finally:
        assert agent.stop() == 0
    audit = [
        r["data"]
        for r in buffer_records(tmp_path / "buffer.db") + platform.records()
        if r["kind"] == "event" and r["type"] == "agent.command"
    ]
    sources = {(a["source"], a["action"], a["status"]) for a in audit}
    assert ("local", "output.set", "ok") in sources
    assert ("local", "simulate.fault", "failed") in sources
    assert any(s[0] != "local" and s[2] == "ok" for s in sources)


def test_sigterm_during_an_outage_keeps_the_backlog(
    tmp_path: Path, platform: PlatformProcess
) -> None:
    platform.fault("hang")
    config = write_config(tmp_path, producers(), uplink=platform.uplink_config(timeout_s=2))
    agent = AgentProcess(config)
    try:
        agent.wait_event("agent.starting")
        wait_for(lambda: buffer_stats(tmp_path / "buffer.db")["records"] > 100, what="a backlog")
        agent.signal(signal.SIGTERM)
        assert agent.proc.wait(30) == 0
    finally:
        agent.stop()
    platform.fault("none")
    backlog = buffer_records(tmp_path / "buffer.db")
    assert len(backlog) > 100
    assert platform.records() == []


def test_a_command_redelivered_after_kill_9_does_not_run_again(
    tmp_path: Path, platform: PlatformProcess
) -> None:
    """At most once across a crash: the id is claimed in the buffer file before the command
    runs, so the agent that comes back refuses the platform's second delivery."""
    import sqlite3

    config = write_config(
        tmp_path,
        [sim_device("door", interval_s=0.5, commands=["output.set"])],
        uplink=platform.uplink_config(),
    )
    path = ""

    def settled() -> dict[str, Any] | None:
        c = platform.admin("GET", path)
        return c if c["status"] not in ("queued", "delivered") else None

    agent = AgentProcess(config)
    try:
        agent.wait_event("agent.starting")
        queued = platform.admin(
            "POST",
            f"/v1/gateways/{GATEWAY}/commands",
            {"device": "door", "action": "output.set", "args": {"output": 1, "on": True}},
        )
        command_id = queued["command"]["id"]
        path = f"/v1/gateways/{GATEWAY}/commands/{command_id}"
        first = wait_for(settled, what="the first run's result")
        assert first["status"] == "ok", first
    finally:
        agent.kill()  # kill -9: no clean shutdown, no flush beyond what was durable
    # The platform delivers it again (a failover, a lost answer).
    with sqlite3.connect(platform.db) as db:
        db.execute(
            "UPDATE commands SET status = 'queued', result = NULL, result_ms = NULL WHERE id = ?",
            (command_id,),
        )
    agent = AgentProcess(config)
    try:
        again = wait_for(settled, what="the redelivery's result")
    finally:
        assert agent.stop() == 0
    assert (again["status"], again["reason"]) == ("refused", "duplicate"), again
    # The same audit event may be both in the buffer and at the platform: one run, one stamp.
    runs = {
        r["ts"]
        for r in buffer_records(tmp_path / "buffer.db") + platform.records()
        if r["kind"] == "event"
        and r["type"] == "agent.command"
        and r["data"].get("id") == command_id
        and r["data"].get("status") == "ok"
    }
    assert len(runs) == 1, runs
