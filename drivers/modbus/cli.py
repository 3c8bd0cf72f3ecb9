"""Installer tools: ``edge-agent scan modbus`` and ``edge-agent read modbus``.

``agent/cli.py`` wires them with one call to :func:`add_commands`. Building the parser imports
nothing but argparse; pymodbus is imported when a command runs. Both commands open the bus
themselves: stop the agent first if it uses the same serial port (one master per RS-485 line).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from drivers.modbus.codec import (
    DATA_TYPES,
    TABLES,
    WORD_ORDERS,
    exception_reason,
    reply_length,
)

if TYPE_CHECKING:
    from agent.config.models import Bus
    from drivers.modbus.link import ModbusLink

__all__ = ["add_commands", "parse_units"]

_BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
_PARITY = {"none": "none", "n": "none", "even": "even", "e": "even", "odd": "odd", "o": "odd"}


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


def _parity(text: str) -> str:
    try:
        return _PARITY[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError("parity is none, even or odd (or N, E, O)") from None


def _protocols(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """The ``scan``/``read`` command's own sub-commands, shared with other drivers' tools."""
    parser = subparsers.choices.get(name)
    if parser is None:
        parser = subparsers.add_parser(name, help=text, description=text)
        return parser.add_subparsers(dest=f"{name}_protocol", required=True, metavar="PROTOCOL")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise ValueError(f"the {name!r} command has no protocol sub-commands")


def _line_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial port, e.g. /dev/serial/by-id/usb-FTDI_...")
    where.add_argument("--host", help="Modbus TCP device or RTU-over-TCP gateway")
    parser.add_argument("--baud", type=int, choices=_BAUDS, default=9600, metavar="BAUD")
    parser.add_argument("--parity", type=_parity, default="none", help="none, even or odd")
    parser.add_argument("--stop-bits", type=int, choices=(1, 2), default=1)
    parser.add_argument("--tcp-port", type=int, default=502, help="with --host (default 502)")
    parser.add_argument(
        "--framer",
        choices=("socket", "rtu"),
        default="socket",
        help="with --host: socket (Modbus TCP) or rtu (RTU over TCP gateway)",
    )


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``scan modbus`` and ``read modbus`` to the ``edge-agent`` command line."""
    scan = _protocols(subparsers, "scan", "find the devices on a bus (installer tool)")
    read = _protocols(subparsers, "read", "one-off read of a device (commissioning)")

    p = scan.add_parser(
        "modbus",
        help="find the unit ids that answer on a Modbus line, and suggest a profile",
        description="Asks each unit id for one register with a short timeout; any answer, even "
        "a Modbus exception, means a device is there. Stop the agent first if it uses the port.",
    )
    _line_arguments(p)
    p.add_argument("--units", type=parse_units, default=parse_units("1-247"), help="e.g. 1-32")
    p.add_argument("--timeout", type=float, default=0.2, help="seconds per unit (default 0.2)")
    p.add_argument("--no-profiles", action="store_true", help="do not try the built-in profiles")
    p.add_argument("--json", action="store_true", help="the result as JSON on stdout")
    p.set_defaults(func=_scan)

    r = read.add_parser(
        "modbus",
        help="read a profile or one register of a device and print typed values",
        description="Examples: --port /dev/ttyUSB0 --unit 1 --profile chint-ddsu666; "
        "--host 192.168.1.50 --unit 1 --table input --address 0 --type float32",
    )
    _line_arguments(r)
    r.add_argument("--unit", type=int, required=True, help="the device's unit id")
    r.add_argument("--profile", help="a built-in profile: every point of it is read")
    r.add_argument("--table", choices=TABLES, default="holding")
    r.add_argument("--address", type=lambda s: int(s, 0), help="zero-based address (0x2000 ok)")
    r.add_argument("--type", default="uint16", choices=DATA_TYPES)
    r.add_argument("--word-order", choices=WORD_ORDERS)
    r.add_argument("--length", type=int, help="registers of a string")
    r.add_argument("--bit", type=int, help="bit of a bit point (0-15)")
    r.add_argument("--scale", type=float)
    r.add_argument("--timeout", type=float, default=1.0, help="seconds per request (default 1)")
    r.add_argument("--retries", type=int, default=1)
    r.add_argument("--json", action="store_true", help="readings as JSON lines")
    r.set_defaults(func=_read)


# --- shared ---------------------------------------------------------------------------------------


def _bus(args: argparse.Namespace) -> Bus:
    from agent.config.models import Bus, SerialBus, TcpBus  # noqa: PLC0415

    if args.port:
        serial = SerialBus(
            port=args.port, baud=args.baud, parity=args.parity, stop_bits=args.stop_bits
        )
        return Bus(id="cli", serial=serial)
    return Bus(id="cli", tcp=TcpBus(host=args.host, port=args.tcp_port, framer=args.framer))


def _config(bus: Bus) -> Any:
    from agent.config.models import AgentConfig, Community, Gateway  # noqa: PLC0415

    return AgentConfig(
        gateway=Gateway(id="cli", community=Community(code="000000000000")), buses=[bus]
    )


def _context(device: Any, bus: Bus, err: TextIO) -> Any:
    from agent.driver import DriverContext  # noqa: PLC0415
    from agent.logs import get_logger  # noqa: PLC0415
    from agent.records import now_ms  # noqa: PLC0415

    shared: dict[str, Any] = {}

    async def sink(records: Sequence[Any]) -> None:
        for record in records:
            print(f"  [{record.type}] {record.data.get('error', '')}", file=err)

    async def share(key: str, factory: Any) -> Any:
        if key not in shared:
            shared[key] = await factory()
        return shared[key]

    return DriverContext(
        device=device,
        bus=bus,
        config=_config(bus),
        sink=sink,
        stamp=lambda: (now_ms(), True),
        log=get_logger(tool="modbus"),
        shared=share,
    )


def _quiet_logs() -> None:
    from agent.logs import configure_logging  # noqa: PLC0415

    # The tools print their own results; the driver's log lines would only interleave.
    configure_logging("error", "console", sys.stderr)


# --- scan -----------------------------------------------------------------------------------------


async def _probe_unit(link: ModbusLink, unit: int, timeout_s: float) -> tuple[bool, str]:
    from drivers.modbus.link import LinkError  # noqa: PLC0415

    try:
        reply = await link.call(
            lambda c: c.read_holding_registers(0, count=1, device_id=unit),
            unit=unit,
            function=3,
            expected=reply_length(3, 1),
            timeout_s=timeout_s,
            retries=0,
        )
    except LinkError as exc:
        return False, exc.reason
    if reply.isError():
        return True, exception_reason(int(reply.exception_code))
    return True, "ok"


async def _suggest(
    link: ModbusLink, bus: Bus, unit: int, timeout_s: float
) -> list[tuple[str, str]]:
    """Profiles whose probe point reads a plausible value from ``unit``."""
    from agent.driver import DeviceError  # noqa: PLC0415
    from agent.records import Reading  # noqa: PLC0415
    from drivers.modbus.config import ModbusDevice, load_profile, profile_names  # noqa: PLC0415
    from drivers.modbus.driver import ModbusDriver  # noqa: PLC0415
    from drivers.modbus.link import BusSlot  # noqa: PLC0415

    found: list[tuple[str, str]] = []
    for name in profile_names():
        profile = load_profile(name)
        probe = profile.probe
        if probe is None:
            continue
        # The profile with every point but the probe switched off: one short request.
        others = [{"name": p.name, "enabled": False} for p in profile.points]
        device = ModbusDevice.model_validate(
            {
                "id": "scan",
                "driver": "modbus",
                "bus": bus.id,
                "unit": unit,
                "profile": name,
                "points": [o for o in others if o["name"] != probe.point],
                "timeout_s": max(timeout_s, 0.3),
            }
        )
        ctx = _context(device, bus, sys.stderr)
        slot = BusSlot()
        slot.link = link
        await ctx.shared(f"modbus:{bus.id}", _constant(slot))
        driver = ModbusDriver(device, ctx)
        try:
            readings = [r for r in await driver.read() if isinstance(r, Reading)]
        except DeviceError:
            continue
        value = readings[0].value if readings else None
        if isinstance(value, int | float) and probe.min <= value <= probe.max:
            unit_text = f" {readings[0].unit}" if readings[0].unit else ""
            found.append((name, f"{probe.point} {value}{unit_text}"))
    return found


def _constant(value: Any) -> Any:
    async def factory() -> Any:
        return value

    return factory


def _scan(args: argparse.Namespace) -> int:
    try:
        from drivers.modbus.link import ModbusLink  # noqa: PLC0415
    except ImportError as exc:
        print(f"{exc}: install community-edge-agent[modbus]", file=sys.stderr)
        return 1
    _quiet_logs()
    bus = _bus(args)
    err: TextIO = sys.stderr
    tty = err.isatty()

    async def run() -> int:
        from agent.logs import get_logger  # noqa: PLC0415
        from agent.records import now_ms  # noqa: PLC0415

        async def sink(records: Sequence[Any]) -> None:
            del records

        link = ModbusLink(
            bus, emit=sink, stamp=lambda: (now_ms(), True), log=get_logger(), source="cli"
        )
        found: dict[int, str] = {}
        noise: dict[str, int] = {}
        where = link.where
        try:
            total = len(args.units)
            for n, unit in enumerate(args.units, 1):
                if tty:
                    listed = ", ".join(map(str, found)) or "none yet"
                    print(
                        f"\r{where}: unit {unit:3d} ({n}/{total}), found: {listed}  ",
                        end="",
                        file=err,
                        flush=True,
                    )
                present, detail = await _probe_unit(link, unit, args.timeout)
                if present:
                    found[unit] = detail
                    if not tty:
                        print(f"{where}: unit {unit} answers ({detail})", file=err, flush=True)
                elif detail in ("no_port", "io_error"):
                    print(f"\n{where}: {link.down_error}", file=err)
                    return 2
                elif detail != "timeout":
                    noise[detail] = noise.get(detail, 0) + 1
            if tty:
                print(file=err)
            suggestions: dict[int, list[tuple[str, str]]] = {}
            if not args.no_profiles:
                for unit in found:
                    suggestions[unit] = await _suggest(link, bus, unit, args.timeout)
        finally:
            await link.aclose()
        _report(found, suggestions, noise, args, where)
        return 0 if found else 1

    return asyncio.run(run())


def _report(
    found: dict[int, str],
    suggestions: dict[int, list[tuple[str, str]]],
    noise: dict[str, int],
    args: argparse.Namespace,
    where: str,
) -> None:
    if args.json:
        print(
            json.dumps(
                {
                    "where": where,
                    "units": [
                        {
                            "unit": unit,
                            "answer": detail,
                            "profiles": [name for name, _ in suggestions.get(unit, [])],
                        }
                        for unit, detail in found.items()
                    ],
                    "line_problems": noise,
                }
            )
        )
        return
    if not found:
        print(f"{where}: no unit answered ({len(args.units)} tried)")
    for unit, detail in found.items():
        answer = "answers" if detail == "ok" else f"answers with {detail}"
        matches = suggestions.get(unit, [])
        hint = "; ".join(f"profile {name} ({why})" for name, why in matches)
        print(f"unit {unit}: {answer}" + (f"; looks like {hint}" if hint else ""))
    hints = {
        "garbage": "bytes that form no frame: wrong baud rate or parity, or A/B swapped?",
        "crc_error": "frames with bad CRCs: noise, missing termination or bias?",
        "wrong_unit": "replies from other unit ids: a device answering every address?",
        "short_reply": "replies cut short: baud rate too high for the line?",
    }
    for reason, count in sorted(noise.items()):
        print(f"{count} unit(s) gave {reason}: {hints.get(reason, '')}")


# --- read -----------------------------------------------------------------------------------------


def _read(args: argparse.Namespace) -> int:
    try:
        from drivers.modbus.driver import ModbusDriver, shared_link  # noqa: PLC0415
    except ImportError as exc:
        print(f"{exc}: install community-edge-agent[modbus]", file=sys.stderr)
        return 1
    from pydantic import ValidationError  # noqa: PLC0415

    from agent.driver import DeviceError  # noqa: PLC0415
    from agent.records import Reading  # noqa: PLC0415
    from drivers.modbus.config import ModbusDevice  # noqa: PLC0415

    _quiet_logs()
    bus = _bus(args)
    raw: dict[str, Any] = {
        "id": "cli",
        "driver": "modbus",
        "bus": bus.id,
        "unit": args.unit,
        "timeout_s": args.timeout,
        "retries": args.retries,
    }
    if args.profile:
        raw["profile"] = args.profile
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
        raw["points"] = [point]
    elif not args.profile:
        print("give --profile or --address", file=sys.stderr)
        return 2
    try:
        device = ModbusDevice.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            where = ".".join(str(p) for p in error["loc"])
            print(f"{where}: {error['msg']}", file=sys.stderr)
        return 2

    async def run() -> int:
        ctx = _context(device, bus, sys.stderr)
        driver = ModbusDriver(device, ctx)
        try:
            await driver.start()
            readings = [r for r in await driver.read() if isinstance(r, Reading)]
        except DeviceError as exc:
            print(f"unit {args.unit}: {exc.reason}: {exc}", file=sys.stderr)
            return 1
        finally:
            link = await shared_link(ctx)
            await link.aclose()
        for reading in readings:
            if args.json:
                print(
                    json.dumps(
                        {
                            "point": reading.point,
                            "value": reading.value,
                            "unit": reading.unit,
                            "quality": reading.quality.value,
                            "reason": reading.reason,
                        },
                        ensure_ascii=False,
                    )
                )
            else:
                value = "-" if reading.value is None else reading.value
                unit = reading.unit or ""
                quality = "" if reading.reason is None else f"  ({reading.reason})"
                print(f"{reading.point:28s} {value!s:>14} {unit}{quality}")
        return 0

    return asyncio.run(run())
