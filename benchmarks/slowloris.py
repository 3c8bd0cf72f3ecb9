"""The page against a slow-loris: 1,100 half-open connections dripping header bytes.

Runs ``edge-agent run`` as a real process (20 simulated devices, the page on 127.0.0.1, the
process limited to 1,024 open files as outside systemd), opens ``--connections`` connections from
127.0.0.1 that send a request line and then one header byte a second, and meanwhile scrapes
``/metrics`` from 127.0.0.2 (another machine on the LAN) once a second. Reports how many scrapes
were answered and how fast, how many attacking connections the agent kept open, and what the
attack cost in log lines and bytes. Prints a table and, as the last line,
``{"connections": …, "metrics_ok": …, "metrics_failed": …, "metrics_p50_ms": …, …}``.

    .venv/bin/python benchmarks/slowloris.py [--connections 1100] [--seconds 60]

Before the guard (agent/web/guard.py), 1,100 such connections took ``/metrics`` down and logged a
million tracebacks (425 MB) in 90 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.web.auth import hash_password  # noqa: E402

TOKEN = "bench-metrics-token-0123456789"  # noqa: S105 - a throwaway token for the benchmark


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_config(directory: Path, port: int) -> Path:
    (directory / "metrics.token").write_text(TOKEN + "\n")
    config: dict[str, Any] = {
        "gateway": {"id": "gw-bench", "community": {"code": "350102001001"}},
        "buffer": {"path": str(directory / "buffer.db")},
        "clock": {"synced": "always"},
        "logging": {"level": "info", "format": "json"},
        "web": {
            "listen": f"127.0.0.1:{port}",
            "users": [
                {
                    "name": "tech",
                    "role": "technician",
                    "password_hash": hash_password("bench-password-1"),
                }
            ],
            "metrics_token": {"file": str(directory / "metrics.token")},
        },
        "devices": [
            {
                "id": f"meter-{d:02d}",
                "driver": "simulated",
                "interval_s": 1,
                "points": [{"name": "energy", "kind": "counter", "unit": "kWh"}],
            }
            for d in range(20)
        ],
    }
    path = directory / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _limit_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


async def wait_listening(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.2)
    raise SystemExit("the agent's page did not start")


def server_side_open(port: int) -> int:
    """Established connections the agent holds on its page's port (``ss``, server side)."""
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return len([line for line in out.splitlines() if line.strip()])


async def attacker(port: int, count: int, stop: asyncio.Event, open_now: list[int]) -> None:
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket()
        sock.settimeout(0)
        with contextlib.suppress(OSError):
            await loop.sock_connect(sock, ("127.0.0.1", port))
            sock.send(b"GET /metrics HTTP/1.1\r\nHost: gw\r\n")
            socks.append(sock)
            continue
        sock.close()
    while not stop.is_set():
        alive = []
        for sock in socks:
            try:
                sock.send(b"X")
                alive.append(sock)
            except OSError:
                sock.close()
        open_now.append(server_side_open(port))
        # Reopen what the agent closed: the attacker keeps the pressure on.
        while len(alive) < count and not stop.is_set():
            sock = socket.socket()
            sock.settimeout(0)
            try:
                await loop.sock_connect(sock, ("127.0.0.1", port))
                sock.send(b"GET /metrics HTTP/1.1\r\nHost: gw\r\n")
            except OSError:
                sock.close()
                break
            alive.append(sock)
        socks = alive
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    for sock in socks:
        sock.close()


async def scraper(port: int, stop: asyncio.Event, results: list[float | None]) -> None:
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), force_close=True)
    timeout = aiohttp.ClientTimeout(total=5)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                async with http.get(f"http://127.0.0.1:{port}/metrics", headers=headers) as r:
                    await r.read()
                    results.append((time.perf_counter() - started) * 1000 if r.ok else None)
            except (aiohttp.ClientError, TimeoutError):
                results.append(None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1100)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.connections + 512)), hard))
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        port = free_port()
        config = make_config(directory, port)
        log_path = directory / "agent.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "run", str(config)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_limit_files,  # noqa: PLW1509 - no threads in this process yet
            )
            try:
                await wait_listening(port)
                before = log_path.stat().st_size
                stop = asyncio.Event()
                results: list[float | None] = []
                open_now: list[int] = []
                tasks = [
                    asyncio.create_task(attacker(port, args.connections, stop, open_now)),
                    asyncio.create_task(scraper(port, stop, results)),
                ]
                await asyncio.sleep(args.seconds)
                stop.set()
                await asyncio.gather(*tasks)
                alive = proc.poll() is None
            finally:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(30)
        text = log_path.read_bytes()[before:]
    lines = text.count(b"\n")
    ok = [r for r in results if r is not None]
    figures = {
        "connections": args.connections,
        "seconds": args.seconds,
        "metrics_ok": len(ok),
        "metrics_failed": len(results) - len(ok),
        "metrics_p50_ms": round(statistics.median(ok), 1) if ok else None,
        "metrics_max_ms": round(max(ok), 1) if ok else None,
        "agent_open_max": max(open_now, default=0),
        "agent_open_median": round(statistics.median(open_now)) if open_now else 0,
        "log_lines": lines,
        "log_bytes": len(text),
        "tracebacks": text.count(b"Traceback"),
        "agent_alive": alive,
    }
    print(f"{'figure':24s} value")
    for key, value in figures.items():
        print(f"{key:24s} {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
