"""Real Modbus peers for the tests: pymodbus's server, modbus-serial's (node) and pty pairs.

Every peer here is a real process or a real server on loopback or a pseudo-terminal; each is a
context manager that cleans up after itself, also when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import pytest

PEERS = Path(__file__).resolve().parent
NODE_LINE = PEERS / "modbus_line.js"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(condition: Any, *, timeout_s: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def async_wait_until(
    condition: Any, *, timeout_s: float = 10.0, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


# --- independent encodings (struct, written apart from drivers/modbus/codec.py) -----------------

_FORMATS = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}


def registers_of(value: Any, data_type: str, word_order: str = "ABCD") -> list[int]:
    """Registers for ``value`` as a device with ``word_order`` would hold them."""
    raw = struct.pack(">" + _FORMATS[data_type], value)
    pairs = [raw[i : i + 2] for i in range(0, len(raw), 2)]  # big-endian words, MSW first
    if word_order in ("CDAB", "DCBA"):
        pairs.reverse()
    if word_order in ("BADC", "DCBA"):
        pairs = [p[::-1] for p in pairs]
    return [int.from_bytes(p, "big") for p in pairs]


# --- socat pty pairs ------------------------------------------------------------------------------


def missing_peer(reason: str) -> None:
    """Skip on a developer's machine; in CI (which installs every peer) fail, so that a broken
    install step cannot hide behind skipped tests."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run these tests", pytrace=False)
    pytest.skip(reason)


class PtyPair:
    """``socat pty,raw,echo=0 pty,raw,echo=0`` with stable link names, killable and restartable
    (a USB adapter unplugged and plugged back)."""

    def __init__(self, directory: Path, name: str = "line") -> None:
        if shutil.which("socat") is None:
            missing_peer("socat is not installed (apt-get install socat)")
        self.agent = directory / f"{name}-agent"
        """The end the driver opens (the gateway's serial port)."""
        self.peer = directory / f"{name}-peer"
        """The end the simulated meters listen on."""
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "socat",
                f"pty,raw,echo=0,link={self.agent}",
                f"pty,raw,echo=0,link={self.peer}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: self.agent.exists() and self.peer.exists(), what="socat's pty links")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None
        # socat removes its links on exit; make sure, as a vanished adapter's node would be.
        for link in (self.agent, self.peer):
            with contextlib.suppress(FileNotFoundError):
                link.unlink()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


# --- modbus-serial (node) -------------------------------------------------------------------------


def node_available() -> bool:
    return shutil.which("node") is not None and (PEERS / "node_modules" / "modbus-serial").is_dir()


class NodeLine:
    """modbus-serial serving several units on TCP or a serial port; silent for unknown units."""

    def __init__(
        self,
        directory: Path,
        units: Mapping[int, Mapping[str, Mapping[int, Any]]],
        *,
        tcp_port: int | None = None,
        serial_path: Path | None = None,
        silent: Sequence[int] = (),
        delay_ms: float = 0,
    ) -> None:
        if not node_available():
            missing_peer(
                "modbus-serial is not installed: cd tests/peers && npm ci (see scripts/test)"
            )
        config: dict[str, Any] = {
            "units": {
                str(unit): {
                    table: {str(a): v for a, v in cells.items()} for table, cells in maps.items()
                }
                for unit, maps in units.items()
            },
            "silent": list(silent),
            "delay_ms": delay_ms,
        }
        if tcp_port is not None:
            config["tcp"] = {"host": "127.0.0.1", "port": tcp_port}
        else:
            assert serial_path is not None
            config["serial"] = {"path": str(serial_path), "baudRate": 9600}
        self.config_path = directory / f"node-line-{tcp_port or 'serial'}.json"
        self.config_path.write_text(json.dumps(config))
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["node", str(NODE_LINE), str(self.config_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=PEERS,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "READY":
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"modbus-serial peer did not start: {line!r} {err}")

    def command(self, command: Mapping[str, Any]) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "OK"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None:
            for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
        self.proc = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- pymodbus's server ----------------------------------------------------------------------------


def sim_device(unit: int, tables: Mapping[str, Mapping[int, Any]], size: int = 0x4100) -> Any:
    """A pymodbus SimDevice with separate tables; addresses not given read as 0 (registers) or
    off (bits), up to ``size``."""
    from pymodbus.simulator import DataType, SimData, SimDevice

    def block(table: str, bits: bool) -> list[Any]:
        cells = tables.get(table, {})
        if bits:
            values: list[Any] = [False] * 64
            for address, value in cells.items():
                values[address] = bool(value)
            return [SimData(0, values=values, datatype=DataType.BITS)]
        registers = [0] * size
        for address, value in cells.items():
            registers[address] = value
        return [SimData(0, values=registers, datatype=DataType.REGISTERS)]

    return SimDevice(
        id=unit,
        simdata=(
            block("coil", bits=True),
            block("discrete", bits=True),
            block("holding", bits=False),
            block("input", bits=False),
        ),
    )


@contextlib.asynccontextmanager
async def pymodbus_tcp(devices: Sequence[Any], *, port: int) -> AsyncIterator[Any]:
    # With SimDevice datastores pymodbus 3.16 answers an unknown unit with exception 04 even
    # with ignore_missing_devices: the silent line is modbus-serial's job (NodeLine).
    from pymodbus.server import ModbusTcpServer

    server = ModbusTcpServer(list(devices), address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    try:
        yield server
    finally:
        await server.shutdown()


@contextlib.asynccontextmanager
async def pymodbus_rtu(devices: Sequence[Any], *, port: Path) -> AsyncIterator[Any]:
    from pymodbus.server import ModbusSerialServer

    server = ModbusSerialServer(
        list(devices), port=str(port), baudrate=9600, reconnect_delay=0, timeout=0.2
    )
    await server.serve_forever(background=True)
    try:
        yield server
    finally:
        await server.shutdown()


# --- drivers in-process ---------------------------------------------------------------------------


class Harness:
    """Modbus drivers built from a config the way the agent builds them, on the core's bus
    handles (:class:`agent.driver.testing.Standalone`), with a record list as the sink;
    ``aclose`` closes the links and the buses as the runtime does."""

    def __init__(
        self,
        directory: Path,
        buses: list[dict[str, Any]],
        devices: list[dict[str, Any]],
    ) -> None:
        from agent_proc import write_config

        from agent.config.loader import load_config
        from agent.driver.testing import Standalone
        from drivers.modbus.driver import ModbusDriver

        self.config = load_config(write_config(directory, devices, buses=buses))
        self.bench = Standalone(self.config.buses, gateway_id=self.config.gateway.id)
        self.drivers: dict[str, ModbusDriver] = {
            device.id: ModbusDriver(device, self.bench.context(device))  # type: ignore[arg-type]
            for device in self.config.devices
        }

    @property
    def records(self) -> list[Any]:
        return self.bench.records

    @property
    def link(self) -> Any:
        """The (one) bus: its link state and counters."""
        [bus] = self.bench.buses.values()
        return bus

    def events(self, type_: str) -> list[Any]:
        return self.bench.events(type_)

    async def aclose(self) -> None:
        await self.bench.aclose()


# --- a misbehaving RTU meter on a pty -------------------------------------------------------------


def _crc(data: bytes) -> bytes:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


class FakeMeter:
    """An RTU meter on the peer end of a pty that answers FC03/FC04 from ``registers`` (FC06
    writes them) and, request by request, misbehaves as scripted: ``garbage_before``,
    ``truncated``, ``other_unit``, ``bad_crc``, ``short_count`` (a valid frame with fewer
    registers), ``silent``, ``noise_after`` (a good reply, then random bytes on the idle line).

    ``units`` lets one peer stand for several meters with the same registers; ``delay_s`` makes
    every answer take that long (a slow line); ``log`` lists the unit of every request in
    order; ``other`` answers 8-byte frames of another protocol (first byte 0xA5) on the line."""

    def __init__(
        self,
        path: Path,
        unit: int,
        registers: Mapping[int, int],
        *,
        units: Sequence[int] = (),
        delay_s: float = 0.0,
        other: Any = None,
    ) -> None:
        self.path = path
        self.unit = unit
        self.units = {unit, *units}
        self.registers = dict(registers)
        self.script: list[str] = []
        self.requests = 0
        self.log: list[int] = []
        self.delay_s = delay_s
        self.other = other
        self._buffer = b""
        self._fd = -1

    def __enter__(self) -> Self:
        import termios
        import tty

        self._fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self._fd, termios.TCSANOW)
        asyncio.get_running_loop().add_reader(self._fd, self._readable)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.get_running_loop().remove_reader(self._fd)
        os.close(self._fd)

    def _readable(self) -> None:
        try:
            self._buffer += os.read(self._fd, 256)
        except BlockingIOError:
            return
        while len(self._buffer) >= 8:
            frame, self._buffer = self._buffer[:8], self._buffer[8:]
            if frame[0] == 0xA5 and self.other is not None:
                self.requests += 1
                self.log.append(-1)
                self._send(self.other(frame))
                continue
            if _crc(frame[:6]) != frame[6:]:
                self._buffer = b""  # resynchronise, as a meter does after a line break
                return
            self._answer(frame)

    def _send(self, reply: bytes | None) -> None:
        if not reply:
            return
        if self.delay_s:
            asyncio.get_running_loop().call_later(self.delay_s, self._write, reply)
        else:
            self._write(reply)

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self._fd, data)

    def _answer(self, frame: bytes) -> None:
        self.requests += 1
        unit, function = frame[0], frame[1]
        self.log.append(unit)
        address, count = struct.unpack(">HH", frame[2:6])
        if unit not in self.units or function not in (3, 4, 6):
            return
        if function == 6:
            self.registers[address] = count  # the value written
            self._send(frame)  # a write is answered with its echo
            return
        behaviour = self.script.pop(0) if self.script else "ok"
        words = [self.registers.get(address + i, 0) for i in range(count)]
        if behaviour == "short_count":
            words = words[:-1]
        body = bytes([unit, function, 2 * len(words)]) + struct.pack(f">{len(words)}H", *words)
        reply = body + _crc(body)
        if behaviour == "silent":
            return
        if behaviour == "garbage_before":
            reply = b"\x00\xff" + reply
        elif behaviour == "truncated":
            reply = reply[:5]
        elif behaviour == "other_unit":
            other = bytes([unit + 1]) + body[1:]
            reply = other + _crc(other)
        elif behaviour == "bad_crc":
            reply = reply[:-1] + bytes([reply[-1] ^ 0x55])
        if behaviour == "noise_after":
            reply += bytes([0x55, 0xAA, 0x01, 0x03, 0x99])
        self._send(reply)
