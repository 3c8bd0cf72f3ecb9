"""``edge-agent scan onvif`` and ``edge-agent read onvif HOST``: find cameras and check one.
They run here, not through the agent (cameras take no bus). Building the parser imports nothing
but argparse."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from types import ModuleType
from typing import Any

from agent.driver.cli import group

__all__ = ["add_commands"]


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError("give HOST:PORT, e.g. 192.168.1.64:3702")
    return host, int(port)


def _tools() -> ModuleType | None:
    """``drivers.onvif.tools`` with the libraries' logs quietened, or ``None`` (and a hint on
    stderr) when the ``onvif`` extra is not installed."""
    from agent.driver.testing import quiet_logs  # noqa: PLC0415

    try:
        from drivers.onvif import tools  # noqa: PLC0415
    except ImportError as exc:
        print(f"{exc} (install community-edge-agent[onvif])", file=sys.stderr)
        return None
    quiet_logs()
    return tools


def _scan(args: argparse.Namespace) -> int:
    tools = _tools()
    if tools is None:
        return 2
    address, port = args.to or (None, None)
    try:
        result = asyncio.run(tools.discover(args.seconds, address, port))
    except OSError as exc:
        print(f"cannot probe: {exc.strerror or exc}", file=sys.stderr)
        return 2
    devices = result["devices"]
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0 if devices else 1
    if not devices:
        print(f"{result['where']}: no ONVIF camera answered in {result['seconds']:g} s")
        return 1
    endpoints = [d["endpoint"] for d in devices]
    shared = sum(1 for e in endpoints if endpoints.count(e) > 1)
    if shared:
        print(
            f"note: {shared} cameras answer with an endpoint id another camera also uses "
            "(cloned firmware); the agent tells cameras apart by address, so each still works",
            file=sys.stderr,
        )
    print(f"{'address':21s} {'MAC':17s} {'hardware':18s} name / location")
    for d in devices:
        where = f"{d['address']}:{d['port']}"
        place = f" ({d['location']})" if d.get("location") else ""
        print(
            f"{where:21s} {d.get('mac', '-'):17s} {d.get('hardware', '-'):18s} "
            f"{d.get('name', '-')}{place}"
        )
    return 0


def _password(args: argparse.Namespace) -> str | None:
    """The password from --password-file or --password-env, read as the agent reads a
    camera's (the same checks and messages)."""
    if not (args.password_file or args.password_env):
        return None
    from agent.config.models import SecretRef  # noqa: PLC0415
    from agent.driver.keys import read_secret  # noqa: PLC0415

    return read_secret(SecretRef(file=args.password_file, env=args.password_env))


def _read(args: argparse.Namespace) -> int:
    tools = _tools()
    if tools is None:
        return 2
    from agent.driver.keys import SecretError  # noqa: PLC0415

    try:
        password = _password(args)
    except SecretError as exc:
        print(f"the password cannot be read: {exc}", file=sys.stderr)
        return 2
    if (args.user is None) != (password is None):
        print("give --user with --password-file or --password-env, or neither", file=sys.stderr)
        return 2
    result: dict[str, Any] = dict(
        asyncio.run(tools.read(args.host, args.port, args.user, password, timeout_s=args.timeout))
    )
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 2 if "error" in result else 0
    if "error" in result:
        error = result["error"]
        print(f"{result['endpoint']}: {error['reason']}: {error['message']}")
        return 2
    print(f"{result['endpoint']}: answered in {result['took_ms']} ms")
    for key, value in result["inventory"].items():
        print(f"  {key:24s} {value}")
    clock = result["clock"]
    print(f"  {'clock offset':24s} {clock['offset_s']:+.1f} s ({clock['mode']})")
    print(f"  {'events':24s} {result['events']}")
    return 0


def add_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    runner: Any = None,
    command: Any = None,
) -> None:
    """Add ``scan onvif`` and ``read onvif`` to the ``edge-agent`` parser."""
    del runner, command
    scan = group(subparsers, "scan", "find the devices on a bus (installer tool)")
    p = scan.add_parser(
        "onvif",
        help="find ONVIF cameras on the LAN (WS-Discovery)",
        description="Send a WS-Discovery probe for ONVIF cameras and list each answer: "
        "address, MAC, hardware, name and location. Multicast by default; --to probes one "
        "address (a camera in another subnet). Exit codes: 0 found some, 1 none, 2 error.",
    )
    p.add_argument("--seconds", type=float, default=3.0, help="how long to wait (default 3)")
    p.add_argument("--to", type=_host_port, metavar="HOST:PORT", help="a unicast probe")
    p.add_argument("--json", action="store_true", help="the result as JSON on stdout")
    p.set_defaults(func=_scan)
    read = group(subparsers, "read", "read a device once (installer tool)")
    r = read.add_parser(
        "onvif",
        help="check a camera's login and print its inventory and clock offset",
        description="Log in to the camera, print what the agent would send as its inventory "
        "(maker, model, firmware, serial, MAC, profiles, stream and snapshot addresses), its "
        "clock offset, and whether an event subscription works. The password comes from a "
        "file or an environment variable, never the command line. Exit codes: 0 ok, 2 failed.",
    )
    r.add_argument("host", help="the camera's address (no scheme)")
    r.add_argument("--port", type=int, default=80, help="its ONVIF HTTP port (default 80)")
    r.add_argument("--user", help="the ONVIF user")
    secret = r.add_mutually_exclusive_group()
    secret.add_argument("--password-file", help="a file holding the password")
    secret.add_argument("--password-env", help="an environment variable holding it")
    r.add_argument("--timeout", type=float, default=5.0, help="per call, seconds (default 5)")
    r.add_argument("--json", action="store_true", help="the result as JSON on stdout")
    r.set_defaults(func=_read)
