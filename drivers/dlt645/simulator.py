"""A simulated DL/T 645 meter: for the demo, for trying a line without meters, and for tests.

It answers reads of every identifier in the catalog (:mod:`drivers.dlt645.identifiers`) and of
their blocks at its address, the wildcard address and abbreviated addresses (its low digits
with ``AA`` high bytes), the read-address request (2007), and follow-on reads when a reply does
not fit ``frame_limit``. Its values change as a household's do: power follows the time of day
with noise, energy adds up per tariff (尖峰平谷 by the hour), voltage and frequency wander
around 220 V and 50 Hz, its clock runs ``clock_drift_s`` off. Faults are configurable:
``silent``, ``garbage``, ``checksum`` (a wrong checksum), ``truncated``, ``no_blocks`` (block
reads answered "no such data").

It is our own codec on the other side, so it proves nothing about interoperability: that is
what the cross-check against the PyPI ``dlt645`` package does (``tests/test_dlt645.py``).
"""

from __future__ import annotations

import datetime as dt
import math
import random
import time
import zoneinfo
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from agent.driver.frames68 import FrameStream, addressed, spoil
from drivers.dlt645.codec import (
    ABNORMAL,
    FOLLOWS,
    REPLY,
    Dlt645Error,
    Frame,
    Func,
    Version,
    decode,
    di_bytes,
    encode,
    encode_value,
    find_frame,
    parse_address,
)
from drivers.dlt645.config import Dlt645Device
from drivers.dlt645.identifiers import BLOCKS, CATALOG, TARIFFS, Ident

if TYPE_CHECKING:
    from agent.config.models import DeviceConfig

__all__ = ["FAULTS", "SimulatedMeter", "line_device"]

Fault = Literal["silent", "garbage", "checksum", "truncated", "no_blocks"]
FAULTS: Final[tuple[Fault, ...]] = ("silent", "garbage", "checksum", "truncated", "no_blocks")
_NO_SUCH_DATA: Final = 0x02
_ZONE: Final = zoneinfo.ZoneInfo("Asia/Shanghai")


def _tariff(hour: int) -> int:
    """Which tariff (1 sharp, 2 peak, 3 flat, 4 valley) a local hour falls in."""
    if hour in (19, 20):
        return 1
    if hour in (8, 9, 10, 17, 18, 21):
        return 2
    if 7 <= hour < 23:
        return 3
    return 4


@dataclass(slots=True)
class SimulatedMeter:
    address: str
    """The nameplate address (12 digits)."""
    version: Version = 2007
    phases: Literal[1, 3] = 1
    seed: int = 0
    energy_kwh: float = 1520.0
    clock_drift_s: float = 0.0
    faults: set[Fault] = field(default_factory=set)
    frame_limit: int = 200
    """The most value bytes one reply carries; more go into follow-on frames."""
    answer_delay_s: float = 0.02
    """The standard's shortest answer delay (20 ms)."""
    started: float = field(default_factory=time.monotonic)
    frames_answered: int = 0
    _wire: bytes = b""
    _stream: FrameStream = field(default_factory=lambda: FrameStream(find_frame))
    _random: random.Random = field(default_factory=random.Random)
    _energy: list[float] = field(default_factory=list)
    _last: float = 0.0
    _by_di: dict[int, Ident] = field(default_factory=dict)
    _pending: bytes = b""
    """Values still to send in follow-on frames."""

    def __post_init__(self) -> None:
        self._wire = parse_address(self.address)
        self._random.seed(self.seed or int(self.address))
        split = (0.08, 0.32, 0.35, 0.25)
        self._energy = [self.energy_kwh * s for s in split]
        self._last = time.monotonic()
        self._by_di = {ident.di: ident for ident in CATALOG[self.version].values()}

    # ------------------------------------------------------------------ the meter's quantities

    def _now(self) -> dt.datetime:
        return dt.datetime.now(_ZONE) + dt.timedelta(seconds=self.clock_drift_s)

    def _power_kw(self, now: dt.datetime) -> float:
        hour = now.hour + now.minute / 60
        base = (
            0.35
            + 0.9 * max(0.0, math.sin((hour - 6) / 24 * 2 * math.pi))
            + (1.2 if 18 <= hour < 22 else 0.0)
        )
        return max(0.05, base + self._random.gauss(0, 0.08)) * self.phases

    def _advance(self) -> tuple[float, dt.datetime]:
        now = self._now()
        power = self._power_kw(now)
        elapsed = time.monotonic() - self._last
        self._last = time.monotonic()
        self._energy[_tariff(now.hour) - 1] += power * elapsed / 3600
        return power, now

    def _values(self) -> dict[str, float | str | None]:
        power, now = self._advance()
        volts = [
            220 + 3 * math.sin(time.monotonic() / 60 + p) + self._random.gauss(0, 0.3)
            for p in range(3)
        ]
        pf = min(0.999, 0.93 + self._random.gauss(0, 0.01))
        share = [power / self.phases] * self.phases + [None] * (3 - self.phases)
        total = sum(self._energy)
        values: dict[str, float | str | None] = {
            "energy_total": total,
            "energy_import": total,
            "energy_export": 0.0,
            "frequency": 50 + self._random.gauss(0, 0.02),
            "power_total": power,
            "reactive_power_total": power * math.tan(math.acos(pf)),
            "apparent_power_total": power / pf,
            "power_factor": pf,
            "current_neutral": 0.0 if self.phases == 3 else power * 1000 / volts[0] / pf,
            "meter_temperature": 31.5,
            "clock_battery": 3.6,
            "meter_date": now.date().isoformat(),
            "meter_time": now.time().replace(microsecond=0).isoformat(),
            "meter_address": self.address,
            "meter_number": self.address,
        }
        for n, tariff in enumerate(TARIFFS):
            for flow in ("total", "import"):
                values[f"energy_{flow}_{tariff}"] = self._energy[n]
            values[f"energy_export_{tariff}"] = 0.0
        for i, phase in enumerate("abc"):
            kw = share[i]
            present = kw is not None
            values[f"voltage_{phase}"] = volts[i] if present else None
            values[f"current_{phase}"] = kw * 1000 / volts[i] / pf if kw is not None else None
            values[f"power_{phase}"] = kw
            values[f"reactive_power_{phase}"] = kw * math.tan(math.acos(pf)) if kw else None
            values[f"apparent_power_{phase}"] = kw / pf if kw is not None else None
            values[f"power_factor_{phase}"] = pf if present else None
        return values

    def data_of(self, di: int) -> bytes | None:
        """The plain value bytes of ``di`` (a block: its members'), or None: no such data."""
        by_di = self._by_di
        values = self._values()
        block = BLOCKS[self.version].get(di)
        if block is not None:
            if "no_blocks" in self.faults:
                return None
            members = [by_di[m] for m in block]
        elif di in by_di:
            members = [by_di[di]]
        else:
            return None
        out = bytearray()
        for ident in members:
            value = values.get(ident.name)
            if block is None and value is None:
                return None  # a single phase meter has no phase B
            if isinstance(value, float) and ident.fmt.kind == "number":
                value = round(value, ident.fmt.decimals)
            try:
                out += encode_value(ident.fmt, value)
            except Dlt645Error:
                out += b"\xff" * ident.fmt.size
        return bytes(out)

    # ------------------------------------------------------------------ the line

    def hear(self, data: bytes, /) -> bytes | None:
        """Every frame in what the line carried; the replies to those meant for this meter."""
        out = bytearray()
        for raw in self._stream.feed(data):
            reply = self.answer(decode(raw))
            if reply is not None:
                out += spoil(encode(reply, preamble=4), self.faults, self._random)
        return bytes(out) or None

    def answer(self, frame: Frame) -> Frame | None:
        """The reply to one frame (None: not for this meter, a broadcast, or silent)."""
        if frame.is_reply or "silent" in self.faults or not addressed(frame.address, self._wire):
            return None
        self.frames_answered += 1
        function = frame.function
        if self.version == 2007 and function == Func.READ_ADDRESS:
            return Frame(self._wire, REPLY | Func.READ_ADDRESS, self._wire)
        size = 4 if self.version == 2007 else 2
        if function in (Func.READ, Func.READ_1997) and len(frame.data) >= size:
            if (function == Func.READ) != (self.version == 2007):
                return None  # the other version's read: a real meter stays silent
            di = int.from_bytes(frame.data[:size], "little")
            data = self.data_of(di)
            if data is None:
                return Frame(self._wire, REPLY | ABNORMAL | function, bytes((_NO_SUCH_DATA,)))
            self._pending = data[self.frame_limit :]
            follows = FOLLOWS if self._pending else 0
            body = di_bytes(di, self.version) + data[: self.frame_limit]
            return Frame(self._wire, REPLY | follows | function, body)
        if function in (Func.READ_NEXT, Func.READ_NEXT_1997) and len(frame.data) >= size:
            di = int.from_bytes(frame.data[:size], "little")
            chunk, self._pending = (
                self._pending[: self.frame_limit],
                self._pending[self.frame_limit :],
            )
            follows = FOLLOWS if self._pending else 0
            body = di_bytes(di, self.version) + chunk
            if self.version == 2007:
                body += frame.data[size : size + 1]  # the SEQ it was asked for
            return Frame(self._wire, REPLY | follows | function, body)
        return Frame(self._wire, REPLY | ABNORMAL | function, bytes((0x01,)))


def line_device(device: DeviceConfig) -> SimulatedMeter:
    """The registry's peer (:attr:`drivers.DriverSpec.peer`): a meter for ``device``."""
    assert isinstance(device, Dlt645Device)
    three = "three" in (device.profile or "")
    return SimulatedMeter(address=device.address, version=device.protocol, phases=3 if three else 1)
