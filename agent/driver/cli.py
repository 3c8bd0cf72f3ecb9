"""What the driver families' installer commands share (``edge-agent scan …``, ``simulate …``):
the command groups several families add to, the serial line arguments, a simulator's addresses
and faults and its port, and the way a line scan is printed. Imports nothing but argparse until
a command runs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agent.config.models import Bus
    from agent.driver.simulation import LineDevice

__all__ = [
    "ToolRunner",
    "agent_arguments",
    "group",
    "line_arguments",
    "parity",
    "run_locally",
    "run_tool",
    "scan_line",
    "serial_bus",
    "serve_simulated",
    "simulate_arguments",
    "simulated_addresses",
]

BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
_PARITY = {"none": "none", "n": "none", "even": "even", "e": "even", "odd": "odd", "o": "odd"}


class ToolRunner(Protocol):
    """Runs ``driver``'s bus tool on ``bus``: through the running agent or locally. Raises
    :class:`agent.driver.CommandError` when it cannot (``settings_differ``, ``no_port``...)."""

    def __call__(
        self, driver: str, tool: str, bus: Bus, options: dict[str, Any], args: argparse.Namespace
    ) -> Mapping[str, Any]: ...


def group(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """The ``scan``/``simulate``/``read`` command's own sub-commands, made by the first family
    that needs them and shared with the others."""
    parser = subparsers.choices.get(name)
    if parser is None:
        parser = subparsers.add_parser(name, help=text, description=text)
        return parser.add_subparsers(dest=f"{name}_protocol", required=True, metavar="PROTOCOL")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise ValueError(f"the {name!r} command has no protocol sub-commands")


def parity(text: str) -> str:
    try:
        return _PARITY[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError("parity is none, even or odd (or N, E, O)") from None


def line_arguments(
    parser: argparse.ArgumentParser, *, baud: int, parity_default: str, agent: bool = True
) -> None:
    """``--port --baud --parity --stop-bits`` and, for tools that may run through the agent,
    ``--config``/``--socket``."""
    parser.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0")
    parser.add_argument(
        "--baud", type=int, choices=BAUDS, default=baud, metavar="BAUD", help=f"default {baud}"
    )
    parser.add_argument(
        "--parity", type=parity, default=parity_default, help=f"default {parity_default}"
    )
    parser.add_argument("--stop-bits", type=int, choices=(1, 2), default=1, help="default 1")
    if agent:
        agent_arguments(parser)


def agent_arguments(parser: argparse.ArgumentParser, what: str = "port") -> None:
    """``--config``/``--socket``: the running agent a tool goes through when it uses the same
    ``what`` (port, adapter)."""
    where = parser.add_argument_group(
        "the running agent",
        f"if an agent runs on this {what}, the tool goes through it (no need to stop it)",
    )
    where.add_argument(
        "--config",
        metavar="PATH",
        help="the agent's config, to find its control socket "
        "(default: /etc/edge-agent/agent.yaml when present)",
    )
    where.add_argument("--socket", help="the agent's control socket itself")


def serial_bus(args: argparse.Namespace) -> Bus:
    from agent.config.models import Bus, SerialBus  # noqa: PLC0415

    serial = SerialBus(port=args.port, baud=args.baud, parity=args.parity, stop_bits=args.stop_bits)
    return Bus(id="cli", serial=serial)


def run_tool(
    runner: ToolRunner,
    driver: str,
    tool: str,
    bus: Bus,
    options: dict[str, Any],
    args: argparse.Namespace,
) -> Mapping[str, Any] | None:
    """Run the tool, printing why it could not run (None then)."""
    from agent.driver import CommandError  # noqa: PLC0415
    from agent.driver.testing import quiet_logs  # noqa: PLC0415

    # The tools print their own results; the driver's log lines would only interleave.
    quiet_logs()
    try:
        return runner(driver, tool, bus, options, args)
    except ImportError as exc:
        print(f"{exc}", file=sys.stderr)
    except CommandError as exc:
        print(f"{exc.reason}: {exc}", file=sys.stderr)
    return None


def run_locally(
    driver: str, tool: str, bus: Bus, options: dict[str, Any], args: argparse.Namespace
) -> Mapping[str, Any]:
    """Open the bus here and run the tool on it (no agent to ask)."""
    del args
    from agent.driver.testing import run_tool_locally  # noqa: PLC0415

    return run_tool_locally(driver, tool, bus, options)


# ---------------------------------------------------------------------- simulators


def _address_type(digits: int) -> Callable[[str], str]:
    def address(text: str) -> str:
        number = text.strip()
        if not number.isdigit() or not number.isascii() or len(number) > digits:
            raise argparse.ArgumentTypeError(f"an address is up to {digits} digits: {text!r}")
        return number.rjust(digits, "0")

    return address


def simulate_arguments(
    parser: argparse.ArgumentParser,
    *,
    digits: int,
    faults: Sequence[str],
    answer_delay_ms: float,
) -> Callable[[str], str]:
    """``--address`` (repeatable) ``--meters --answer-delay-ms --fault ADDRESS:FAULT`` for a
    simulator of meters with ``digits``-digit addresses; returns the address parser for the
    family's own per-meter options."""
    address = _address_type(digits)

    def fault(text: str) -> tuple[str, str]:
        where, sep, what = text.partition(":")
        if not sep or what not in faults:
            raise argparse.ArgumentTypeError(
                f"ADDRESS:FAULT with FAULT one of {', '.join(faults)}: {text!r}"
            )
        return address(where), what

    parser.add_argument(
        "--address",
        type=address,
        action="append",
        required=True,
        help="a meter's address (repeat for several)",
    )
    parser.add_argument("--meters", type=int, default=1, help="this many, numbered from the first")
    parser.add_argument(
        "--answer-delay-ms",
        type=float,
        default=answer_delay_ms,
        help=f"the meters' reply delay (default {answer_delay_ms:g})",
    )
    parser.add_argument(
        "--fault",
        type=fault,
        action="append",
        default=[],
        metavar="ADDRESS:FAULT",
        help=f"a meter that misbehaves: {', '.join(faults)}",
    )
    return address


def simulated_addresses(args: argparse.Namespace) -> list[tuple[str, set[Any]]]:
    """The simulated meters' addresses (those given, then numbered on from the first up to
    ``--meters``), each with its faults."""
    given: list[str] = list(args.address)
    digits = len(given[0])
    first = int(given[0])
    addresses = given + [
        str(first + n).rjust(digits, "0") for n in range(1, args.meters - len(given) + 1)
    ]
    faults: dict[str, set[Any]] = {}
    for address, fault in args.fault:
        faults.setdefault(address, set()).add(fault)
    return [(a, faults.get(a, set())) for a in addresses]


def serve_simulated(args: argparse.Namespace, devices: Sequence[LineDevice], what: str) -> int:
    """Answer as ``devices`` on ``--port`` until Ctrl-C, replies taking their wire time at
    ``--baud``. 0 when stopped, 2 if the port cannot be opened."""
    import asyncio  # noqa: PLC0415

    import serial  # noqa: PLC0415

    from agent.driver.simulation import serve_line  # noqa: PLC0415

    parity = {"none": "N", "even": "E", "odd": "O"}[args.parity]
    try:
        port = serial.Serial(args.port, args.baud, parity=parity, stopbits=args.stop_bits)
    except (OSError, serial.SerialException) as exc:
        print(f"cannot open {args.port}: {exc}", file=sys.stderr)
        return 2
    bits = 9 + (args.parity != "none") + args.stop_bits  # start, 8 data, parity, stop
    print(f"{what} on {args.port}; Ctrl-C stops", flush=True)
    try:
        asyncio.run(serve_line(port.fileno(), devices, char_s=bits / args.baud))
    except KeyboardInterrupt:
        pass
    finally:
        port.close()
    return 0


# ---------------------------------------------------------------------- scans


def scan_line(
    runner: ToolRunner,
    driver: str,
    options: dict[str, Any],
    args: argparse.Namespace,
    describe: Callable[[Mapping[str, Any]], str],
) -> int:
    """Run a meter family's line scan (``--search`` or the wildcard) and print what it found,
    a line per meter with ``describe(meter)``; ``--json`` prints the result instead. Exit
    codes: 0 found, 1 none found, 2 the line cannot be used."""
    if sys.stderr.isatty():
        how = "searching" if args.search else "asking the wildcard address"
        print(f"{args.port}: {how}...", file=sys.stderr, flush=True)
    result = run_tool(runner, driver, "scan", serial_bus(args), options, args)
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
        print(f"meter {meter['address']}  {describe(meter)}".rstrip())
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
