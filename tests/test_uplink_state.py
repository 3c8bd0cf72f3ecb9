"""What the page says of the uplink: connected, sending, stalled or disconnected, and why, as a
reason code both catalogs translate, never an exception's text."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from test_web_support import (
    WebClient,
    base_url,
    hanging_platform,
    http_server,
    running_agent,
    uplink_to,
    wait_until,
)

from agent.state import UplinkState
from agent.uplink.base import LINK_REASONS
from agent.uplink.http import network_reason

WEB = Path(__file__).resolve().parent.parent / "agent" / "web"
LINK_STATES = ("none", "connected", "sending", "stalled", "disconnected")

pytestmark = pytest.mark.timeout(120)


def test_every_reason_and_state_has_an_entry_in_both_catalogs() -> None:
    for lang in ("zh-CN", "en"):
        catalog = json.loads((WEB / "i18n" / f"{lang}.json").read_text())
        missing = [r for r in LINK_REASONS if f"uplink.reason.{r}" not in catalog]
        missing += [s for s in LINK_STATES if f"uplink.{s}" not in catalog]
        assert not missing, (lang, missing)


def test_the_link_state_follows_what_is_in_flight() -> None:
    state = UplinkState()
    assert state.link(10_000, 5) == "disconnected"  # nothing has been tried yet
    state.sending_since_ms = 9_000
    assert state.link(10_000, 5) == "sending"  # the first attempt
    assert state.link(14_001, 5) == "stalled"
    state.sending_since_ms = None
    state.connected = True
    assert state.link(10_000, 5) == "connected"
    state.sending_since_ms = 8_000
    assert state.link(10_000, 5) == "sending"
    assert state.link(13_001, 5) == "stalled"
    state.connected = False
    state.last_error_ms = 7_000
    assert state.link(10_000, 5) == "disconnected"  # a retry after a failure
    assert state.link(13_001, 5) == "stalled"


def _closed_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    return sock


async def _failure(url: str, **kwargs: Any) -> BaseException:
    async with aiohttp.ClientSession() as session:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=5), **kwargs):
                pass
        except Exception as exc:
            return exc
    raise AssertionError(f"{url} answered")


async def test_network_failures_get_their_reason() -> None:
    with _closed_port() as sock:
        refused = await _failure(f"http://127.0.0.1:{sock.getsockname()[1]}/")
    assert network_reason(refused) == "refused"

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="not TLS")

    async with http_server(plain) as port:
        tls = await _failure(f"https://127.0.0.1:{port}/", ssl=ssl.create_default_context())
    assert network_reason(tls) == "tls"
    assert network_reason(socket.gaierror(-2, "Name or service not known")) == "dns"
    assert network_reason(TimeoutError()) == "timeout"
    assert network_reason(aiohttp.ServerDisconnectedError()) == "network"
    assert all(reason in LINK_REASONS for reason in ("refused", "tls", "dns", "timeout", "network"))


async def test_a_hanging_platform_shows_stalled_within_the_bound(tmp_path: Path) -> None:
    """The platform accepts the connection and never answers. The page said "connected" for
    the whole 30 s timeout before; now it says "stalled" once a batch has waited 1 s."""
    async with hanging_platform() as (port, release):
        uplink = uplink_to(tmp_path, port, backoff_cap_s=0.5, timeout_s=30, stalled_after_s=1)
        async with (
            running_agent(tmp_path / "agent", uplink=uplink) as runtime,
            WebClient(base_url(runtime)) as client,
        ):
            await client.login()
            seen: list[str] = []

            async def shows(state: str) -> bool:
                status = await client.api("/api/status")
                seen.append(status["uplink"]["state"])
                return bool(status["uplink"]["state"] == state)

            await _until(lambda: shows("stalled"), "stalled", 10)
            assert "sending" in seen  # before the bound it was sending, not yet stalled
            status = (await client.api("/api/status"))["uplink"]
            assert status["stalled_after_s"] == 1
            assert isinstance(status["sending_since_ms"], int)
            assert "last_error" not in status  # no exception text reaches the page
            release.set()
            # The 503 ends the stall: disconnected, for a reason the page translates.
            await _until(lambda: shows("disconnected"), "disconnected after the 503", 10)
            status = (await client.api("/api/status"))["uplink"]
            assert (status["last_error_reason"], status["last_error_status"]) == (
                "server_error",
                503,
            )


async def test_a_platform_that_refuses_connections_is_disconnected_refused(
    tmp_path: Path,
) -> None:
    with _closed_port() as sock:
        uplink = uplink_to(tmp_path, sock.getsockname()[1], backoff_cap_s=0.5, timeout_s=2)
        async with (
            running_agent(tmp_path / "agent", uplink=uplink) as runtime,
            WebClient(base_url(runtime)) as client,
        ):
            await client.login()
            await wait_until(
                lambda: runtime.state.uplink.last_error_reason is not None,
                what="a failed attempt",
            )
            status = (await client.api("/api/status"))["uplink"]
    assert status["state"] == "disconnected"
    assert (status["last_error_reason"], status["last_error_status"]) == ("refused", None)
    assert status["last_ack_ms"] is None
    # The log keeps the full error for whoever reads it.
    assert "Connect call failed" in (runtime.state.uplink.last_error or "")


async def _until(condition: Any, what: str, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while not await condition():
            await asyncio.sleep(0.1)
    del what
