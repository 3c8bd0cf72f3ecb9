"""``edge-agent simulate osdp``: a simulated reader with a door on a serial port (or a pty).

For trying a line, the agent's config and the platform's door commands without a reader: point
the simulator at one end of a pty pair (``socat pty,raw,echo=0,link=/tmp/a
pty,raw,echo=0,link=/tmp/b``) or at a USB RS-485 adapter wired to the gateway's, and the agent's
``osdp`` device at the other. Building the parser imports nothing but argparse.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_commands"]


def _simulate(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    import serial  # noqa: PLC0415

    from agent.driver.keys import KeyFileError, read_key  # noqa: PLC0415
    from drivers.osdp.simulator import SimulatedReader  # noqa: PLC0415

    key = None
    if args.key_file:
        try:
            key = read_key(Path(args.key_file))
        except KeyFileError as exc:
            print(f"cannot read the key: {exc}", file=sys.stderr)
            return 2
    try:
        port = serial.Serial(args.port, args.baud)
    except (OSError, serial.SerialException) as exc:
        print(f"cannot open {args.port}: {exc}", file=sys.stderr)
        return 2
    reader = SimulatedReader(address=args.address, key=key, card_every_s=args.card_every_s)
    mode = "secure channel" if key else "plain text"
    print(f"simulated reader at address {args.address} on {args.port} ({mode}); Ctrl-C stops it")
    try:
        asyncio.run(reader.serve(port.fileno()))
    except KeyboardInterrupt:
        pass
    finally:
        port.close()
    print(
        f"{reader.cards_presented} card(s) presented, "
        f"the strike released {reader.outputs_on} time(s)"
    )
    return 0


def _install_key(args: argparse.Namespace, command: Any) -> int:
    import json  # noqa: PLC0415

    from agent.driver import CommandError  # noqa: PLC0415

    try:
        answer = command(
            args.device, "reader.install_key", {"install_mode": args.install_mode}, args
        )
    except CommandError as exc:
        print(f"{exc.reason}: {exc} (is the agent running?)", file=sys.stderr)
        return 2
    print(json.dumps(answer, ensure_ascii=False, indent=2))
    return 0 if answer.get("status") == "ok" else 1


def add_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    runner: Any = None,
    command: Any = None,
) -> None:
    """Add ``simulate osdp`` and ``osdp install-key`` to the ``edge-agent`` parser;
    ``command`` runs a device command through the running agent (audited there)."""
    del runner  # the simulator is a peer of the agent, not a tool on its line
    if command is not None:
        osdp = subparsers.add_parser("osdp", help="OSDP readers: install a reader's key")
        actions = osdp.add_subparsers(dest="osdp_command", required=True, metavar="ACTION")
        key = actions.add_parser(
            "install-key",
            help="give a reader its key_file's key (explicit, audited)",
            description="Through the running agent: send KEYSET with the reader's configured "
            "key_file inside a secure channel, the reader's current one or, with "
            "--install-mode, one opened for this command only with the public install key "
            "(a new reader). The device must allow reader.install_key in its commands. Exit "
            "codes: 0 installed, 1 refused or failed (the answer says why), 2 no agent.",
        )
        key.add_argument("device", help="the reader's device id")
        key.add_argument(
            "--install-mode",
            action="store_true",
            help="the reader still has the install key (SCBK-D)",
        )
        where = key.add_mutually_exclusive_group()
        where.add_argument("--config", metavar="PATH", help="find the agent from this config")
        where.add_argument("--socket", help="the agent's control socket")
        key.set_defaults(func=lambda ns: _install_key(ns, command))
    parent = subparsers.choices.get("simulate")
    if parent is None:
        parent = subparsers.add_parser(
            "simulate", help="simulated devices on a real port (for trying a line)"
        )
        protocols = parent.add_subparsers(
            dest="simulate_protocol", required=True, metavar="PROTOCOL"
        )
    else:
        protocols = next(a for a in parent._actions if isinstance(a, argparse._SubParsersAction))
    p = protocols.add_parser(
        "osdp",
        help="a card reader with a door (OSDP PD)",
        description="Answer as an OSDP reader at ADDRESS on PORT: a card every --card-every-s, "
        "a door that opens when the agent releases the strike. With --key-file, only in a "
        "secure channel with that key. Exit codes: 0 stopped, 2 the port or key cannot be used.",
    )
    p.add_argument("--port", required=True, help="serial port or pty, e.g. /dev/ttyUSB1")
    p.add_argument("--address", type=int, default=1, help="the reader's OSDP address")
    p.add_argument("--baud", type=int, default=9600, help="line speed")
    p.add_argument("--key-file", help="the reader's key (32 hex digits); none: plain text only")
    p.add_argument("--card-every-s", type=float, default=20.0, help="present a card this often")
    p.set_defaults(func=_simulate)
