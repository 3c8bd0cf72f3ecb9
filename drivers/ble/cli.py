"""``edge-agent scan ble``: list what a Bluetooth adapter hears (:mod:`drivers.ble.tools`),
through the running agent when it uses the adapter. Building the parser imports nothing but
argparse."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from agent.driver.cli import ToolRunner, agent_arguments, group, run_locally, run_tool

if TYPE_CHECKING:
    from agent.config.models import Bus

__all__ = ["add_commands"]


def _bus(args: argparse.Namespace) -> Bus:
    from agent.config.models import BleBus, Bus  # noqa: PLC0415

    return Bus(id="cli", ble=BleBus(adapter=args.adapter))


def _scan(args: argparse.Namespace, runner: ToolRunner) -> int:
    result = run_tool(runner, "ble", "scan", _bus(args), {"seconds": args.seconds}, args)
    if result is None:
        return 2
    if "error" in result:
        print(f"{result['where']}: {result['error']}")
        return 2
    devices = result["devices"]
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0 if devices else 1
    if not devices:
        print(f"{result['where']}: nothing heard in {result['seconds']:g} s")
        return 1
    print(f"{'address':17s} {'rssi':>5s} {'adverts':>7s}  {'format':14s} enrol by / values")
    for d in devices:
        formats = ",".join(d["formats"]) or "-"
        where = f"{d['address']:17s} {d['best_rssi']:5d} {d['adverts']:7d}"
        print(f"{where}  {formats:14s} {d['enrol_by']}")
        if d["name"] or d["values"]:
            shown = ", ".join(f"{k} {v}" for k, v in d["values"].items())
            print(f"{'':17s} {'':5s} {'':7s}  {d['name'] or '':14s} {shown}")
    return 0


def add_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    runner: ToolRunner | None = None,
    command: Any = None,
) -> None:
    """Add ``scan ble`` to the ``edge-agent`` parser."""
    del command
    run = runner or run_locally
    scan = group(subparsers, "scan", "find the devices on a bus (installer tool)")
    p = scan.add_parser(
        "ble",
        help="list the BLE devices an adapter hears, to enrol tags",
        description="Listen for --seconds and list every address heard, strongest first: "
        "RSSI, adverts, the format the decoders recognised, the beacon identity and how to "
        "enrol it. If the agent uses the adapter, the scan goes through it (BlueZ serves both "
        "scanners). Exit codes: 0 heard something, 1 nothing, 2 the adapter cannot be used.",
    )
    p.add_argument("--adapter", default="hci0", help="the BlueZ adapter (default hci0)")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to listen (default 10)")
    p.add_argument("--json", action="store_true", help="the result as JSON on stdout")
    agent_arguments(p, "adapter")
    p.set_defaults(func=lambda args: _scan(args, run))
