"""Helpers for the web tests: an agent with its page running in-process, and a logged-in client.

Also the tests of the helpers' assumptions that the other web tests rely on.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Self

import aiohttp
from agent_proc import sim_device, write_config
from aiohttp import web

from agent.app import App
from agent.clock import Clock
from agent.config.loader import load_config
from agent.runtime import Runtime
from agent.systemd import Notifier
from agent.web.auth import hash_password

TECH_PASSWORD = "tech-pass-2024"
VIEW_PASSWORD = "view-pass-2024"
_HASHES: dict[str, str] = {}


def password_hash(password: str) -> str:
    """One hash per password per test session: scrypt is slow on purpose."""
    if password not in _HASHES:
        _HASHES[password] = hash_password(password)
    return _HASHES[password]


@contextlib.asynccontextmanager
async def http_server(handler: Any) -> AsyncIterator[int]:
    """An aiohttp server on 127.0.0.1 answering every path with ``handler``; yields its port."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def hanging_platform() -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A platform that accepts every request and answers nothing until the event is set, then
    503. Yields its port and the event (set on the way out, so no request is left hanging)."""
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=503)

    try:
        async with http_server(hang) as port:
            yield port, release
    finally:
        release.set()


def uplink_to(directory: Path, port: int, **extra: Any) -> dict[str, Any]:
    """An ``uplink:`` section for a platform on 127.0.0.1:``port`` (no commands, no jitter),
    its secret in a file in ``directory``."""
    secret = directory / "uplink.key"
    secret.write_text("s" * 32 + "\n")
    http = {
        "url": f"http://127.0.0.1:{port}",
        "key_id": "gw-test",
        "secret": {"file": str(secret)},
        "commands": False,
        "first_attempt_jitter_s": 0,
        **extra,
    }
    return {"http": http}


def web_section(**overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "users": [
            {"name": "tech", "role": "technician", "password_hash": password_hash(TECH_PASSWORD)},
            {"name": "view", "role": "viewer", "password_hash": password_hash(VIEW_PASSWORD)},
        ],
        "refresh_s": 1,
    }
    section.update(overrides)
    return section


def default_devices() -> list[dict[str, Any]]:
    return [
        sim_device(
            "meter-1",
            name="1号电表",
            commands=["output.set", "simulate.fault"],
            location={"building": "3", "unit": "1", "room": "101"},
            points=[
                {"name": "energy", "kind": "counter", "unit": "kWh"},
                {"name": "power", "kind": "sine", "unit": "kW", "offset": 2, "amplitude": 1},
            ],
        ),
        sim_device(
            "meter-2",
            timeout_s=0.2,
            offline_after=2,
            backoff_max_s=1,
            commands=["simulate.fault"],
        ),
        sim_device("spare", enabled=False),
    ]


async def wait_until(condition: Any, *, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class _Notifier(Notifier):
    """systemd's notifier without systemd: records that the runtime said it is ready."""

    def __init__(self) -> None:
        super().__init__(env={})
        self.started = False

    def ready(self, status: str | None = None) -> bool:
        self.started = True
        return super().ready(status)


@contextlib.asynccontextmanager
async def running_agent(
    directory: Path,
    devices: list[dict[str, Any]] | None = None,
    *,
    web: dict[str, Any] | None = None,
    ready: Any = None,
    **sections: Any,
) -> AsyncIterator[Runtime]:
    """The runtime of a config with a web section, started in this event loop; yielded once
    started and ``ready(runtime)`` (default: every device read once)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = write_config(
        directory,
        default_devices() if devices is None else devices,
        web=web_section() if web is None else web,
        **sections,
    )
    notifier = _Notifier()
    runtime = App(
        load_config(path),
        config_path=path,
        loader=load_config,
        clock=Clock("always"),
        notifier=notifier,
    ).runtime
    task = asyncio.create_task(runtime.run(install_signals=False))
    try:
        await wait_until(
            lambda: (
                task.done()
                or (
                    notifier.started
                    and (
                        ready(runtime)
                        if ready is not None
                        else all(runtime.state.devices[d].reads for d in runtime.devices)
                    )
                )
            ),
            what="the start and the first reads",
        )
        if task.done():
            await task
        yield runtime
    finally:
        runtime.request_stop()
        await asyncio.wait_for(task, 30)


def web_of(runtime: Runtime) -> Any:
    """The page's server that the agent's composition root gave this runtime (or None)."""
    from agent.app import PageService

    [page] = [s for s in runtime.services if isinstance(s, PageService)]
    return page.server


def base_url(runtime: Runtime) -> str:
    web = web_of(runtime)
    assert web is not None, "the web page did not start"
    return f"http://127.0.0.1:{web.port}"


class WebClient:
    """An HTTP client with a cookie jar that accepts cookies from 127.0.0.1."""

    def __init__(
        self, url: str, *, ssl_context: ssl.SSLContext | None = None, source: str | None = None
    ) -> None:
        """``source``: the local address to connect from (127.0.0.2: another LAN machine)."""
        self.url = url
        self.http = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            timeout=aiohttp.ClientTimeout(total=30),
            connector=aiohttp.TCPConnector(
                ssl=ssl_context if ssl_context is not None else True,
                local_addr=(source, 0) if source is not None else None,
            ),
        )
        self.csrf = ""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.http.close()

    async def get(self, path: str, **kw: Any) -> aiohttp.ClientResponse:
        kw.setdefault("allow_redirects", False)
        return await self.http.get(self.url + path, **kw)

    async def post(self, path: str, **kw: Any) -> aiohttp.ClientResponse:
        kw.setdefault("allow_redirects", False)
        return await self.http.post(self.url + path, **kw)

    async def login_token(self) -> str:
        response = await self.get("/login")
        text = await response.text()
        match = re.search(r'name="csrf" value="([^"]+)"', text)
        assert match, text
        return match.group(1)

    async def try_login(self, name: str, password: str) -> aiohttp.ClientResponse:
        token = await self.login_token()
        return await self.post(
            "/login", data={"csrf": token, "username": name, "password": password, "next": "/"}
        )

    async def login(self, name: str = "tech", password: str = TECH_PASSWORD) -> WebClient:
        response = await self.try_login(name, password)
        assert response.status == 303, await response.text()
        page = await (await self.get("/")).text()
        match = re.search(r'<meta name="csrf-token" content="([^"]+)"', page)
        assert match, page
        self.csrf = match.group(1)
        return self

    async def api(self, path: str) -> Any:
        response = await self.get(path)
        assert response.status == 200, (path, response.status, await response.text())
        return await response.json()

    async def api_post(self, path: str, body: Any = None) -> aiohttp.ClientResponse:
        return await self.post(path, json=body or {}, headers={"X-CSRF-Token": self.csrf})


async def test_helpers_log_in_and_out(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as runtime, WebClient(base_url(runtime)) as client:
        await client.login()
        assert (await client.api("/api/status"))["gateway"]["id"] == "gw-test"
        response = await client.post("/logout", data={"csrf": client.csrf})
        assert response.status == 303
        assert response.headers["Location"] == "/login"
        assert (await client.get("/api/status")).status == 401
