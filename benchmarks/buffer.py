"""Throughput of the store-and-forward buffer, measured the way the runtime and uplink use it.

* append: ``AsyncBuffer`` with durability ``full`` and group commit; ~200 concurrent "devices"
  each appending batches of 20 readings and awaiting durability before the next, as drivers do.
* drain: ``take`` (batches of 2000) + ``ack`` until empty, as the uplink does.
* bytes written per record during append (last run), from ``/proc/self/io`` ``write_bytes``
  (bytes this process caused to be written to the storage layer: WAL frames and checkpoints into
  the database), and for comparison from file sizes (database + WAL after the run).
* for comparison: raw ``sqlite3`` ``executemany`` of pre-made rows in one transaction, and the
  sync ``Buffer`` committing every batch of 20 on its own (what group commit saves).

    .venv/bin/python benchmarks/buffer.py [--records 200000] [--repeat 3] [--dir DIR]

Each run uses a fresh file; the figures are the median of ``--repeat`` runs, and the per-run
numbers are shown too (a shared 2-core machine is noisy).

The last line is one JSON object: ``{"append_per_s": …, "drain_per_s": …,
"bytes_written_per_record": …}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.records import Reading, encode_record  # noqa: E402
from buffer import AsyncBuffer, Buffer  # noqa: E402

VARIANTS = 8
"""Distinct pre-built batches per device (records are reused: building them is the driver's cost,
not the buffer's)."""


def write_bytes() -> int | None:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def make_batches(devices: int, batch: int) -> list[list[list[Reading]]]:
    base = 1_780_000_000_000
    return [
        [
            [
                Reading(
                    device=f"meter-{d:03d}",
                    ts=base + v * 60_000 + p,
                    point=f"p{p:02d}",
                    value=round(d * 1000 + v * 1.37 + p * 0.25, 2),
                    unit="kWh",
                )
                for p in range(batch)
            ]
            for v in range(VARIANTS)
        ]
        for d in range(devices)
    ]


def raw_executemany(directory: Path, n: int, body: bytes) -> float:
    path = directory / "raw.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE readings (seq INTEGER PRIMARY KEY, boot TEXT, body BLOB NOT NULL)")
    rows = [(i, body) for i in range(1, n + 1)]
    start = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO readings (seq, body) VALUES (?, ?)", rows)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


def raw_values(directory: Path, n: int, body: bytes, per_statement: int = 512) -> float:
    """The buffer's own insert shape (multi-row VALUES), without encoding or bookkeeping."""
    path = directory / "raw-values.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE readings (seq INTEGER PRIMARY KEY, boot TEXT, body BLOB NOT NULL)")
    sql = "INSERT INTO readings (seq, body) VALUES " + ",".join(["(?,?)"] * per_statement)  # noqa: S608
    values: list[object] = []
    for i in range(1, n + 1):
        values += (i, body)
    width = 2 * per_statement
    start = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    for i in range(0, len(values) - width + 1, width):
        conn.execute(sql, values[i : i + width])
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return (n - n % per_statement) / elapsed


def sync_per_batch(directory: Path, n: int, batches: list[list[list[Reading]]]) -> float:
    buf = Buffer.open(directory / "sync.db", durability="full")
    done = 0
    start = time.perf_counter()
    while done < n:
        for device in batches:
            buf.append(device[done % VARIANTS])
            done += len(device[0])
            if done >= n:
                break
    elapsed = time.perf_counter() - start
    buf.close()
    return done / elapsed


async def run_append(
    path: Path, n: int, batches: list[list[list[Reading]]]
) -> tuple[float, int, int, int | None, int]:
    buf = await AsyncBuffer.open(path, durability="full", max_bytes=8 * 2**30)
    devices = len(batches)
    per_round = sum(len(b[0]) for b in batches)
    rounds = -(-n // per_round)

    async def device(i: int) -> None:
        for r in range(rounds):
            await buf.append(batches[i][r % VARIANTS])

    commits0 = buf.commits
    written0 = write_bytes()
    start = time.perf_counter()
    await asyncio.gather(*(device(i) for i in range(devices)))
    elapsed = time.perf_counter() - start
    written1 = write_bytes()
    on_disk = file_bytes(path)
    stats = await buf.stats()
    commits = buf.commits - commits0
    await buf.close()
    written = written1 - written0 if written0 is not None and written1 is not None else None
    return elapsed, stats.records, commits, written, on_disk


async def run_drain(path: Path, take: int) -> tuple[float, int, int]:
    buf = await AsyncBuffer.open(path, durability="full", max_bytes=8 * 2**30)
    drained = batches = 0
    start = time.perf_counter()
    while (batch := await buf.take(take, 64 * 2**20)) is not None:
        drained += await buf.ack(batch)
        batches += 1
    elapsed = time.perf_counter() - start
    await buf.close()
    return elapsed, drained, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--batch", type=int, default=20, help="records per device append")
    parser.add_argument("--take", type=int, default=2000, help="records per take/ack")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the median is reported")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the files")
    args = parser.parse_args()

    batches = make_batches(args.devices, args.batch)
    body = encode_record(batches[0][0][0])
    appends: list[float] = []
    drains: list[float] = []
    with tempfile.TemporaryDirectory(prefix="buffer-bench-", dir=args.dir) as tmp:
        directory = Path(tmp)
        raw_rate = raw_executemany(directory, args.records, body)
        values_rate = raw_values(directory, args.records, body)
        sync_n = min(args.records, 20_000)
        sync_rate = sync_per_batch(directory, sync_n, batches)
        for run in range(args.repeat):
            # A fresh file per run; figures are the median run (shared machines are noisy).
            path = directory / f"buffer-{run}.db"
            elapsed, stored, commits, written, on_disk = asyncio.run(
                run_append(path, args.records, batches)
            )
            appends.append(stored / elapsed)
            drain_s, drained, takes = asyncio.run(run_drain(path, args.take))
            drains.append(drained / drain_s)
            print(
                f"run {run + 1}: append {appends[-1]:,.0f}/s, drain {drains[-1]:,.0f}/s",
                flush=True,
            )
    append_rate = statistics.median(appends)
    drain_rate = statistics.median(drains)

    per_record_io = written / stored if written is not None else None
    per_record_files = on_disk / stored
    rows = [
        ("records appended", f"{stored:,}"),
        ("devices x batch", f"{args.devices} x {args.batch}"),
        ("append (AsyncBuffer, full, group commit)", f"{append_rate:,.0f} records/s"),
        ("  runs (median reported)", ", ".join(f"{a:,.0f}" for a in appends)),
        ("  transactions", f"{commits:,} ({stored / max(commits, 1):,.0f} records each)"),
        (f"drain (take {args.take} + ack)", f"{drain_rate:,.0f} records/s"),
        ("  runs", ", ".join(f"{d:,.0f}" for d in drains)),
        ("  batches", f"{takes:,}"),
        (
            "bytes written / record (/proc/self/io)",
            f"{per_record_io:,.0f}" if per_record_io is not None else "n/a",
        ),
        ("bytes on disk / record (db + WAL)", f"{per_record_files:,.0f}"),
        ("record body (JSON) bytes", f"{len(body)}"),
        ("raw sqlite3 executemany, 1 txn", f"{raw_rate:,.0f} rows/s"),
        ("raw sqlite3 512-row VALUES, 1 txn", f"{values_rate:,.0f} rows/s"),
        (f"sync Buffer, 1 txn per {args.batch} ({sync_n:,})", f"{sync_rate:,.0f} records/s"),
        ("cpu cores", str(os.cpu_count())),
        ("sqlite", sqlite3.sqlite_version),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    bytes_per_record = per_record_io if per_record_io is not None else per_record_files
    print(
        json.dumps(
            {
                "append_per_s": round(append_rate),
                "drain_per_s": round(drain_rate),
                "bytes_written_per_record": round(bytes_per_record, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
