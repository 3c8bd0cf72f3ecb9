"""Installer tools: ``edge-agent scan modbus`` and ``edge-agent read modbus``.

``agent/cli.py`` wires them with one call to :func:`add_commands` (found through the driver
registry), passing the runner that asks a running agent first: while the agent runs on the
port, the tools go through its control socket and take their turns between its polls; when it
does not, they open the port themselves. Building the parser imports nothing but argparse;
pymodbus is imported when a command runs. The work itself is in :mod:`drivers.modbus.tools`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from agent.driver.cli import (
    BAUDS,
    ToolRunner,
    agent_arguments,
    group,
    parity,
    run_locally,
    run_tool,
)
from drivers.modbus.codec import (
    DATA_TYPES,
    TABLES,
    WORD_ORDERS,
)

if TYPE_CHECKING:
    from agent.config.models import Bus

__all__ = ["add_commands", "parse_units"]


def parse_units(text: str) -> list[int]:
    """``1-247``, ``1,3,10-12``: the unit ids to try, in order, without repeats."""
    units: list[int] = []
    for part in text.split(","):
        low, sep, high = part.strip().partition("-")
        try:
            first = int(low, 0)
            last = int(high, 0) if sep else first
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a unit list: {text!r} (e.g. 1-247)") from None
        if not 0 <= first <= last <= 255:
            raise argparse.ArgumentTypeError(f"unit ids are 0-255 in ascending ranges: {part!r}")
        units += [u for u in range(first, last + 1) if u not in units]
    return units


def _line_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial port, e.g. /dev/serial/by-id/usb-FTDI_...")
    where.add_argument("--host", help="Modbus TCP device or RTU-over-TCP gateway")
    parser.add_argument(
        "--baud", type=int, choices=BAUDS, default=9600, metavar="BAUD", help="with --port"
    )
    parser.add_argument("--parity", type=parity, default="none", help="none, even or odd")
    parser.add_argument("--stop-bits", type=int, choices=(1, 2), default=1, help="with --port")
    parser.add_argument("--tcp-port", type=int, default=502, help="with --host (default 502)")
    parser.add_argument(
        "--framer",
        choices=("socket", "rtu"),
        default="socket",
        help="with --host: socket (Modbus TCP) or rtu (RTU over TCP gateway)",
    )
    agent_arguments(parser)


def add_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    runner: ToolRunner | None = None,
    command: Any = None,
) -> None:
    """Add ``scan modbus`` and ``read modbus`` to the ``edge-agent`` command line. Without a
    ``runner`` the tools always open the port themselves (:func:`run_locally`). Modbus has no
    command aliases (``command``: the core's way to run a device command through the agent)."""
    del command
    runner = runner or run_locally
    scan = group(subparsers, "scan", "find the devices on a bus (installer tool)")
    read = group(subparsers, "read", "one-off read of a device (commissioning)")

    p = scan.add_parser(
        "modbus",
        help="find the unit ids that answer on a Modbus line, and suggest a profile",
        description="Asks each unit id for one register with a short timeout; any answer, even "
        "a Modbus exception, means a device is there. If the agent runs on the port, the scan "
        "goes through it, between its polls. Exit codes: 0 found, 1 none found, 2 the bus "
        "cannot be used.",
    )
    _line_arguments(p)
    p.add_argument("--units", type=parse_units, default="1-247", help="e.g. 1-32 or 1,5,10-12")
    p.add_argument("--timeout", type=float, default=0.2, help="seconds per unit (default 0.2)")
    p.add_argument("--no-profiles", action="store_true", help="do not try the built-in profiles")
    p.add_argument("--json", action="store_true", help="the result as JSON on stdout")
    p.set_defaults(func=lambda args: _scan(args, runner))

    r = read.add_parser(
        "modbus",
        help="read a profile or one register of a device and print typed values",
        description="Read every point of a profile, or one register, and print typed values. "
        "If the agent runs on the port, the read goes through it. Examples: --port /dev/ttyUSB0 "
        "--unit 1 --profile chint-ddsu666; --host 192.168.1.50 --unit 1 --table input "
        "--address 0 --type float32. Exit codes: 0 read, 1 the device did not answer or the "
        "read failed, 2 the bus cannot be used or the arguments do not fit.",
    )
    _line_arguments(r)
    r.add_argument("--unit", type=int, required=True, help="the device's unit id")
    r.add_argument("--profile", help="a built-in profile: every point of it is read")
    r.add_argument("--table", choices=TABLES, default="holding", help="with --address")
    r.add_argument("--address", type=lambda s: int(s, 0), help="zero-based address (0x2000 ok)")
    r.add_argument("--type", default="uint16", choices=DATA_TYPES, help="with --address")
    r.add_argument("--word-order", choices=WORD_ORDERS, help="32/64-bit types (default: ABCD)")
    r.add_argument("--length", type=int, help="registers of a string")
    r.add_argument("--bit", type=int, help="bit of a bit point (0-15)")
    r.add_argument("--scale", type=float, help="multiply the raw value")
    r.add_argument("--timeout", type=float, default=1.0, help="seconds per request (default 1)")
    r.add_argument("--retries", type=int, default=1, help="tries after the first")
    r.add_argument("--json", action="store_true", help="readings as JSON lines")
    r.set_defaults(func=lambda args: _read(args, runner))


# --- shared ---------------------------------------------------------------------------------------


def _bus(args: argparse.Namespace) -> Bus:
    from agent.config.models import Bus, SerialBus, TcpBus  # noqa: PLC0415

    if args.port:
        serial = SerialBus(
            port=args.port, baud=args.baud, parity=args.parity, stop_bits=args.stop_bits
        )
        return Bus(id="cli", serial=serial)
    return Bus(id="cli", tcp=TcpBus(host=args.host, port=args.tcp_port, framer=args.framer))


# --- scan -----------------------------------------------------------------------------------------

_HINTS = {
    "garbage": "bytes that form no frame: wrong baud rate or parity, or A/B swapped?",
    "crc_error": "frames with bad CRCs: noise, missing termination or bias?",
    "wrong_unit": "replies from other unit ids: a device answering every address?",
    "short_reply": "replies cut short: baud rate too high for the line?",
}


def _scan(args: argparse.Namespace, runner: ToolRunner) -> int:
    bus = _bus(args)
    options = {"units": args.units, "timeout_s": args.timeout, "profiles": not args.no_profiles}
    where = args.port or f"{args.host}:{args.tcp_port}"
    if sys.stderr.isatty():
        print(f"{where}: asking {len(args.units)} unit id(s)...", file=sys.stderr, flush=True)
    result = run_tool(runner, "modbus", "scan", bus, options, args)
    if result is None:
        return 2
    if "error" in result:
        print(f"{result['where']}: {result['error']}", file=sys.stderr)
        return 2
    units = result["units"]
    for found in units:
        print(
            f"{result['where']}: unit {found['unit']} answers ({found['answer']})", file=sys.stderr
        )
    if args.json:
        print(
            json.dumps(
                {
                    "where": result["where"],
                    "units": [
                        {
                            "unit": u["unit"],
                            "answer": u["answer"],
                            "profiles": [name for name, _ in u["profiles"]],
                        }
                        for u in units
                    ],
                    "line_problems": result["line_problems"],
                }
            )
        )
        return 0 if units else 1
    if not units:
        print(f"{result['where']}: no unit answered ({result['tried']} tried)")
    for found in units:
        detail = found["answer"]
        answer = "answers" if detail == "ok" else f"answers with {detail}"
        hint = "; ".join(f"profile {name} ({why})" for name, why in found["profiles"])
        print(f"unit {found['unit']}: {answer}" + (f"; looks like {hint}" if hint else ""))
    for reason, count in sorted(result["line_problems"].items()):
        print(f"{count} unit(s) gave {reason}: {_HINTS.get(reason, '')}")
    return 0 if units else 1


# --- read -----------------------------------------------------------------------------------------


def _read(args: argparse.Namespace, runner: ToolRunner) -> int:
    bus = _bus(args)
    device: dict[str, Any] = {"unit": args.unit, "timeout_s": args.timeout, "retries": args.retries}
    if args.profile:
        device["profile"] = args.profile
    if args.address is not None:
        point: dict[str, Any] = {
            "name": "value",
            "table": args.table,
            "address": args.address,
            "type": "bool" if args.table in ("coil", "discrete") else args.type,
        }
        for key in ("word_order", "length", "bit", "scale"):
            if getattr(args, key) is not None:
                point[key] = getattr(args, key)
        device["points"] = [point]
    elif not args.profile:
        print("give --profile or --address", file=sys.stderr)
        return 2
    result = run_tool(runner, "modbus", "read", bus, {"device": device}, args)
    if result is None:
        return 2
    if "config_errors" in result:
        for error in result["config_errors"]:
            print(error, file=sys.stderr)
        return 2
    if "error" in result:
        print(
            f"unit {args.unit}: {result['error']['reason']}: {result['error']['message']}",
            file=sys.stderr,
        )
        return 1
    for reading in result["readings"]:
        if args.json:
            print(json.dumps(reading, ensure_ascii=False))
        else:
            value = "-" if reading["value"] is None else reading["value"]
            unit = reading["unit"] or ""
            quality = "" if reading["reason"] is None else f"  ({reading['reason']})"
            print(f"{reading['point']:28s} {value!s:>14} {unit}{quality}")
    return 0
