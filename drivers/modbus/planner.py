"""Read planning: the fewest, best-shaped requests that cover a device's points.

A pure function of the points and the device's limits. On an RS-485 line the cost of a request
is its wire time (``reference/protocols.md``)::

    T_wire = (8 + reply bytes) · b / baud + 2 · t3.5       reply = 5 + 2N (registers)
                                                                  5 + ⌈N/8⌉ (bits)
    t3.5   = 3.5 · b / baud  (baud ≤ 19200), else 1.75 ms      b = 11 (8E1, 8N2) or 10 (8N1)

so a request costs a fixed 20-odd characters plus two per register: filling a small gap between
two points is cheaper than a second request, a large gap is not. For each table the planner sorts
the points and chooses the cut points between consecutive groups by dynamic programming, which
gives the cheapest plan among those that keep the sorted order, under the limits: never across
tables, never more than ``max_registers`` (``max_bits``) per request, never a filled gap larger
than ``max_gap`` registers (``max_gap × 16`` bits: the wire cost of one register).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from drivers.modbus.codec import BIT_TABLES, TABLES

__all__ = [
    "Cost",
    "Item",
    "Limits",
    "LineTiming",
    "Request",
    "plan_contiguous",
    "plan_per_point",
    "plan_reads",
    "wire_time_s",
]

MAX_REGISTERS: Final = 125
MAX_BITS: Final = 2000


@dataclass(frozen=True, slots=True)
class Item:
    """Something to read: ``size`` registers (or bits) of ``table`` from ``address``."""

    key: int
    """The caller's index of the point."""
    table: str
    address: int
    size: int = 1

    @property
    def end(self) -> int:
        return self.address + self.size


@dataclass(frozen=True, slots=True)
class Limits:
    """What the device accepts."""

    max_registers: int = MAX_REGISTERS
    max_bits: int = MAX_BITS
    max_gap: int = 0
    """Unread registers a request may span between points (some devices reject them)."""

    def size_limit(self, table: str) -> int:
        return self.max_bits if table in BIT_TABLES else self.max_registers

    def gap_limit(self, table: str) -> int:
        return self.max_gap * 16 if table in BIT_TABLES else self.max_gap


@dataclass(frozen=True, slots=True)
class Request:
    """One read: ``count`` registers or bits of ``table`` from ``address``, and the points
    (``Item.key``) it serves."""

    table: str
    address: int
    count: int
    keys: tuple[int, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class LineTiming:
    """A serial line's speed and character size, for wire-time figures."""

    baud: int = 9600
    bits_per_char: int = 11
    """11 for 8E1/8O1/8N2, 10 for 8N1."""

    @property
    def char_s(self) -> float:
        return self.bits_per_char / self.baud

    @property
    def t35_s(self) -> float:
        return 3.5 * self.char_s if self.baud <= 19200 else 0.00175

    def request_s(self, table: str, count: int) -> float:
        """Wire time of one read, both frames and the two silent gaps."""
        reply = 5 + ((count + 7) // 8 if table in BIT_TABLES else 2 * count)
        return (8 + reply) * self.char_s + 2 * self.t35_s


@dataclass(frozen=True, slots=True)
class Cost:
    """The planner's objective: a fixed price per request plus a price per register (per bit)."""

    per_request: float
    per_register: float
    per_bit_byte: float
    """Per reply byte of a coil or discrete read: 8 bits a byte, a started byte costs whole."""

    @classmethod
    def serial(cls, timing: LineTiming) -> Cost:
        """Wire time on a serial line (or RTU frames through a gateway to one)."""
        return cls(
            per_request=13 * timing.char_s + 2 * timing.t35_s,
            per_register=2 * timing.char_s,
            per_bit_byte=timing.char_s,
        )

    @classmethod
    def tcp(cls) -> Cost:
        """Modbus TCP: a round trip costs far more than the bytes, so fewest requests wins."""
        return cls(per_request=1.0, per_register=1e-4, per_bit_byte=8e-5)

    def of(self, table: str, count: int) -> float:
        if table in BIT_TABLES:
            return self.per_request + self.per_bit_byte * ((count + 7) // 8)
        return self.per_request + self.per_register * count


def _check(items: Sequence[Item], limits: Limits) -> None:
    for item in items:
        if item.table not in TABLES:
            raise ValueError(f"item {item.key}: unknown table {item.table!r}")
        if item.size < 1 or item.size > limits.size_limit(item.table):
            raise ValueError(
                f"item {item.key}: {item.size} registers/bits do not fit one request "
                f"(at most {limits.size_limit(item.table)})"
            )
        if item.address < 0 or item.end > 0x10000:
            raise ValueError(f"item {item.key}: address range {item.address}+{item.size}")


def _by_table(items: Iterable[Item]) -> dict[str, list[Item]]:
    tables: dict[str, list[Item]] = {}
    for item in items:
        tables.setdefault(item.table, []).append(item)
    for group in tables.values():
        group.sort(key=lambda i: (i.address, i.end, i.key))
    return tables


def _request(table: str, group: Sequence[Item]) -> Request:
    start = group[0].address
    end = max(i.end for i in group)
    return Request(table, start, end - start, tuple(i.key for i in group))


def _segment(table: str, items: Sequence[Item], limits: Limits, cost: Cost) -> list[Request]:
    """Cheapest split of sorted ``items`` into consecutive groups (dynamic programming)."""
    size_limit = limits.size_limit(table)
    gap_limit = limits.gap_limit(table)
    n = len(items)
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for first in range(n):
        # Grow a group forwards from items[first]. Items are sorted by address, so neither the
        # span nor the widest unread gap ever shrinks as the group grows: stop at the first
        # limit broken.
        base = best[first]
        start = items[first].address
        covered = items[first].end
        for stop in range(first + 1, n + 1):
            item = items[stop - 1]
            if item.address - covered > gap_limit:
                break
            covered = max(covered, item.end)
            span = covered - start
            if span > size_limit:
                break
            total = base + cost.of(table, span)
            if total < best[stop]:
                best[stop] = total
                cut[stop] = first
    requests: list[Request] = []
    stop = n
    while stop > 0:
        first = cut[stop]
        requests.append(_request(table, items[first:stop]))
        stop = first
    requests.reverse()
    return requests


def plan_reads(items: Sequence[Item], limits: Limits, cost: Cost | None = None) -> list[Request]:
    """The cheapest requests covering ``items`` within ``limits``; every item is served by
    exactly one request. ``cost`` defaults to wire time at 9600 Bd 8E1."""
    _check(items, limits)
    cost = cost or Cost.serial(LineTiming())
    requests: list[Request] = []
    for table, group in sorted(_by_table(items).items()):
        requests += _segment(table, group, limits, cost)
    return requests


def plan_per_point(items: Sequence[Item]) -> list[Request]:
    """One request per point: what a naive master does."""
    return [Request(i.table, i.address, i.size, (i.key,)) for i in items]


def plan_contiguous(items: Sequence[Item], limits: Limits) -> list[Request]:
    """Merge only points that touch (no gap at all), up to the size limit: what most gateways
    do."""
    _check(items, limits)
    requests: list[Request] = []
    for table, group in sorted(_by_table(items).items()):
        current: list[Item] = []
        end = 0
        for item in group:
            if (
                current
                and item.address <= end
                and (max(end, item.end) - current[0].address <= limits.size_limit(table))
            ):
                current.append(item)
                end = max(end, item.end)
                continue
            if current:
                requests.append(_request(table, current))
            current, end = [item], item.end
        if current:
            requests.append(_request(table, current))
    return requests


def wire_time_s(requests: Iterable[Request], timing: LineTiming) -> float:
    """Planned wire time of one poll cycle of ``requests`` on a line with ``timing``."""
    return sum(timing.request_s(r.table, r.count) for r in requests)
