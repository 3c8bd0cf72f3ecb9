"""``edge-agent scan cjt188`` and ``edge-agent simulate cjt188``.

``scan`` finds the water, heat and gas meters on a line (:mod:`drivers.cjt188.tools`), through
the running agent when it holds the port. ``simulate`` answers as one or more meters on a serial
port or a pty (``socat pty,raw,echo=0,link=/tmp/a pty,raw,echo=0,link=/tmp/b``), for trying a
line, the agent's config and the scan without meters. Building the parser imports nothing but
argparse.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from agent.driver.cli import (
    ToolRunner,
    group,
    line_arguments,
    run_locally,
    scan_line,
    serve_simulated,
    simulate_arguments,
    simulated_addresses,
)

__all__ = ["add_commands"]

_FAULTS = ("silent", "garbage", "checksum", "truncated", "valve_stuck")
_TYPES = (
    "cold_water",
    "hot_water",
    "drinking_water",
    "reclaimed_water",
    "heat",
    "cooling",
    "gas",
)
"""As :data:`drivers.cjt188.config.MeterType` (not imported: the parser imports no driver)."""


def _simulate(args: argparse.Namespace) -> int:
    from drivers.cjt188.simulator import SimulatedMeter  # noqa: PLC0415

    meters = [
        SimulatedMeter(
            address=address,
            meter_type=args.type,
            di_order=args.di_order,
            valve=args.valve,
            battery_low=address in args.battery_low,
            faults=faults,
            answer_delay_s=args.answer_delay_ms / 1000,
        )
        for address, faults in simulated_addresses(args)
    ]
    what = f"{len(meters)} simulated CJ/T 188 {args.type} meter(s)"
    code = serve_simulated(args, meters, f"{what}: {', '.join(m.address for m in meters)}")
    if code == 0:
        moves = sum(m.valve_operations for m in meters)
        print(f"{sum(m.frames_answered for m in meters)} frame(s) answered, {moves} valve move(s)")
    return code


def _detail(meter: Mapping[str, Any]) -> str:
    if "confirm_error" in meter:
        return str(meter["confirm_error"])
    values: dict[str, Any] = meter.get("values", {})
    units: dict[str, str] = meter.get("units", {})
    shown = [
        f"{name} {values[name]} {units.get(name, '')}".rstrip()
        for name in ("volume", "heat_energy")
        if values.get(name) is not None
    ]
    return ", ".join(shown)


def _scan(args: argparse.Namespace, runner: ToolRunner) -> int:
    options = {"meter_type": args.type, "timeout_s": args.timeout, "search": args.search}
    return scan_line(
        runner, "cjt188", options, args, lambda m: f"{m['type']}  ({m['found_by']})  {_detail(m)}"
    )


def add_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    runner: ToolRunner | None = None,
    command: Any = None,
) -> None:
    """Add ``scan cjt188`` and ``simulate cjt188`` to the ``edge-agent`` parser. The valve
    commands go through ``edge-agent command`` like any device command (``command`` unused)."""
    del command
    run = runner or run_locally
    scan = group(subparsers, "scan", "find the devices on a bus (installer tool)")
    p = scan.add_parser(
        "cjt188",
        help="find the CJ/T 188 water, heat and gas meters on a line and their addresses",
        description="Read the address and type of the one meter on a line (the wildcard "
        "address and type), or with --search find several by narrowing abbreviated addresses "
        "from the low digits (about 100-250 frames for a line of 48 meters). Every meter found "
        "is confirmed with a read of its current data. If the agent runs on the port, the scan "
        "goes through it, between its polls. Exit codes: 0 found, 1 none found, 2 the line "
        "cannot be used.",
    )
    line_arguments(p, baud=2400, parity_default="even")
    p.add_argument("--type", choices=_TYPES, help="ask only meters of this type (default: any)")
    p.add_argument("--search", action="store_true", help="find several meters on the line")
    p.add_argument("--timeout", type=float, default=0.3, help="seconds per frame (default 0.3)")
    p.add_argument("--json", action="store_true", help="the result as JSON on stdout")
    p.set_defaults(func=lambda args: _scan(args, run))

    simulate = group(subparsers, "simulate", "simulated devices on a real port (for trying a line)")
    s = simulate.add_parser(
        "cjt188",
        help="water, heat or gas meters speaking CJ/T 188-2004",
        description="Answer as one or more CJ/T 188 meters on PORT, with values that change as "
        "a household's (or a heating substation's) do. Replies take their time on the wire at "
        "--baud. Exit codes: 0 stopped, 2 the port cannot be used.",
    )
    line_arguments(s, baud=2400, parity_default="even", agent=False)
    address = simulate_arguments(s, digits=14, faults=_FAULTS, answer_delay_ms=50)
    s.add_argument("--type", choices=_TYPES, default="cold_water", help="default cold_water")
    s.add_argument(
        "--di-order",
        choices=("low_first", "high_first"),
        default="low_first",
        help="how the meters send identifiers (901F as 1F 90 or 90 1F)",
    )
    s.add_argument("--valve", action="store_true", help="the meters have valves")
    s.add_argument(
        "--battery-low",
        type=address,
        action="append",
        default=[],
        metavar="ADDRESS",
        help="a meter whose battery is low",
    )
    s.set_defaults(func=_simulate)
