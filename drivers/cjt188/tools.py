"""``edge-agent scan cjt188``: find the water, heat and gas meters on a line.

- One meter: the wildcard address (``AA×7``) with the wildcard type (``AA``) reaches whichever
  meter is there, and its reply to read-address (``03``, DI ``810A``) carries its address and
  type.
- Several meters (``search``): all of them answer the wildcard at once and their replies collide.
  The search narrows from the low byte, as CJ/T 188's abbreviated addressing allows: the address
  ``v AA AA AA AA AA AA`` reaches only the meters whose address ends in ``v``. For each of the
  100 values of the low byte: silence means no meter, a clean reply is one meter (its address is
  in the reply), a collision (a checksum error, garbage) means several, and the next byte
  narrows them. With a building's meters numbered in sequence, a line of 48 meters takes about
  100–250 frames.

Every meter that answers is confirmed at once with a read of its current data at its full
address: the bits of colliding replies mix (on a real line and on the simulated one), and now and
then their mix is a frame that checks, from an address nobody has. A "meter" that does not answer
its confirming read is such a phantom: it is listed under ``phantoms`` and its prefix narrowed as
a collision. The scan runs on the bus handle it is given: the running agent's, between its polls,
or one the command line opened.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

from agent.bus import BusHandle, SerialLine
from agent.driver import BusError, DeviceError
from agent.driver.bcd import to_bcd
from drivers.cjt188.codec import (
    ADDRESS_SIZE,
    ANY_TYPE,
    HEADER,
    METER_TYPES,
    READ_ADDRESS,
    WILDCARD,
    Func,
    payload_size,
    show_address,
)
from drivers.cjt188.driver import MeterLink, type_name

__all__ = ["scan"]

_LONGEST_REPLY: Final = 4 + HEADER + 2 + 3 + payload_size(0x20)
"""A heat meter's ``901F`` reply with its preamble, in bytes."""
_COLLISION: Final = frozenset(
    {"checksum_error", "garbage", "truncated", "wrong_reply", "wrong_address"}
)


class _Search:
    def __init__(self, link: MeterLink, meter_type: int) -> None:
        self.link = link
        self.meter_type = meter_type
        self.frames = 0
        self.collisions = 0
        self.phantoms: list[str] = []
        """Addresses that answered clean but not at their full address: collided replies that
        happened to check (the OR of several frames is now and then a valid one)."""
        self.found: dict[str, dict[str, Any]] = {}
        """address -> the meter's entry."""
        self.unresolved: list[str] = []

    async def probe(self, address: bytes) -> str | tuple[bytes, int]:
        """``timeout``, ``collision`` or the address and type that answered."""
        self.frames += 1
        try:
            reply, _ = await self.link.transact(
                Func.READ_ADDRESS, READ_ADDRESS, address=address, meter_type=self.meter_type
            )
        except BusError:
            raise
        except DeviceError as exc:
            if exc.reason in _COLLISION:
                self.collisions += 1
                return "collision"
            if exc.reason == "timeout":
                return "timeout"
            return "collision"  # an abnormal reply from several: treat as more than one
        return reply.address, reply.meter_type

    async def confirm(self, got: tuple[bytes, int], how: str) -> bool:
        """Read the current data of a meter that answered, at its full address: False when
        nothing answers there (the reply was a collision's)."""
        wire, kind = got
        address = show_address(wire)
        if address in self.found:
            return True
        self.frames += 1
        entry: dict[str, Any] = {"address": address, "type": type_name(kind), "found_by": how}
        line = self.link.line
        try:
            data, _ = await self.link.read_current(
                address=wire,
                meter_type=kind,
                # A heat meter's reply alone takes 0.3 s on the wire at 2400 Bd.
                timeout_s=self.link.timeout_s + line.wire_s(_LONGEST_REPLY),
            )
        except BusError:
            raise
        except DeviceError as exc:
            if exc.reason == "timeout":
                self.phantoms.append(address)
                return False
            entry["confirm_error"] = exc.reason
        else:
            entry["values"] = {m.name: m.value for m in data.values}
            entry["units"] = {m.name: m.unit for m in data.values if m.unit}
            entry["status"] = data.status.text
        self.found[address] = entry
        return True

    async def narrow(self, prefix: bytes) -> None:
        for value in range(100):
            known = prefix + to_bcd(value, 1)
            address = known + b"\xaa" * (ADDRESS_SIZE - len(known))
            got = await self.probe(address)
            if got == "timeout":
                continue
            if isinstance(got, tuple) and await self.confirm(got, "search"):
                continue
            if len(known) == ADDRESS_SIZE:
                self.unresolved.append(show_address(known))  # two meters, one address
            else:
                await self.narrow(known)


def _meter_type(options: Mapping[str, Any]) -> int:
    name = options.get("meter_type")
    if name is None:
        return ANY_TYPE
    if name not in METER_TYPES:
        raise ValueError(f"unknown meter type {name!r} (known: {', '.join(METER_TYPES)})")
    return METER_TYPES[name]


_SEVERAL: Final = "replies collided: more than one meter on the line? scan with --search"


async def scan(bus: BusHandle, options: Mapping[str, Any], /) -> Mapping[str, Any]:
    if not isinstance(bus, SerialLine):
        return {"where": bus.where, "error": "CJ/T 188 meters are on serial lines"}
    try:
        meter_type = _meter_type(options)
    except ValueError as exc:
        return {"where": bus.where, "error": str(exc)}
    timeout = float(options.get("timeout_s", 0.3))
    link = MeterLink(bus, WILDCARD, meter_type, timeout_s=timeout)
    search = _Search(link, meter_type)
    started = time.monotonic()
    result: dict[str, Any] = {"where": bus.where, "meter_type": options.get("meter_type")}
    try:
        first = await search.probe(WILDCARD)
        alone = isinstance(first, tuple) and await search.confirm(first, "wildcard")
        if not alone and first != "timeout":
            if options.get("search"):
                await search.narrow(b"")
            else:
                result["hint"] = _SEVERAL
    except BusError as exc:
        return {"where": bus.where, "error": f"{exc.reason}: {exc}"}
    result |= {
        "meters": [search.found[a] for a in sorted(search.found)],
        "unresolved": search.unresolved,
        "phantoms": search.phantoms,
        "frames": search.frames,
        "collisions": search.collisions,
        "seconds": round(time.monotonic() - started, 1),
    }
    return result
