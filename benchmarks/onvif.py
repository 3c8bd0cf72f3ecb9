"""ONVIF cameras at scale: the whole agent (a real ``edge-agent run`` process) with 64 cameras
simulated by our camera simulator on 127.0.0.1, motion flowing, against the same agent without
cameras.

Event latency is from the camera's event time (its UtcTime, simulator clock = gateway clock) to
the record's timestamp in the agent (when the driver handed it to the core). RSS growth is the
agent's RSS with the cameras minus its RSS without them, both after ``--settle`` seconds.

Prints a table and, as the last line, ``{"cameras": …, "event_latency_p99_ms": …,
"rss_mb": …}``. Targets: p99 ≤ 1000 ms, ≤ 80 MB RSS growth.

    .venv/bin/python benchmarks/onvif.py [--cameras 64] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import psutil  # noqa: E402 - after the path set-up
from agent_proc import buffer_records, sim_device, write_config  # noqa: E402

from drivers.onvif.simulator import DEFAULT_PASSWORD, CameraSimulator, specs  # noqa: E402


def _agent(config: Path) -> subprocess.Popen[bytes]:
    log = (config.parent / "agent.log").open("wb")
    with log:
        return subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", str(config)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def _alive(process: subprocess.Popen[bytes], config: Path) -> None:
    """Fail loudly, with the agent's own words, if it has exited: no figures from a dead agent."""
    if process.poll() is not None:
        tail = (config.parent / "agent.log").read_text(errors="replace")[-2000:]
        raise SystemExit(f"the agent exited with {process.returncode}:\n{tail}")


def _rss_mb(process: subprocess.Popen[bytes], config: Path) -> float:
    _alive(process, config)
    return psutil.Process(process.pid).memory_info().rss / 2**20


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(60)


async def _run(cameras: int, seconds: float, settle: float, work: Path) -> dict[str, Any]:
    base = [sim_device("sim-1", interval_s=5)]
    (work / "bare").mkdir()
    bare_config = write_config(work / "bare", base)
    bare = _agent(bare_config)
    await asyncio.sleep(settle)
    bare_rss = _rss_mb(bare, bare_config)
    _stop(bare)
    password = work / "camera.password"
    password.write_text(DEFAULT_PASSWORD)
    async with CameraSimulator(specs(cameras)) as simulator:
        devices = base + [
            {
                "id": cid,
                "driver": "onvif",
                "host": "127.0.0.1",
                "port": camera.port,
                "username": "admin",
                "password": {"file": str(password)},
                "motion_hold_s": 0,
            }
            for cid, camera in simulator.cameras.items()
        ]
        (work / "cams").mkdir()
        config = write_config(work / "cams", devices)
        agent = _agent(config)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(
                not c.subscriptions for c in simulator.cameras.values()
            ):
                _alive(agent, config)
                await asyncio.sleep(0.2)
            subscribed = sum(1 for c in simulator.cameras.values() if c.subscriptions)
            end = time.monotonic() + seconds
            rounds = 0
            while time.monotonic() < end:
                for camera in simulator.cameras.values():
                    camera.motion(on=rounds % 2 == 0)
                    await asyncio.sleep(1.0 / cameras)  # spread: one camera at a time
                rounds += 1
            await asyncio.sleep(max(2.0, settle - seconds))
            cams_rss = _rss_mb(agent, config)
        finally:
            _stop(agent)
    records = buffer_records(work / "cams" / "buffer.db")
    latencies = sorted(
        r["ts"] - dt.datetime.fromisoformat(r["data"]["camera_time"]).timestamp() * 1000
        for r in records
        if r.get("type") == "camera.motion"
    )
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else -1  # noqa: E731
    return {
        "subscribed": subscribed,
        "events": len(latencies),
        "sent": rounds * cameras,
        "p50": p(0.5),
        "p99": p(0.99),
        "max": latencies[-1] if latencies else -1,
        "bare_rss": bare_rss,
        "cams_rss": cams_rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--settle", type=float, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        r = asyncio.run(_run(args.cameras, args.seconds, args.settle, Path(folder)))
    growth = r["cams_rss"] - r["bare_rss"]
    print(f"{'cameras':32s} {args.cameras}")
    print(f"{'subscribed':32s} {r['subscribed']}")
    print(f"{'motion events sent / stored':32s} {r['sent']} / {r['events']}")
    print(f"{'latency p50 / p99 / max (ms)':32s} {r['p50']:.0f} / {r['p99']:.0f} / {r['max']:.0f}")
    print(f"{'agent RSS without / with (MB)':32s} {r['bare_rss']:.1f} / {r['cams_rss']:.1f}")
    print(f"{'RSS growth (MB)':32s} {growth:.1f}   (target <= 80)")
    print(
        json.dumps(
            {
                "cameras": args.cameras,
                "event_latency_p99_ms": round(r["p99"]),
                "rss_mb": round(growth, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
