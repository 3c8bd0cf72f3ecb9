"""The reference platform: the far end of uplink API v1 (docs/uplink-api.md).

City integrators run it to see exactly what the agent sends; the demo and the tests use it as the
platform. It verifies every request the way a real platform must (HMAC signature, timestamp
window, key bound to the gateway), stores records in SQLite once per ``(gateway, epoch, seq)``
and answers 200 only after the commit, keeps each gateway's inventory, queues Ed25519-signed
commands for the long poll and stores their results. ``POST /admin/fault`` makes it misbehave
(refuse, 503, 500, hang, slow, 413) so the agent's retry logic can be seen and tested.

It is the city's side, a package of its own: of the agent it imports only the wire contract
(:mod:`agent.uplink.wire`), and the agent's runtime never imports it. Modules: :mod:`.keys`,
:mod:`.store`, :mod:`.faults`, :mod:`.contract` (request checks, and the OpenAPI schemas in
contract mode), :mod:`.api`, :mod:`.cli`.

Run it with ``edge-agent reference-platform`` or ``python -m reference_platform``.
"""

from __future__ import annotations

from reference_platform.api import (
    PLATFORM,
    ReferencePlatform,
    build_app,
    server_ssl_context,
    start_site,
)
from reference_platform.cli import main, serve
from reference_platform.faults import FAULT_MODES, Fault
from reference_platform.keys import GatewayKey, load_command_key, load_keys, parse_keys, public_pem

__all__ = [
    "FAULT_MODES",
    "PLATFORM",
    "Fault",
    "GatewayKey",
    "ReferencePlatform",
    "build_app",
    "load_command_key",
    "load_keys",
    "main",
    "parse_keys",
    "public_pem",
    "serve",
    "server_ssl_context",
    "start_site",
]
