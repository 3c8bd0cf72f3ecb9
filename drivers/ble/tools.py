"""``edge-agent scan ble``: what the adapter hears, for the installer enrolling tags.

Listens for ``seconds`` with its own scanner (BlueZ serves several at once, so it also runs
beside the agent's, through the agent's control socket) and lists every address heard: its name,
the strongest and last RSSI, how many adverts, what the decoders made of it (format, beacon
identity, values) and the line to enrol it by. JSON in and out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.bus import BleAdapter, BusHandle
from agent.driver import DeviceError
from drivers.ble.decode import (
    Advert,
    BleDecodeError,
    TagDecoder,
    is_resolvable_private,
    load_ibeacon_vendors,
)

if TYPE_CHECKING:
    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData

__all__ = ["scan"]


@dataclass(slots=True)
class _Heard:
    address: str
    name: str | None = None
    adverts: int = 0
    best_rssi: int = -127
    last_rssi: int = -127
    formats: set[str] = field(default_factory=set)
    identities: set[str] = field(default_factory=set)
    values: dict[str, object] = field(default_factory=dict)
    decoder: TagDecoder = field(default_factory=TagDecoder)

    def shown(self) -> dict[str, Any]:
        beacon = sorted(self.identities)
        if beacon:
            enrol = f"ibeacon/eddystone: {beacon[0]}"
        elif is_resolvable_private(self.address):  # it rotates: enrolled by mac, soon lost
            enrol = "irk_file: its identity resolving key (the address rotates)"
        else:
            enrol = f"mac: {self.address}"
        return {
            "address": self.address,
            "name": self.name,
            "adverts": self.adverts,
            "rssi": self.last_rssi,
            "best_rssi": self.best_rssi,
            "formats": sorted(self.formats),
            "identities": beacon,
            "values": self.values,
            "enrol_by": enrol,
        }


async def scan(bus: BusHandle, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options``: ``seconds`` (default 10)."""
    if not isinstance(bus, BleAdapter):
        raise DeviceError("wrong_bus", "scan ble needs a 'ble' bus (a Bluetooth adapter)")
    seconds = float(options.get("seconds", 10))
    if not 0 < seconds <= 120:
        raise DeviceError("bad_args", "seconds is 0 to 120")
    from bleak import BleakScanner  # noqa: PLC0415
    from bleak.exc import BleakError  # noqa: PLC0415

    await load_ibeacon_vendors()
    heard: dict[str, _Heard] = {}
    loop = asyncio.get_running_loop()

    def callback(device: BLEDevice, data: AdvertisementData) -> None:
        advert = Advert.of(device, data, loop.time())
        entry = heard.setdefault(advert.address, _Heard(advert.address))
        entry.adverts += 1
        entry.name = data.local_name or entry.name
        entry.last_rssi = data.rssi
        entry.best_rssi = max(entry.best_rssi, data.rssi)
        with contextlib.suppress(BleDecodeError):
            decoded = entry.decoder.decode(advert)
            entry.formats.update(decoded.formats)
            entry.identities.update(decoded.identities)
            entry.values.update({k: v for k, (v, _) in decoded.values.items()})

    backend = None
    if bus.simulate:
        from drivers.ble.simulated import registered  # noqa: PLC0415

        backend = registered(bus.id)
        if backend is None:
            return {
                "where": bus.where,
                "error": "the agent's simulated adapter has not started: scan again in a moment",
            }
    scanner = BleakScanner(
        callback,
        scanning_mode="active",
        bluez={"adapter": bus.adapter, "filters": {"DuplicateData": True}},
        backend=backend,
    )
    try:
        await scanner.start()
    except (BleakError, OSError, EOFError) as exc:
        return {"where": bus.where, "error": f"the scanner did not start: {exc}"}
    try:
        await asyncio.sleep(seconds)
    finally:
        with contextlib.suppress(BleakError, OSError, EOFError, TimeoutError):
            await asyncio.wait_for(scanner.stop(), 10)
    devices = sorted(heard.values(), key=lambda h: -h.best_rssi)
    return {"where": bus.where, "seconds": seconds, "devices": [d.shown() for d in devices]}
