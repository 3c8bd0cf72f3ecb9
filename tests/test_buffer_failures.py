"""Failures of the buffer's file while the agent runs are handled like failures at start.

- SQLite finds the file corrupt while running: the file is moved aside (never deleted), a new
  epoch starts with an ``agent.buffer_corrupt`` event, and the append that found it is stored.
- The card is read-only when the agent starts (the kernel remounted it after I/O errors): the
  agent runs degraded, polling, its page and ``/metrics`` stay up, the problem is shown, and
  the buffer opens once the card is writable again. Before, ``edge-agent run`` exited and
  systemd restarted it in a loop, page and all.

The read-only card is a real tmpfs the test remounts (root, as in CI). A tmpfs cannot be
remounted read-only while a file on it is open for writing (EBUSY), so the card going read-only
under a running agent is the write-failure path the full-disk tests cover.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from pathlib import Path

import pytest
from test_web_support import WebClient, base_url, running_agent, wait_until

import agent.runtime
from agent.records import Reading, Record
from buffer import AsyncBuffer, Buffer


def readings(n: int, start: int = 0) -> list[Record]:
    return [
        Reading(device="m", ts=1_700_000_000_000 + i, point="energy", value=float(i), unit="kWh")
        for i in range(start, start + n)
    ]


def corrupt_while_open(path: Path) -> None:
    """Break the file under a running buffer the way SQLite then reports as corruption: the
    readings table's root page points past the end of the file (another connection writes it,
    so the running one sees the change instead of its cached pages)."""
    other = sqlite3.connect(path)
    try:
        pages = other.execute("PRAGMA page_count").fetchone()[0]
        version = other.execute("PRAGMA schema_version").fetchone()[0]
        other.execute("PRAGMA writable_schema = ON")
        other.execute(
            "UPDATE sqlite_master SET rootpage = ? WHERE name = 'readings'", (pages + 50,)
        )
        other.execute(f"PRAGMA schema_version = {version + 1}")
        other.commit()
    finally:
        other.close()


async def test_corruption_found_while_running_moves_the_file_aside_and_starts_an_epoch(
    tmp_path: Path,
) -> None:
    path = tmp_path / "buffer.db"
    buf = await AsyncBuffer.open(path, commit_interval_ms=0, max_bytes=2**22)
    try:
        await buf.append(readings(500))
        in_flight = await buf.take(10, 2**20)
        assert in_flight is not None
        old_epoch = buf.epoch
        corrupt_while_open(path)
        # The append that finds the damage is stored, in the fresh file.
        [seq] = await buf.append(readings(1, start=500))
        assert buf.epoch != old_epoch
        assert buf.recoveries == 1
        moved = buf.recovered_from
        assert moved is not None
        assert moved.name.startswith("buffer.db.corrupt-")
        assert moved.exists(), "moved aside, never deleted"
        # The batch that was on its way when the file went: its records went with the file.
        assert await buf.ack(in_flight) == 0
        batch = await buf.take(100, 2**20)
        assert batch is not None
        assert batch.epoch == buf.epoch
        first = batch.records[0]
        assert b'"type":"agent.buffer_corrupt"' in first
        assert moved.name.encode() in first
        assert seq in batch.seqs()
        assert await buf.ack(batch) == len(batch.records)
    finally:
        await buf.close()
    # The fresh file is a sound buffer on reopen, with the same new epoch.
    reopened = Buffer.open(path)
    try:
        assert reopened.epoch == batch.epoch
        assert reopened.recovered_from is None or reopened.recovered_from == moved
    finally:
        reopened.close()


async def test_the_running_agent_goes_on_after_corruption(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as runtime:
        assert runtime.buffer is not None
        old_epoch = runtime.buffer.epoch
        accepted = runtime.state.records_accepted
        corrupt_while_open(runtime.config.buffer.path)
        await wait_until(
            lambda: runtime.buffer is not None and runtime.buffer.epoch != old_epoch,
            what="the new epoch",
        )
        await wait_until(
            lambda: runtime.state.records_accepted > accepted + 5, what="polling to go on"
        )
        assert runtime.state.records_lost_unwritable == 0
        await wait_until(lambda: runtime.state.buffer.epoch != old_epoch, what="the page's epoch")
        assert runtime.buffer is not None
        stats = await runtime.buffer.stats()
        assert stats.epoch != old_epoch
    corrupt_files = list(tmp_path.glob("buffer.db.corrupt-*"))
    assert [p.name for p in corrupt_files if "-wal" not in p.name and "-shm" not in p.name]


def remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True, timeout=30)


async def test_a_read_only_card_at_start_gives_a_degraded_agent_not_a_crash_loop(
    tmp_path: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent.runtime, "BUFFER_RETRY_S", 0.2)
    # The card holds the buffer; the config and control socket live elsewhere (/etc, /run).
    sections = {
        "buffer": {
            "path": str(small_disk / "buffer.db"),
            "commit_interval_ms": 5,
            "max_size_mb": 4,
        },
        "control": {"socket": str(tmp_path / "control.sock")},
    }
    async with running_agent(tmp_path / "first", **sections) as runtime:
        accepted_first = runtime.state.records_accepted
    assert accepted_first > 0
    remount(small_disk, "ro")
    try:
        async with running_agent(tmp_path / "second", **sections) as runtime:
            # Up and polling, without a buffer: what it reads is counted as lost.
            assert runtime.buffer is None
            error = runtime.state.buffer.last_error
            assert error is not None
            assert "cannot open" in error
            async with WebClient(base_url(runtime)) as client:
                await client.login()
                status = await client.api("/api/status")
                assert status["buffer"]["last_error"] == error
                assert status["records_lost_unwritable"] > 0
                metrics = await (await client.get("/metrics")).text()
                assert "edge_agent_buffer_writable 0" in metrics
                # Still read-only: tried again, still degraded, still serving.
                await asyncio.sleep(0.6)
                assert runtime.buffer is None
                assert (await client.get("/api/status")).status == 200
                # The card is writable again: the buffer opens and records are kept again.
                remount(small_disk, "rw")
                await wait_until(lambda: runtime.buffer is not None, what="the buffer to open")
                kept = runtime.state.records_accepted
                await wait_until(
                    lambda: runtime.state.records_accepted > kept, what="records kept again"
                )
                await wait_until(
                    lambda: runtime.state.buffer.last_error is None, what="the problem to clear"
                )
                metrics = await (await client.get("/metrics")).text()
                assert "edge_agent_buffer_writable 1" in metrics
    finally:
        remount(small_disk, "rw")
    # The loss was reported once the buffer could take the report.
    from agent_proc import buffer_records

    types = [r.get("type") for r in buffer_records(small_disk / "buffer.db")]
    assert "agent.buffer_write_failed" in types
