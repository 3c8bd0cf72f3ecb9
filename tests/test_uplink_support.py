"""Helpers shared by the uplink and reference platform tests (no tests here).

The platform runs in-process on an ephemeral port of 127.0.0.1 with aiohttp's AppRunner; tests
talk to it over real HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from agent.uplink.wire import sign_command, signature_headers
from reference_platform import (
    PLATFORM,
    Fault,
    ReferencePlatform,
    build_app,
    start_site,
)
from reference_platform.contract import OpenApiContract

GW = "gw-0001"
KEY_ID = "gw-0001-k1"
SECRET = "correct horse battery staple"
OTHER_GW = "gw-0002"
OTHER_KEY_ID = "gw-0002-k1"
OTHER_SECRET = "another secret"
ADMIN = "admin-token-for-tests"

KEYS = {
    KEY_ID: {"gateway": GW, "secret": SECRET},
    OTHER_KEY_ID: {"gateway": OTHER_GW, "secret": OTHER_SECRET},
}


@dataclasses.dataclass
class Platform:
    app: web.Application
    runner: web.AppRunner
    port: int
    scheme: str
    ssl_context: ssl.SSLContext | None
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def platform(self) -> ReferencePlatform:
        return self.app[PLATFORM]

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(
            method,
            self.url + path,
            data=orjson.dumps(body) if body is not None else None,
            headers={"Authorization": f"Bearer {ADMIN}"},
            ssl=False,
        ) as resp:
            return resp.status, orjson.loads(await resp.read())

    async def records(self, gateway: str = GW, **query: Any) -> list[dict[str, Any]]:
        """Every stored record of ``gateway`` in arrival order (follows the paging cursor)."""
        out: list[dict[str, Any]] = []
        after = 0
        while True:
            params = "&".join(f"{k}={v}" for k, v in {**query, "after_id": after}.items())
            status, doc = await self.admin(
                "GET", f"/v1/gateways/{gateway}/records?limit=10000&{params}"
            )
            assert status == 200, doc
            out += doc["records"]
            if not doc["records"]:
                return out
            after = doc["next_after_id"]

    async def fault(self, **fault: Any) -> None:
        status, doc = await self.admin("POST", "/admin/fault", fault)
        assert status == 200, doc

    def fault_in_process(self, **fault: Any) -> None:
        """Set a fault directly (works while the platform is not listening)."""
        self.platform.fault = Fault(**fault)

    async def go_down(self) -> None:
        """Stop listening (new connections are refused) and drop the open ones."""
        for site in list(self.runner.sites):
            await site.stop()
        server = self.runner.server
        assert server is not None
        for conn in server.connections:
            conn.force_close()

    async def come_up(self) -> None:
        site = web.TCPSite(
            self.runner, "127.0.0.1", self.port, ssl_context=self.ssl_context, reuse_address=True
        )
        await site.start()


@contextlib.asynccontextmanager
async def running_platform(
    tmp_path: Path,
    *,
    ssl_context: ssl.SSLContext | None = None,
    clock: Callable[[], float] = time.time,
    durability: str = "normal",
    redeliver_after_s: float = 30.0,
) -> AsyncIterator[Platform]:
    # Contract mode: every body the agent (or a test) sends must match docs/openapi.yaml too.
    app = build_app(
        tmp_path / "platform.db",
        KEYS,
        admin_token=ADMIN,
        durability=durability,
        clock=clock,
        contract=OpenApiContract(),
        redeliver_after_s=redeliver_after_s,
    )
    runner, port = await start_site(app, "127.0.0.1", 0, ssl_context=ssl_context)
    async with aiohttp.ClientSession() as session:
        try:
            yield Platform(
                app, runner, port, "https" if ssl_context else "http", ssl_context, session
            )
        finally:
            await runner.cleanup()


async def signed(
    session: aiohttp.ClientSession,
    base: str,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    key_id: str = KEY_ID,
    secret: str = SECRET,
    ts_ms: int | None = None,
    headers: dict[str, str] | None = None,
    tamper: Callable[[dict[str, str]], None] | None = None,
) -> tuple[int, Any, Any]:
    """One signed request as the agent would send it; (status, JSON body, headers)."""
    ts = ts_ms if ts_ms is not None else int(time.time() * 1000)
    hdrs = {**(headers or {}), **signature_headers(key_id, secret.encode(), method, path, ts, body)}
    if tamper is not None:
        tamper(hdrs)
    async with session.request(method, base + path, data=body or None, headers=hdrs) as resp:
        raw = await resp.read()
        return resp.status, orjson.loads(raw) if raw else None, resp.headers


def batch_body(epoch: str, records: list[dict[str, Any]]) -> bytes:
    return gzip.compress(orjson.dumps({"epoch": epoch, "records": records}))


def reading(seq: int, device: str = "meter-1", value: float = 1.0) -> dict[str, Any]:
    return {
        "seq": seq,
        "kind": "reading",
        "device": device,
        "ts": 1_700_000_000_000 + seq,
        "ts_synced": True,
        "point": "energy",
        "value": value,
        "unit": "kWh",
        "quality": "good",
    }


async def wait_for(
    condition: Callable[[], Awaitable[bool]], *, timeout: float = 30.0, interval: float = 0.05
) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------- commands


def signed_command(p: Platform, command_id: str, **fields: Any) -> dict[str, Any]:
    """A command for ``door-1`` of :data:`GW`, valid for a minute, signed by ``p``'s key
    (``fields`` change it before it is signed); for ``POST /admin/raw-command``."""
    now = int(time.time() * 1000)
    cmd: dict[str, Any] = {
        "id": command_id,
        "gateway": GW,
        "device": "door-1",
        "action": "open",
        "args": {},
        "issued_ms": now,
        "expires_ms": now + 60_000,
        **fields,
    }
    cmd["signature"] = sign_command(p.platform.command_key, cmd)
    return cmd


async def command_status(p: Platform, command_id: str) -> dict[str, Any]:
    _, doc = await p.admin("GET", f"/v1/gateways/{GW}/commands/{command_id}")
    assert isinstance(doc, dict)
    return doc


async def wait_for_result(p: Platform, command_id: str) -> dict[str, Any]:
    """The command's status once the gateway's result arrived."""

    async def done() -> bool:
        return (await command_status(p, command_id))["result_ms"] is not None

    await wait_for(done)
    return await command_status(p, command_id)


async def redeliver(p: Platform, command_id: str, body: dict[str, Any] | None = None) -> None:
    """Queue a command that was delivered and answered again, as a platform may (after a
    failover); with ``body``, as that command instead."""
    sql = "UPDATE commands SET status = 'queued', result_ms = NULL"
    params: tuple[Any, ...] = (command_id,)
    if body is not None:
        sql += ", body = ?"
        params = (orjson.dumps(body), command_id)
    await p.platform.store.run(p.platform.store.execute, sql + " WHERE id = ?", params)
    waiter = p.platform._command_waiters.pop(GW, None)
    if waiter is not None:
        waiter.set()
