"""Card to record: how long from a card at the reader to an ``access.card`` record at the agent.

Our control panel (drivers/osdp) polls libosdp readers (tests/peers/osdp_pd.py, PyPI
``libosdp``) over a socat pty pair at 9600 Bd with the secure channel on, first one reader, then
four on one multi-drop line (tests/peers/rs485_hub.py: every reader hears every frame). Each
card is "presented" by writing it to a reader's stdin; the time runs until the driver hands the
record to its sink. A pty has no wire time: the figure is the agent's pacing (its poll cadence,
frame gaps and secure channel), not a real line's. Prints a table and, as the last line,
``{"card_to_record_p50_ms": …, "card_to_record_p99_ms": …, "card_to_record_p99_ms_4_readers": …}``.

    .venv/bin/python benchmarks/osdp.py [--cards 200]

It reuses the test peers (a script run as a process and the pty hub) rather than a copy of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from peers.rs485_hub import Rs485Hub  # noqa: E402

from agent.config.loader import load_config  # noqa: E402
from agent.driver.testing import Standalone  # noqa: E402
from agent.records import Event  # noqa: E402
from drivers.osdp.driver import OsdpDriver  # noqa: E402

PEER = ROOT / "tests" / "peers" / "osdp_pd.py"
KEY = "000102030405060708090a0b0c0d0e0f"
BAUD = 9600
COUNTERS: dict[int, dict[str, dict[str, int]]] = {}


@contextlib.contextmanager
def socat_pair(directory: Path) -> Iterator[tuple[Path, Path]]:
    agent, peer = directory / "line-agent", directory / "line-peer"
    proc = subprocess.Popen(
        ["socat", f"pty,raw,echo=0,link={agent}", f"pty,raw,echo=0,link={peer}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not (agent.exists() and peer.exists()):
        if time.monotonic() > deadline:
            raise SystemExit("socat did not make its ptys")
        time.sleep(0.05)
    try:
        yield agent, peer
    finally:
        proc.terminate()
        proc.wait(10)


def start_pd(port: Path, address: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            *(sys.executable, str(PEER), "--port", str(port), "--address", str(address)),
            *("--scbk", KEY, "--baud", str(BAUD)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    if "ready" not in proc.stdout.readline():
        raise SystemExit("the libosdp reader did not start")
    return proc


async def measure(directory: Path, readers: int, cards: int) -> list[float]:
    key_file = directory / "reader.key"
    key_file.write_text(KEY + "\n")
    with socat_pair(directory) as (agent_end, peer_end):
        hub = Rs485Hub(peer_end, devices=readers)
        hub.start()
        pds = [start_pd(hub.ports[i], 10 + i) for i in range(readers)]
        config = {
            "gateway": {"id": "gw-bench", "community": {"code": "350102001001"}},
            "buffer": {"path": str(directory / "buffer.db")},
            "buses": [{"id": "doors", "serial": {"port": str(agent_end), "baud": BAUD}}],
            "devices": [
                {
                    "id": f"door-{i}",
                    "driver": "osdp",
                    "bus": "doors",
                    "address": 10 + i,
                    "key_file": str(key_file),
                }
                for i in range(readers)
            ],
        }
        path = directory / "agent.yaml"
        path.write_text(yaml.safe_dump(config))
        loaded = load_config(path)
        bench = Standalone(loaded.buses)
        driver = OsdpDriver(bench.context(*loaded.devices))
        task = asyncio.create_task(driver.run())
        latencies: list[float] = []
        try:

            def cards_seen() -> int:
                return sum(
                    1 for r in bench.records if isinstance(r, Event) and r.type == "access.card"
                )

            def online() -> int:
                return sum(
                    1 for r in bench.records if isinstance(r, Event) and r.type == "reader.online"
                )

            deadline = time.monotonic() + 60
            while online() < readers:
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {online()} of {readers} readers came online")
                await asyncio.sleep(0.05)
            rng = random.Random(7)
            for _ in range(cards):
                pd = pds[rng.randrange(readers)]
                assert pd.stdin is not None
                before = cards_seen()
                await asyncio.sleep(rng.uniform(0.0, 0.1))  # not in step with the poll cycle
                started = time.perf_counter()
                pd.stdin.write(json.dumps({"card": "7b11d780", "bits": 26}) + "\n")
                pd.stdin.flush()
                while cards_seen() == before:
                    await asyncio.sleep(0.001)
                latencies.append((time.perf_counter() - started) * 1000)
        finally:
            COUNTERS[readers] = {k: dict(v) for k, v in driver.counters().items()}
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await bench.aclose()
            for pd in pds:
                pd.terminate()
                pd.wait(10)
            hub.stop()
    return latencies


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else values[0]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cards", type=int, default=200)
    args = parser.parse_args()
    if shutil.which("socat") is None:
        raise SystemExit("socat is needed (apt-get install socat)")
    results: dict[int, list[float]] = {}
    for readers in (1, 4):
        with tempfile.TemporaryDirectory() as tmp:
            results[readers] = await measure(Path(tmp), readers, args.cards)
    print(f"{'readers':>8} {'cards':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for readers, values in results.items():
        print(
            f"{readers:>8} {len(values):>6} {statistics.median(values):>8.1f} "
            f"{p99(values):>8.1f} {max(values):>8.1f}"
        )
    for readers, counts in COUNTERS.items():
        print(f"counters with {readers} reader(s): {counts}")
    figures: dict[str, Any] = {
        "card_to_record_p50_ms": round(statistics.median(results[1]), 1),
        "card_to_record_p99_ms": round(p99(results[1]), 1),
        "card_to_record_p50_ms_4_readers": round(statistics.median(results[4]), 1),
        "card_to_record_p99_ms_4_readers": round(p99(results[4]), 1),
        "baud": BAUD,
        "secure_channel": True,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
