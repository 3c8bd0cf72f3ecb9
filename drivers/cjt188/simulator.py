"""A simulated CJ/T 188 meter: for the demo, for trying a line without meters, and for tests.

It answers read data (``901F``, the identifier in either byte order), read address (``810A``)
and valve control (``A017``) at its address, the wildcard address and abbreviated addresses
(its low bytes with ``AA`` high bytes), for its own meter type or ``AA``. It sends identifiers
in its ``di_order``, as a vendor does. Its values change as a household's or a substation's do:
water and gas flow by the time of day (a morning and an evening peak, cooking hours), stopped
while the valve is closed; a heat meter's supply and return wander around 60 and 45 °C (7 and
12 °C for cooling) with about 0.6 m³/h through it, energy and volume adding up; its clock runs
``clock_drift_s`` off. ``battery_low`` sets the status bit. Faults are configurable:
``silent``, ``garbage``, ``checksum`` (a wrong checksum), ``truncated``, ``valve_stuck`` (the
valve does not move when told).

It is our own codec on the other side, so it proves framing and behaviour, not
interoperability with a vendor's meter.
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
from drivers.cjt188.codec import (
    ABNORMAL,
    CURRENT,
    METER_TYPES,
    READ_ADDRESS,
    REPLY,
    UNITS,
    VALVE,
    VALVE_CLOSE,
    VALVE_OPEN,
    DiOrder,
    Frame,
    Func,
    body,
    decode,
    di_matches,
    encode,
    encode_current,
    find_frame,
    is_heat,
    parse_address,
    split,
)
from drivers.cjt188.config import Cjt188Device

if TYPE_CHECKING:
    from agent.config.models import DeviceConfig

__all__ = ["FAULTS", "SimulatedMeter", "line_device"]

Fault = Literal["silent", "garbage", "checksum", "truncated", "valve_stuck"]
FAULTS: Final[tuple[Fault, ...]] = ("silent", "garbage", "checksum", "truncated", "valve_stuck")
_ZONE: Final = zoneinfo.ZoneInfo("Asia/Shanghai")
_KWH: Final = {
    "Wh": 0.001,
    "kWh": 1.0,
    "MWh": 1000.0,
    "J": 1 / 3.6e6,
    "kJ": 1 / 3600,
    "MJ": 1 / 3.6,
    "GJ": 1000 / 3.6,
}
"""kWh per unit, for a heat meter that counts in another unit."""
_WATER_PEAKS: Final = ((6.5, 9.0, 55.0), (11.5, 13.0, 25.0), (18.0, 22.5, 45.0))
"""Household water use, litres per hour, by local hour (from, to, rate)."""
_GAS_PEAKS: Final = ((6.5, 8.0, 0.25), (11.0, 12.5, 0.45), (17.5, 19.5, 0.55))
"""Household gas use, m³ per hour: breakfast, lunch, dinner."""


@dataclass(slots=True)
class SimulatedMeter:
    address: str
    """The nameplate address (14 digits)."""
    meter_type: str = "cold_water"
    """A config name: cold_water, hot_water, drinking_water, reclaimed_water, heat, cooling,
    gas."""
    di_order: DiOrder = "low_first"
    """How it sends identifiers back."""
    valve: bool = False
    """It has a valve (``A017`` works)."""
    valve_open: bool = True
    battery_low: bool = False
    seed: int = 0
    volume_m3: float = 123.45
    energy_kwh: float = 5230.0
    """A heat meter's current heat."""
    energy_unit: int = 0x05
    """The unit code a heat meter counts heat in (05 kWh, 08 MWh, 11 GJ, 0A MWh×100...)."""
    volume_unit: int = 0x2C
    """m³ (2C) or litres (29)."""
    clock_drift_s: float = 0.0
    missing: set[str] = field(default_factory=set)
    """Quantities it does not measure: sent FF-filled (``volume_settlement``...)."""
    faults: set[Fault] = field(default_factory=set)
    answer_delay_s: float = 0.05
    """A meter behind an M-Bus converter is slower than the standard's shortest delay."""
    started: float = field(default_factory=time.monotonic)
    frames_answered: int = 0
    valve_operations: int = 0
    last_di: bytes = b""
    """The identifier bytes of the last request it answered, as they came."""
    _code: int = 0
    _wire: bytes = b""
    _stream: FrameStream = field(default_factory=lambda: FrameStream(find_frame))
    _random: random.Random = field(default_factory=random.Random)
    _last: float = 0.0
    _volume: float = 0.0
    _energy: float = 0.0
    _settled: tuple[float, float] = (0.0, 0.0)
    _hours: float = 0.0

    def __post_init__(self) -> None:
        self._code = METER_TYPES[self.meter_type]
        self._wire = parse_address(self.address)
        self._random.seed(self.seed or int(self.address))
        self._volume = self.volume_m3
        self._energy = self.energy_kwh
        self._settled = (self.volume_m3 * 0.97, self.energy_kwh * 0.95)
        self._hours = 8760.0 + self._random.randrange(20_000)
        self._last = time.monotonic()

    # ------------------------------------------------------------------ the meter's quantities

    def _now(self) -> dt.datetime:
        return dt.datetime.now(_ZONE) + dt.timedelta(seconds=self.clock_drift_s)

    def _flowing(self) -> bool:
        return not self.valve or self.valve_open

    def _household_rate(self, now: dt.datetime) -> float:
        """m³/h through a water or gas meter now."""
        hour = now.hour + now.minute / 60
        gas = self.meter_type == "gas"
        rate = 0.01 if gas else 0.002
        for start, end, peak in _GAS_PEAKS if gas else _WATER_PEAKS:
            if start <= hour < end:
                rate = peak if gas else peak / 1000
        return max(0.0, rate * (1 + self._random.gauss(0, 0.15)))

    def _heat_state(self) -> tuple[float, float, float, float]:
        """Supply and return temperature (°C), flow rate (m³/h), power (kW)."""
        wobble = math.sin(time.monotonic() / 90)
        if self.meter_type == "cooling":
            supply, back = 7.0 + 0.3 * wobble, 12.0 + 0.4 * wobble
        else:
            supply, back = 60.0 + 1.5 * wobble, 45.0 + 1.0 * wobble
        supply += self._random.gauss(0, 0.05)
        back += self._random.gauss(0, 0.05)
        flow = max(0.0, 0.6 + self._random.gauss(0, 0.02)) if self._flowing() else 0.0
        power = flow * abs(supply - back) * 1.163  # kW: m³/h · K · 1.163 kWh/(m³·K)
        return supply, back, flow, power

    def values(self) -> tuple[dict[str, float | str | None], dict[str, int]]:
        """What the meter shows now, in the units it sends, and those units."""
        now = self._now()
        elapsed = time.monotonic() - self._last
        self._last = time.monotonic()
        self._hours += elapsed / 3600
        units = {"volume": self.volume_unit, "volume_settlement": self.volume_unit}
        per_m3 = 1000.0 if UNITS.get(self.volume_unit, ("m³", 1))[0] == "L" else 1.0
        stamp = now.replace(tzinfo=None, microsecond=0).isoformat()
        if is_heat(self._code):
            supply, back, flow, power = self._heat_state()
            self._volume += flow * elapsed / 3600
            self._energy += power * elapsed / 3600
            name, _ = UNITS.get(self.energy_unit, ("kWh", 1))
            per_kwh = 1 / _KWH.get(name, 1.0)
            units |= {"heat_energy": self.energy_unit, "heat_settlement": self.energy_unit}
            return {
                "heat_settlement": round(self._settled[1] * per_kwh, 2),
                "heat_energy": round(self._energy * per_kwh, 2),
                "heat_power": round(power, 2),
                "flow_rate": round(flow, 4),
                "volume": round(self._volume * per_m3, 2),
                "supply_temp": round(supply, 2),
                "return_temp": round(back, 2),
                "working_hours": int(self._hours),
                "meter_time": stamp,
            }, units
        if self._flowing():
            self._volume += self._household_rate(now) * elapsed / 3600
        return {
            "volume": round(self._volume * per_m3, 2),
            "volume_settlement": round(self._settled[0] * per_m3, 2),
            "meter_time": stamp,
        }, units

    @property
    def status(self) -> bytes:
        """ST1 ST2: the valve in bits 0–1 of ST1, a low battery in bit 2."""
        st1 = 0 if self._flowing() or not self.valve else 0x01
        if self.battery_low:
            st1 |= 0x04
        return bytes((st1, 0x00))

    # ------------------------------------------------------------------ the line

    def _for_me(self, meter_type: int, address: bytes) -> bool:
        return meter_type in (self._code, 0xAA) and addressed(address, self._wire)

    def hear(self, data: bytes, /) -> bytes | None:
        """Every frame in what the line carried; the replies to those meant for this meter."""
        out = bytearray()
        for raw in self._stream.feed(data):
            reply = self.answer(decode(raw))
            if reply is not None:
                out += spoil(encode(reply, preamble=4), self.faults, self._random)
        return bytes(out) or None

    def _reply(self, function: int, di: int, ser: int, payload: bytes = b"") -> Frame:
        return Frame(
            self._code, self._wire, REPLY | function, body(di, ser, payload, self.di_order)
        )

    def _refuse(self, function: int, ser: int) -> Frame:
        """An abnormal reply: SER and the status."""
        return Frame(
            self._code, self._wire, REPLY | ABNORMAL | function, bytes((ser,)) + self.status
        )

    def answer(self, frame: Frame) -> Frame | None:
        """The reply to one frame (None: not for this meter, or silent)."""
        if frame.is_reply or "silent" in self.faults:
            return None
        if not self._for_me(frame.meter_type, frame.address) or len(frame.data) < 3:
            return None
        self.frames_answered += 1
        di, ser, payload = split(frame.data)
        function = frame.function
        self.last_di = di
        if function == Func.READ and di_matches(di, CURRENT):
            values, units = self.values()
            values = {k: None if k in self.missing else v for k, v in values.items()}
            current = encode_current(self._code, values, self.status, units)
            return self._reply(function, CURRENT, ser, current)
        if function == Func.READ_ADDRESS and di_matches(di, READ_ADDRESS):
            return self._reply(function, READ_ADDRESS, ser)
        if function == Func.WRITE and di_matches(di, VALVE) and payload[:1] and self.valve:
            command = payload[0]
            if command not in (VALVE_OPEN, VALVE_CLOSE):
                return self._refuse(function, ser)
            if "valve_stuck" not in self.faults:
                self.values()  # what flowed so far, with the valve as it was
                self.valve_open = command == VALVE_OPEN
                self.valve_operations += 1
            return self._reply(function, VALVE, ser, self.status)
        return self._refuse(function, ser)


def line_device(device: DeviceConfig) -> SimulatedMeter:
    """The registry's peer (:attr:`drivers.DriverSpec.peer`): a meter for ``device``."""
    assert isinstance(device, Cjt188Device)
    return SimulatedMeter(
        address=device.address,
        meter_type=device.meter_type,
        di_order=device.di_order,
        valve=device.valve,
    )
