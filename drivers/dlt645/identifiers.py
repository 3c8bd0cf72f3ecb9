"""The data identifiers the driver knows by name, per protocol version, and their blocks.

A point of a meter is a name from this catalog (``energy_import``, ``voltage_a``...) or, for an
identifier the catalog lacks, a DI with its format (see :mod:`drivers.dlt645.config`). The names
are the same in both versions where the quantity is the same, so that a 1997 meter and a 2007
meter report ``energy_import`` alike; the DIs, formats and resolutions differ (a 1997 meter
gives whole volts).

A *block* is one identifier that returns several, in order (``0201FF00``: the three phase
voltages): one frame instead of three. A meter's reply to a block holds the members it has,
so an energy block holds the total and as many tariffs as the meter keeps.

Sources: DL/T 645-2007 appendix A and DL/T 645-1997 appendix B, as listed in
``shared/reference/protocols.md`` and vendors' manuals (CHINT, DELIXI, Holley). Meters differ:
an identifier a meter lacks is answered "no such data" and reported ``bad`` with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from drivers.dlt645.codec import Fmt, Version

__all__ = ["BLOCKS", "CATALOG", "TARIFFS", "Ident", "block_of"]

TARIFFS: Final = ("sharp", "peak", "flat", "valley")
"""Tariffs 1–4 as Chinese meters use them: 尖, 峰, 平, 谷."""


@dataclass(frozen=True, slots=True)
class Ident:
    name: str
    di: int
    fmt: Fmt
    unit: str | None
    description: str


def _energy(version: Version) -> list[Ident]:
    kwh = Fmt("XXXXXX.XX")
    out: list[Ident] = []
    if version == 2007:
        groups = (
            ("energy_total", 0x00000000, "combined active energy", Fmt("XXXXXX.XX", signed=True)),
            ("energy_import", 0x00010000, "forward (import) active energy", kwh),
            ("energy_export", 0x00020000, "reverse (export) active energy", kwh),
        )
        for name, di, text, fmt in groups:
            out.append(Ident(name, di, fmt, "kWh", text))
            for n, tariff in enumerate(TARIFFS, 1):
                out.append(Ident(f"{name}_{tariff}", di + (n << 8), fmt, "kWh", f"{text}, T{n}"))
    else:
        for name, di, text in (
            ("energy_import", 0x9010, "forward (import) active energy"),
            ("energy_export", 0x9020, "reverse (export) active energy"),
        ):
            out.append(Ident(name, di, kwh, "kWh", text))
            for n, tariff in enumerate(TARIFFS, 1):
                out.append(Ident(f"{name}_{tariff}", di + n, kwh, "kWh", f"{text}, T{n}"))
    return out


def _phases(
    name: str, first: int, step: int, fmt: Fmt, unit: str, text: str, *, total: bool
) -> list[Ident]:
    """Per-phase identifiers (with the total first when the quantity has one)."""
    out: list[Ident] = []
    if total:
        out.append(
            Ident(
                f"{name}_total" if name != "power_factor" else name,
                first,
                fmt,
                unit,
                f"{text}, total",
            )
        )
    for n, phase in enumerate("abc", 1):
        out.append(
            Ident(f"{name}_{phase}", first + n * step, fmt, unit, f"{text}, phase {phase.upper()}")
        )
    return out


def _catalog_2007() -> list[Ident]:
    signed = {
        "XXX.XXX": Fmt("XXX.XXX", signed=True),
        "XX.XXXX": Fmt("XX.XXXX", signed=True),
        "X.XXX": Fmt("X.XXX", signed=True),
    }
    return [
        *_energy(2007),
        *_phases("voltage", 0x02010000, 0x100, Fmt("XXX.X"), "V", "voltage", total=False),
        *_phases("current", 0x02020000, 0x100, signed["XXX.XXX"], "A", "current", total=False),
        *_phases("power", 0x02030000, 0x100, signed["XX.XXXX"], "kW", "active power", total=True),
        *_phases(
            "reactive_power",
            0x02040000,
            0x100,
            signed["XX.XXXX"],
            "kvar",
            "reactive power",
            total=True,
        ),
        *_phases(
            "apparent_power",
            0x02050000,
            0x100,
            signed["XX.XXXX"],
            "kVA",
            "apparent power",
            total=True,
        ),
        *_phases(
            "power_factor", 0x02060000, 0x100, signed["X.XXX"], "", "power factor", total=True
        ),
        Ident("current_neutral", 0x02800001, signed["XXX.XXX"], "A", "neutral current"),
        Ident("frequency", 0x02800002, Fmt("XX.XX"), "Hz", "grid frequency"),
        Ident(
            "meter_temperature",
            0x02800007,
            Fmt("XXX.X", signed=True),
            "°C",
            "temperature inside the meter",
        ),
        Ident("clock_battery", 0x02800008, Fmt("XX.XX"), "V", "clock battery voltage"),
        Ident("meter_date", 0x04000101, Fmt("YYMMDDWW"), None, "the meter's date"),
        Ident("meter_time", 0x04000102, Fmt("hhmmss"), None, "the meter's time"),
        Ident("meter_address", 0x04000401, Fmt("NNNNNNNNNNNN"), None, "communication address"),
        Ident("meter_number", 0x04000402, Fmt("NNNNNNNNNNNN"), None, "meter number (表号)"),
    ]


def _catalog_1997() -> list[Ident]:
    return [
        *_energy(1997),
        *_phases("voltage", 0xB610, 1, Fmt("XXX"), "V", "voltage", total=False),
        *_phases("current", 0xB620, 1, Fmt("XX.XX"), "A", "current", total=False),
        *_phases("power", 0xB630, 1, Fmt("XX.XXXX"), "kW", "active power", total=True),
        *_phases("reactive_power", 0xB640, 1, Fmt("XX.XX"), "kvar", "reactive power", total=True),
        *_phases("power_factor", 0xB650, 1, Fmt("X.XXX"), "", "power factor", total=True),
        Ident("meter_date", 0xC010, Fmt("YYMMDDWW"), None, "the meter's date"),
        Ident("meter_time", 0xC011, Fmt("hhmmss"), None, "the meter's time"),
        Ident("meter_number", 0xC032, Fmt("NNNNNNNNNNNN"), None, "meter number (表号)"),
    ]


def _by_name(idents: list[Ident]) -> dict[str, Ident]:
    found: dict[str, Ident] = {}
    for ident in idents:
        assert ident.name not in found, ident.name
        found[ident.name] = ident
    return found


CATALOG: Final[dict[Version, dict[str, Ident]]] = {
    2007: _by_name(_catalog_2007()),
    1997: _by_name(_catalog_1997()),
}


def _blocks_2007() -> dict[int, tuple[int, ...]]:
    blocks: dict[int, tuple[int, ...]] = {}
    for base in (0x00000000, 0x00010000, 0x00020000):
        blocks[base | 0xFF00] = tuple(base + (n << 8) for n in range(5))
    for base, total in (
        (0x02010000, False),
        (0x02020000, False),
        (0x02030000, True),
        (0x02040000, True),
        (0x02050000, True),
        (0x02060000, True),
    ):
        first = 0 if total else 1
        blocks[base | 0xFF00] = tuple(base + (n << 8) for n in range(first, 4))
    return blocks


def _blocks_1997() -> dict[int, tuple[int, ...]]:
    blocks: dict[int, tuple[int, ...]] = {}
    for base in (0x9010, 0x9020):
        blocks[base | 0xF] = tuple(base + n for n in range(5))
    for base, total in (
        (0xB610, False),
        (0xB620, False),
        (0xB630, True),
        (0xB640, True),
        (0xB650, True),
    ):
        first = 0 if total else 1
        blocks[base | 0xF] = tuple(base + n for n in range(first, 4))
    return blocks


BLOCKS: Final[dict[Version, dict[int, tuple[int, ...]]]] = {
    2007: _blocks_2007(),
    1997: _blocks_1997(),
}
"""Block DI -> its members' DIs, in the order the reply carries them."""

_MEMBER_OF: Final[dict[Version, dict[int, int]]] = {
    version: {member: block for block, members in blocks.items() for member in members}
    for version, blocks in BLOCKS.items()
}


def block_of(di: int, version: Version) -> int | None:
    """The block that carries ``di``, if there is one."""
    return _MEMBER_OF[version].get(di)
