"""Installer tools of the driver families, from the command line: through the agent when it runs.

An RS-485 line has one master. While the agent runs on a port, ``edge-agent scan modbus --port
…`` must not open it a second time: :func:`agent_runner` asks the agent's control socket to run
the driver's bus tool on its own line, where the tool's transactions take their turns (at
test-read priority) between the agent's polls. When no agent answers, or the agent does not use
that bus, the tool opens the port itself. The agent's side of it is :func:`run_on_own_bus`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from agent.driver import CommandError

if TYPE_CHECKING:
    import structlog

    from agent.bus import BusHandle
    from agent.config.models import Bus

__all__ = ["DEFAULT_CONFIG", "agent_command", "agent_runner", "run_on_own_bus"]

DEFAULT_CONFIG: Final = Path("/etc/edge-agent/agent.yaml")
"""Where the package and the systemd unit keep the config: every command's ``--config`` default."""
_TOOL_TIMEOUT_S: Final = 900.0


def _control_socket(args: argparse.Namespace) -> Path | None:
    if getattr(args, "socket", None):
        return Path(args.socket)
    config = Path(args.config) if getattr(args, "config", None) else DEFAULT_CONFIG
    if not config.exists():
        return None
    from agent.config.errors import ConfigError  # noqa: PLC0415
    from agent.config.loader import load_config  # noqa: PLC0415
    from agent.runtime import Runtime  # noqa: PLC0415

    try:
        return Runtime.control_path(load_config(config))
    except ConfigError as exc:
        print(
            f"{config}: not valid ({len(exc.issues)} error(s)); not asking the agent",
            file=sys.stderr,
        )
        return None


def _ask_agent(path: Path, request: Mapping[str, Any]) -> dict[str, Any] | None:
    from agent.control import send_request  # noqa: PLC0415

    try:
        answer = asyncio.run(send_request(path, request, timeout_s=_TOOL_TIMEOUT_S))
    except (OSError, TimeoutError):
        return None  # no agent behind the socket
    return answer if isinstance(answer, dict) else None


def agent_runner(
    driver: str, tool: str, bus: Bus, options: dict[str, Any], args: argparse.Namespace
) -> Mapping[str, Any]:
    """Run the tool through the running agent if it uses ``bus``, else locally."""
    path = _control_socket(args)
    if path is not None and path.exists():
        request = {
            "op": "tool",
            "driver": driver,
            "tool": tool,
            "bus": bus.model_dump(mode="json", exclude={"id"}, exclude_none=True),
            "options": options,
        }
        answer = _ask_agent(path, request)
        if answer is not None:
            if answer.get("status") == "ok":
                print(f"(through the running agent, {path})", file=sys.stderr)
                result: Mapping[str, Any] = answer["result"]
                return result
            if answer.get("reason") != "not_my_bus":
                raise CommandError(str(answer.get("reason")), str(answer.get("error")))
    from agent.driver.testing import run_tool_locally  # noqa: PLC0415

    return run_tool_locally(driver, tool, bus, options)


def agent_command(
    device: str, action: str, args: Mapping[str, Any], ns: argparse.Namespace
) -> Mapping[str, Any]:
    """Run a device command through the running agent (its control socket, found from
    ``--config``/``--socket`` in ``ns``), audited like any other; the agent's answer. Raises
    :class:`CommandError` (``no_agent``) when no agent answers: a family's command aliases
    (``edge-agent osdp install-key``) never act on the line behind the agent's back."""
    path = _control_socket(ns)
    answer = None
    if path is not None and path.exists():
        answer = _ask_agent(path, {"device": device, "action": action, "args": dict(args)})
    if answer is None:
        raise CommandError("no_agent", f"no agent answers at {path or DEFAULT_CONFIG}")
    return answer


async def run_on_own_bus(
    buses: Sequence[Bus],
    handle: Callable[[Bus], BusHandle],
    driver: str,
    tool: str,
    bus: Mapping[str, Any],
    options: Mapping[str, Any],
    *,
    log: structlog.typing.FilteringBoundLogger,
) -> Mapping[str, Any]:
    """Run a driver's bus tool (``scan``, ``read``) on the agent's own bus, at test-read
    priority, for an installer whose port the agent holds. ``bus`` is the line the tool was
    pointed at: ``{"serial": {"port", "baud", ...}}`` or ``{"tcp": {"host", "port", ...}}``;
    ``buses`` are the agent's and ``handle`` gives the open line of one. Raises
    ``CommandError('not_my_bus')`` when the agent does not use it (the tool then opens the port
    itself) and ``'settings_differ'`` when it runs that line differently."""
    from agent.bus import Priority, priority  # noqa: PLC0415
    from drivers import DRIVERS, bus_tool  # noqa: PLC0415

    if driver not in DRIVERS:
        raise CommandError("unknown_driver", f"no driver {driver!r}")
    own = _own_bus(buses, bus)
    try:
        run = bus_tool(driver, tool)
    except (KeyError, ImportError) as exc:
        raise CommandError("unknown_tool", str(exc)) from None
    log.info("tool.run", driver=driver, tool=tool, bus=own.id)
    with priority(Priority.TEST_READ):
        return await run(handle(own), options)


def _own_bus(buses: Sequence[Bus], wanted: Mapping[str, Any]) -> Bus:
    serial, tcp, ble = wanted.get("serial"), wanted.get("tcp"), wanted.get("ble")
    for bus in buses:
        if bus.serial is not None and isinstance(serial, Mapping):
            if os.path.realpath(bus.serial.port) != os.path.realpath(str(serial.get("port"))):
                continue
            theirs = {k: serial[k] for k in ("baud", "parity", "stop_bits") if k in serial}
            ours = {k: getattr(bus.serial, k) for k in theirs}
            if theirs != ours:
                raise CommandError(
                    "settings_differ",
                    f"the agent runs {bus.serial.port} (bus {bus.id!r}) with {ours}, "
                    f"not {theirs}: use the agent's settings, or change the config",
                )
            return bus
        if (
            bus.tcp is not None
            and isinstance(tcp, Mapping)
            and (bus.tcp.host, bus.tcp.port) == (tcp.get("host"), tcp.get("port"))
        ):
            return bus
        if (
            bus.ble is not None
            and isinstance(ble, Mapping)
            and bus.ble.adapter == ble.get("adapter")
        ):
            return bus
    raise CommandError("not_my_bus", "the agent does not use that bus")
