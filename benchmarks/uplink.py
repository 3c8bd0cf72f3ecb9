"""End-to-end drain rate of the HTTP uplink: buffer -> gzip -> signed POST -> reference platform.

Fills a buffer with N readings (``Buffer`` directly, durability normal, for setup speed), starts
the reference platform as a subprocess on 127.0.0.1 (its own core: it is the far end, not part of
the gateway), drains the buffer with :class:`HttpUplinkClient` and checks that every record
arrived exactly once. Prints a table, and as the very last line a JSON object with
``drain_per_s`` and ``gzip_ratio``.

    python benchmarks/uplink.py [--records 500000] [--batch 2000] [--durability normal|full]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config.models import Community, Gateway, HttpUplink, SecretRef  # noqa: E402
from agent.records import Reading  # noqa: E402
from agent.state import UplinkState  # noqa: E402
from agent.uplink.http import HttpUplinkClient  # noqa: E402
from buffer import AsyncBuffer, Buffer  # noqa: E402

GW = "gw-bench"
KEY_ID = "gw-bench-k1"
SECRET = "benchmark secret, not for production"  # noqa: S105 - loopback-only throwaway
ADMIN = "bench-admin"


def fill(path: Path, n: int) -> float:
    started = time.perf_counter()
    devices = [f"meter-{i:03d}" for i in range(100)]
    base = 1_700_000_000_000
    with contextlib.closing(Buffer.open(path, durability="normal", max_bytes=4 * 2**30)) as buf:
        chunk = 10_000
        for start in range(0, n, chunk):
            buf.append(
                [
                    Reading(
                        device=devices[i % 100],
                        ts=base + i * 1000,
                        point="energy_import",
                        value=round(1000 + i * 0.01, 2),
                        unit="kWh",
                    )
                    for i in range(start, min(n, start + chunk))
                ]
            )
    return time.perf_counter() - started


def start_platform(tmp: Path, durability: str) -> tuple[subprocess.Popen[str], int]:
    keys = tmp / "keys.json"
    keys.write_text(json.dumps({KEY_ID: {"gateway": GW, "secret": SECRET}}))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reference_platform",
            "--listen",
            "127.0.0.1:0",
            "--db",
            str(tmp / "platform.db"),
            "--keys",
            str(keys),
            "--admin-token",
            ADMIN,
            "--durability",
            durability,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise SystemExit("the reference platform did not start")
    return proc, int(json.loads(line)["port"])


async def platform_count(url: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/v1/gateways", headers={"Authorization": f"Bearer {ADMIN}"}) as resp,
    ):
        doc: dict[str, Any] = await resp.json()
    return int(next(g["records"] for g in doc["gateways"] if g["id"] == GW))


async def drain(
    buffer_path: Path, url: str, n: int, batch: int, gzip_level: int
) -> tuple[float, UplinkState, int, int]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    buffer = await AsyncBuffer.open(buffer_path, durability="normal", max_bytes=4 * 2**30)
    state = UplinkState()
    client = HttpUplinkClient(
        HttpUplink(
            url=url,
            key_id=KEY_ID,
            secret=SecretRef(env="UNUSED"),
            batch_max_records=batch,
            first_attempt_jitter_s=0,
            commands=False,
        ),
        gateway=Gateway(id=GW, community=Community(code="350102001001")),
        secret=SECRET,
        buffer=buffer,
        state=state,
        inventory=lambda: {
            "gateway": {
                "id": GW,
                "name": None,
                "code": None,
                "community": {"code": "350102001001", "name": None},
                "timezone": "Asia/Shanghai",
                "agent_version": "bench",
            },
            "devices": [],
        },
        commands=None,
        log=structlog.get_logger(),
        agent_version="bench",
        rng=random.Random(1),
        idle_poll_s=0.01,
        gzip_level=gzip_level,
    )
    started = time.perf_counter()
    task = asyncio.create_task(client.run())
    while state.records_sent < n:
        await asyncio.sleep(0.01)
        if task.done():
            task.result()
    elapsed = time.perf_counter() - started
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await client.close()
    left = (await buffer.stats()).records
    await buffer.close()
    return elapsed, state, left, client.pump.body_bytes_sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--gzip-level", type=int, default=6)
    parser.add_argument(
        "--durability", choices=("normal", "full"), default="full", help="platform's SQLite"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="uplink-bench-") as name:
        tmp = Path(name)
        fill_s = fill(tmp / "buffer.db", args.records)
        proc, port = start_platform(tmp, args.durability)
        url = f"http://127.0.0.1:{port}"
        try:
            elapsed, state, left, uncompressed = asyncio.run(
                drain(tmp / "buffer.db", url, args.records, args.batch, args.gzip_level)
            )
            stored = asyncio.run(platform_count(url))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    rate = state.records_sent / elapsed
    ratio = uncompressed / state.bytes_sent if state.bytes_sent else 0.0
    rows = [
        ("records", f"{args.records:,}"),
        ("batch_max_records", f"{args.batch:,}"),
        ("platform durability", args.durability),
        ("fill (Buffer, normal)", f"{fill_s:.1f} s ({args.records / fill_s:,.0f}/s)"),
        ("drain end to end", f"{elapsed:.2f} s"),
        ("drain rate", f"{rate:,.0f} records/s"),
        ("batches", f"{state.batches_sent:,} ({state.batches_failed} failed)"),
        ("bytes sent (gzip)", f"{state.bytes_sent / 2**20:,.1f} MiB"),
        ("gzip ratio", f"{ratio:.1f}x"),
        ("last latency", f"{state.last_latency_ms} ms"),
        ("stored at platform", f"{stored:,}"),
        ("left in buffer", f"{left:,}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if stored != args.records or left != 0:
        print("MISMATCH: not every record arrived exactly once", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"drain_per_s": round(rate), "gzip_ratio": round(ratio, 2)}))


if __name__ == "__main__":
    main()
