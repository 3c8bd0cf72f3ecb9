"""``edge-agent``: the one command installers, technicians and systemd use.

Imports are lazy per sub-command so that ``check-config`` stays fast and never pulls in a
protocol library or the web stack.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from agent import __version__
from agent.tools import DEFAULT_CONFIG

__all__ = ["main"]

EX_CONFIG = 78
"""sysexits' EX_CONFIG: systemd's unit does not restart-loop on it (RestartPreventExitStatus)."""


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` of every ``edge-agent`` command (drivers' tools too): an option's default
    after its help, unless it has none worth saying or the help says it already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            default in (None, False, [], argparse.SUPPRESS)
            or "default" in text
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


def _formatted(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every sub-command under it the one help formatter."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _formatted(child)


def _config_path(args: argparse.Namespace) -> Path:
    """The config a command reads: ``CONFIG`` (run, check-config) or ``--config``, else the
    default. Giving both, differently, is an error rather than a guess."""
    given = getattr(args, "config_file", None)
    if given is not None and args.config is not None and Path(given) != Path(args.config):
        raise SystemExit(f"edge-agent: two configs given ({given} and --config {args.config})")
    return Path(given or args.config or DEFAULT_CONFIG)


def _run(args: argparse.Namespace) -> int:
    from agent.app import App  # noqa: PLC0415
    from agent.config.errors import ConfigError  # noqa: PLC0415
    from agent.config.loader import load_config  # noqa: PLC0415
    from agent.logs import configure_logging, get_logger  # noqa: PLC0415
    from agent.systemd import Notifier, watchdog_interval  # noqa: PLC0415

    path = _config_path(args)
    try:
        config = load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"{path}: not started: {len(exc.issues)} error(s)", file=sys.stderr)
        return EX_CONFIG
    configure_logging(config.logging.level, args.log_format or config.logging.format)
    notifier = Notifier()

    async def main() -> int:
        app = App(
            config,
            config_path=path,
            loader=load_config,
            notifier=notifier,
            watchdog_s=watchdog_interval(),
        )
        return await app.run()

    try:
        return asyncio.run(main())
    except OSError as exc:
        get_logger().error("agent.failed", error=str(exc))
        return 1


def _check_config(args: argparse.Namespace) -> int:
    from agent.config.loader import check_config_command  # noqa: PLC0415

    return check_config_command(str(_config_path(args)), sys.stdout, sys.stderr)


def _buffer_path(args: argparse.Namespace) -> Path | None:
    if args.path is not None:
        return Path(args.path)
    from agent.config.errors import ConfigError  # noqa: PLC0415
    from agent.config.loader import load_config  # noqa: PLC0415

    try:
        return load_config(_config_path(args)).buffer.path
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return None


def _buffer(args: argparse.Namespace) -> int:
    from buffer.cli import export_command, requeue_poison_command, stats_command  # noqa: PLC0415

    path = _buffer_path(args)
    if path is None:
        return 1
    if args.buffer_command == "stats":
        return stats_command(path, as_json=args.json, out=sys.stdout)
    if args.buffer_command == "requeue-poison":
        return requeue_poison_command(path, out=sys.stdout, err=sys.stderr)
    return export_command(path, poison=args.poison, out=sys.stdout)


def _demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo  # noqa: PLC0415
    from agent.logs import configure_logging  # noqa: PLC0415

    configure_logging("info", args.log_format)
    return run_demo(
        state=Path(args.state) if args.state else None,
        platform_port=args.platform_port,
        web_listen=args.web_listen,
        out=sys.stdout,
    )


def _reference_platform(args: argparse.Namespace) -> int:
    from reference_platform import main as platform_main  # noqa: PLC0415

    code: int = platform_main(args.rest)
    return code


def _parse_arg(text: str) -> tuple[str, object]:
    import yaml  # noqa: PLC0415

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    # YAML scalars give installers natural typing: on=true, output=1, text='a b'.
    return key, yaml.safe_load(raw) if raw else ""


def _command(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from agent.control import send_request  # noqa: PLC0415

    if args.socket is not None:
        path = Path(args.socket)
    else:
        from agent.config.errors import ConfigError  # noqa: PLC0415
        from agent.config.loader import load_config  # noqa: PLC0415
        from agent.runtime import Runtime  # noqa: PLC0415

        try:
            path = Runtime.control_path(load_config(_config_path(args)))
        except ConfigError as exc:
            for issue in exc.issues:
                print(issue, file=sys.stderr)
            return 1
    request = {"device": args.device, "action": args.action, "args": dict(args.args)}
    try:
        answer = asyncio.run(send_request(path, request, timeout_s=args.timeout))
    except (OSError, TimeoutError) as exc:
        print(f"cannot reach the agent at {path}: {exc} (is it running?)", file=sys.stderr)
        return 2
    print(json.dumps(answer, ensure_ascii=False, indent=2))
    return 0 if answer.get("status") == "ok" else 1


_MIN_PASSWORD = 8


def _hash_password(args: argparse.Namespace) -> int:
    import getpass  # noqa: PLC0415

    from agent.web.auth import hash_password  # noqa: PLC0415 - no aiohttp, no config

    if args.stdin or not sys.stdin.isatty():
        # Scripts pipe the password in: one line, never an argument (visible in ps and history).
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat: ") != password:
            print("the two passwords differ; nothing printed", file=sys.stderr)
            return 1
    if len(password) < _MIN_PASSWORD:
        print(f"too short: use at least {_MIN_PASSWORD} characters", file=sys.stderr)
        return 1
    password_hash = hash_password(password)
    print(password_hash)
    print(
        "add it to the config under web.users, e.g.\n"
        f'  - {{name: tech, role: technician, password_hash: "{password_hash}"}}',
        file=sys.stderr,
    )
    return 0


def _make_cert(args: argparse.Namespace) -> int:
    from agent.web.cert import make_cert  # noqa: PLC0415 - cryptography only, no aiohttp

    try:
        made = make_cert(Path(args.dir), list(args.name), days=args.days, force=args.force)
    except OSError as exc:
        print(f"edge-agent web make-cert: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {made.key_file} (0600) and {made.cert_file}, valid until {made.not_after:%Y-%m-%d}"
    )
    print(f"names: {', '.join(made.names)}")
    print(f"SHA-256 fingerprint: {made.fingerprint}")
    print("  (compare it with the one the browser shows before you accept the certificate)")
    print("add to the config, then restart the agent:")
    print(f"web:\n  tls:\n    cert_file: {made.cert_file}\n    key_file: {made.key_file}")
    return 0


_OWN_COMMANDS = frozenset(
    {
        "run",
        "check-config",
        "buffer",
        "demo",
        "command",
        "hash-password",
        "web",
        "reference-platform",
    }
)
"""The commands of the agent itself: running one of them loads no driver's tools."""


def build_parser(*, driver_tools: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Community edge gateway agent: devices -> durable buffer -> city platform.",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_option(p: argparse.ArgumentParser, what: str = "the agent's config") -> None:
        p.add_argument("--config", metavar="PATH", help=f"{what} (default: {DEFAULT_CONFIG})")

    run = sub.add_parser(
        "run",
        help="run the agent in the foreground (systemd runs this)",
        description="Run the agent until SIGTERM/SIGINT; SIGHUP reloads the config. "
        "Exit codes: 0 stopped cleanly, 1 failed, 78 invalid config (systemd does not restart).",
    )
    run.add_argument("config_file", nargs="?", metavar="CONFIG", help="same as --config")
    config_option(run)
    run.add_argument(
        "--log-format", choices=["auto", "json", "console"], help="override logging.format"
    )
    run.set_defaults(func=_run)

    check = sub.add_parser(
        "check-config",
        help="validate a config file; exit 1 on any error",
        description="Check a config as the agent would load it: every error as file:line:col. "
        "Exit codes: 0 valid, 1 errors found (each printed on stderr).",
    )
    check.add_argument("config_file", nargs="?", metavar="CONFIG", help="same as --config")
    config_option(check)
    check.set_defaults(func=_check_config)

    buf = sub.add_parser(
        "buffer",
        help="inspect the store-and-forward buffer",
        description="Read the buffer file, also while the agent runs. Exit codes: 0 done, "
        "1 the config or the buffer file cannot be read.",
    )
    buf_sub = buf.add_subparsers(dest="buffer_command", required=True, metavar="ACTION")
    for name, help_text in (
        ("stats", "backlog size, age, drops, epoch (read-only)"),
        ("export", "records as JSON lines on stdout (read-only)"),
        ("requeue-poison", "send the records the platform refused again, once it is fixed"),
    ):
        p = buf_sub.add_parser(
            name,
            help=help_text,
            description=f"{help_text[0].upper()}{help_text[1:]}. Exit codes: 0 done, 1 the "
            "config or the buffer file cannot be read.",
        )
        where = p.add_mutually_exclusive_group()
        where.add_argument(
            "--config",
            metavar="PATH",
            help=f"take the buffer's path from this config (default: {DEFAULT_CONFIG})",
        )
        where.add_argument("--path", help="the buffer file itself, instead of a config")
        if name == "stats":
            p.add_argument("--json", action="store_true", help="machine-readable output")
        elif name == "export":
            p.add_argument("--poison", action="store_true", help="export set-aside batches")
        p.set_defaults(func=_buffer)

    demo = sub.add_parser(
        "demo",
        help="run the whole product without hardware: simulated devices, agent, platform",
        description="Start simulated devices, the agent, the reference platform and the "
        "diagnostic page on this machine, and print how to look at each. Ctrl-C stops it. "
        "Exit codes: 0 stopped, 69 a port is in use (pick another with the flags below).",
    )
    demo.add_argument(
        "--state", help="keep the demo's files in this folder (default: a temporary one)"
    )
    demo.add_argument(
        "--platform-port", type=int, default=8700, help="reference platform port (0: any free)"
    )
    demo.add_argument(
        "--web-listen",
        default="127.0.0.1:8080",
        help="diagnostic page address (port 0: any free)",
    )
    demo.add_argument(
        "--log-format", choices=["auto", "json", "console"], default="auto", help="log lines"
    )
    demo.set_defaults(func=_demo)

    cmd = sub.add_parser(
        "command",
        help="run a command on a device through the running agent (local control socket)",
        description="Run ACTION on DEVICE through the running agent, as the platform would, and "
        "print its result. Example: edge-agent command door-1 output.set on=true. "
        "Exit codes: 0 done, 1 refused or failed (the answer says why), 2 no agent answers.",
    )
    where = cmd.add_mutually_exclusive_group()
    where.add_argument(
        "--config",
        metavar="PATH",
        help=f"find the control socket from this config (default: {DEFAULT_CONFIG})",
    )
    where.add_argument("--socket", help="the control socket itself, instead of a config")
    cmd.add_argument("--timeout", type=float, default=30, help="seconds to wait for the answer")
    cmd.add_argument("device", help="the device's id in the config")
    cmd.add_argument("action", help="one of the device's commands, e.g. output.set")
    cmd.add_argument(
        "args", nargs="*", type=_parse_arg, metavar="KEY=VALUE", help="YAML values: on=true"
    )
    cmd.set_defaults(func=_command)

    pw = sub.add_parser(
        "hash-password",
        help="hash a password for web.users (the diagnostic page has no default password)",
        description="Prompts for the password twice (or reads one line from stdin) and prints "
        "its scrypt hash for web.users[].password_hash. Exit codes: 0 printed, 1 too short or "
        "the two differ.",
    )
    pw.add_argument("--stdin", action="store_true", help="read the password from stdin")
    pw.set_defaults(func=_hash_password)

    web = sub.add_parser("web", help="tools for the diagnostic page")
    web_sub = web.add_subparsers(dest="web_command", required=True, metavar="ACTION")
    cert = web_sub.add_parser(
        "make-cert",
        help="make a self-signed certificate for the page's HTTPS (web.tls)",
        description="Write web-key.pem (0600) and web-cert.pem for the page, print the lines "
        "to add under web.tls and the certificate's SHA-256 fingerprint to compare with the "
        "browser's. The host's name and localhost are always in it: add the addresses "
        "technicians type. Exit codes: 0 written, 1 the files exist (--force) or cannot be "
        "written.",
    )
    cert.add_argument("--dir", default="/etc/edge-agent", help="where to write the two files")
    cert.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="NAME_OR_IP",
        help="a host name or IP address the page is reached at (repeatable)",
    )
    cert.add_argument("--days", type=int, default=825, help="validity")
    cert.add_argument("--force", action="store_true", help="replace existing files")
    cert.set_defaults(func=_make_cert)

    # Installer tools of each driver family (`scan modbus`, `read modbus`), found through the
    # registry; building the parser imports no protocol library.
    if driver_tools:
        from agent.tools import agent_command, agent_runner  # noqa: PLC0415
        from drivers import DRIVERS, load_cli  # noqa: PLC0415

        for name, spec in DRIVERS.items():
            if spec.cli is not None:
                load_cli(name)(sub, agent_runner, agent_command)

    ref = sub.add_parser(
        "reference-platform",
        help="run the reference city platform (uplink API v1 server)",
        add_help=False,
    )
    ref.add_argument("rest", nargs=argparse.REMAINDER)
    ref.set_defaults(func=_reference_platform)
    _formatted(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(driver_tools=argv[:1] == [] or argv[0] not in _OWN_COMMANDS)
    if argv[:1] == ["reference-platform"]:
        # argparse's REMAINDER drops options that come first; the platform has its own parser.
        return _reference_platform(argparse.Namespace(rest=argv[1:]))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
