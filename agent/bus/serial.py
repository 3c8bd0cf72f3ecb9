"""One RS-485 line: the one open port, its settings, the silence between frames.

Every protocol on the line (Modbus RTU, DL/T 645, OSDP...) goes through :meth:`SerialLine.
exchange`: a half-duplex transaction of one frame out and one reply back, in a turn of the line
(:mod:`agent.bus._base`). The port is opened on the first transaction, through
pyserial-asyncio-fast (no thread per port), and reopened by itself after a loss, paced so that a
vanished USB adapter costs a fast ``no_port`` failure rather than a timeout per device.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from agent.bus._base import BusHandle, LinkListener
from agent.driver import BusError, DeviceError

if TYPE_CHECKING:
    from agent.config.models import Bus

__all__ = ["ReplyReader", "ReplyTimeoutError", "SerialLine", "char_bits", "frame_gap_s"]

ReplyReader = Callable[[bytes], int]
"""Given what arrived so far, the length of the complete reply at its start, or 0 for "not
yet". Bytes after the reply are noise (counted, dropped)."""

_WHAT_ARRIVED: Final = {
    "checksum_error": "a reply with a wrong checksum (noise, termination, bias)",
    "truncated": "a reply cut short",
    "garbage": "bytes that form no reply (noise, or a baud rate or parity mismatch)",
}
_URL_PORTS: Final = ("socket://", "rfc2217://", "loop://", "spy://", "alt://", "hwgrep://")
_OPEN_TIMEOUT_S: Final = 5.0


class ReplyTimeoutError(DeviceError):
    """No complete reply in time; ``received`` is what did arrive, for the protocol to tell a
    silent device from a CRC error or noise."""

    def __init__(self, received: bytes, timeout_s: float) -> None:
        super().__init__("timeout", f"no answer within {timeout_s:g} s")
        self.received = received


def char_bits(bus: Bus) -> int:
    """Bits per character on the wire: start + data + parity + stop."""
    serial = bus.serial
    if serial is None:
        return 11
    return 1 + serial.data_bits + (serial.parity != "none") + serial.stop_bits


def frame_gap_s(bus: Bus) -> float:
    """The silence kept between frames: ``inter_frame_ms`` if set, else 3.5 characters (fixed at
    1.75 ms above 19200 Bd, as Modbus specifies)."""
    serial = bus.serial
    if serial is None:
        return 0.0
    if serial.inter_frame_ms is not None:
        return serial.inter_frame_ms / 1000
    if serial.baud > 19200:
        return 0.00175
    return 3.5 * char_bits(bus) / serial.baud


def _port_problem(port: str) -> tuple[str, str] | None:
    """Why a serial port cannot be opened, seen without opening it (a stat and an access check
    on the device node, microseconds even when the adapter hangs)."""
    if not Path(port).exists():
        return "no_port", f"{port} does not exist (adapter unplugged?)"
    if not os.access(port, os.R_OK | os.W_OK):
        return "io_error", f"{port}: permission denied (is the user in the dialout group?)"
    return None


class _Receiver(asyncio.Protocol):
    """Collects what the line carries; one waiter at a time (the transaction in its turn)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.arrived = asyncio.Event()
        self.lost: str | None = None

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = str(exc) if exc else "port closed"
        self.arrived.set()

    def take(self) -> bytes:
        data, self.data = bytes(self.data), bytearray()
        self.arrived.clear()
        return data


class SerialLine(BusHandle):
    """The one open port of a serial bus, shared by every device and protocol on it."""

    kind = "serial"

    def __init__(self, config: Bus, *, on_link: LinkListener | None = None) -> None:
        if config.serial is None:
            raise ValueError(f"bus {config.id!r} is not a serial bus")
        super().__init__(config, slots=1, on_link=on_link)
        self.settings = config.serial
        self.char_s = char_bits(config) / self.settings.baud
        self.gap_s = frame_gap_s(config)
        self._transport: asyncio.Transport | None = None
        self._receiver: _Receiver | None = None
        self._last_io = 0.0

    @property
    def where(self) -> str:
        return self.settings.port

    @property
    def is_open(self) -> bool:
        return self._transport is not None and self._receiver is not None

    def wire_s(self, size: int) -> float:
        """Time ``size`` bytes take on the wire at this line's speed."""
        return size * self.char_s

    # ------------------------------------------------------------------ the port

    async def _open(self) -> _Receiver:
        if self._transport is not None and self._receiver is not None:
            if self._receiver.lost is None:
                return self._receiver
            self._lost(self._receiver.lost)
        self.check_retry()
        port = self.settings.port
        if not port.startswith(_URL_PORTS):
            problem = _port_problem(port)
            if problem is not None:
                self.link_down(*problem)
                raise BusError(*problem)
        import serial  # noqa: PLC0415 - pyserial, only where a line is used
        import serial_asyncio_fast  # noqa: PLC0415

        receiver = _Receiver()
        self.counters["opens"] += 1
        try:
            transport, _ = await asyncio.wait_for(
                serial_asyncio_fast.create_serial_connection(
                    asyncio.get_running_loop(),
                    lambda: receiver,
                    port,
                    baudrate=self.settings.baud,
                    bytesize=self.settings.data_bits,
                    parity={"none": "N", "even": "E", "odd": "O"}[self.settings.parity],
                    stopbits=self.settings.stop_bits,
                ),
                _OPEN_TIMEOUT_S,
            )
        except (OSError, termios.error, serial.SerialException, TimeoutError, ValueError) as exc:
            # A port that exists but will not open (a USB adapter half gone, a tty that rejects
            # the settings) is the bus failing, not a driver bug.
            error = f"cannot open {port}: {type(exc).__name__}: {exc}"
            self.link_down("io_error", error)
            raise BusError("io_error", error) from None
        self._transport = transport
        self._receiver = receiver
        self.link_up()
        return receiver

    def _lost(self, error: str) -> None:
        """The open port broke (adapter unplugged): close it and try again on the next turn."""
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.close()
        self._transport = self._receiver = None
        self.counters["link_lost"] += 1
        self.link_down("io_error", f"{self.where}: {error}", retry_now=True)

    async def aclose(self) -> None:
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.close()
        self._transport = self._receiver = None

    # ------------------------------------------------------------------ transactions

    async def _quiet(self) -> None:
        """Keep the line silent for the inter-frame gap since the last frame."""
        if not self.gap_s:
            return
        wait = self._last_io + self.gap_s - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)

    async def exchange(
        self, frame: bytes, read_reply: ReplyReader | None, timeout_s: float
    ) -> bytes:
        """Send ``frame`` and return the reply ``read_reply`` recognises (``None``: a broadcast
        that expects none, returns ``b""``). Raises :class:`ReplyTimeoutError` (with what did
        arrive) or :class:`BusError`. The timeout runs from the end of the frame on the wire, not
        from the wait for a turn."""
        async with self.hold():
            return await self._exchange(frame, read_reply, timeout_s)

    async def request(
        self,
        frame: bytes,
        read_reply: ReplyReader,
        timeout_s: float,
        *,
        retries: int = 0,
        diagnose: Callable[[bytes], str] | None = None,
    ) -> bytes:
        """:meth:`exchange` with resends, for protocols whose framing is checked by
        ``read_reply`` alone (a checksum and an end byte): after a timeout, ``retries`` more
        tries. The last failure raises :class:`ReplyTimeoutError` whose ``reason`` is
        ``diagnose(received)`` (``timeout``, ``checksum_error``, ``garbage``...), counted on the
        line as ``reason``; a resend is counted as ``retries``."""
        for attempt in range(retries + 1):
            try:
                return await self.exchange(frame, read_reply, timeout_s)
            except ReplyTimeoutError as exc:
                reason = "timeout" if diagnose is None else diagnose(exc.received)
                if reason != "timeout":
                    exc.reason = reason
                    what = _WHAT_ARRIVED.get(reason, reason)
                    exc.args = (f"{what} ({len(exc.received)} bytes in {timeout_s:g} s)",)
                    self.note(reason)
                if attempt == retries:
                    raise
                self.note("retries")
        raise AssertionError("unreachable")

    async def _exchange(
        self, frame: bytes, read_reply: ReplyReader | None, timeout_s: float
    ) -> bytes:
        loop = asyncio.get_running_loop()
        receiver = await self._open()
        await self._quiet()
        stale = receiver.take()
        if stale:
            # Bytes on an idle line: a late reply to an earlier request, or noise.
            self.counters["noise_bytes"] += len(stale)
        assert self._transport is not None
        self.counters["requests"] += 1
        try:
            self._transport.write(frame)
        except (OSError, RuntimeError) as exc:
            self._lost(str(exc))
            raise BusError("io_error", f"{self.where}: {exc}") from None
        sent_at = loop.time() + self.wire_s(len(frame))
        if read_reply is None:
            await asyncio.sleep(max(0.0, sent_at - loop.time()))
            self._last_io = loop.time()
            return b""
        deadline = sent_at + timeout_s
        received = bytearray()
        while True:
            received += receiver.take()
            size = read_reply(bytes(received)) if received else 0
            if size:
                break
            if receiver.lost is not None:
                self._last_io = loop.time()
                self._lost(receiver.lost)
                raise BusError("io_error", f"{self.where}: {receiver.lost}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                self._last_io = loop.time()
                self.counters["timeouts"] += 1
                raise ReplyTimeoutError(bytes(received), timeout_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(receiver.arrived.wait(), remaining)
        self._last_io = loop.time()
        self.counters["replies"] += 1
        if len(received) > size:
            self.counters["noise_bytes"] += len(received) - size
        return bytes(received[:size])
