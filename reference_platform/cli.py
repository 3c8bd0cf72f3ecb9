"""``edge-agent reference-platform`` (or ``python -m reference_platform``): serve the platform."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from reference_platform.api import PLATFORM, build_app, server_ssl_context, start_site
from reference_platform.contract import OpenApiContract
from reference_platform.keys import load_command_key, load_keys


def _parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen must be HOST:PORT, not {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - a server binds all on ":PORT"


async def serve(
    listen: str,
    db: Path,
    keys_file: Path,
    *,
    command_key_file: Path | None = None,
    admin_token: str | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    client_ca: Path | None = None,
    durability: str = "full",
    contract: Path | None = None,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Run the reference platform until cancelled (or SIGINT/SIGTERM)."""
    host, port = _parse_listen(listen)
    app = build_app(
        db,
        load_keys(keys_file),
        command_key=load_command_key(command_key_file),
        admin_token=admin_token,
        durability=durability,
        contract=OpenApiContract(contract) if contract is not None else None,
    )
    platform = app[PLATFORM]
    ctx = server_ssl_context(tls_cert, tls_key, client_ca)
    runner, bound = await start_site(app, host, port, ssl_context=ctx)
    scheme = "https" if ctx else "http"
    print(
        json.dumps(
            {
                "listening": f"{scheme}://{host}:{bound}",
                "port": bound,
                "db": str(db),
                "admin_token": platform.admin_token if admin_token is None else "(as given)",
                "command_key_id": platform.command_key_id,
            }
        ),
        flush=True,
    )
    if ready is not None:
        ready(bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        await runner.cleanup()


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="edge-agent reference-platform",
        description="Run the uplink API v1 reference platform (docs/uplink-api.md): it stores "
        "what gateways send, queues signed commands and offers the integrator endpoints. It "
        "prints one JSON line when it listens. Exit codes: 0 stopped by SIGTERM, 2 bad "
        "arguments or cannot start (the reason on stderr), 130 interrupted. Pass a value that "
        "starts with '-' as --option=VALUE.",
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:8700", help="HOST:PORT, port 0: any (default: %(default)s)"
    )
    parser.add_argument("--db", type=Path, required=True, help="SQLite file for what it receives")
    parser.add_argument(
        "--keys", type=Path, required=True, help="YAML/JSON: key_id -> {gateway, secret}"
    )
    parser.add_argument(
        "--command-key",
        type=Path,
        help="Ed25519 private key (PEM) that signs commands; generated if missing, "
        "its public key written to FILE.pub",
    )
    parser.add_argument(
        "--admin-token",
        default=os.environ.get("EDGE_PLATFORM_ADMIN_TOKEN"),
        help="Bearer token of the integrator/admin endpoints "
        "(default: $EDGE_PLATFORM_ADMIN_TOKEN, else generated and printed)",
    )
    parser.add_argument("--tls-cert", type=Path, help="server certificate chain (PEM)")
    parser.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    parser.add_argument("--client-ca", type=Path, help="require client certificates from this CA")
    parser.add_argument(
        "--contract",
        type=Path,
        metavar="OPENAPI_YAML",
        help="contract mode (tests): check every request body against this OpenAPI document "
        "(docs/openapi.yaml) and answer 400 contract_violation when it does not match",
    )
    parser.add_argument(
        "--durability",
        choices=("full", "normal"),
        default="full",
        help="SQLite synchronous mode of the platform's store (default: %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        asyncio.run(
            serve(
                args.listen,
                args.db,
                args.keys,
                command_key_file=args.command_key,
                admin_token=args.admin_token,
                tls_cert=args.tls_cert,
                tls_key=args.tls_key,
                client_ca=args.client_ca,
                durability=args.durability,
                contract=args.contract,
            )
        )
    except (OSError, ValueError) as exc:
        print(f"reference-platform: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
