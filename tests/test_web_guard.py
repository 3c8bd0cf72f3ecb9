"""The page against a hostile LAN: a real slow-loris, floods of connections and bad requests.

A slow-loris once held 1,100 half-open connections (at the default 1,024 open files), took
``/metrics`` down and logged a million tracebacks in 90 s. Here real sockets attack an agent
running in this process; 127.0.0.2 and 127.0.0.3 are other machines on the LAN (Linux routes
all of 127/8 to the loopback). The counts and times are small, the waits are on conditions.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs
from test_web_support import base_url, running_agent, wait_until, web_of, web_section

ATTACKER = "127.0.0.1"


def limits(**overrides: Any) -> dict[str, Any]:
    section = web_section(
        metrics="open",
        max_connections=40,
        max_connections_per_source=10,
        header_timeout_s=1.5,
        idle_timeout_s=3,
        body_timeout_s=1.5,
    )
    section.update(overrides)
    return section


async def open_raw(port: int, source: str = ATTACKER) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(0)
    sock.bind((source, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed or reset the connection (EOF or an error on read)."""
    try:
        data = sock.recv(4096, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return data == b""


@contextlib.asynccontextmanager
async def attack(
    port: int, count: int, source: str = ATTACKER
) -> AsyncIterator[list[socket.socket]]:
    socks = [await open_raw(port, source) for _ in range(count)]
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


async def metrics_from(url: str, source: str) -> int:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
        http.get(url + "/metrics") as response,
    ):
        await response.read()
        return response.status


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == name]


async def test_a_slow_loris_is_cut_off_and_metrics_stay_up(tmp_path: Path) -> None:
    with capture_logs() as logs:
        async with running_agent(tmp_path, web=limits()) as runtime:
            web = web_of(runtime)
            url = base_url(runtime)
            # 30 connections from one address, each sending a header a byte at a time.
            async with attack(web.port, 30) as socks:
                for sock in socks:
                    with contextlib.suppress(OSError):
                        sock.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                # Past the per-source limit the server closes at once: 10 stay.
                await wait_until(
                    lambda: sum(not closed_by_server(s) for s in socks) <= 10,
                    what="the connections past the per-source limit to be closed",
                )
                assert web.guard.by_source[ATTACKER] <= 10
                # Another machine on the LAN still gets /metrics while the attack goes on.
                assert await metrics_from(url, "127.0.0.2") == 200
                # Dripping bytes does not keep a header open past header_timeout_s.
                started = time.monotonic()

                def drip() -> bool:
                    for sock in socks:
                        with contextlib.suppress(OSError):
                            sock.send(b"X")
                    return all(closed_by_server(s) for s in socks)

                await wait_until(drip, timeout_s=15, what="the slow headers to be cut off")
                assert time.monotonic() - started < 10
            await wait_until(lambda: web.guard.open == 0, what="the guard to count them closed")
    refused = events(logs, "web.connection_refused")
    timeouts = events(logs, "web.connection_timeout")
    # Twenty refusals and ten timeouts from one address: a line or two each, not thirty.
    assert 1 <= len(refused) <= 2, refused
    assert refused[0]["reason"] == "per_source"
    assert 1 <= len(timeouts) <= 2, timeouts
    assert timeouts[0]["phase"] == "header"


async def test_the_total_limit_holds_across_addresses(tmp_path: Path) -> None:
    async with running_agent(tmp_path, web=limits(max_connections=12)) as runtime:
        web = web_of(runtime)
        async with (
            attack(web.port, 8, "127.0.0.2") as first,
            attack(web.port, 8, "127.0.0.3") as second,
        ):
            socks = first + second
            await wait_until(
                lambda: sum(not closed_by_server(s) for s in socks) <= 12,
                what="the connections past the total to be closed",
            )
            assert web.guard.open <= 12
        # Idle connections (nothing sent) go after idle_timeout_s; then there is room again.
        await wait_until(lambda: web.guard.open == 0, what="the idle connections to go")
        assert await metrics_from(base_url(runtime), "127.0.0.3") == 200


async def test_an_idle_connection_is_closed(tmp_path: Path) -> None:
    async with running_agent(tmp_path, web=limits(idle_timeout_s=1)) as runtime:
        web = web_of(runtime)
        async with attack(web.port, 1) as [sock]:
            await wait_until(lambda: closed_by_server(sock), timeout_s=10, what="the idle close")


async def test_a_slow_body_is_cut_off(tmp_path: Path) -> None:
    with capture_logs() as logs:
        async with running_agent(tmp_path, web=limits()) as runtime:
            web = web_of(runtime)
            async with attack(web.port, 1) as [sock]:
                sock.send(
                    b"POST /login HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/x-www-form-urlencoded\r\n"
                    b"Content-Length: 1000\r\n\r\nusername=tech"
                )
                await wait_until(
                    lambda: closed_by_server(sock), timeout_s=10, what="the body timeout"
                )
            await wait_until(lambda: web.guard.open == 0, what="the guard to count it closed")
    assert [e["phase"] for e in events(logs, "web.connection_timeout")] == ["body"]


async def test_malformed_requests_are_one_json_line_each_rate_limited(tmp_path: Path) -> None:
    with capture_logs() as logs:
        async with running_agent(tmp_path, web=limits()) as runtime:
            web = web_of(runtime)
            for _ in range(25):
                sock = await open_raw(web.port)
                try:
                    # A valid method, then a header line no HTTP parser accepts.
                    sock.send(b"GET / HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n")
                    answer = await asyncio.wait_for(
                        asyncio.get_running_loop().sock_recv(sock, 4096), 20
                    )
                finally:
                    sock.close()
                assert answer.split(b" ", 2)[1] == b"400", answer[:40]
                # Answered before any middleware runs, and still without versions.
                assert b"\r\nServer: edge-agent\r\n" in answer, answer
            await wait_until(lambda: web.guard.open == 0, what="the connections to close")
    bad = events(logs, "web.bad_request")
    assert 1 <= len(bad) <= 3, bad
    assert bad[0]["remote"] == ATTACKER
    assert "Traceback" not in str(bad)
    assert events(logs, "web.request_error") == []


@pytest.mark.parametrize("tls", [False, True])
async def test_a_normal_browser_session_is_untouched(tmp_path: Path, tls: bool) -> None:
    # Keep-alive requests under the limits, over HTTP and HTTPS, all answered.
    from test_web_support import WebClient

    extra: dict[str, Any] = {}
    context = None
    if tls:
        from agent.web.cert import make_cert

        made = make_cert(tmp_path / "tls", ["127.0.0.1"])
        extra["tls"] = {"cert_file": str(made.cert_file), "key_file": str(made.key_file)}
        import ssl

        context = ssl.create_default_context(cafile=str(made.cert_file))
    async with running_agent(tmp_path, web=limits(**extra)) as runtime:
        url = base_url(runtime).replace("http://", "https://" if tls else "http://")
        async with WebClient(url, ssl_context=context) as client:
            await client.login()
            for _ in range(20):
                assert (await client.api("/api/status"))["gateway"]["id"] == "gw-test"
        assert web_of(runtime).guard.open <= 1
