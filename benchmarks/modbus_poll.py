"""CPU cost of polling Modbus TCP: 100 devices × 20 points against a local server.

The server runs in its own process (modbus-serial under node when ``tests/peers`` is installed,
else pymodbus's server), so the figure is the agent side only: pymodbus's client, the driver's
planning, decoding and scaling, and the reading records. The drivers are read back to back
through one shared link (the buffer is not involved: benchmarks/buffer.py measures it).
Prints a table and, as the last line, ``{"cpu_us_per_point": …, "points_per_s": …}``.
The target: at most 50 µs of CPU per point.

    .venv/bin/python benchmarks/modbus_poll.py [--devices 100] [--points 20] [--cycles 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config.models import AgentConfig  # noqa: E402
from agent.driver.testing import Standalone  # noqa: E402
from agent.logs import configure_logging, get_logger  # noqa: E402
from agent.records import Reading  # noqa: E402
from drivers.modbus.codec import encode  # noqa: E402
from drivers.modbus.config import ModbusDevice  # noqa: E402
from drivers.modbus.driver import ModbusDriver  # noqa: E402

PEERS = ROOT / "tests" / "peers"


def points(count: int) -> list[dict[str, Any]]:
    """A device map like a meter's: mostly float32, some scaled integers and status bits."""
    kinds = [
        {"type": "float32", "unit": "V"},
        {"type": "float32", "unit": "A"},
        {"type": "uint16", "scale": 0.1, "unit": "Hz"},
        {"type": "int32", "scale": 0.01, "unit": "kW"},
        {"type": "bit", "bit": 3},
    ]
    out: list[dict[str, Any]] = []
    address = 0
    for n in range(count):
        kind = kinds[n % len(kinds)]
        out.append({"name": f"p{n:02d}", "address": address, **kind})
        address += 1 if kind["type"] in ("uint16", "bit") else 2
    return out


def registers(device_points: list[dict[str, Any]], seed: int) -> dict[int, int]:
    cells: dict[int, int] = {}
    for n, point in enumerate(device_points):
        value: Any = {"float32": 230.0 + seed + n / 10, "uint16": 500 + n, "int32": -1000 * n}.get(
            point["type"], True
        )
        words = encode(value, point["type"], bit=point.get("bit"))
        for i, word in enumerate(words):
            cells[point["address"] + i] = word
    return cells


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(directory: Path, units: dict[int, dict[int, int]], port: int) -> Any:
    if shutil.which("node") and (PEERS / "node_modules" / "modbus-serial").is_dir():
        config = {
            "tcp": {"host": "127.0.0.1", "port": port},
            "units": {
                str(u): {"holding": {str(a): v for a, v in cells.items()}}
                for u, cells in units.items()
            },
        }
        path = directory / "line.json"
        path.write_text(json.dumps(config))
        proc = subprocess.Popen(
            ["node", str(PEERS / "modbus_line.js"), str(path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        return proc, "modbus-serial (node)"
    script = directory / "server.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio
            from pymodbus.server import ModbusTcpServer
            from pymodbus.simulator import DataType, SimData, SimDevice
            units = {units!r}
            def device(unit, cells):
                regs = [0] * (max(cells) + 1)
                for a, v in cells.items():
                    regs[a] = v
                bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
                block = [SimData(0, values=regs, datatype=DataType.REGISTERS)]
                return SimDevice(id=unit, simdata=(bits, bits, block, block))
            async def main():
                server = ModbusTcpServer(
                    [device(u, c) for u, c in units.items()], address=("127.0.0.1", {port})
                )
                await server.serve_forever(background=True)
                print("READY", flush=True)
                await asyncio.Event().wait()
            asyncio.run(main())
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    return proc, "pymodbus server"


async def poll(port: int, devices: int, count: int, cycles: int) -> dict[str, float]:
    config = AgentConfig.model_validate(
        {
            "gateway": {"id": "gw-bench", "community": {"code": "350102001001"}},
            "buses": [{"id": "tcp", "tcp": {"host": "127.0.0.1", "port": port}}],
        }
    )
    bench = Standalone(config.buses, gateway_id=config.gateway.id)
    drivers = []
    for unit in range(1, devices + 1):
        device = ModbusDevice.model_validate(
            {
                "id": f"m{unit}",
                "driver": "modbus",
                "bus": "tcp",
                "unit": unit,
                "points": points(count),
            }
        )
        drivers.append(ModbusDriver(device, bench.context(device, log=get_logger())))
    for driver in drivers:  # warm up: connect, first reads
        await driver.read()
    read_points = 0
    wall = time.perf_counter()
    cpu = time.process_time()
    for _ in range(cycles):
        for driver in drivers:
            records = await driver.read()
            read_points += sum(1 for r in records if isinstance(r, Reading) and r.value is not None)
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    await bench.aclose()
    return {
        "points": read_points,
        "requests_per_read": len(drivers[0].plan),
        "cpu_s": cpu,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--cycles", type=int, default=10)
    args = parser.parse_args()
    configure_logging("error", "console", sys.stderr)

    units = {u: registers(points(args.points), u) for u in range(1, args.devices + 1)}
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc, server = start_server(Path(tmp), units, port)
        try:
            result = asyncio.run(poll(port, args.devices, args.points, args.cycles))
        finally:
            proc.terminate()
            proc.wait(10)
    expected = args.devices * args.points * args.cycles
    assert result["points"] == expected, f"read {result['points']} of {expected} points"
    cpu_us = result["cpu_s"] * 1e6 / result["points"]
    rate = result["points"] / result["wall_s"]
    print(f"server: {server}, 127.0.0.1:{port}")
    print(
        f"{args.devices} devices × {args.points} points × {args.cycles} cycles = "
        f"{result['points']} points in {result['wall_s']:.2f} s wall, {result['cpu_s']:.2f} s CPU "
        f"({result['requests_per_read']} request(s) per device read)"
    )
    print(f"CPU per point: {cpu_us:.1f} µs (target ≤ 50); {rate:.0f} points/s")
    print(json.dumps({"cpu_us_per_point": round(cpu_us, 1), "points_per_s": round(rate)}))


if __name__ == "__main__":
    main()
