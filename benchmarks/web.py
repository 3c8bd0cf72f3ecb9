"""The diagnostic page under load: 500 simulated devices x 20 points every 10 s.

Runs ``edge-agent run`` as a real process (the page shares its event loop with 1,000 readings a
second), logs in like a browser, then times ``/api/status`` (what the overview polls every 2 s)
and ``/api/devices``, and weighs the overview page with every asset it loads. Prints a table and,
as the last line, ``{"api_status_p99_ms": …, "overview_bytes": …, …}``.

    .venv/bin/python benchmarks/web.py [--devices 500] [--points 20] [--requests 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.web.auth import hash_password  # noqa: E402

PASSWORD = "bench-password-1"  # noqa: S105 - a throwaway login for the benchmark


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_config(directory: Path, devices: int, points: int, interval_s: float, port: int) -> Path:
    kinds = ["counter", "sine", "random_walk", "constant"]
    config: dict[str, Any] = {
        "gateway": {"id": "gw-bench", "community": {"code": "350102001001", "name": "东街社区"}},
        "buffer": {"path": str(directory / "buffer.db")},
        "clock": {"synced": "always"},
        "logging": {"level": "warning"},
        "web": {
            "listen": f"127.0.0.1:{port}",
            "users": [
                {"name": "tech", "role": "technician", "password_hash": hash_password(PASSWORD)}
            ],
        },
        "devices": [
            {
                "id": f"meter-{d:03d}",
                "name": f"{d // 100 + 1}号楼{d % 100 + 101}室 电表",
                "driver": "simulated",
                "interval_s": interval_s,
                "latency_ms": 2,
                "seed": d,
                "location": {"building": str(d // 100 + 1), "room": str(d % 100 + 101)},
                "points": [
                    {"name": f"p{p:02d}", "kind": kinds[p % 4], "unit": "kWh", "value": 1}
                    for p in range(points)
                ],
                # A few broken meters, so the overview lists problems as it would on site.
                **({"failure": {"mode": "timeout"}, "timeout_s": 0.2} if d % 50 == 7 else {}),
            }
            for d in range(devices)
        ],
    }
    path = directory / "agent.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


async def wait_for_page(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the agent exited with {proc.returncode}")
            try:
                async with http.get(url + "/login") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit("the page did not come up")


async def login(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(url + "/login") as response:
        token = re.search(r'name="csrf" value="([^"]+)"', await response.text())
    assert token is not None
    data = {"csrf": token.group(1), "username": "tech", "password": PASSWORD, "next": "/"}
    async with http.post(url + "/login", data=data, allow_redirects=False) as response:
        assert response.status == 303, response.status


async def timed(http: aiohttp.ClientSession, url: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        async with http.get(url) as response:
            await response.read()
            assert response.status == 200, response.status
        times.append((time.perf_counter() - started) * 1000)
        # The page polls every 2 s; a small pause keeps this a latency test, not a flood.
        await asyncio.sleep(0.01)
    return times


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


async def measure(url: str, requests: int) -> dict[str, Any]:
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        await login(http, url)
        await timed(http, url + "/api/status", 20)  # warm up
        status = await timed(http, url + "/api/status", requests)
        devices = await timed(http, url + "/api/devices", max(50, requests // 5))
        async with http.get(url + "/") as response:
            page = await response.read()
        overview = len(page)
        for asset in re.findall(rb'(?:src|href)="(/static/[^"]+)"', page):
            async with http.get(url + asset.decode()) as response:
                overview += len(await response.read())
        async with http.get(url + "/api/status") as response:
            figures = await response.json()
    return {
        "status": status,
        "devices": devices,
        "overview_bytes": overview,
        "devices_ok": figures["devices"]["ok"],
        "devices_down": figures["devices"]["down"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = make_config(Path(tmp), args.devices, args.points, args.interval, port)
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", str(config), "--log-format", "json"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(wait_for_page(url, proc))
            time.sleep(args.interval + 2)  # one full poll cycle: every device has values
            result = asyncio.run(measure(url, args.requests))
            rss_mb = psutil.Process(proc.pid).memory_info().rss / 2**20
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)

    status, devices = result["status"], result["devices"]
    print(f"{'devices (ok / down)':<28}{result['devices_ok']:>7} / {result['devices_down']}")
    print(f"{'/api/status p50 (ms)':<28}{statistics.median(status):>12.2f}")
    print(f"{'/api/status p99 (ms)':<28}{p99(status):>12.2f}   target <= 50")
    print(f"{'/api/status max (ms)':<28}{max(status):>12.2f}")
    print(f"{'/api/devices p99 (ms)':<28}{p99(devices):>12.2f}")
    print(f"{'overview + assets (bytes)':<28}{result['overview_bytes']:>12}   target <= 204800")
    print(f"{'agent RSS (MB)':<28}{rss_mb:>12.1f}")
    print(
        json.dumps(
            {
                "api_status_p99_ms": round(p99(status), 2),
                "overview_bytes": result["overview_bytes"],
                "api_devices_p99_ms": round(p99(devices), 2),
                "rss_mb": round(rss_mb, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
