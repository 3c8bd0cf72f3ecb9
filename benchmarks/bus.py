"""A saturated RS-485 line at an emulated baud rate, and how long commands wait on it.

Twenty CHINT DDSU666 meters (two requests a poll) are polled every second by the real runtime on
a socat pty pair, through the core's serial line. A pty has no baud rate, so the meters' side (a
small RTU peer in its own process) emulates one: it answers each request only after the request
and its reply would have taken on the wire at 9600 Bd 8N1. Twenty meters want about twice what
the line can carry, so polls queue all the time. Meanwhile ``modbus.write`` commands (a write
and its read-back) go to a twenty-first meter at random moments; each command's wait for the
line is measured (the time its transactions spent waiting for a turn).

    line_utilisation = time the line carried bytes (requests and replies) / elapsed time
    formula_utilisation = Σ T_wire of the transactions (the reference's formula, which counts
                          3.5 characters of silence on each side of every request) / elapsed
    command_wait_ms  = time a command waited for the line, all its transactions together

Run: ``.venv/bin/python benchmarks/bus.py [--seconds 30] [--commands 100]``; needs socat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BAUD = 9600
BITS = 10  # 8N1
METERS = 20
TARGET_UNIT = 99


# --- the meters' side: an RTU peer on the other end of the pty, in its own process -------------


def _crc(data: bytes) -> bytes:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


def peer(path: str, report: str) -> None:
    """Answer FC03 reads (a register reads 0x4148, float32 12.5, until written) and FC06 writes
    (stored, echoed), each after the wire time of the request and the reply at ``BAUD``."""
    import termios
    import tty

    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd, termios.TCSANOW)
    char_s = BITS / BAUD
    t35 = 3.5 * char_s
    wire = {"s": 0.0, "bytes_s": 0.0, "transactions": 0}
    started = time.monotonic()

    def finish(*_: object) -> None:
        wire["elapsed_s"] = time.monotonic() - started
        Path(report).write_text(json.dumps(wire))
        os._exit(0)

    signal.signal(signal.SIGTERM, finish)
    written: dict[tuple[int, int], int] = {}
    buffer = b""
    while True:
        buffer += os.read(fd, 256)
        while len(buffer) >= 8:
            frame, buffer = buffer[:8], buffer[8:]
            if _crc(frame[:6]) != frame[6:]:
                buffer = b""
                break
            unit, function = frame[0], frame[1]
            address, count = struct.unpack(">HH", frame[2:6])
            if function == 3:
                words = [written.get((unit, address + i), 0x4148) for i in range(count)]
                body = bytes([unit, 3, 2 * count]) + struct.pack(f">{count}H", *words)
                reply = body + _crc(body)
            elif function == 6:
                written[unit, address] = count  # the value written
                reply = frame
            else:
                continue
            seconds = (len(frame) + len(reply)) * char_s
            time.sleep(seconds)  # the bytes crossing the line
            os.write(fd, reply)
            wire["s"] += seconds + 2 * t35
            wire["bytes_s"] += seconds
            wire["transactions"] += 1


# --- the agent's side -----------------------------------------------------------------------------


def config(directory: Path, port: Path) -> Path:
    meters = [
        {
            "id": f"meter-{u:02d}",
            "driver": "modbus",
            "bus": "line",
            "unit": u,
            "profile": "chint-ddsu666",
            "interval_s": 1.0,
            "timeout_s": 1.0,
        }
        for u in range(1, METERS + 1)
    ]
    target = {
        "id": "pump",
        "driver": "modbus",
        "bus": "line",
        "unit": TARGET_UNIT,
        "interval_s": 3600,
        "timeout_s": 1.0,
        "commands": ["modbus.write"],
        "points": [{"name": "setpoint", "address": 0, "writable": True}],
    }
    doc = {
        "gateway": {"id": "gw-bench", "community": {"code": "350102001001"}},
        "buffer": {"path": str(directory / "buffer.db"), "durability": "normal"},
        "clock": {"synced": "always"},
        "web": {"enabled": False},
        "buses": [{"id": "line", "serial": {"port": str(port), "baud": BAUD}}],
        "devices": [*meters, target],
    }
    path = directory / "agent.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


async def drive(path: Path, seconds: float, commands: int) -> dict[str, Any]:
    from agent.bus import waiting_time
    from agent.config.loader import load_config
    from agent.runtime import Runtime

    runtime = Runtime(load_config(path))
    await runtime.start()
    waits: list[float] = []
    totals: list[float] = []
    try:
        await asyncio.sleep(3.0)  # every meter polled once, the queue built up
        reads_before = sum(s.reads for s in runtime.state.devices.values())
        started = time.monotonic()
        gap = seconds / commands
        for n in range(commands):
            await asyncio.sleep(random.uniform(0.5, 1.5) * gap)
            asked = time.monotonic()
            with waiting_time() as waited:
                await runtime.execute_command(
                    "pump",
                    "modbus.write",
                    {"point": "setpoint", "value": n % 1000},
                    source="bench",
                    command_id=f"b{n}",
                )
            waits.append(waited[0])
            totals.append(time.monotonic() - asked)
        elapsed = time.monotonic() - started
        reads = sum(s.reads for s in runtime.state.devices.values()) - reads_before
        [line] = runtime.bus_figures()
        failures = sum(s.failures for s in runtime.state.devices.values())
    finally:
        await runtime.shutdown()
    return {
        "waits": waits,
        "totals": totals,
        "elapsed_s": elapsed,
        "reads": reads,
        "failures": failures,
        "busy_s": line["busy_s"],
    }


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--commands", type=int, default=100)
    parser.add_argument("--peer", nargs=2, metavar=("PORT", "REPORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        peer(*args.peer)
        return
    if shutil.which("socat") is None:
        sys.exit("socat is needed (apt-get install socat)")
    from agent.logs import configure_logging

    configure_logging("error", "console", sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        agent_end, peer_end = directory / "line-agent", directory / "line-peer"
        socat = subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={agent_end}", f"pty,raw,echo=0,link={peer_end}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        report = directory / "wire.json"
        try:
            deadline = time.monotonic() + 10
            while not (agent_end.exists() and peer_end.exists()):
                if time.monotonic() > deadline:
                    sys.exit("socat did not make its pty pair")
                time.sleep(0.02)
            meters = subprocess.Popen(
                [sys.executable, __file__, "--peer", str(peer_end), str(report)]
            )
            try:
                result = asyncio.run(
                    drive(config(directory, agent_end), args.seconds, args.commands)
                )
            finally:
                meters.send_signal(signal.SIGTERM)
                meters.wait(10)
            wire = json.loads(report.read_text())
        finally:
            socat.terminate()
            socat.wait(10)
    # The peer ran from before the polls until after them; its wire figure over its lifetime.
    utilisation = wire["bytes_s"] / wire["elapsed_s"]
    formula = wire["s"] / wire["elapsed_s"]
    transaction_ms = 1000 * wire["s"] / max(1, wire["transactions"])
    waits_ms = [1000 * w for w in result["waits"]]
    totals_ms = [1000 * t for t in result["totals"]]
    p50, p99, worst = (percentile(waits_ms, p) for p in (50, 99, 100))
    print(f"line: {METERS} meters polled every 1 s + 1 command target, {BAUD} Bd 8N1 (emulated)")
    print(f"{'figure':<44}{'value':>12}")
    print(f"{'line utilisation (bytes on the line / elapsed)':<44}{utilisation:>11.1%}")
    print(f"{'utilisation by the reference formula':<44}{formula:>11.1%}")
    print(f"{'transactions on the wire':<44}{wire['transactions']:>12}")
    print(f"{'mean transaction, wire time (ms)':<44}{transaction_ms:>12.1f}")
    print(f"{'poll reads completed while measuring':<44}{result['reads']:>12}")
    print(f"{'failed reads':<44}{result['failures']:>12}")
    print(f"{'commands':<44}{len(waits_ms):>12}")
    print(f"{'command wait for the line p50 (ms)':<44}{p50:>12.1f}")
    print(f"{'command wait for the line p99 (ms)':<44}{p99:>12.1f}")
    print(f"{'command wait for the line max (ms)':<44}{worst:>12.1f}")
    print(f"{'command total (write + read-back) p99 (ms)':<44}{percentile(totals_ms, 99):>12.1f}")
    print(
        json.dumps(
            {
                "line_utilisation": round(utilisation, 3),
                "formula_utilisation": round(formula, 3),
                "command_wait_ms_p99": round(p99, 1),
                "command_wait_ms_max": round(worst, 1),
                "transaction_ms_mean": round(transaction_ms, 1),
                "command_total_ms_p99": round(percentile(totals_ms, 99), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
