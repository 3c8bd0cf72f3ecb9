"""Child process of the kill -9 test: appends batches forever through the buffer's own API.

    python appender.py PATH async|sync SEED

After each append RETURNS (the records are durable) it prints one line
``OK {"seqs": [...], "bodies": [...]}`` with the seqs the buffer assigned and each record's
``encode_record`` JSON, and flushes. The parent kills it with SIGKILL at a random moment and
checks that every printed batch is in the file, byte for byte. A line cut by the kill has no
newline and is ignored.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from agent.records import Event, Reading, Record, Severity, encode_record, now_ms  # noqa: E402
from buffer import AsyncBuffer, Buffer  # noqa: E402

TASKS = 8


def make_batch(rng: random.Random, tag: str, counter: int) -> list[Record]:
    out: list[Record] = []
    for k in range(rng.randint(1, 20)):
        synced = rng.random() > 0.1
        if rng.random() < 0.2:
            out.append(
                Event(
                    device=f"door-{tag}",
                    ts=now_ms(),
                    ts_synced=synced,
                    type="door.forced_open",
                    severity=Severity.ALARM,
                    data={"n": counter, "k": k, "名": "东门"},
                )
            )
        else:
            out.append(
                Reading(
                    device=f"meter-{tag}",
                    ts=now_ms(),
                    ts_synced=synced,
                    point=f"p{k}",
                    value=rng.random() * 1000,
                    unit="kWh",
                )
            )
    return out


def emit(seqs: list[int], records: list[Record]) -> None:
    line = orjson.dumps({"seqs": seqs, "bodies": [encode_record(r).decode() for r in records]})
    sys.stdout.write("OK " + line.decode() + "\n")
    sys.stdout.flush()


async def run_async(path: Path, seed: int) -> None:
    buf = await AsyncBuffer.open(path, commit_interval_ms=5, boot_id="kill-test")

    async def worker(i: int) -> None:
        rng = random.Random(seed * 100 + i)
        counter = 0
        while True:
            batch = make_batch(rng, f"{seed}-{i}", counter)
            seqs = await buf.append(batch)
            emit(seqs, batch)
            counter += 1
            await asyncio.sleep(rng.uniform(0, 0.004))

    await asyncio.gather(*(worker(i) for i in range(TASKS)))


def run_sync(path: Path, seed: int) -> None:
    buf = Buffer.open(path, boot_id="kill-test")
    rng = random.Random(seed)
    counter = 0
    while True:
        batch = make_batch(rng, f"{seed}-s", counter)
        seqs = buf.append(batch)
        emit(seqs, batch)
        counter += 1
        time.sleep(rng.uniform(0, 0.002))


def main() -> None:
    path, mode, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    if mode == "async":
        asyncio.run(run_async(path, seed))
    else:
        run_sync(path, seed)


if __name__ == "__main__":
    main()
