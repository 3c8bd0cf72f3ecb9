"""The store-and-forward buffer's promises (DESIGN.md section 4), on real SQLite files."""

from __future__ import annotations

import asyncio
import io
import sqlite3
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import buffer._schema as schema
from agent.records import (
    Event,
    Quality,
    Reading,
    Record,
    Severity,
    Status,
    StatusState,
    encode_record,
    now_ms,
)
from buffer import (
    ROW_OVERHEAD,
    AsyncBuffer,
    Batch,
    Buffer,
    BufferClosedError,
    BufferVersionError,
)
from buffer._encode import RecordEncoder
from buffer.cli import export_command, stats_command

BIG = 64 * 2**20
T0 = 1_780_000_000_000


def reading(i: int, *, ts: int | None = None, synced: bool = True, device: str = "m1") -> Reading:
    return Reading(
        device=device,
        ts=T0 + i if ts is None else ts,
        ts_synced=synced,
        point="energy",
        value=i * 1.5,
        unit="kWh",
    )


def event(
    i: int, *, ts: int | None = None, synced: bool = True, severity: Severity = Severity.ALARM
) -> Event:
    return Event(
        device="door-1",
        ts=T0 + i if ts is None else ts,
        ts_synced=synced,
        type="door.forced_open" if severity is Severity.ALARM else "door.closed",
        severity=severity,
        data={"n": i, "门": "东门"},
    )


def info(i: int, *, synced: bool = True) -> Event:
    return event(i, synced=synced, severity=Severity.INFO)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "buffer.db"


@pytest.fixture
def buf(path: Path) -> Iterator[Buffer]:
    b = Buffer.open(path, boot_id="boot-1")
    yield b
    b.close()


def seqs_of(batch: Batch) -> list[int]:
    return [orjson.loads(r)["seq"] for r in batch.records]


def stored_bytes(b: Buffer) -> int:
    """What the bound counts: waiting records and set-aside ones."""
    total = 0
    for table in ("alarms", "events", "readings", "poison"):
        n, size = b._conn.execute(
            f"SELECT count(*), coalesce(sum(length(body)), 0) FROM {table}"  # noqa: S608
        ).fetchone()
        total += size + n * ROW_OVERHEAD
    return total


# --------------------------------------------------------------------------- seq


def test_seq_starts_at_1_and_is_never_reused(path: Path) -> None:
    with Buffer.open(path) as b:
        assert b.append([reading(1), reading(2), event(3)]) == [1, 2, 3]
        batch = b.take(100, BIG)
        assert batch is not None
        assert b.ack(batch) == 3
        assert b.stats().records == 0
        assert b.append([reading(4)]) == [4]
        batch = b.take(100, BIG)
        assert batch is not None
        b.ack(batch)
        epoch = b.epoch
    with Buffer.open(path) as b:
        assert b.epoch == epoch
        assert b.stats().records == 0
        assert b.append([reading(5), reading(6)]) == [5, 6]
        assert b.stats().last_seq == 6


def test_a_failed_append_consumes_no_seq(buf: Buffer, monkeypatch: pytest.MonkeyPatch) -> None:
    assert buf.append([reading(1)]) == [1]
    bad = Event(device="d", ts=T0, type="x", data={"k": object()})
    with pytest.raises(TypeError):
        buf.append([reading(2), bad])

    def boom(*_args: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(buf, "_enforce_size", boom)
    with pytest.raises(sqlite3.OperationalError):
        buf.append([reading(3), reading(4)])
    monkeypatch.undo()
    assert buf.append([reading(5)]) == [2]
    assert [r["seq"] for r in buf.export()] == [1, 2]
    assert buf.stats().bytes == stored_bytes(buf)


def test_two_writers_on_one_file_never_share_a_seq(path: Path) -> None:
    # e.g. a maintenance tool writing while the agent runs: counters are re-read per transaction.
    with Buffer.open(path) as a, Buffer.open(path) as b:
        assert a.append([reading(1)]) == [1]
        assert b.append([reading(2), reading(3)]) == [2, 3]
        assert a.append([event(4)]) == [4]
        assert a.stats().records == 4
        assert a.stats().bytes == stored_bytes(a)


# --------------------------------------------------------------------------- order


def test_events_leave_before_earlier_readings(buf: Buffer) -> None:
    buf.append([reading(i) for i in range(5)])  # 1..5
    buf.append([event(6), Status(device="m1", ts=T0, state=StatusState.OFFLINE, reason="timeout")])
    buf.append([reading(8)])  # 8
    batch = buf.take(100, BIG)
    assert batch is not None
    assert seqs_of(batch) == [6, 7, 1, 2, 3, 4, 5, 8]
    assert batch.ranges == ((-1, 6, 6), (0, 7, 7), (1, 1, 8))  # an alarm, a status, readings
    kinds = [orjson.loads(r)["kind"] for r in batch.records]
    assert kinds == ["event", "status"] + ["reading"] * 6


def test_alarms_leave_before_every_other_event_and_are_dropped_last(tmp_path: Path) -> None:
    """An SOS after an outage must not wait behind hours of status changes: alarms (severity
    alarm or critical) are a class of their own that leaves first, and goes last when full."""
    with Buffer.open(tmp_path / "b.db", boot_id="boot-1") as b:
        b.append([reading(1), info(2), info(3)])
        b.append([event(4), Status(device="m1", ts=T0, state=StatusState.OFFLINE)])
        critical = event(6, severity=Severity.CRITICAL)
        b.append([info(5, synced=False), critical, event(7, synced=False)])
        batch = b.take(3, BIG)
        assert batch is not None
        assert seqs_of(batch) == [4, 7, 8]  # synced or not, alarm or critical
        assert batch.ranges == ((-1, 4, 8),)
        assert b.ack(batch) == 3
        rest = b.take(100, BIG)
        assert rest is not None
        assert seqs_of(rest) == [2, 3, 5, 6, 1]
        assert b.stats().events == 4
        assert b.stats().bytes == stored_bytes(b)
    from buffer.core import MIN_MAX_BYTES

    with Buffer.open(tmp_path / "full.db", max_bytes=MIN_MAX_BYTES) as b:
        alarms = b.append([event(i) for i in range(20)])
        n = 0
        while b.stats().dropped_events < 200:
            b.append([info(n + k) for k in range(20)])
            n += 20
        kept = list(b.export())
        assert [r["seq"] for r in kept if r["severity"] == "alarm"] == alarms
        assert b.stats().bytes == stored_bytes(b)


def test_take_respects_limits_but_returns_at_least_one(buf: Buffer) -> None:
    assert buf.take(10, BIG) is None
    buf.append([reading(i) for i in range(10)])
    two = buf.take(2, BIG)
    assert two is not None
    assert seqs_of(two) == [1, 2]
    one = buf.take(10, 5)
    assert one is not None
    assert seqs_of(one) == [1]
    assert one.size == len(one.records[0]) > 5
    exact = two.size
    assert seqs_of(buf.take(10, exact) or two) == [1, 2]
    assert seqs_of(buf.take(10, exact - 1) or two) == [1]
    whole = buf.take(100, BIG)
    assert whole is not None
    assert whole.size == sum(len(r) for r in whole.records)
    body = orjson.loads(whole.body())
    assert [r["seq"] for r in body] == list(range(1, 11))
    assert all(r.startswith(b'{"seq":') for r in whole.records)
    assert body[0] == {"seq": 1, **orjson.loads(encode_record(reading(0)))}
    with pytest.raises(ValueError, match="max_records"):
        buf.take(0, BIG)


def test_ack_deletes_exactly_the_batch(buf: Buffer) -> None:
    buf.append([reading(i) for i in range(4)] + [event(4)])  # readings 1-4, event 5
    batch = buf.take(3, BIG)
    assert batch is not None
    assert seqs_of(batch) == [5, 1, 2]
    buf.append([event(6), reading(7)])  # 6, 7 arrive after the take
    assert buf.ack(batch) == 3
    assert [r["seq"] for r in buf.export()] == [3, 4, 6, 7]
    assert buf.ack(batch) == 0  # acknowledging twice deletes nothing more
    stats = buf.stats()
    assert (stats.records, stats.events, stats.readings) == (4, 1, 3)
    assert stats.bytes == stored_bytes(buf)


def test_ack_refuses_a_batch_of_another_epoch(buf: Buffer) -> None:
    buf.append([reading(1)])
    batch = buf.take(1, BIG)
    assert batch is not None
    with pytest.raises(ValueError, match="epoch"):
        buf.ack(Batch("0000", batch.records, batch.ranges, batch.size))


def test_split_halves_have_exact_ranges(buf: Buffer) -> None:
    buf.append([reading(1), info(2), reading(3), info(4), reading(5), reading(6)])
    batch = buf.take(100, BIG)
    assert batch is not None
    assert seqs_of(batch) == [2, 4, 1, 3, 5, 6]
    first, second = batch.split()
    assert first.records + second.records == batch.records
    assert first.ranges == ((0, 2, 4), (1, 1, 1))
    assert second.ranges == ((1, 3, 6),)
    assert first.size + second.size == batch.size
    a, b = second.split()
    assert (a.ranges, b.ranges) == (((1, 3, 3),), ((1, 5, 6),))
    assert buf.ack(b) == 2
    assert buf.ack(first) == 3
    assert [r["seq"] for r in buf.export()] == [3]
    with pytest.raises(ValueError, match="split"):
        Batch(batch.epoch, batch.records[:1], ((0, 2, 2),), 1).split()


# --------------------------------------------------------------------------- poison


def test_set_aside_keeps_records_in_poison_and_reports(buf: Buffer) -> None:
    buf.append([reading(1), reading(2), event(3), reading(4)])
    batch = buf.take(3, BIG)  # 3, 1, 2
    assert batch is not None
    buf.set_aside(batch, "400 invalid_record: value out of range")
    left = list(buf.export())
    assert [r["seq"] for r in left] == [4, 5]
    report = left[1]
    assert report["type"] == "agent.uplink_poison"
    assert report["severity"] == "warning"
    assert report["data"] == {
        "reason": "400 invalid_record: value out of range",
        "count": 3,
        "first_seq": 1,
        "last_seq": 3,
    }
    poisoned = list(buf.export(poison=True))
    assert [p["seq"] for p in poisoned] == [1, 2, 3]
    assert all(p["poison_reason"].startswith("400") for p in poisoned)
    assert poisoned[2]["type"] == "door.forced_open"
    assert all(p["epoch"] == buf.epoch for p in poisoned)
    stats = buf.stats()
    assert stats.poisoned == 3
    assert stats.bytes == stored_bytes(buf)
    # If the platform rejects the report itself, it is set aside without a new report (no loop).
    again = buf.take(1, BIG)
    assert again is not None
    assert seqs_of(again) == [5]
    buf.set_aside(again, "400")
    assert [r["seq"] for r in buf.export()] == [4]
    assert buf.stats().poisoned == 4


# --------------------------------------------------------------------------- export, clock


def test_export_streams_in_seq_order_with_epoch(buf: Buffer) -> None:
    buf.append([reading(1), event(2), reading(3)] * 200)
    stream = buf.export()
    assert isinstance(stream, types.GeneratorType)
    first = next(stream)
    assert first["seq"] == 1
    assert first["epoch"] == buf.epoch
    rest = list(stream)
    assert [r["seq"] for r in rest] == list(range(2, 601))
    assert rest[0]["kind"] == "event"
    assert rest[0]["data"] == {"n": 2, "门": "东门"}


def test_correct_unsynced_fixes_only_that_boot(path: Path) -> None:
    with Buffer.open(path, boot_id="old-boot") as b:
        b.append([reading(1, ts=5_000, synced=False)])  # 1: an earlier boot, never corrected
    with Buffer.open(path, boot_id="this-boot") as b:
        b.append([reading(2, ts=6_000, synced=False), event(3, ts=6_001, synced=False)])  # 2, 3
        b.append([reading(4, ts=T0)])  # 4: synced
        assert b.correct_unsynced("this-boot", T0) == 2
        assert b.correct_unsynced("this-boot", T0) == 0
        batch = b.take(10, BIG)
        assert batch is not None
        got = {r["seq"]: (r["ts"], r["ts_synced"]) for r in map(orjson.loads, batch.records)}
        assert got == {
            1: (5_000, False),
            2: (T0 + 6_000, True),
            3: (T0 + 6_001, True),
            4: (T0, True),
        }
        # The rest of the JSON is untouched, key order too (order: event 3, readings 1, 2, 4).
        rec = orjson.loads(batch.records[2])
        expected = {"seq": 2, **orjson.loads(encode_record(reading(2, ts=T0 + 6_000)))}
        assert list(rec.items()) == list(expected.items())
        assert b.stats().bytes == stored_bytes(b)


def test_own_events_follow_the_clock_flag(path: Path) -> None:
    with Buffer.open(path, boot_id="b", clock_synced=lambda: False) as b:
        b.append([reading(i) for i in range(3)])
        batch = b.take(10, BIG)
        assert batch is not None
        b.set_aside(batch, "bad")
        report = next(r for r in b.export() if r["type"] == "agent.uplink_poison")
        assert report["ts_synced"] is False
        assert b.correct_unsynced("b", 10) == 1


def test_stats(path: Path) -> None:
    with Buffer.open(path, max_bytes=2**20, durability="normal") as b:
        empty = b.stats()
        assert (empty.records, empty.bytes, empty.last_seq) == (0, 0, 0)
        assert empty.oldest_ms is None
        assert empty.oldest_event_ms is None
        b.append([reading(1, ts=T0 + 50), event(2, ts=T0 + 70), reading(3, ts=T0 + 10)])
        s = b.stats()
        assert (s.records, s.events, s.readings, s.last_seq) == (3, 1, 2, 3)
        assert s.bytes == stored_bytes(b)
        assert s.oldest_ms == T0 + 50  # the oldest by seq
        assert s.oldest_event_ms == T0 + 70
        assert s.file_bytes > 0
        assert s.max_bytes == 2**20
        assert s.durability == "normal"
        assert s.epoch == b.epoch
        assert s.path == str(path)
        assert (s.dropped_readings, s.dropped_events, s.poisoned) == (0, 0, 0)
        assert s.recovered_from is None
        assert s.as_dict()["records"] == 3


@pytest.mark.parametrize(("durability", "synchronous"), [("full", 2), ("normal", 1)])
def test_durability_modes(path: Path, durability: str, synchronous: int) -> None:
    with Buffer.open(path, durability=durability) as b:
        assert b._conn.execute("PRAGMA synchronous").fetchone() == (synchronous,)
        assert b._conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert b.append([reading(1)]) == [1]
    with Buffer.open(path, durability="full") as b:
        assert [r["seq"] for r in b.export()] == [1]
    with pytest.raises(ValueError, match="fast"):
        Buffer.open(path, durability="fast")


# --------------------------------------------------------------------------- schema versions


def test_version_0_files_are_migrated(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    bare = tmp_path / "bare.db"
    sqlite3.connect(bare).close()
    for p in (empty, bare):
        with Buffer.open(p) as b:
            assert b.append([reading(1)]) == [1]
        conn = sqlite3.connect(p)
        assert conn.execute("PRAGMA user_version").fetchone() == (schema.schema_version(),)
        conn.close()
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_a_newer_file_is_refused_and_left_untouched(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE future (x)")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(BufferVersionError, match="99 is newer"):
        Buffer.open(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    assert stats_command(path, as_json=True, out=io.StringIO()) == 1


def test_migrations_run_in_order(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Buffer.open(path) as b:
        b.append([reading(1)])
    ran: list[str] = []
    base = schema.schema_version()

    def v2(conn: sqlite3.Connection) -> None:
        ran.append("v2")
        conn.execute("ALTER TABLE meta ADD COLUMN note TEXT")

    def v3(conn: sqlite3.Connection) -> None:
        assert conn.execute("PRAGMA user_version").fetchone() == (base + 1,)
        ran.append("v3")
        conn.execute("UPDATE meta SET note = 'v3'")

    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, v2, v3])
    with Buffer.open(path) as b:
        assert ran == ["v2", "v3"]
        assert b._conn.execute("SELECT note FROM meta").fetchone() == ("v3",)
        assert b._conn.execute("PRAGMA user_version").fetchone() == (base + 2,)
        assert [r["seq"] for r in b.export()] == [1]
    with Buffer.open(path):
        assert ran == ["v2", "v3"]  # nothing runs twice


# --------------------------------------------------------------------------- bound


def test_full_buffer_drops_oldest_readings_first_then_events(path: Path) -> None:
    bound = 16_384
    with Buffer.open(path, max_bytes=bound) as b:
        reading_seqs: list[int] = []
        for i in range(30):
            reading_seqs += b.append([reading(i * 10 + k) for k in range(10)])
            assert b.stats().bytes <= bound
        user_events = b.append([event(i) for i in range(10)])
        records = list(b.export())
        kept = [r["seq"] for r in records if r["kind"] == "reading"]
        assert 0 < len(kept) < len(reading_seqs)
        assert kept == reading_seqs[-len(kept) :]  # the oldest went
        assert set(user_events) <= {r["seq"] for r in records}  # every event stayed
        overflow = [r for r in records if r.get("type") == "agent.buffer_overflow"]
        assert overflow
        assert sum(o["data"]["dropped_readings"] for o in overflow) == len(reading_seqs) - len(kept)
        assert all(o["data"]["dropped_events"] == 0 for o in overflow)
        assert all(o["data"]["reason"] == "size" for o in overflow)
        assert all(o["severity"] == "warning" and o["device"] == "agent" for o in overflow)
        assert overflow[0]["data"]["oldest_dropped_ms"] == T0 + 0
        s = b.stats()
        assert (s.dropped_readings, s.dropped_events) == (len(reading_seqs) - len(kept), 0)
        assert s.bytes == stored_bytes(b)

        # Now only events arrive: the remaining readings go first, then the oldest events; the
        # alarms (the ten above) last of all.
        dropped_events = 0
        for i in range(40):
            b.append([info(100 + i * 5 + k) for k in range(5)])
            s = b.stats()
            assert s.bytes <= bound
            if s.dropped_events > dropped_events:
                assert s.readings == 0, "an event was dropped while readings remained"
                dropped_events = s.dropped_events
        assert s.dropped_readings == len(reading_seqs)
        assert dropped_events > 0
        others = set(reading_seqs) | set(user_events)
        all_events = [q for q in range(1, s.last_seq + 1) if q not in others]
        kept = list(b.export())
        kept_events = [r["seq"] for r in kept if r["severity"] != "alarm"]
        assert kept_events == all_events[-len(kept_events) :]  # the oldest events went
        assert [r["seq"] for r in kept if r["severity"] == "alarm"] == user_events
        assert s.dropped_events == len(all_events) - len(kept_events)
        assert s.bytes == stored_bytes(b)
    with Buffer.open(path, max_bytes=bound) as b:  # counters are persistent
        assert b.stats().dropped_events == dropped_events


def test_records_in_flight_are_dropped_last(path: Path) -> None:
    with Buffer.open(path, max_bytes=16_384) as b:
        b.append([reading(k) for k in range(20)])
        in_flight = b.take(10, 1 << 20)
        assert in_flight is not None
        for i in range(1, 30):
            b.append([reading(i * 100 + k) for k in range(10)])
        assert b.stats().dropped_readings > 0
        # The oldest readings not in flight went instead: the platform will get the batch, and
        # what the overflow events count as dropped is exactly what it will never see.
        assert b.ack(in_flight) == 10
        kept = {r["seq"] for r in b.export() if r["kind"] == "reading"}
        assert set(range(11, 21)).isdisjoint(kept)
        # Once acknowledged, nothing is spared any more: the oldest go first again.
        oldest = min(kept)
        b.append([reading(9000 + k) for k in range(30)])
        assert oldest not in {r["seq"] for r in b.export() if r["kind"] == "reading"}


def test_an_append_bigger_than_the_bound_keeps_its_newest(path: Path) -> None:
    with Buffer.open(path, max_bytes=8192) as b:
        seqs = b.append([reading(i) for i in range(100)])
        assert seqs == list(range(1, 101))
        records = list(b.export())
        kept = [r["seq"] for r in records if r["kind"] == "reading"]
        assert kept == seqs[-len(kept) :]
        (overflow,) = [r for r in records if r["kind"] == "event"]
        assert overflow["seq"] == 101
        assert overflow["data"]["dropped_readings"] == 100 - len(kept)
        assert b.stats().bytes <= 8192


def test_max_age_drops_old_trusted_readings(path: Path) -> None:
    now = now_ms()
    old = now - 2 * 3600_000
    with Buffer.open(path, max_age_s=3600) as b:
        b.append([event(0, ts=old)])  # 1: the first append runs the check; events never age
        # 2-6 old, 7 old but stamped before clock sync (kept), 8 young: checked only later
        b.append([reading(i, ts=old + i) for i in range(1, 6)])
        b.append([reading(9, ts=old, synced=False), reading(10, ts=now)])
        b._next_age_check = 0  # checks are rate-limited; make the next append check
        b.append([reading(11, ts=now)])  # 9, then the report as 10
        records = list(b.export())
        assert [r["seq"] for r in records] == [1, 7, 8, 9, 10]
        report = records[-1]
        assert report["type"] == "agent.buffer_overflow"
        assert report["data"]["reason"] == "age"
        assert report["data"]["dropped_readings"] == 5
        assert report["data"]["dropped_events"] == 0
        assert report["data"]["oldest_dropped_ms"] == old + 1
        assert report["data"]["newest_dropped_ms"] == old + 5
        assert b.stats().dropped_readings == 5
        assert b.stats().bytes == stored_bytes(b)


def test_bad_bounds_are_refused(path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        Buffer.open(path, max_bytes=100)
    with pytest.raises(ValueError, match="max_age_s"):
        Buffer.open(path, max_age_s=0)


# --------------------------------------------------------------------------- recovery


def corrupt_copies(path: Path) -> list[Path]:
    """The moved database files (their -wal/-shm travel with them)."""
    return sorted(
        p
        for p in path.parent.iterdir()
        if ".corrupt-" in p.name and not p.name.endswith(("-wal", "-shm"))
    )


def assert_recovered(b: Buffer, path: Path, moved: Path, error: str) -> None:
    assert b.recovered_from == moved
    first = next(b.export())
    assert first["seq"] == 1
    assert first["type"] == "agent.buffer_corrupt"
    assert first["severity"] == "alarm"
    assert first["data"]["moved_to"] == str(moved)
    assert error in first["data"]["error"]
    assert b.stats().recovered_from == str(moved)
    assert path.exists()


def test_a_garbage_file_is_moved_aside_with_its_wal(path: Path) -> None:
    garbage = b"this is not a database, it is what a bad SD card returns " * 100
    path.write_bytes(garbage)
    wal = path.with_name(path.name + "-wal")
    wal.write_bytes(b"stray wal" * 10)
    with Buffer.open(path) as b:
        moved = corrupt_copies(path)[0]
        assert moved.name.startswith("buffer.db.corrupt-")
        assert moved.read_bytes() == garbage  # preserved, never deleted
        assert moved.with_name(moved.name + "-wal").read_bytes() == b"stray wal" * 10
        assert_recovered(b, path, moved, "not a database")
        assert b.append([reading(1)]) == [2]
    with Buffer.open(path) as b:  # a healthy reopen recovers nothing
        assert b.recovered_from is None
    assert len(corrupt_copies(path)) == 1


def test_a_truncated_database_is_moved_aside_and_a_new_epoch_starts(path: Path) -> None:
    with Buffer.open(path) as b:
        b.append([reading(i) for i in range(3000)])
        old_epoch = b.epoch
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size // 2)
    truncated = path.read_bytes()
    with Buffer.open(path) as b:
        (moved,) = corrupt_copies(path)
        assert moved.read_bytes() == truncated
        assert b.epoch != old_epoch
        assert_recovered(b, path, moved, "")
        assert b.stats().records == 1


def test_an_unreadable_schema_is_moved_aside(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE unrelated (x)")
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    with Buffer.open(path) as b:
        (moved,) = corrupt_copies(path)
        assert_recovered(b, path, moved, "schema unreadable")


def test_a_wal_without_its_database_is_moved_aside(path: Path) -> None:
    wal = path.with_name(path.name + "-wal")
    wal.write_bytes(b"orphan" * 100)
    with Buffer.open(path) as b:
        assert b.recovered_from is not None
        moved_wal = b.recovered_from.with_name(b.recovered_from.name + "-wal")
        assert moved_wal.read_bytes() == b"orphan" * 100
        assert_recovered(b, path, b.recovered_from, "WAL file without its database")


def test_an_empty_file_where_a_buffer_was_is_reported_not_silently_replaced(path: Path) -> None:
    with Buffer.open(path) as b:
        b.append([reading(1)])
        old_epoch = b.epoch
    for extra in ("-wal", "-shm"):
        path.with_name(path.name + extra).unlink(missing_ok=True)
    path.write_bytes(b"")  # what a crash while the card truncated it leaves
    with Buffer.open(path) as b:
        (moved,) = corrupt_copies(path)
        assert moved.stat().st_size == 0
        assert b.epoch != old_epoch
        assert_recovered(b, path, moved, "empty (0 bytes) where a buffer was")
    # A new, empty file (no buffer ever lived here) is still just initialised.
    fresh = path.with_name("fresh.db")
    fresh.touch()
    with Buffer.open(fresh) as b:
        assert b.recovered_from is None


# --------------------------------------------------------------------------- CLI


def test_cli_stats_and_export_read_only(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Buffer.open(path) as b:
        b.append([reading(1), event(2)])
        batch = b.take(1, BIG)
        assert batch is not None
        b.set_aside(batch, "rejected")
        epoch = b.epoch
    files = sorted(p.name for p in path.parent.iterdir())
    before = path.read_bytes()

    out = io.StringIO()
    assert stats_command(path, as_json=True, out=out) == 0
    figures = orjson.loads(out.getvalue())
    assert figures["epoch"] == epoch
    assert (figures["records"], figures["poisoned"], figures["last_seq"]) == (2, 1, 3)
    out = io.StringIO()
    assert stats_command(path, as_json=False, out=out) == 0
    assert epoch in out.getvalue()
    assert "poisoned" in out.getvalue()

    out = io.StringIO()
    assert export_command(path, poison=False, out=out) == 0
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["seq"], r["epoch"]) for r in lines] == [(1, epoch), (3, epoch)]
    out = io.StringIO()
    assert export_command(path, poison=True, out=out) == 0
    (poisoned,) = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert (poisoned["seq"], poisoned["poison_reason"]) == (2, "rejected")

    assert sorted(p.name for p in path.parent.iterdir()) == files  # no -wal/-shm created
    assert path.read_bytes() == before

    missing = path.with_name("nope.db")
    assert stats_command(missing, as_json=False, out=io.StringIO()) == 1
    assert export_command(missing, poison=False, out=io.StringIO()) == 1
    assert "no buffer file" in capsys.readouterr().err
    assert not missing.exists()


def test_cli_never_moves_a_corrupt_file(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path.write_bytes(b"garbage" * 1000)
    assert stats_command(path, as_json=False, out=io.StringIO()) == 1
    assert export_command(path, poison=True, out=io.StringIO()) == 1
    assert "not a readable buffer file" in capsys.readouterr().err
    assert path.read_bytes() == b"garbage" * 1000
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


# --------------------------------------------------------------------------- encoder

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)


@st.composite
def records(draw: st.DrawFn) -> Record:
    device = draw(st.text(min_size=1, max_size=8))
    ts = draw(st.integers(min_value=0, max_value=2**53))
    synced = draw(st.booleans())
    kind = draw(st.sampled_from(["reading", "event", "status"]))
    if kind == "reading":
        return Reading(
            device=device,
            ts=ts,
            ts_synced=synced,
            point=draw(st.text(max_size=8)),
            value=draw(values),
            unit=draw(st.none() | st.text(max_size=4)),
            quality=draw(st.sampled_from(list(Quality))),
            reason=draw(st.none() | st.text(max_size=8)),
        )
    if kind == "event":
        return Event(
            device=device,
            ts=ts,
            ts_synced=synced,
            type=draw(st.text(min_size=1, max_size=12)),
            severity=draw(st.sampled_from(list(Severity))),
            data=draw(st.dictionaries(st.text(max_size=5), values, max_size=4)),
        )
    return Status(
        device=device, ts=ts, ts_synced=synced, state=draw(st.sampled_from(list(StatusState)))
    )


@given(st.lists(records(), min_size=1, max_size=20))
def test_the_fast_encoder_is_byte_identical_to_encode_record(recs: list[Record]) -> None:
    encoder = RecordEncoder()
    for r in recs:
        assert encoder(r) == encode_record(r)


# --------------------------------------------------------------------------- property


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.lists(st.booleans(), min_size=1, max_size=6)),
            st.tuples(st.just("take"), st.integers(1, 8), st.sampled_from([1, 150, 400, 10_000])),
            st.tuples(st.just("ack"), st.integers(0, 10)),
            st.tuples(st.just("set_aside"), st.integers(0, 10)),
            st.tuples(st.just("reopen")),
        ),
        max_size=30,
    )
)
def test_any_interleaving_keeps_seqs_unique_and_loses_nothing(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[Any, ...]]
) -> None:
    path = tmp_path_factory.mktemp("prop") / "buffer.db"
    b = Buffer.open(path, durability="normal")
    model: dict[int, tuple[int, bytes | None]] = {}  # seq -> (priority, body if known)
    handed_out: list[int] = []
    batches: list[Batch] = []
    n = poisoned = 0
    try:
        for op in ops:
            if op[0] == "append":
                recs: list[Record] = []
                for is_event in op[1]:
                    n += 1
                    recs.append(event(n) if is_event else reading(n))
                seqs = b.append(recs)
                assert len(seqs) == len(recs)
                assert seqs == sorted(set(seqs))
                assert not handed_out or seqs[0] > handed_out[-1]
                handed_out += seqs
                for s, r in zip(seqs, recs, strict=True):
                    model[s] = (r.priority, encode_record(r))
            elif op[0] == "take":
                batch = b.take(op[1], op[2])
                order = sorted(model, key=lambda s: (model[s][0], s))
                if batch is None:
                    assert not model
                    continue
                got = seqs_of(batch)
                assert got == order[: len(got)]
                assert 1 <= len(got) <= op[1]
                assert len(got) == 1 or batch.size <= op[2]
                for rec in batch.records:
                    obj = orjson.loads(rec)
                    body = model[obj["seq"]][1]
                    if body is not None:
                        assert obj == {"seq": obj["seq"], **orjson.loads(body)}
                batches.append(batch)
            elif op[0] in ("ack", "set_aside") and batches:
                batch = batches[op[1] % len(batches)]
                gone = [
                    s
                    for s in model
                    if any(p == model[s][0] and lo <= s <= hi for p, lo, hi in batch.ranges)
                ]
                if op[0] == "ack":
                    assert b.ack(batch) == len(gone)
                else:
                    b.set_aside(batch, "rejected")
                    poisoned += len(gone)
                    if any(model[s][1] is not None for s in gone):  # else: only our own reports
                        handed_out.append(b.stats().last_seq)
                        model[handed_out[-1]] = (0, None)  # the agent.uplink_poison report
                for s in gone:
                    del model[s]
            elif op[0] == "reopen":
                b.close()
                b = Buffer.open(path, durability="normal")
            exported = {r["seq"]: r for r in b.export()}
            assert sorted(exported) == sorted(model)
            stats = b.stats()
            assert stats.records == len(model)
            assert stats.last_seq == (handed_out[-1] if handed_out else 0)
            assert stats.poisoned == poisoned
            assert stats.bytes == stored_bytes(b)
            known = [body for _, body in model.values() if body is not None]
            assert sum(len(body) + ROW_OVERHEAD for body in known) <= stats.bytes
    finally:
        b.close()


# --------------------------------------------------------------------------- AsyncBuffer


async def test_async_group_commit_merges_concurrent_appends(path: Path) -> None:
    ab = await AsyncBuffer.open(path, commit_interval_ms=50)
    try:
        before = ab.commits
        batches = [[reading(i * 3 + k, device=f"d{i}") for k in range(3)] for i in range(50)]
        results = await asyncio.gather(*(ab.append(batch) for batch in batches))
        assert ab.commits - before == 1  # fifty callers, one transaction
        assert sorted(s for r in results for s in r) == list(range(1, 151))
        stats = await ab.stats()
        assert stats.records == 150
        take = await ab.take(1000, BIG)
        assert take is not None
        by_seq = {orjson.loads(r)["seq"]: orjson.loads(r) for r in take.records}
        for seqs, batch in zip(results, batches, strict=True):  # each caller got its own seqs
            assert [by_seq[s]["device"] for s in seqs] == [r.device for r in batch]
            assert [by_seq[s]["ts"] for s in seqs] == [r.ts for r in batch]
    finally:
        await ab.close()


async def test_async_appends_arriving_during_a_commit_share_the_next(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ab = await AsyncBuffer.open(path, commit_interval_ms=0)
    inside = threading.Event()
    release = threading.Event()
    real_append = ab._buffer.append

    def slow_append(recs: list[Record]) -> list[int]:
        inside.set()
        assert release.wait(60)
        seqs: list[int] = real_append(recs)
        return seqs

    monkeypatch.setattr(ab._buffer, "append", slow_append)
    before = ab.commits
    try:
        first = asyncio.ensure_future(ab.append([reading(0)]))
        assert await asyncio.to_thread(inside.wait, 60)  # the first commit is running
        inside.clear()
        later = [asyncio.ensure_future(ab.append([reading(i)])) for i in range(1, 11)]
        await asyncio.sleep(0)  # let them enqueue
        release.set()
        assert await first == [1]
        results = await asyncio.gather(*later)
        assert sorted(s for r in results for s in r) == list(range(2, 12))
        assert ab.commits - before == 2
    finally:
        release.set()
        await ab.close()


async def test_async_one_bad_caller_does_not_fail_the_group(path: Path) -> None:
    ab = await AsyncBuffer.open(path, commit_interval_ms=20)
    try:
        bad = Event(device="d", ts=T0, type="x", data={"k": object()})
        results = await asyncio.gather(
            ab.append([reading(1)]),
            ab.append([bad]),
            ab.append([reading(2)]),
            return_exceptions=True,
        )
        assert results[0] == [1]
        assert isinstance(results[1], TypeError)
        assert results[2] == [2]
    finally:
        await ab.close()


async def test_async_close_flushes_pending_appends(path: Path) -> None:
    ab = await AsyncBuffer.open(path, commit_interval_ms=5000)
    epoch = ab.epoch
    pending = [asyncio.ensure_future(ab.append([reading(i)])) for i in range(20)]
    await asyncio.sleep(0)  # the appends are waiting in the (long) commit window
    assert not any(f.done() for f in pending)
    await ab.close()
    assert sorted(s for f in pending for s in f.result()) == list(range(1, 21))
    with pytest.raises(BufferClosedError):
        await ab.append([reading(99)])
    with pytest.raises(BufferClosedError):
        await ab.stats()
    with Buffer.open(path) as b:
        assert b.epoch == epoch
        assert [r["seq"] for r in b.export()] == list(range(1, 21))


async def test_async_the_event_loop_keeps_running_during_a_big_append(path: Path) -> None:
    ab = await AsyncBuffer.open(path)
    try:
        big = asyncio.ensure_future(ab.append([reading(i) for i in range(60_000)]))
        ticks = 0
        while not big.done():
            ticks += 1
            await asyncio.sleep(0)
        assert len(await big) == 60_000
        assert ticks >= 10  # a blocking call would have let the loop turn about once
    finally:
        await ab.close()


async def test_async_take_ack_set_aside_correct(path: Path) -> None:
    ab = await AsyncBuffer.open(path, commit_interval_ms=1, boot_id="bt")
    try:
        assert ab.recovered_from is None
        await ab.append([reading(1, synced=False), event(2), reading(3)])
        assert await ab.correct_unsynced("bt", 7) == 1
        batch = await ab.take(2, BIG)
        assert batch is not None
        assert batch.epoch == ab.epoch
        assert await ab.ack(batch) == 2
        rest = await ab.take(10, BIG)
        assert rest is not None
        await ab.set_aside(rest, "nope")
        s = await ab.stats()
        assert (s.poisoned, s.records) == (1, 1)
    finally:
        await ab.close()
    await ab.close()  # idempotent


def test_a_command_is_claimed_once_across_reopening(path: Path) -> None:
    with Buffer.open(path) as b:
        assert b.claim_command("c-1", expires_ms=now_ms() + 60_000)
        assert not b.claim_command("c-1", expires_ms=now_ms() + 60_000)
    with Buffer.open(path) as b:  # a restart (the kill -9 case is in test_e2e)
        assert not b.claim_command("c-1", expires_ms=now_ms() + 60_000)
        assert b.claim_command("c-2", expires_ms=now_ms() + 60_000)
        # Claims long past their expiry are forgotten (the table stays small).
        assert b.claim_command("old", expires_ms=now_ms() - 2 * 86_400_000)
        b.claim_command("c-3", expires_ms=now_ms() + 60_000)
        ids = {r[0] for r in b._conn.execute("SELECT id FROM commands")}
        assert ids == {"c-1", "c-2", "c-3"}


def older_file(path: Path, version: int, records: list[Record]) -> None:
    """A buffer file as an agent of schema ``version`` left it, holding ``records`` (readings
    and events of class 0: the only ones such an agent had)."""
    conn = sqlite3.connect(path, isolation_level=None)
    for step in schema.MIGRATIONS[:version]:
        step(conn)
    conn.execute(f"PRAGMA user_version = {version}")
    size = 0
    for seq, record in enumerate(records, 1):
        body = encode_record(record)
        size += len(body) + ROW_OVERHEAD
        table = "readings" if isinstance(record, Reading) else "events"
        conn.execute(f"INSERT INTO {table} (seq, body) VALUES (?, ?)", (seq, body))  # noqa: S608
    n_readings = sum(isinstance(r, Reading) for r in records)
    conn.execute(
        "UPDATE meta SET last_seq = ?, bytes = ?, readings = ?, events = ?",
        (len(records), size, n_readings, len(records) - n_readings),
    )
    conn.close()


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_file_is_migrated_with_everything_it_held(path: Path, version: int) -> None:
    older_file(path, version, [reading(1), event(2), info(3)])
    with Buffer.open(path) as b:
        assert b.claim_command("c-1", expires_ms=now_ms() + 1000)  # v2: the command ledger
        b.append([event(4)])  # v3: the alarm class
        assert [r["seq"] for r in b.export()] == [1, 2, 3, 4]
        batch = b.take(100, BIG)
        assert batch is not None
        # The alarm it had waits in its old place, among the events, in order.
        assert seqs_of(batch) == [4, 2, 3, 1]
        assert b.stats().records == 4
        assert b.stats().bytes == stored_bytes(b)


def test_poison_counts_against_the_bound_and_goes_first(tmp_path: Path) -> None:
    """With a 256 KiB bound the file grew to 17 MB of set-aside records; now they are bounded
    and the oldest of them is dropped first, reported."""
    from buffer.core import MIN_MAX_BYTES

    with Buffer.open(tmp_path / "b.db", max_bytes=MIN_MAX_BYTES) as b:
        n = 0
        while b.stats().poisoned < 3 * MIN_MAX_BYTES // 120:
            b.append([reading(n + i) for i in range(50)])
            n += 50
            batch = b.take(50, 1 << 20)
            assert batch is not None
            b.set_aside(batch, "400 bad_request")
        assert b.stats().bytes <= MIN_MAX_BYTES
        assert b.stats().bytes == stored_bytes(b)
        left = [r["seq"] for r in b.export(poison=True)]
        assert left, "the newest set-aside records are kept"
        assert left == sorted(left)
        assert max(left) > 2 * len(left), "the oldest went first"
        overflow = [r for r in b.export() if r.get("type") == "agent.buffer_overflow"]
        assert overflow
        assert sum(e["data"]["dropped_poison"] for e in overflow) > 0


def test_requeued_poison_is_sent_again_with_its_seqs(tmp_path: Path) -> None:
    with Buffer.open(tmp_path / "b.db") as b:
        b.append([reading(i) for i in range(5)])
        batch = b.take(3, 1 << 20)
        assert batch is not None
        b.set_aside(batch, "400 bad_request")
        bytes_before = b.stats().bytes
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "buffer",
            "requeue-poison",
            "--path",
            str(tmp_path / "b.db"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "3 set-aside record(s) queued again" in run.stdout
    with Buffer.open(tmp_path / "b.db") as b:
        assert list(b.export(poison=True)) == []
        assert b.stats().bytes == bytes_before == stored_bytes(b)
        again = b.take(100, 1 << 20)
        assert again is not None
        readings_ = [s for s in again.seqs() if s <= 5]
        assert readings_ == [1, 2, 3, 4, 5]
