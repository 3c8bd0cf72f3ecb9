"""Steady-state cost of the agent: 200 simulated devices x 20 points every 10 s.

Runs ``edge-agent run`` as a real process on a temporary config, uploading to a reference
platform in another process (``--no-uplink`` to leave it out), lets it settle for one poll
cycle, then measures the agent's CPU time and resident memory over the measuring window (60 s by
default). Prints a table and, as the last line, ``{"cpu_percent": …, "rss_mb": …}`` where
cpu_percent is the share of ONE core, and rss_mb the peak RSS seen.

    .venv/bin/python benchmarks/steady.py [--devices 200] [--points 20] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent


def start_platform(directory: Path) -> tuple[subprocess.Popen[str], dict[str, object]]:
    secret = secrets.token_hex(32)
    (directory / "uplink.key").write_text(secret)
    keys = directory / "keys.yaml"
    keys.write_text(yaml.safe_dump({"gw-bench": {"gateway": "gw-bench", "secret": secret}}))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "reference-platform",
            "--listen",
            "127.0.0.1:0",
            "--db",
            str(directory / "platform.db"),
            "--keys",
            str(keys),
            "--command-key",
            str(directory / "command.pem"),
            "--durability",
            "normal",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    port = json.loads(proc.stdout.readline())["port"]
    uplink = {
        "http": {
            "url": f"http://127.0.0.1:{port}",
            "key_id": "gw-bench",
            "secret": {"file": str(directory / "uplink.key")},
            "command_key_file": str(directory / "command.pem.pub"),
            "first_attempt_jitter_s": 0,
        }
    }
    return proc, uplink


def make_config(
    directory: Path,
    devices: int,
    points: int,
    interval_s: float,
    uplink: dict[str, object] | None = None,
) -> Path:
    kinds = ["counter", "sine", "random_walk", "constant"]
    config = {
        "gateway": {"id": "gw-bench", "community": {"code": "350102001001"}},
        "buffer": {"path": str(directory / "buffer.db")},
        "logging": {"level": "warning"},
        **({"uplink": uplink} if uplink else {}),
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


def platform_count(directory: Path) -> int:
    with sqlite3.connect(f"file:{directory / 'platform.db'}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM records").fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--no-uplink", action="store_true", help="no platform, records stay")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        platform, uplink = (None, None) if args.no_uplink else start_platform(Path(tmp))
        config = make_config(Path(tmp), args.devices, args.points, args.interval, uplink)
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
            stored = platform_count(Path(tmp)) if platform is not None else None
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            if platform is not None:
                platform.terminate()
                platform.wait(30)
                assert platform.stdout is not None
                platform.stdout.close()

    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    cpu_percent = 100 * cpu_s / elapsed
    rss_mb = peak_rss / 2**20
    records_per_s = args.devices * args.points / args.interval
    print(f"{'devices':<28}{args.devices:>12}")
    print(f"{'points per device':<28}{args.points:>12}")
    print(f"{'interval (s)':<28}{args.interval:>12.1f}")
    print(f"{'readings per second':<28}{records_per_s:>12.0f}")
    print(f"{'window (s)':<28}{elapsed:>12.1f}")
    uploaded = "no uplink" if stored is None else f"{stored:>12}"
    print(f"{'records at the platform':<28}{uploaded}")
    print(f"{'CPU (% of one core)':<28}{cpu_percent:>12.2f}   target <= 10")
    print(f"{'peak RSS (MB)':<28}{rss_mb:>12.1f}   target <= 100")
    print(json.dumps({"cpu_percent": round(cpu_percent, 2), "rss_mb": round(rss_mb, 1)}))


if __name__ == "__main__":
    main()
