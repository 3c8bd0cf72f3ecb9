"""Steady-state cost of the agent: 200 simulated devices x 20 points every 10 s.

Runs ``edge-agent run`` as a real process on a temporary config, lets it settle for one poll
cycle, then measures its CPU time and resident memory over the measuring window (60 s by
default). Prints a table and, as the last line, ``{"cpu_percent": …, "rss_mb": …}`` where
cpu_percent is the share of ONE core, and rss_mb the peak RSS seen.

    .venv/bin/python benchmarks/steady.py [--devices 200] [--points 20] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent


def make_config(directory: Path, devices: int, points: int, interval_s: float) -> Path:
    kinds = ["counter", "sine", "random_walk", "constant"]
    config = {
        "gateway": {"id": "gw-bench", "community": {"code": "350102001001"}},
        "buffer": {"path": str(directory / "buffer.db")},
        "logging": {"level": "warning"},
        "devices": [
            {
                "id": f"meter-{d:03d}",
                "driver": "simulated",
                "interval_s": interval_s,
                "latency_ms": 2,
                "seed": d,
                "points": [
                    {"name": f"p{p:02d}", "kind": kinds[p % 4], "unit": "kWh", "value": 1}
                    for p in range(points)
                ],
            }
            for d in range(devices)
        ],
    }
    path = directory / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        config = make_config(Path(tmp), args.devices, args.points, args.interval)
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", str(config), "--log-format", "json"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        try:
            ps = psutil.Process(proc.pid)
            # Settle: start-up (imports, first jittered polls) is not the steady state.
            time.sleep(args.interval + 2)
            cpu0 = ps.cpu_times()
            t0 = time.monotonic()
            peak_rss = 0
            while time.monotonic() - t0 < args.seconds:
                if proc.poll() is not None:
                    sys.exit(f"the agent exited early with {proc.returncode}")
                peak_rss = max(peak_rss, ps.memory_info().rss)
                time.sleep(0.5)
            cpu1 = ps.cpu_times()
            elapsed = time.monotonic() - t0
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)

    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    cpu_percent = 100 * cpu_s / elapsed
    rss_mb = peak_rss / 2**20
    records_per_s = args.devices * args.points / args.interval
    print(f"{'devices':<28}{args.devices:>12}")
    print(f"{'points per device':<28}{args.points:>12}")
    print(f"{'interval (s)':<28}{args.interval:>12.1f}")
    print(f"{'readings per second':<28}{records_per_s:>12.0f}")
    print(f"{'window (s)':<28}{elapsed:>12.1f}")
    print(f"{'CPU (% of one core)':<28}{cpu_percent:>12.2f}   target <= 10")
    print(f"{'peak RSS (MB)':<28}{rss_mb:>12.1f}   target <= 100")
    print(json.dumps({"cpu_percent": round(cpu_percent, 2), "rss_mb": round(rss_mb, 1)}))


if __name__ == "__main__":
    main()
