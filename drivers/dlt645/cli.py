"""``edge-agent scan dlt645`` and ``edge-agent simulate dlt645``.

``scan`` finds the meters on a line (:mod:`drivers.dlt645.tools`), through the running agent
when it holds the port. ``simulate`` answers as one or more meters on a serial port or a pty
(``socat pty,raw,echo=0,link=/tmp/a pty,raw,echo=0,link=/tmp/b``), for trying a line, the
agent's config and the scan without meters. Building the parser imports nothing but argparse.
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

_FAULTS = ("silent", "garbage", "checksum", "truncated", "no_blocks")


def _simulate(args: argparse.Namespace) -> int:
    from drivers.dlt645.simulator import SimulatedMeter  # noqa: PLC0415

    meters = [
        SimulatedMeter(
            address=address,
            version=args.version,
            phases=args.phases,
            faults=faults,
            answer_delay_s=args.answer_delay_ms / 1000,
        )
        for address, faults in simulated_addresses(args)
    ]
    what = f"{len(meters)} simulated DL/T 645-{args.version} meter(s)"
    code = serve_simulated(args, meters, f"{what}: {', '.join(m.address for m in meters)}")
    if code == 0:
        print(f"{sum(m.frames_answered for m in meters)} frame(s) answered")
    return code


def _describe(meter: Mapping[str, Any]) -> str:
    energy = meter.get("energy_import_kwh")
    detail = f"{energy} kWh" if energy is not None else meter.get("confirm_error", "")
    return f"({meter['found_by']})  {detail}"


def _scan(args: argparse.Namespace, runner: ToolRunner) -> int:
    options = {"version": args.version, "timeout_s": args.timeout, "search": args.search}
    return scan_line(runner, "dlt645", options, args, _describe)


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
    simulate_arguments(s, digits=12, faults=_FAULTS, answer_delay_ms=20)
    s.add_argument("--version", type=int, choices=(2007, 1997), default=2007, help="default 2007")
    s.add_argument("--phases", type=int, choices=(1, 3), default=1, help="default 1")
    s.set_defaults(func=_simulate)
