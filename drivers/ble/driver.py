"""The scanner of one Bluetooth adapter (bus scope): every enrolled tag heard by it.

bleak's BlueZ backend delivers adverts in a callback on the event loop; the callback decodes,
updates the tag's state and hands records to ``ctx.push``, which never waits, so a burst of
adverts never stalls D-Bus. Duplicate data is on: BlueZ would otherwise swallow an SOS button's
second press when its payload carries no counter; presses are told apart by the payload's
counter here instead.

Health is the core's bus state of the adapter:
- A scanner that cannot start (adapter missing or powered off, BlueZ gone) makes the bus
  ``down``: its tags become ``unknown`` (one ``bus.link_down``), and no tag is declared away.
  ``InProgress`` (another discovery session starting) is retried at once, the rest with backoff.
- A scanner that hears nothing at all for the bus's ``silent_s`` is recreated (a bluetoothd
  restart leaves bleak's D-Bus objects dead without an error). Each restart restarts every
  tag's silence, so an outage is not taken for the tags leaving; while the air stays quiet the
  restarts come at doubling intervals, so a tag that really left is still declared away.
- The last resort, for an adapter that failed to start :data:`_RESET_AFTER` times in a row or
  stayed silent through as many restarts: ``bluetooth-auto-recovery`` resets it (rfkill
  unblock, power cycle, USB reset), as Home Assistant does, at most every
  :data:`_RESET_EVERY_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

from agent.backoff import delay
from agent.bus import BleAdapter
from agent.driver import DeviceError, DriverContext
from agent.driver.keys import KeyFileError, read_key
from agent.records import Event, Reading, Record, Severity
from drivers.ble.adapter import adapter_address, reset_adapter
from drivers.ble.decode import (
    Advert,
    BleDecodeError,
    TagDecoder,
    is_resolvable_private,
    load_ibeacon_vendors,
)
from drivers.ble.presence import Happening, TagTracker

if TYPE_CHECKING:
    from pathlib import Path

    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    from drivers.ble.config import BleTag

__all__ = ["BleDriver"]

_SWEEP_S: Final = 1.0
_TELL_EVERY_S: Final = 1.0
_QUIET_MAX_S: Final = 3600.0
"""The longest wait between restarts of a scanner in quiet air."""
_RETRY_FIRST_S: Final = 1.0
_RETRY_MAX_S: Final = 30.0
_IN_PROGRESS_TRIES: Final = 3
"""``InProgress`` answers retried quietly before the scanner counts as down."""
_RESET_AFTER: Final = 3
"""Failed starts in a row, or silent restarts in a row, before the adapter itself is reset."""
_RESET_EVERY_S: Final = 600.0
_RESOLVED_MAX: Final = 4096
"""Private addresses remembered (resolved or not) before the memory is cleared."""


@dataclass(slots=True)
class _Tag:
    config: BleTag
    decoder: TagDecoder
    tracker: TagTracker
    locked: bool = False
    """Its key file could not be read: nothing it sends is taken (fail closed: a plain advert
    must not pass for an encrypted tag's)."""
    told: float = float("-inf")
    """When the core was last told the tag was heard (its "last seen", at most once a second)."""


class BleDriver:
    """All enrolled tags of one adapter."""

    def __init__(self, ctx: DriverContext) -> None:
        if not isinstance(ctx.bus, BleAdapter):
            raise DeviceError("no_bus", "BLE tags need a 'ble' bus (a Bluetooth adapter)")
        self.ctx = ctx
        self.bus: BleAdapter = ctx.bus
        self.tags: dict[str, _Tag] = {}
        self._by_mac: dict[str, _Tag] = {}
        self._by_beacon: dict[str, _Tag] = {}
        self._by_irk: list[tuple[Cipher[modes.ECB], _Tag]] = []
        self._resolved: dict[str, _Tag | None] = {}
        """Private addresses resolved so far: to their tag, or None when no key resolves it."""
        for device in ctx.devices:
            config = cast("BleTag", device)
            key = self._key(config, config.key_file)
            irk = self._key(config, config.irk_file)
            tag = _Tag(
                config,
                TagDecoder(
                    bindkey=key,
                    vendor=[config.vendor.format()] if config.vendor is not None else [],
                ),
                TagTracker(
                    tag_class=config.tag_class,
                    away_after_s=config.away_after_s,
                    battery_low_pct=config.battery_low_pct,
                    rssi_step=config.rssi_step_db,
                    rssi_every_s=config.rssi_every_s,
                    tx_power_1m=config.tx_power_1m,
                ),
                locked=(config.key_file is not None and key is None)
                or (config.irk_file is not None and irk is None),
            )
            self.tags[config.id] = tag
            if config.mac is not None:
                self._by_mac[config.mac] = tag
            elif config.irk_file is not None:
                if irk is not None:
                    from bluetooth_data_tools import get_cipher_for_irk  # noqa: PLC0415

                    self._by_irk.append((get_cipher_for_irk(irk), tag))
            else:
                self._by_beacon[config.identity] = tag
        self.counters = ctx.counters
        self.last_advert: float | None = None
        self.silent_s = self.bus.silent_s
        self._quiet = self.silent_s
        """The silence after which the scanner is restarted next."""
        self._healthy = False
        """The scanner runs: away decisions are allowed."""
        self._starts = 0
        self._silent_restarts = 0
        self._address: str | None = None
        """The adapter's own MAC, by which a reset finds it (its hciN name can change)."""
        self._next_reset = 0.0
        self._identify = TagDecoder()
        """Reads the beacon identity of adverts from addresses no tag is enrolled by."""
        self._stopping = asyncio.Event()
        self._backend: type[BaseBleakScanner] | None = None
        if self.bus.simulate:
            from drivers.ble.simulated import scanner_backend  # noqa: PLC0415

            self._backend = scanner_backend(self.bus.id, [t.config for t in self.tags.values()])

    def _key(self, config: BleTag, path: Path | None) -> bytes | None:
        if path is None:
            return None
        try:
            return read_key(path)
        except KeyFileError as exc:
            self.ctx.health.down(config.id, "key_unreadable", str(exc))
            return None

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        await load_ibeacon_vendors()
        sweeper = asyncio.create_task(self._sweep(), name=f"ble-sweep-{self.bus.id}")
        try:
            failures = 0
            while not self._stopping.is_set():
                if sweeper.done():
                    sweeper.result()  # the sweep failed: let the core restart the driver
                try:
                    deaf = await self._scan_once()
                    failures = 0
                    self._silent_restarts = self._silent_restarts + 1 if deaf else 0
                    if self._silent_restarts >= _RESET_AFTER:
                        await self._last_resort(gone_silent=True)
                except _ScannerError as failed:
                    if failed.reason == "in_progress" and failures < _IN_PROGRESS_TRIES:
                        # Another discovery session is starting: a moment, not an outage.
                        self.bus.note("scanner_in_progress")
                        wait = 0.5
                    else:
                        self._unhealthy(failed.reason, failed.detail)
                        wait = delay(failures, first_s=_RETRY_FIRST_S, cap_s=_RETRY_MAX_S)
                        if failures + 1 >= _RESET_AFTER and failed.reason != "bluez_gone":
                            await self._last_resort(gone_silent=False)
                    failures += 1
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), wait)
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    async def stop(self) -> None:
        self._stopping.set()

    async def _last_resort(self, *, gone_silent: bool) -> None:
        """Reset the adapter (at most every :data:`_RESET_EVERY_S`), counted on the bus as
        ``adapter_resets`` or ``adapter_reset_failed``."""
        now = time.monotonic()
        if not self.bus.reset or now < self._next_reset:
            return
        self._next_reset = now + _RESET_EVERY_S
        self._silent_restarts = 0
        address = self._address or await adapter_address(self.bus.adapter)
        ok, why = False, "the adapter's address is unknown (BlueZ does not list it)"
        if address is not None:
            ok, why = await reset_adapter(self.bus.adapter, address, gone_silent=gone_silent)
        self.bus.note("adapter_resets" if ok else "adapter_reset_failed")
        self.ctx.log.warning(
            "ble.adapter_reset",
            adapter=self.bus.adapter,
            address=address,
            gone_silent=gone_silent,
            ok=ok,
            error=None if ok else why,
        )

    async def _scan_once(self) -> bool:
        """Start a fresh scanner and keep it until it fails (raises), until the agent stops, or
        until it hears nothing for the quiet limit (the bus's ``silent_s``, doubling while
        nothing is heard). True when it heard nothing at all."""
        from bleak import BleakScanner  # noqa: PLC0415
        from bleak.exc import BleakDBusError, BleakError  # noqa: PLC0415

        bluez: dict[str, Any] = {"adapter": self.bus.adapter, "filters": {"DuplicateData": True}}
        if self.bus.mode == "passive":
            bluez["or_patterns"] = _passive_patterns()
        scanner = BleakScanner(
            self._heard,
            scanning_mode=self.bus.mode,
            bluez=cast("Any", bluez),
            backend=self._backend,
        )
        try:
            await scanner.start()
        except BleakDBusError as exc:
            if "InProgress" in str(exc.dbus_error):
                raise _ScannerError("in_progress", str(exc)) from None
            raise _ScannerError(_reason(str(exc.dbus_error)), str(exc)) from None
        except (BleakError, OSError, EOFError) as exc:
            raise _ScannerError(_reason(str(exc)), str(exc) or type(exc).__name__) from None
        started = time.monotonic()
        self._starts += 1
        if self._starts > 1:
            # A restart: whatever the tags did while the scanner was deaf is unknown.
            for tag in self.tags.values():
                tag.tracker.scanner_back(started)
        self._healthy = True
        self.bus.link_up()
        self.ctx.log.info("ble.scanning", adapter=self.bus.adapter, mode=self.bus.mode)
        if self.bus.reset and self._address is None:
            self._address = await adapter_address(self.bus.adapter)
        try:
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), min(5.0, self.silent_s / 4))
                now = time.monotonic()
                heard = max(self.last_advert or 0.0, started)
                if heard > started:
                    self._quiet = self.silent_s  # the air is not quiet: back to the first limit
                if now - heard >= self._quiet:
                    self.bus.note("scanner_restarts")
                    self.ctx.log.info("ble.scanner_silent", seconds=round(now - heard))
                    self._quiet = min(_QUIET_MAX_S, self._quiet * 2)
                    return self.last_advert is None or self.last_advert <= started
            return False
        finally:
            with contextlib.suppress(BleakError, OSError, EOFError, asyncio.TimeoutError):
                await asyncio.wait_for(scanner.stop(), 10)

    def _unhealthy(self, reason: str, detail: str) -> None:
        self.bus.note(f"scanner_{reason}")
        if self._healthy or self.bus.state != "down":
            self.ctx.log.warning("ble.scanner_down", reason=reason, error=detail)
        self._healthy = False
        self.bus.link_down(reason, detail)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_S)
            now = time.monotonic()
            for tag in self.tags.values():
                self._emit(tag, tag.tracker.sweep(now, scanner_healthy=self._healthy))

    # ------------------------------------------------------------------ adverts

    def _heard(self, device: BLEDevice, data: AdvertisementData) -> None:
        """bleak's callback: never waits, never raises."""
        now = time.monotonic()
        self.last_advert = now
        advert = Advert.of(device, data, now)
        address = advert.address
        tag = self._by_mac.get(address)
        try:
            if tag is None and self._by_irk:
                tag = self._resolve(address)
            if tag is not None:
                self._take(tag, advert)
            elif self._by_beacon and (
                0x004C in advert.manufacturer_data
                or "0000feaa-0000-1000-8000-00805f9b34fb" in advert.service_data
            ):
                # A beacon enrolled by its identity (its address rotates): its identity first.
                for identity in self._identify.decode(advert).identities:
                    enrolled = self._by_beacon.get(identity)
                    if enrolled is not None:
                        self._take(enrolled, advert)
        except BleDecodeError as exc:
            self.bus.note(f"bad_{exc.reason}")
        except Exception:  # a callback from D-Bus must not raise
            self.bus.note("decode_crash")
            self.ctx.log.exception("ble.decode_crash", address=address)

    def _resolve(self, address: str) -> _Tag | None:
        """The tag whose identity resolving key resolves the private address ``address``: one
        AES block per enrolled key for each address first heard, then remembered."""
        if address in self._resolved:
            return self._resolved[address]
        found = None
        if is_resolvable_private(address):
            from bluetooth_data_tools import resolve_private_address  # noqa: PLC0415

            found = next((t for c, t in self._by_irk if resolve_private_address(c, address)), None)
        if len(self._resolved) >= _RESOLVED_MAX:
            self._resolved.clear()  # phones rotate too: the memory stays bounded
        self._resolved[address] = found
        return found

    def _take(self, tag: _Tag, advert: Advert) -> None:
        if tag.locked:
            return
        decoded = tag.decoder.decode(advert)
        counters = self.counters.get(tag.config.id)
        if counters is not None:
            counters["adverts"] += 1
            for problem in decoded.problems:
                counters[problem] += 1
        self._emit(tag, tag.tracker.heard(advert.time, advert.rssi, decoded))
        if advert.time - tag.told >= _TELL_EVERY_S:
            tag.told = advert.time
            self.ctx.health.ok(tag.config.id)

    def _emit(self, tag: _Tag, happenings: list[Happening]) -> None:
        if not happenings:
            return
        ts, synced = self.ctx.stamp()
        device = tag.config.id
        records: list[Record] = []
        for h in happenings:
            records += _records(device, ts, synced, h)
        self.ctx.push(records)


class _ScannerError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _reason(text: str) -> str:
    low = text.lower()
    if "not powered" in low or "notready" in low or "not ready" in low or "powered" in low:
        return "adapter_off"
    if "not found" in low or "no bluetooth adapters" in low or "unknownobject" in low:
        return "no_adapter"
    if "serviceunknown" in low or "not provided by any .service" in low:
        return "bluez_gone"
    if "connection" in low or "eof" in low or "socket" in low:
        return "dbus_lost"
    return "scanner_error"


def _passive_patterns() -> list[Any]:
    """Passive scanning on BlueZ needs advertisement monitor patterns: the Flags field with the
    values tags use covers nearly every advert."""
    from bleak.assigned_numbers import AdvertisementDataType  # noqa: PLC0415
    from bleak.backends.bluezdbus.advertisement_monitor import OrPattern  # noqa: PLC0415

    return [OrPattern(0, AdvertisementDataType.FLAGS, bytes((f,))) for f in (2, 4, 5, 6, 26)]


_EVENTS: Final[Mapping[str, tuple[str, Severity]]] = {
    "present": ("tag.present", Severity.INFO),
    "away": ("tag.away", Severity.INFO),
    "sos": ("tag.sos", Severity.ALARM),
    "press": ("tag.button", Severity.INFO),
    "battery_low": ("tag.battery_low", Severity.WARNING),
    "battery_ok": ("tag.battery_ok", Severity.INFO),
}


def _records(device: str, ts: int, synced: bool, h: Happening) -> list[Record]:
    if h.kind == "value":
        assert h.name is not None
        return [
            Reading(
                device=device, ts=ts, ts_synced=synced, point=h.name, value=h.value, unit=h.unit
            )
        ]
    if h.kind == "rssi":
        band = str(h.detail.get("band"))
        return [
            Reading(
                device=device, ts=ts, ts_synced=synced, point="rssi", value=h.value, unit="dBm"
            ),
            Reading(device=device, ts=ts, ts_synced=synced, point="distance", value=band),
        ]
    type_, severity = _EVENTS[h.kind]
    data: dict[str, Any] = dict(h.detail)
    if h.kind in ("sos", "press"):
        data |= {"button": h.name, "press": h.value}
    elif h.value is not None:
        data["value"] = h.value
    out: list[Record] = [
        Event(device=device, ts=ts, ts_synced=synced, type=type_, severity=severity, data=data)
    ]
    if h.kind in ("present", "away"):
        out.append(Reading(device=device, ts=ts, ts_synced=synced, point="presence", value=h.kind))
    return out
