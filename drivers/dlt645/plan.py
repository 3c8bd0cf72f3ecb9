"""Which frames one poll of a meter sends: block reads where they save wire time.

A point whose identifier is a member of a block (:data:`drivers.dlt645.identifiers.BLOCKS`)
is read with its block when the meter's points need two or more of the block's members and the
block costs less wire time than the single reads: on a 2400 Bd line every frame saved is about
0.2 s. A meter that answers a block with "no such data" has the block taken out of its plan
(the driver calls :func:`plan_reads` again with it in ``refused``), and its members are read
one by one from then on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from drivers.dlt645.codec import HEADER, Fmt, Version
from drivers.dlt645.identifiers import BLOCKS, CATALOG, block_of

__all__ = ["Point", "Request", "Timing", "member_sizes", "plan_reads", "wire_time_s"]

_FRAME: Final = HEADER + 2
"""Header, checksum and end: every frame's bytes besides its data."""


@dataclass(frozen=True, slots=True)
class Point:
    """A point ready to read."""

    name: str
    di: int
    fmt: Fmt
    unit: str | None = None
    deadband: float | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """One read: ``di`` (a block or a single identifier) and the points it answers."""

    di: int
    keys: tuple[int, ...]
    block: bool = False


@dataclass(frozen=True, slots=True)
class Timing:
    """A line's timing: seconds per character, the silence between frames, the FE preamble
    sent before each frame (and assumed before each reply)."""

    char_s: float = 11 / 2400
    gap_s: float = 0.0
    preamble: int = 4


_SIZES: Final[dict[Version, dict[int, int]]] = {
    version: {ident.di: ident.fmt.size for ident in catalog.values()}
    for version, catalog in CATALOG.items()
}


def member_sizes(block: int, version: Version) -> list[tuple[int, int]]:
    """``(di, size)`` of a block's members, in reply order."""
    return [(di, _SIZES[version][di]) for di in BLOCKS[version][block]]


def _reply_data(request: Request, points: Sequence[Point], version: Version) -> int:
    if request.block:
        return sum(size for _, size in member_sizes(request.di, version))
    return points[request.keys[0]].fmt.size


def request_wire_s(
    request: Request, points: Sequence[Point], version: Version, timing: Timing
) -> float:
    di = 4 if version == 2007 else 2
    sent = timing.preamble + _FRAME + di
    answer = timing.preamble + _FRAME + di + _reply_data(request, points, version)
    return (sent + answer) * timing.char_s + 2 * timing.gap_s


def wire_time_s(
    plan: Iterable[Request], points: Sequence[Point], version: Version, timing: Timing
) -> float:
    """Wire time of one poll: every request and its reply, with the gaps between frames."""
    return sum(request_wire_s(r, points, version, timing) for r in plan)


def plan_reads(
    points: Sequence[Point],
    version: Version,
    timing: Timing,
    *,
    blocks: bool = True,
    refused: frozenset[int] = frozenset(),
) -> list[Request]:
    """The requests of one poll, in the points' order; ``blocks`` False: one per point."""
    grouped: dict[int, list[int]] = {}
    for key, point in enumerate(points):
        block = block_of(point.di, version) if blocks else None
        if (
            block is not None
            and block not in refused
            and point.fmt.size == _SIZES[version].get(point.di)
        ):
            grouped.setdefault(block, []).append(key)
        else:
            grouped.setdefault(-1 - key, []).append(key)  # a single read, in its place
    plan: list[Request] = []
    for di, keys in grouped.items():
        if di >= 0 and len(keys) >= 2:
            whole = Request(di, tuple(keys), block=True)
            singles = [Request(points[k].di, (k,)) for k in keys]
            if request_wire_s(whole, points, version, timing) < wire_time_s(
                singles, points, version, timing
            ):
                plan.append(whole)
                continue
        plan += [Request(points[k].di, (k,)) for k in keys]
    return plan
