"""One connection per bus, shared by every Modbus device on it (``ctx.shared("modbus:<bus>")``).

pymodbus's clients do the framing; this module owns what a gateway needs around them:

- per-request timeout and retries taken from the device, not the client (pymodbus's defaults,
  3 s and 3 retries, cost 12 s per dead meter per request);
- reconnecting by itself, on the next request after a loss, with a growing pause between
  attempts so that a vanished USB adapter costs nothing but a fast ``no_port`` failure, and a
  ``modbus.link_down`` / ``modbus.link_up`` event once per transition, for the bus;
- the 3.5-character silence between frames on a serial line;
- telling a timeout from what the line actually carried: a CRC error, a short reply, a reply
  from another unit, noise. pymodbus drops such bytes silently; we look at them through its
  packet trace and classify them (:func:`drivers.modbus.codec.scan_rtu`).

The scheduler's bus lane already serialises requests (one at a time on a serial line, up to
``max_in_flight`` on TCP); the pool here holds one pymodbus client per request in flight, since a
pymodbus client never has more than one request outstanding.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from agent.records import Event, Severity
from drivers.modbus.codec import scan_mbap, scan_rtu

if TYPE_CHECKING:
    import structlog
    from pymodbus.pdu import ModbusPDU

    from agent.config.models import Bus
    from agent.driver import RecordSink

__all__ = ["LINK_REASONS", "BusSlot", "Client", "LinkError", "ModbusLink"]

Client = AsyncModbusSerialClient | AsyncModbusTcpClient
Operation = Callable[[Client], Awaitable["ModbusPDU"]]

LINK_REASONS: Final = frozenset({"no_port", "io_error"})
"""Failures of the bus itself rather than of one device: every device on it is affected."""

_RETRY_FIRST_S: Final = 0.5
_RETRY_MAX_S: Final = 10.0
_SILENT_BEFORE_RECYCLE: Final = 3
"""Consecutive unanswered requests on one TCP connection before it is reopened: a half-open
connection (a gateway that rebooted) looks exactly like silence."""
_URL_PORTS: Final = ("socket://", "rfc2217://", "loop://", "spy://", "alt://", "hwgrep://")

# Every failure is counted, classified and reported by the driver; pymodbus's own log line per
# timeout ("No response received...") would repeat that once per failed poll.
logging.getLogger("pymodbus.logging").setLevel(logging.CRITICAL)


class LinkError(Exception):
    """A request failed; ``reason`` is the word the scheduler counts (timeout, crc_error, ...)."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason


class _Connection:
    """One pymodbus client and the bytes it received during the current attempt."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.rx = b""
        """Everything received during the current attempt."""
        self._buffer = b""
        self.silent = 0

    def reset(self) -> None:
        self.rx = self._buffer = b""

    def trace(self, sending: bool, data: bytes) -> bytes:
        # pymodbus hands over its whole receive buffer each time bytes arrive, and empties it
        # when it accepts or discards a frame: recover the bytes that are new.
        if not sending:
            self.rx += data.removeprefix(self._buffer)
            self._buffer = bytes(data)
        return data


def _port_problem(port: str) -> tuple[str, str] | None:
    """Why a serial port cannot be opened, seen without opening it (a stat and an access check
    on the device node, microseconds even when the adapter hangs)."""
    if not Path(port).exists():
        return "no_port", f"{port} does not exist (adapter unplugged?)"
    if not os.access(port, os.R_OK | os.W_OK):
        return "io_error", f"{port}: permission denied (is the user in the dialout group?)"
    return None


def _char_bits(bus: Bus) -> int:
    serial = bus.serial
    if serial is None:
        return 11
    return 1 + serial.data_bits + (serial.parity != "none") + serial.stop_bits


class ModbusLink:
    """The shared connection of one bus; closed by the runtime (``aclose``) at stop."""

    def __init__(
        self,
        bus: Bus,
        *,
        emit: RecordSink,
        stamp: Callable[[], tuple[int, bool]],
        log: structlog.typing.FilteringBoundLogger,
        source: str,
    ) -> None:
        self.bus = bus
        self.rtu = bus.serial is not None or (bus.tcp is not None and bus.tcp.framer == "rtu")
        self._emit = emit
        self._stamp = stamp
        self._log = log
        self._source = source
        self._size = bus.max_in_flight
        self._idle: list[_Connection] = []
        self._all: list[_Connection] = []
        self._free = asyncio.Semaphore(self._size)
        self.state = "unknown"
        """unknown (never opened), up or down."""
        self.down_reason: str | None = None
        self.down_error: str | None = None
        self._retry_at = 0.0
        self._retry_delay = 0.0
        self._last_io = 0.0
        self.counters: collections.Counter[str] = collections.Counter()
        """Bus-wide figures: requests, replies, reconnects, each failure reason."""
        serial = bus.serial
        if serial is None:
            self.gap_s = 0.0
        elif serial.inter_frame_ms is not None:
            self.gap_s = serial.inter_frame_ms / 1000
        else:
            char_s = _char_bits(bus) / serial.baud
            self.gap_s = 3.5 * char_s if serial.baud <= 19200 else 0.00175

    @property
    def where(self) -> str:
        if self.bus.serial is not None:
            return self.bus.serial.port
        assert self.bus.tcp is not None
        return f"{self.bus.tcp.host}:{self.bus.tcp.port}"

    # ------------------------------------------------------------------ clients

    def _new_client(self) -> _Connection:
        connection: _Connection
        serial, tcp = self.bus.serial, self.bus.tcp
        common: dict[str, Any] = {
            "name": f"modbus[{self.bus.id}]",
            "timeout": 1.0,
            "retries": 0,
            # Reconnecting is ours: on the next request, paced, with events.
            "reconnect_delay": 0,
        }
        client: Client
        if serial is not None:
            client = AsyncModbusSerialClient(
                serial.port,
                framer=FramerType.RTU,
                baudrate=serial.baud,
                bytesize=serial.data_bits,
                parity={"none": "N", "even": "E", "odd": "O"}[serial.parity],
                stopbits=serial.stop_bits,
                **common,
            )
        else:
            assert tcp is not None
            client = AsyncModbusTcpClient(
                tcp.host,
                port=tcp.port,
                framer=FramerType.RTU if tcp.framer == "rtu" else FramerType.SOCKET,
                **common,
            )
        # Silence is handled here (see _SILENT_BEFORE_RECYCLE); pymodbus would otherwise drop a
        # gateway's connection because one meter behind it is dead.
        client.set_max_no_responses(1_000_000_000)
        connection = _Connection(client)
        client.ctx.trace_packet = connection.trace
        return connection

    @contextlib.asynccontextmanager
    async def _connection(self) -> Any:
        async with self._free:
            connection = self._idle.pop() if self._idle else None
            if connection is None:
                connection = self._new_client()
                self._all.append(connection)
            try:
                yield connection
            finally:
                self._idle.append(connection)

    # ------------------------------------------------------------------ link state

    async def _event(self, type_: str, severity: Severity, **data: Any) -> None:
        ts, synced = self._stamp()
        event = Event(
            device=self._source,
            ts=ts,
            ts_synced=synced,
            type=type_,
            severity=severity,
            data={"bus": self.bus.id, "where": self.where, **data},
        )
        with contextlib.suppress(Exception):
            await self._emit([event])

    async def _down(self, reason: str, error: str) -> None:
        loop = asyncio.get_running_loop()
        self._retry_delay = (
            min(self._retry_delay * 2, _RETRY_MAX_S) if self._retry_delay else _RETRY_FIRST_S
        )
        self._retry_at = loop.time() + self._retry_delay
        self.down_reason, self.down_error = reason, error
        self.counters[reason] += 1
        if self.state != "down":
            self.state = "down"
            self._log.warning("modbus.link_down", bus=self.bus.id, reason=reason, error=error)
            await self._event("modbus.link_down", Severity.WARNING, reason=reason, error=error)

    async def _lost(self, connection: _Connection, error: str) -> None:
        """The open connection broke (adapter unplugged, peer closed): try again at once."""
        connection.client.close()
        self._retry_delay = 0.0
        self._retry_at = 0.0
        self.down_reason, self.down_error = "io_error", error
        self.counters["link_lost"] += 1
        if self.state != "down":
            self.state = "down"
            self._log.warning("modbus.link_down", bus=self.bus.id, reason="io_error", error=error)
            await self._event("modbus.link_down", Severity.WARNING, reason="io_error", error=error)

    async def _open(self, connection: _Connection, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        if self.state == "down" and loop.time() < self._retry_at:
            wait = self._retry_at - loop.time()
            raise LinkError(
                self.down_reason or "io_error",
                f"{self.where}: {self.down_error}; next attempt in {wait:.1f} s",
            )
        serial = self.bus.serial
        if serial is not None and not serial.port.startswith(_URL_PORTS):
            problem = _port_problem(serial.port)
            if problem is not None:
                await self._down(*problem)
                raise LinkError(*problem)
        client = connection.client
        client.ctx.comm_params.timeout_connect = max(timeout_s, 0.2)
        self.counters["connects"] += 1
        if not await client.connect():
            error = (
                f"cannot open {self.where}"
                if serial is not None
                else f"cannot connect to {self.where}"
            )
            await self._down("io_error", error)
            raise LinkError("io_error", error)
        connection.silent = 0
        if self.state == "down":
            self.counters["reconnects"] += 1
            self._log.info("modbus.link_up", bus=self.bus.id)
            await self._event("modbus.link_up", Severity.INFO, after=self.down_reason)
        self.state = "up"
        self._retry_delay = 0.0

    # ------------------------------------------------------------------ requests

    async def _quiet(self) -> None:
        """Keep the line silent for the inter-frame gap since the last frame."""
        if not self.gap_s:
            return
        loop = asyncio.get_running_loop()
        wait = self._last_io + self.gap_s - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)

    def _diagnose(self, connection: _Connection, unit: int, function: int, expected: int) -> str:
        if self.rtu:
            return scan_rtu(connection.rx, unit, function, expected)
        return scan_mbap(connection.rx, unit)

    async def call(
        self,
        operation: Operation,
        *,
        unit: int,
        function: int,
        expected: int,
        timeout_s: float,
        retries: int,
    ) -> ModbusPDU:
        """Run one request; its reply (possibly a Modbus exception reply) or ``LinkError``.

        ``function`` and ``expected`` (the reply's length in RTU bytes) let a failure be told
        apart: timeout, crc_error, short_reply, wrong_unit, garbage.
        """
        loop = asyncio.get_running_loop()
        async with self._connection() as connection:
            client = connection.client
            if not client.connected:
                await self._open(connection, timeout_s)
            reason, message = "timeout", ""
            for attempt in range(retries + 1):
                if attempt:
                    self.counters["retries"] += 1
                await self._quiet()
                connection.reset()
                client.ctx.comm_params.timeout_connect = timeout_s
                self.counters["requests"] += 1
                try:
                    reply = await operation(client)
                except ConnectionException as exc:
                    self._last_io = loop.time()
                    await self._lost(connection, str(exc) or "connection lost")
                    raise LinkError("io_error", f"{self.where}: connection lost") from None
                except ModbusIOException:
                    self._last_io = loop.time()
                    reason = self._diagnose(connection, unit, function, expected)
                    message = _MESSAGES[reason].format(timeout=timeout_s, unit=unit)
                except ModbusException as exc:
                    self._last_io = loop.time()
                    reason, message = "garbage", f"undecodable reply: {exc}"
                else:
                    self._last_io = loop.time()
                    connection.silent = 0
                    self.counters["replies"] += 1
                    return reply
                if not client.connected:
                    await self._lost(connection, "connection lost during a request")
                    raise LinkError("io_error", f"{self.where}: connection lost")
                self.counters[reason] += 1
                if reason == "timeout":
                    connection.silent += 1
                    if self.bus.tcp is not None and connection.silent >= _SILENT_BEFORE_RECYCLE:
                        # Reopened quietly on the next request; not a link event: the host may
                        # be fine and the devices behind it dead.
                        connection.silent = 0
                        client.close()
                        break
            raise LinkError(reason, message)

    async def aclose(self) -> None:
        for connection in self._all:
            with contextlib.suppress(Exception):
                connection.client.close()
        self._all.clear()
        self._idle.clear()


class BusSlot:
    """The shared resource of one bus id (``ctx.shared("modbus:<bus>")``): its current link.

    A config reload that changes the bus (another baud rate) restarts its devices; the first of
    them finds the link out of date and replaces it, closing the old one first so that the
    serial port is free to open again.
    """

    def __init__(self) -> None:
        self.link: ModbusLink | None = None
        self._lock = asyncio.Lock()

    async def get(self, bus: Bus, create: Callable[[], ModbusLink]) -> ModbusLink:
        async with self._lock:
            if self.link is not None and self.link.bus != bus:
                await self.link.aclose()
                self.link = None
            if self.link is None:
                self.link = create()
            return self.link

    async def aclose(self) -> None:
        if self.link is not None:
            await self.link.aclose()
            self.link = None


_MESSAGES: Final = {
    "timeout": "no answer within {timeout} s",
    "crc_error": "reply with a bad CRC (noise, termination, bias)",
    "short_reply": "reply cut short",
    "wrong_unit": "a reply from another unit than {unit} (duplicate address or a late reply)",
    "garbage": "bytes on the line that form no reply (noise, or a baud rate/parity mismatch)",
}
