"""What the driver families' installer commands share (``edge-agent scan …``, ``simulate …``):
the command groups several families add to, and the serial line arguments. Imports nothing but
argparse until a command runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agent.config.models import Bus

__all__ = [
    "ToolRunner",
    "group",
    "line_arguments",
    "parity",
    "run_locally",
    "run_tool",
    "serial_bus",
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
    if not agent:
        return
    where = parser.add_argument_group(
        "the running agent",
        "if an agent runs on this port, the tool goes through it (no need to stop it)",
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
