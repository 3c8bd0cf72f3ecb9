"""``edge-agent scan dlt645`` and ``edge-agent simulate dlt645``.

``scan`` finds the meters on a line (:mod:`drivers.dlt645.tools`), through the running agent
when it holds the port. ``simulate`` answers as one or more meters on a serial port or a pty
(``socat pty,raw,echo=0,link=/tmp/a pty,raw,echo=0,link=/tmp/b``), for trying a line, the
agent's config and the scan without meters. Building the parser imports nothing but argparse.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from agent.driver.cli import ToolRunner, group, line_arguments, run_locally, run_tool, serial_bus

__all__ = ["add_commands"]

_FAULTS = ("silent", "garbage", "checksum", "truncated", "no_blocks")


def _address(text: str) -> str:
    digits = text.strip()
    if not digits.isdigit() or len(digits) > 12:
        raise argparse.ArgumentTypeError(f"an address is up to 12 digits: {text!r}")
    return digits.rjust(12, "0")


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
    from drivers.dlt645.simulator import SimulatedMeter  # noqa: PLC0415

    first = int(args.address[0])
    addresses = list(args.address) + [
        str(first + n).rjust(12, "0") for n in range(1, args.meters - len(args.address) + 1)
    ]
    faults: dict[str, set[Any]] = {}
    for address, fault in args.fault:
        faults.setdefault(address, set()).add(fault)
    meters = [
        SimulatedMeter(
            address=a,
            version=args.version,
            phases=args.phases,
            faults=faults.get(a, set()),
            answer_delay_s=args.answer_delay_ms / 1000,
        )
        for a in addresses
    ]
    parity = {"none": "N", "even": "E", "odd": "O"}[args.parity]
    try:
        port = serial.Serial(args.port, args.baud, parity=parity)
    except (OSError, serial.SerialException) as exc:
        print(f"cannot open {args.port}: {exc}", file=sys.stderr)
        return 2
    bits = 10 + (args.parity != "none")
    print(
        f"{len(meters)} simulated DL/T 645-{args.version} meter(s) on {args.port}: "
        f"{', '.join(addresses)}; Ctrl-C stops",
        flush=True,
    )
    try:
        asyncio.run(serve_line(port.fileno(), meters, char_s=bits / args.baud))
    except KeyboardInterrupt:
        pass
    finally:
        port.close()
    print(f"{sum(m.frames_answered for m in meters)} frame(s) answered")
    return 0


def _scan(args: argparse.Namespace, runner: ToolRunner) -> int:
    options = {"version": args.version, "timeout_s": args.timeout, "search": args.search}
    if sys.stderr.isatty():
        what = "searching" if args.search else "asking the wildcard address"
        print(f"{args.port}: {what}...", file=sys.stderr, flush=True)
    result = run_tool(runner, "dlt645", "scan", serial_bus(args), options, args)
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
        energy = meter.get("energy_import_kwh")
        detail = f"{energy} kWh" if energy is not None else meter.get("confirm_error", "")
        print(f"meter {meter['address']}  ({meter['found_by']})  {detail}")
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
    """Add ``scan dlt645`` and ``simulate dlt645`` to the ``edge-agent`` parser."""
    del command  # no command aliases
    run = runner or run_locally
    scan = group(subparsers, "scan", "find the devices on a bus (installer tool)")
    p = scan.add_parser(
        "dlt645",
        help="find the DL/T 645 electricity meters on a line and their addresses",
        description="Read the address of the one meter on a line (the wildcard address), or "
        "with --search find several by narrowing abbreviated addresses from the low digits "
        "(about 100-250 frames for a line of 48 meters). Every meter found is confirmed with "
        "a read of its import energy. If the agent runs on the port, the scan goes through it, "
        "between its polls. Exit codes: 0 found, 1 none found, 2 the line cannot be used.",
    )
    line_arguments(p, baud=2400, parity_default="even")
    p.add_argument("--version", type=int, choices=(2007, 1997), default=2007, help="default 2007")
    p.add_argument("--search", action="store_true", help="find several meters on the line")
    p.add_argument("--timeout", type=float, default=0.5, help="seconds per frame (default 0.5)")
    p.add_argument("--json", action="store_true", help="the result as JSON on stdout")
    p.set_defaults(func=lambda args: _scan(args, run))

    simulate = group(subparsers, "simulate", "simulated devices on a real port (for trying a line)")
    s = simulate.add_parser(
        "dlt645",
        help="electricity meters speaking DL/T 645 (2007 or 1997)",
        description="Answer as one or more DL/T 645 meters on PORT, with values that change as "
        "a household's do. Replies take their time on the wire at --baud. Exit codes: 0 "
        "stopped, 2 the port cannot be used.",
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
    s.add_argument("--version", type=int, choices=(2007, 1997), default=2007, help="default 2007")
    s.add_argument("--phases", type=int, choices=(1, 3), default=1, help="default 1")
    s.add_argument("--answer-delay-ms", type=float, default=20, help="the meters' reply delay")
    s.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="ADDRESS:FAULT",
        help=f"a meter that misbehaves: {', '.join(_FAULTS)}",
    )
    s.set_defaults(func=_simulate)
