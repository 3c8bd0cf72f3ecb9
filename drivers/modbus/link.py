"""Modbus on a core bus: RTU frames over the :class:`agent.bus.SerialLine`, pymodbus's client on
a :class:`agent.bus.TcpHost`.

pymodbus does what it does well: the PDUs (requests, replies, exception replies) and, on TCP, its
client and framing. The core owns the wire: the serial port, the silence between frames, the
turns by priority, the link state and its events. What this module adds is what a gateway needs
between the two:

- per-request timeout and retries taken from the device, not the client (pymodbus's defaults,
  3 s and 3 retries, cost 12 s per dead meter per request);
- telling a timeout from what the line actually carried: a CRC error, a short reply, a reply
  from another unit, noise (:func:`drivers.modbus.codec.scan_rtu`), counted on the bus;
- on TCP, a pool of one pymodbus client per request in flight (a pymodbus client never has more
  than one outstanding), reconnecting on the next request after a loss, and recycling a
  connection that went silent (a half-open connection looks exactly like silence).

One :class:`ModbusLink` per bus, shared by the Modbus devices on it (``ctx.shared``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Final

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerRTU, FramerType
from pymodbus.pdu import DecodePDU

from agent.bus import BusHandle, ReplyTimeoutError, SerialLine, TcpHost
from agent.driver import BusError, DeviceError, SharedKey
from drivers.modbus.codec import rtu_crc_ok, rtu_reply_size, scan_mbap, scan_rtu

if TYPE_CHECKING:
    from pymodbus.pdu import ModbusPDU

    from agent.driver import DriverContext

__all__ = ["LINK_REASONS", "LinkError", "ModbusLink", "link_key", "shared_link"]

LINK_REASONS: Final = frozenset({"no_port", "io_error"})
"""Failures of the bus itself rather than of one device: every device on it is affected."""

_SILENT_BEFORE_RECYCLE: Final = 3
"""Consecutive unanswered requests on one TCP connection before it is reopened."""

# Every failure is counted, classified and reported by the driver; pymodbus's own log line per
# timeout ("No response received...") would repeat that once per failed poll.
logging.getLogger("pymodbus.logging").setLevel(logging.CRITICAL)

LinkError = DeviceError
"""A request failed; ``reason`` is the word the scheduler counts (timeout, crc_error, ...).
:class:`agent.driver.BusError` (a subclass) when the bus itself failed."""

_MESSAGES: Final = {
    "timeout": "no answer within {timeout} s",
    "crc_error": "reply with a bad CRC (noise, termination, bias)",
    "short_reply": "reply cut short",
    "wrong_unit": "a reply from another unit than {unit} (duplicate address or a late reply)",
    "garbage": "bytes on the line that form no reply (noise, or a baud rate/parity mismatch)",
}


class _Connection:
    """One pymodbus TCP client and the bytes it received during the current attempt."""

    def __init__(self, client: AsyncModbusTcpClient) -> None:
        self.client = client
        self.rx = b""
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


def link_key(bus: BusHandle) -> SharedKey[ModbusLink]:
    return SharedKey(f"modbus:{bus.id}", bus=bus.id)


async def shared_link(ctx: DriverContext) -> ModbusLink:
    """The bus's link, created by the first Modbus device on it."""
    bus = ctx.bus
    if not isinstance(bus, SerialLine | TcpHost):
        raise DeviceError("no_bus", "a Modbus device needs a serial or TCP bus")

    async def create() -> ModbusLink:
        return ModbusLink(bus)

    return await ctx.shared.get(link_key(bus), create)


class ModbusLink:
    """Modbus requests on one bus; closed (``aclose``) when the bus changes and at stop."""

    def __init__(self, bus: SerialLine | TcpHost) -> None:
        self.bus = bus
        self.rtu = isinstance(bus, SerialLine) or bus.settings.framer == "rtu"
        self._decoder = DecodePDU(is_server=False)
        self._framer = FramerRTU(self._decoder)
        self._idle: list[_Connection] = []
        self._all: list[_Connection] = []

    async def call(
        self, request: ModbusPDU, *, expected: int, timeout_s: float, retries: int
    ) -> ModbusPDU:
        """Run one request; its reply (possibly a Modbus exception reply) or ``LinkError``.

        ``expected`` (the reply's length in RTU bytes) lets a failure be told apart: timeout,
        crc_error, short_reply, wrong_unit, garbage.
        """
        if isinstance(self.bus, SerialLine):
            return await self._call_serial(self.bus, request, expected, timeout_s, retries)
        return await self._call_tcp(self.bus, request, expected, timeout_s, retries)

    def _failed(self, reason: str, unit: int, timeout_s: float) -> LinkError:
        self.bus.note(reason)
        return LinkError(reason, _MESSAGES[reason].format(timeout=timeout_s, unit=unit))

    # ------------------------------------------------------------------ RTU on a serial line

    async def _call_serial(
        self, line: SerialLine, request: ModbusPDU, expected: int, timeout_s: float, retries: int
    ) -> ModbusPDU:
        unit, function = request.dev_id, request.function_code
        frame = self._framer.buildFrame(request)

        def read_reply(data: bytes) -> int:
            return rtu_reply_size(data, unit, function, expected)

        error = LinkError("timeout")
        for attempt in range(retries + 1):
            if attempt:
                line.note("retries")
            try:
                reply = await line.exchange(frame, read_reply, timeout_s)
            except ReplyTimeoutError as exc:
                error = self._failed(
                    scan_rtu(exc.received, unit, function, expected), unit, timeout_s
                )
                continue
            if not rtu_crc_ok(reply):
                error = self._failed("crc_error", unit, timeout_s)
                continue
            pdu = self._decoder.decode(reply[1:-2])
            if pdu is None:
                error = self._failed("garbage", unit, timeout_s)
                continue
            pdu.dev_id = unit
            return pdu
        raise error

    # ------------------------------------------------------------------ pymodbus on TCP

    def _new_client(self, host: TcpHost) -> _Connection:
        client = AsyncModbusTcpClient(
            host.settings.host,
            port=host.settings.port,
            framer=FramerType.RTU if self.rtu else FramerType.SOCKET,
            name=f"modbus[{host.id}]",
            timeout=1.0,
            retries=0,
            # Reconnecting is the core's: on the next request, paced, with events.
            reconnect_delay=0,
        )
        # Silence is handled here (see _SILENT_BEFORE_RECYCLE); pymodbus would otherwise drop a
        # gateway's connection because one meter behind it is dead.
        client.set_max_no_responses(1_000_000_000)
        connection = _Connection(client)
        client.ctx.trace_packet = connection.trace
        return connection

    async def _open(self, host: TcpHost, connection: _Connection, timeout_s: float) -> None:
        host.check_retry()
        client = connection.client
        client.ctx.comm_params.timeout_connect = max(timeout_s, 0.2)
        if not await client.connect():
            error = f"cannot connect to {host.where}"
            host.connect_failed(error)
            raise BusError("io_error", error)
        connection.silent = 0
        host.connected()

    def _lost(self, host: TcpHost, connection: _Connection, error: str) -> BusError:
        connection.client.close()
        host.connection_lost(f"{host.where}: {error}")
        return BusError("io_error", f"{host.where}: connection lost")

    async def _call_tcp(
        self, host: TcpHost, request: ModbusPDU, expected: int, timeout_s: float, retries: int
    ) -> ModbusPDU:
        # The host's turns bound the requests in flight; one client serves each of them.
        async with host.hold():
            connection = self._idle.pop() if self._idle else self._new_connection(host)
            try:
                return await self._call_on(host, connection, request, expected, timeout_s, retries)
            finally:
                self._idle.append(connection)

    def _new_connection(self, host: TcpHost) -> _Connection:
        connection = self._new_client(host)
        self._all.append(connection)
        return connection

    async def _call_on(
        self,
        host: TcpHost,
        connection: _Connection,
        request: ModbusPDU,
        expected: int,
        timeout_s: float,
        retries: int,
    ) -> ModbusPDU:
        unit = request.dev_id
        client = connection.client
        if not client.connected:
            await self._open(host, connection, timeout_s)
        error = LinkError("timeout")
        for attempt in range(retries + 1):
            if attempt:
                host.note("retries")
            connection.reset()
            client.ctx.comm_params.timeout_connect = timeout_s
            host.note("requests")
            try:
                reply: ModbusPDU = await client.execute(no_response_expected=False, request=request)
            except ConnectionException as exc:
                raise self._lost(host, connection, str(exc) or "connection lost") from None
            except ModbusIOException:
                reason = (
                    scan_rtu(connection.rx, unit, request.function_code, expected)
                    if self.rtu
                    else scan_mbap(connection.rx, unit)
                )
                error = self._failed(reason, unit, timeout_s)
            except ModbusException as exc:
                host.note("garbage")
                error = LinkError("garbage", f"undecodable reply: {exc}")
            else:
                connection.silent = 0
                host.note("replies")
                return reply
            if not client.connected:
                raise self._lost(host, connection, "connection lost during a request")
            if error.reason == "timeout":
                connection.silent += 1
                if connection.silent >= _SILENT_BEFORE_RECYCLE:
                    # Reopened quietly on the next request; not a link event: the host may
                    # be fine and the devices behind it dead.
                    connection.silent = 0
                    client.close()
                    break
        raise error

    async def aclose(self) -> None:
        for connection in self._all:
            with contextlib.suppress(Exception):
                connection.client.close()
        self._all.clear()
        self._idle.clear()
