"""``edge-agent scan dlt645``: find the meters on a line.

- One meter: the wildcard address (``AA×6``) reaches whichever meter is there, and its reply
  carries its address (read-address ``13`` in 2007, a read in 1997).
- Several meters (``search``): all of them answer the wildcard at once and their replies collide.
  The search narrows from the low byte, as DL/T 645's abbreviated addressing allows: the address
  ``v AA AA AA AA AA`` reaches only the meters whose address ends in ``v``. For each of the 100
  values of the low byte: silence means no meter, a clean reply is one meter (its address is in
  the reply), a collision means several, and the next byte narrows them. With a building's
  meters numbered in sequence, a line of 48 meters takes about 100–250 frames.

Every meter found is confirmed with a read at its full address. It runs on the bus handle it
is given: the running agent's, between its polls, or one the command line opened.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

from agent.bus import BusHandle, SerialLine
from agent.driver import BusError, DeviceError
from agent.driver.bcd import to_bcd
from drivers.dlt645.codec import ADDRESS_SIZE, WILDCARD, Version, decode_value, parse_address
from drivers.dlt645.driver import MeterLink, read_address
from drivers.dlt645.identifiers import CATALOG

__all__ = ["scan"]

_COLLISION: Final = frozenset({"checksum_error", "garbage", "truncated", "wrong_reply"})


class _Search:
    def __init__(self, link: MeterLink) -> None:
        self.link = link
        self.frames = 0
        self.collisions = 0
        self.found: dict[str, str] = {}
        """address -> how it was found."""
        self.unresolved: list[str] = []
        self._energy = CATALOG[link.version]["energy_import"]

    async def probe(self, address: bytes) -> str | bytes:
        """``timeout``, ``collision`` or the address that answered."""
        self.frames += 1
        try:
            _, answered = await self.link.read(self._energy.di, address=address)
        except BusError:
            raise
        except DeviceError as exc:
            if exc.reason in _COLLISION:
                self.collisions += 1
                return "collision"
            if exc.reason == "timeout":
                return "timeout"
            return "collision"  # an abnormal reply from several: treat as more than one
        return answered

    async def narrow(self, prefix: bytes) -> None:
        for value in range(100):
            known = prefix + to_bcd(value, 1)
            address = known + b"\xaa" * (ADDRESS_SIZE - len(known))
            got = await self.probe(address)
            if isinstance(got, bytes):
                self.found.setdefault(got[::-1].hex(), "search")
            elif got == "collision":
                if len(known) == ADDRESS_SIZE:
                    self.unresolved.append(known[::-1].hex())  # two meters, one address
                else:
                    await self.narrow(known)


async def scan(bus: BusHandle, options: Mapping[str, Any], /) -> Mapping[str, Any]:
    if not isinstance(bus, SerialLine):
        return {"where": bus.where, "error": "DL/T 645 meters are on serial lines"}
    version: Version = 1997 if options.get("version") == 1997 else 2007
    timeout = float(options.get("timeout_s", 0.5))
    link = MeterLink(bus, WILDCARD, version, timeout_s=timeout)
    search = _Search(link)
    started = time.monotonic()
    result: dict[str, Any] = {"where": bus.where, "version": version}
    try:
        if options.get("search"):
            first = await search.probe(WILDCARD)
            if isinstance(first, bytes):
                search.found[first[::-1].hex()] = "wildcard"
            elif first == "collision":
                await search.narrow(b"")
        else:
            search.frames += 1
            try:
                search.found[await read_address(link)] = "wildcard"
            except DeviceError as exc:
                if isinstance(exc, BusError):
                    raise
                if exc.reason in _COLLISION:
                    result["hint"] = (
                        "replies collided: more than one meter on the line? scan with --search"
                    )
                elif exc.reason != "timeout":
                    result["hint"] = f"{exc.reason}: {exc}"
        meters = []
        energy = CATALOG[version]["energy_import"]
        for address in sorted(search.found):
            search.frames += 1
            entry: dict[str, Any] = {"address": address, "found_by": search.found[address]}
            try:
                data, _ = await link.read(energy.di, address=parse_address(address))
                entry["energy_import_kwh"] = decode_value(energy.fmt, data)
            except DeviceError as exc:
                if isinstance(exc, BusError):
                    raise
                entry["confirm_error"] = exc.reason
            meters.append(entry)
    except BusError as exc:
        return {"where": bus.where, "error": f"{exc.reason}: {exc}"}
    result |= {
        "meters": meters,
        "unresolved": search.unresolved,
        "frames": search.frames,
        "collisions": search.collisions,
        "seconds": round(time.monotonic() - started, 1),
    }
    return result
