"""A simulated Bluetooth adapter: the enrolled tags played from a script, for the demo.

It plugs in at bleak's own seam (a scanner backend, ``BleakScanner(backend=…)``), so everything
after the radio is the real driver: decoding by the same parsers, presence, presses, battery and
the watchdog. A bus with ``ble: {simulate: true}`` uses it; no adapter, BlueZ or D-Bus is needed.

Each tag sends what a real one of its enrolment and class sends, on one clock that starts with
the first scanner (a restarted scanner does not restart the script):
- payload: an iBeacon or Eddystone-UID frame for tags enrolled by a beacon identity (from a
  random address that rotates every 15 min, as such tags do; a tag enrolled by ``irk_file``
  rotates a resolvable private address made from its key); the ``vendor:`` layout for tags
  that have one; BTHome v2 in clear for the rest (so a tag with a ``key_file`` is refused, as a
  real plain advert from a keyed tag would be);
- a ``wristband`` advertises every 2 s, and its wearer walks out of range for 90 s in every
  6 min (from 2 min to 3.5 min), long enough to be declared away and to come back;
- an ``sos_button`` is pressed every 90 s (from 20 s on) and a ``key_fob`` every 2 min: each press
  is a new counter sent for 10 s, as real buttons repeat it;
- a ``sensor`` sends temperature and humidity that drift every 30 s;
- batteries drain 1 % per 10 min; an SOS button starts low (18 %), to show ``tag.battery_low``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import random
import struct
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from agent.driver.keys import KeyFileError, read_key
from drivers.ble.decode import APPLE, BTHOME, EDDYSTONE

if TYPE_CHECKING:
    from bleak.backends.scanner import AdvertisementData, BaseBleakScanner

    from drivers.ble.config import BleTag

__all__ = ["private_address_hash", "registered", "scanner_backend"]

_AWAY_EVERY_S: Final = 360.0
_AWAY_FROM_S: Final = 120.0
_AWAY_UNTIL_S: Final = 210.0
_PRESS_HELD_S: Final = 10.0
_ROTATE_S: Final = 900.0
_DRIFT_S: Final = 30.0
_INTERVAL_S: Final[dict[str, float]] = {
    "wristband": 2.0,
    "sos_button": 3.0,
    "key_fob": 2.0,
    "asset": 1.0,
    "sensor": 5.0,
}
_FIRST_PRESS_S: Final[dict[str, tuple[float, float]]] = {
    "sos_button": (20.0, 90.0),
    "key_fob": (45.0, 120.0),
}
"""Per class: the first press and the time between presses."""


@dataclass(slots=True)
class _Player:
    """One simulated tag."""

    tag: BleTag
    rng: random.Random
    battery_start: float
    temperature: float = 22.0
    humidity: float = 50.0
    drifted: int = 0
    packet: int = 0
    last: bytes = b""
    name: str = field(default="")
    irk: bytes | None = None

    @classmethod
    def of(cls, tag: BleTag) -> _Player:
        seed = int.from_bytes(hashlib.sha256(tag.id.encode()).digest()[:8], "big")
        rng = random.Random(seed)
        start = 18.0 if tag.tag_class == "sos_button" else 60.0 + rng.random() * 35
        irk = None
        if tag.irk_file is not None:
            with contextlib.suppress(KeyFileError):  # the driver reports an unreadable key
                irk = read_key(tag.irk_file)
        return cls(tag, rng, start, name=f"SIM-{tag.tag_class.upper()}", irk=irk)

    def silent(self, t: float) -> bool:
        return self.tag.tag_class == "wristband" and (
            _AWAY_FROM_S <= t % _AWAY_EVERY_S < _AWAY_UNTIL_S
        )

    def presses(self, t: float) -> tuple[int, bool]:
        """How many presses so far, and whether the last one is still being sent."""
        timing = _FIRST_PRESS_S.get(self.tag.tag_class)
        if timing is None or t < timing[0]:
            return 0, False
        first, every = timing
        count = int((t - first) // every) + 1
        return count, (t - first) % every < _PRESS_HELD_S

    def address(self, t: float) -> str:
        if self.tag.mac is not None:
            return self.tag.mac
        # A resolvable private address (top bits 01) that rotates, as a beacon's does: made
        # from the tag's identity resolving key when it is enrolled by one.
        digest = hashlib.sha256(f"{self.tag.id}:{int(t // _ROTATE_S)}".encode()).digest()
        prand = bytes(((digest[0] & 0x3F) | 0x40, digest[1], digest[2]))
        rest = private_address_hash(self.irk, prand) if self.irk is not None else digest[3:6]
        return ":".join(f"{b:02X}" for b in prand + rest)

    def rssi(self, t: float) -> int:
        if self.tag.tag_class == "wristband":  # its wearer walks about the room
            base = -64 + 12 * math.sin(2 * math.pi * t / 150)
        else:
            base = -70.0
        return round(base + self.rng.uniform(-2, 2))

    def values(self, t: float) -> tuple[float, float, float]:
        steps = int(t // _DRIFT_S)
        while self.drifted < steps:
            self.drifted += 1
            self.temperature = min(30.0, max(15.0, self.temperature + self.rng.uniform(-0.3, 0.3)))
            self.humidity = min(80.0, max(30.0, self.humidity + self.rng.uniform(-1.0, 1.0)))
        battery = max(1.0, self.battery_start - t / 600)
        return battery, round(self.temperature, 2), round(self.humidity, 1)

    def payload(self, t: float) -> tuple[dict[int, bytes], dict[str, bytes]]:
        """Manufacturer data and service data of the tag's advert at ``t``."""
        tag = self.tag
        if tag.ibeacon is not None:
            beacon = uuid.UUID(tag.ibeacon.uuid).bytes
            frame = (
                b"\x02\x15"
                + beacon
                + struct.pack(">HHb", tag.ibeacon.major, tag.ibeacon.minor, -59)
            )
            return {APPLE: frame}, {}
        if tag.eddystone is not None:
            uid = bytes.fromhex(tag.eddystone.namespace + tag.eddystone.instance)
            return {}, {EDDYSTONE: b"\x00\xeb" + uid + b"\x00\x00"}
        battery, temperature, humidity = self.values(t)
        count, held = self.presses(t)
        if tag.vendor is not None:
            fmt = tag.vendor.format()
            data = bytearray(fmt.prefix)
            for f in fmt.fields:
                if f.name == "counter":
                    raw = count
                elif f.name == "button":
                    raw = int(held)
                else:
                    value = {"battery": battery, "temperature": temperature}.get(f.name, humidity)
                    raw = round(value / f.scale)
                packed = f.pack(raw % (1 << (8 * f.size)) if f.type.startswith("u") else raw)
                if len(data) < f.offset + f.size:
                    data.extend(bytes(f.offset + f.size - len(data)))
                data[f.offset : f.offset + f.size] = packed
            return {fmt.company_id: bytes(data)}, {}
        objects = b"\x01" + bytes((round(battery),))
        if tag.tag_class == "sensor":
            objects += b"\x02" + struct.pack("<h", round(temperature * 100))
            objects += b"\x03" + struct.pack("<H", round(humidity * 100))
        if held:
            objects += b"\x3a\x01"
        content = objects + bytes((count & 0xFF,))
        if content != self.last:  # a new payload: a new packet id, as BTHome tags count
            self.last = content
            self.packet = (self.packet + 1) & 0xFF
        return {}, {BTHOME: b"\x40\x00" + bytes((self.packet,)) + objects}

    def advert(self, t: float) -> AdvertisementData:
        from bleak.backends.scanner import AdvertisementData  # noqa: PLC0415

        manufacturer, service = self.payload(t)
        return AdvertisementData(
            local_name=self.name if self.tag.mac is not None else None,
            manufacturer_data=manufacturer,
            service_data=service,
            service_uuids=[],
            tx_power=None,
            rssi=self.rssi(t),
            platform_data=(),
        )


def private_address_hash(irk: bytes, prand: bytes) -> bytes:
    """The hash half of a resolvable private address: ah(IRK, prand), the low 3 bytes of
    AES-128(IRK, 13 zero bytes + prand) (Bluetooth Core, Vol 3, Part H, 2.2.2)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: PLC0415

    encryptor = Cipher(algorithms.AES(irk), modes.ECB()).encryptor()  # noqa: S305 - one block
    return (encryptor.update(bytes(13) + prand) + encryptor.finalize())[13:]


_AIRS: Final[dict[str, type[BaseBleakScanner]]] = {}
"""The simulated air of each simulated bus (by bus id), for ``edge-agent scan ble`` to hear."""


def registered(bus_id: str) -> type[BaseBleakScanner] | None:
    """The scanner backend of a simulated bus whose driver runs (None before it started)."""
    return _AIRS.get(bus_id)


def scanner_backend(bus_id: str, tags: Sequence[BleTag]) -> type[BaseBleakScanner]:
    """A bleak scanner backend whose air holds ``tags``, played on one clock for every scanner
    made from it; registered as the air of ``bus_id``."""
    from bleak.backends.scanner import BaseBleakScanner  # noqa: PLC0415

    players = [_Player.of(tag) for tag in tags]
    origin: list[float] = []

    class SimulatedScanner(BaseBleakScanner):
        def __init__(self, detection_callback: Any, service_uuids: Any, *_: Any, **__: Any) -> None:
            super().__init__(detection_callback, service_uuids)
            self._task: asyncio.Task[None] | None = None

        async def start(self) -> None:
            self.seen_devices = {}
            if not origin:
                origin.append(time.monotonic())
            self._task = asyncio.create_task(self._play(), name="ble-simulated-air")

        async def stop(self) -> None:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                self._task = None

        async def _play(self) -> None:
            # When each tag sends next: the tags' first adverts spread over a second.
            due = {id(p): time.monotonic() - origin[0] + p.rng.random() for p in players}
            while players:
                t = time.monotonic() - origin[0]
                soonest = min(due.values())
                if soonest > t:
                    await asyncio.sleep(soonest - t)
                    continue
                for player in players:
                    if due[id(player)] > t:
                        continue
                    due[id(player)] = t + _INTERVAL_S[player.tag.tag_class]
                    if player.silent(t):
                        continue
                    address = player.address(t)
                    data = player.advert(t)
                    device = self.create_or_update_device(address, address, player.name, None, data)
                    self.call_detection_callbacks(device, data)
            await asyncio.Event().wait()  # an empty air: nothing to send, ever

    SimulatedScanner.__name__ = "SimulatedScanner"
    _AIRS[bus_id] = SimulatedScanner
    return SimulatedScanner
