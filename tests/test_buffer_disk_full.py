"""A buffer that filled its disk drains once the platform is reachable (buffer/reserve.py).

On a real full filesystem: a small tmpfs the test mounts (it needs root, which CI has). Before
the reserve, deleting an acknowledged batch failed with "database or disk is full": the uplink
resent the same batch for ever and every new reading was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from pathlib import Path

import pytest
import structlog
from test_uplink_support import GW, KEY_ID, SECRET, running_platform, wait_for

from agent.config.models import Community, Gateway, HttpUplink, SecretRef
from agent.records import Reading, Record
from agent.state import UplinkState
from agent.uplink.http import HttpUplinkClient
from buffer import AsyncBuffer, Buffer
from buffer.reserve import DiskFullError

INVENTORY = {
    "gateway": {
        "id": GW,
        "community": {"code": "350102001001"},
        "timezone": "Asia/Shanghai",
        "agent_version": "test",
    },
    "devices": [],
}
MAX_BYTES = 8 * 2**20
"""A bound larger than the disk, so the disk fills first; its reserve is 1 MiB."""


def readings(start: int, n: int) -> list[Record]:
    return [
        Reading(device="m", ts=1_700_000_000_000 + i, point="energy", value=float(i), unit="kWh")
        for i in range(start, start + n)
    ]


def fill(buf: Buffer) -> list[int]:
    """Append until the disk is full; the seqs the buffer said it stored."""
    stored: list[int] = []
    n = 0
    error: Exception | None = None
    while error is None:
        try:
            stored += buf.append(readings(n, 500))
        except (OSError, sqlite3.Error) as exc:
            error = exc
        n += 500
    assert "full" in str(error)
    return stored


def test_a_full_disk_drains_and_takes_new_records_again(small_disk: Path) -> None:
    filler = small_disk / "journal.log"  # someone else's file on the same card
    filler.write_bytes(b"x" * (1 * 2**20))
    with contextlib.closing(Buffer.open(small_disk / "b.db", max_bytes=MAX_BYTES)) as buf:
        assert buf.disk.present
        stored = fill(buf)
        assert len(stored) > 10_000
        acked: list[int] = []
        while (batch := buf.take(2000, 1 << 20)) is not None:
            assert buf.ack(batch) == len(batch.records)
            acked += batch.seqs()
        assert sorted(acked) == stored, "every record stored is delivered once, none lost"
        assert buf.stats().records == 0
        assert not buf.disk.present, "the drain needed the reserve"
        assert (small_disk / "b.db-wal").stat().st_size == 0, "the WAL is cut after the drain"

        # New readings go to the pages the drain freed.
        again = buf.append(readings(10**6, 5000))
        assert len(again) == 5000
        assert buf.stats().records == 5000

        # Once there is room again, the reserve comes back at the next delete.
        filler.unlink()
        batch = buf.take(100, 1 << 20)
        assert batch is not None
        buf.ack(batch)
        assert buf.disk.present


def test_appends_stop_before_the_last_of_the_disk_while_the_reserve_is_spent(
    small_disk: Path,
) -> None:
    with contextlib.closing(Buffer.open(small_disk / "b.db", max_bytes=MAX_BYTES)) as buf:
        fill(buf)
        while buf.disk.present:  # the drain spends the reserve at some point
            batch = buf.take(500, 1 << 20)
            assert batch is not None, "the reserve was never needed"
            buf.ack(batch)
        # More than the freed pages hold: refused with a clear error, not a half-written card.
        accepted = 0
        with pytest.raises(DiskFullError, match="disk is full"):  # noqa: PT012
            for i in range(200):
                accepted += len(buf.append(readings(i * 1000, 1000)))
        assert accepted < 200_000
        # What was acknowledged can still be deleted, whatever appends did meanwhile.
        while (batch := buf.take(2000, 1 << 20)) is not None:
            buf.ack(batch)
        assert buf.stats().records == 0


async def test_the_uplink_drains_a_buffer_that_filled_its_disk(
    small_disk: Path, tmp_path: Path
) -> None:
    async with running_platform(tmp_path) as p:
        await p.fault(mode="refuse")  # the outage during which the card filled
        buffer = await AsyncBuffer.open(small_disk / "b.db", max_bytes=MAX_BYTES)
        client = HttpUplinkClient(
            HttpUplink(
                url=p.url,
                key_id=KEY_ID,
                secret=SecretRef(env="UNUSED"),
                timeout_s=2,
                backoff_cap_s=0.2,
                first_attempt_jitter_s=0,
                commands=False,
            ),
            gateway=Gateway(id=GW, community=Community(code="350102001001")),
            secret=SECRET,
            buffer=buffer,
            state=UplinkState(),
            inventory=lambda: INVENTORY,
            commands=None,
            log=structlog.get_logger(),
            agent_version="test",
            rng=random.Random(1),
            idle_poll_s=0.05,
        )
        task = asyncio.create_task(client.run())
        try:
            stored: list[int] = []
            n = 0
            error: Exception | None = None
            while error is None:
                try:
                    stored += await buffer.append(readings(n, 500))
                except (OSError, sqlite3.Error) as exc:
                    error = exc
                n += 500
            assert "full" in str(error)
            await p.fault(mode="none")

            async def drained() -> bool:
                return (await buffer.stats()).records == 0

            await wait_for(drained, timeout=60)
            assert not task.done(), "the uplink kept running"
            seqs = sorted(r["seq"] for r in await p.records())
            assert seqs == stored
            assert len(await buffer.append(readings(10**6, 1000))) == 1000
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await client.close()
            await buffer.close()
