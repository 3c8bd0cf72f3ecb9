"""``edge-agent scan cjt188`` and ``edge-agent simulate cjt188``.

``scan`` finds the water, heat and gas meters on a line (:mod:`drivers.cjt188.tools`), through
the running agent when it holds the port. ``simulate`` answers as one or more meters on a serial
port or a pty (``socat pty,raw,echo=0,link=/tmp/a pty,raw,echo=0,link=/tmp/b``), for trying a
line, the agent's config and the scan without meters. Building the parser imports nothing but
argparse.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from agent.driver.cli import ToolRunner, group, line_arguments, run_locally, run_tool, serial_bus

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


def _address(text: str) -> str:
    digits = text.strip()
    if not digits.isdigit() or not digits.isascii() or len(digits) > 14:
        raise argparse.ArgumentTypeError(f"an address is up to 14 digits: {text!r}")
    return digits.rjust(14, "0")


def _fault(text: str) -> tuple[str, str]:
    address, sep, fault = text.partition(":")
    if not sep or fault not in _FAULTS:
        raise argparse.ArgumentTypeError(
            f"ADDRESS:FAULT with FAULT one of {', '.join(_FAULTS)}: {text!r}"
        )
    return _address(address), fault


def _simulate(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    import serial  # noqa: PLC0415

    from agent.driver.simulation import serve_line  # noqa: PLC0415
    from drivers.cjt188.simulator import SimulatedMeter  # noqa: PLC0415

    first = int(args.address[0])
    addresses = list(args.address) + [
        str(first + n).rjust(14, "0") for n in range(1, args.meters - len(args.address) + 1)
    ]
    faults: dict[str, set[Any]] = {}
    for address, fault in args.fault:
        faults.setdefault(address, set()).add(fault)
    meters = [
        SimulatedMeter(
            address=a,
            meter_type=args.type,
            di_order=args.di_order,
            valve=args.valve,
            battery_low=a in args.battery_low,
            faults=faults.get(a, set()),
            answer_delay_s=args.answer_delay_ms / 1000,
        )
        for a in addresses
    ]
    parity = {"none": "N", "even": "E", "odd": "O"}[args.parity]
    try:
        port = serial.Serial(args.port, args.baud, parity=parity, stopbits=args.stop_bits)
    except (OSError, serial.SerialException) as exc:
        print(f"cannot open {args.port}: {exc}", file=sys.stderr)
        return 2
    bits = 9 + (args.parity != "none") + args.stop_bits
    print(
        f"{len(meters)} simulated CJ/T 188 {args.type} meter(s) on {args.port}: "
        f"{', '.join(addresses)}; Ctrl-C stops",
        flush=True,
    )
    try:
        asyncio.run(serve_line(port.fileno(), meters, char_s=bits / args.baud))
    except KeyboardInterrupt:
        pass
    finally:
        port.close()
    operations = sum(m.valve_operations for m in meters)
    print(f"{sum(m.frames_answered for m in meters)} frame(s) answered, {operations} valve move(s)")
    return 0


def _detail(meter: dict[str, Any]) -> str:
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
    if sys.stderr.isatty():
        what = "searching" if args.search else "asking the wildcard address"
        print(f"{args.port}: {what}...", file=sys.stderr, flush=True)
    result = run_tool(runner, "cjt188", "scan", serial_bus(args), options, args)
    if result is None:
        return 2
    if "error" in result:
        print(f"{result['where']}: {result['error']}", file=sys.stderr)
        return 2
    meters = result["meters"]
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0 if meters else 1
    for meter in meters:
        print(f"meter {meter['address']}  {meter['type']}  ({meter['found_by']})  {_detail(meter)}")
    for address in result.get("phantoms", []):
        print(
            f"{address} answered, but not at its full address: collided replies, not a meter",
            file=sys.stderr,
        )
    for address in result["unresolved"]:
        print(f"{address}: more than one meter answers this address (two with one address?)")
    if not meters:
        print(f"{result['where']}: no meter answered ({result['frames']} frame(s))")
    if "hint" in result:
        print(result["hint"], file=sys.stderr)
    print(
        f"{result['frames']} frame(s), {result['collisions']} collision(s), {result['seconds']} s",
        file=sys.stderr,
    )
    return 0 if meters else 1


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
    s.add_argument(
        "--address",
        type=_address,
        action="append",
        required=True,
        help="a meter's address (repeat for several)",
    )
    s.add_argument("--meters", type=int, default=1, help="this many, numbered from the first")
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
        type=_address,
        action="append",
        default=[],
        metavar="ADDRESS",
        help="a meter whose battery is low",
    )
    s.add_argument("--answer-delay-ms", type=float, default=50, help="the meters' reply delay")
    s.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="ADDRESS:FAULT",
        help=f"a meter that misbehaves: {', '.join(_FAULTS)}",
    )
    s.set_defaults(func=_simulate)
