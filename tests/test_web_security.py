"""The page's security promises, against the real server of a running agent: no session, no
data; no CSRF token, no action; no path out of the static folder; no unlimited guessing; no
secret in any answer; no page at all without a configured user."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import ssl
from pathlib import Path

import pytest
from aiohttp import web
from test_web_support import (
    TECH_PASSWORD,
    VIEW_PASSWORD,
    WebClient,
    base_url,
    default_devices,
    password_hash,
    running_agent,
    web_of,
    web_section,
)

from agent.runtime import Runtime
from agent.web.cert import make_cert

pytestmark = pytest.mark.slow

UPLINK_SECRET = "uplink-SECRET-4f1d9c2b7e"
ENV_SECRET = "env-SECRET-8a7c6b5d4e"


def _routes(runtime: Runtime) -> list[tuple[str, str]]:
    """Every route of the app, with a real device id where the path takes one."""
    assert web_of(runtime) is not None
    routes = []
    for route in web_of(runtime).app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if route.method == "HEAD" or path is None:
            continue
        path = path.replace("{device}", "meter-1").replace("{name}", "app.js")
        routes.append((route.method, path))
    return routes


async def test_everything_but_login_and_assets_needs_a_session(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as runtime, WebClient(base_url(runtime)) as client:
        routes = _routes(runtime)
        assert len(routes) >= 18
        public = {
            ("GET", "/login"),
            ("POST", "/login"),
            ("POST", "/lang"),
            ("GET", "/static/app.js"),
        }
        for method, path in routes:
            if (method, path) in public:
                continue
            response = await client.http.request(
                method, client.url + path, allow_redirects=False, data={"csrf": "x"}
            )
            body = await response.text()
            if path.startswith("/api/") or path == "/metrics" or method == "POST":
                assert response.status == 401, (method, path, response.status)
            else:
                assert response.status == 303, (method, path, response.status)
                assert response.headers["Location"].startswith("/login?next=")
            assert "meter-1" not in body or path == "/metrics", (method, path)
        # Unknown paths do not tell whether they exist.
        assert (await client.get("/api/nothing")).status == 401
        # A forged session cookie is no session.
        client.http.cookie_jar.update_cookies({"eag_session": "forged"})
        assert (await client.get("/api/status")).status == 401


async def test_session_cookie_and_headers(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as runtime, WebClient(base_url(runtime)) as client:
        response = await client.try_login("tech", TECH_PASSWORD)
        cookie = response.cookies["eag_session"]
        assert cookie["httponly"]
        assert cookie["samesite"] == "Strict"
        assert len(cookie.value) >= 40
        page = await client.get("/")
        csp = page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp
        assert "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert page.headers["X-Frame-Options"] == "DENY"
        assert page.headers["Cache-Control"] == "no-store"
        # Fixation: a token planted in a browser before its login is replaced, and ends.
        async with WebClient(client.url) as victim:
            token = await victim.login_token()
            victim.http.cookie_jar.update_cookies({"eag_session": cookie.value})
            again = await victim.post(
                "/login", data={"csrf": token, "username": "tech", "password": TECH_PASSWORD}
            )
            assert again.status == 303
            assert again.cookies["eag_session"].value != cookie.value
        assert (await client.get("/api/status")).status == 401


async def test_csrf_is_required_on_every_action(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as runtime, WebClient(base_url(runtime)) as client:
        await client.login()
        actions = [
            ("/api/devices/meter-1/read", None),
            ("/api/devices/meter-1/commands", {"action": "output.set", "args": {"on": True}}),
        ]
        for path, body in actions:
            for headers in ({}, {"X-CSRF-Token": "forged"}, {"X-CSRF-Token": ""}):
                response = await client.post(path, json=body or {}, headers=headers)
                assert response.status == 403, (path, headers)
                assert (await response.json())["error"] == "csrf"
            # The right token from another origin is refused too.
            response = await client.post(
                path,
                json=body or {},
                headers={"X-CSRF-Token": client.csrf, "Origin": "http://evil.example"},
            )
            assert response.status == 403
        entry = runtime.devices["meter-1"]
        assert entry.driver.outputs == {}, "no refused command reached the device"
        for path in ("/logout", "/lang"):
            response = await client.post(path, data={"csrf": "forged", "lang": "en"})
            assert response.status == 403, path
        assert (await client.get("/api/status")).status == 200, "still logged in"
        # And with the right token the same requests work.
        response = await client.api_post(*actions[1])
        assert (await response.json())["status"] == "ok"
        assert entry.driver.outputs == {0: True}


async def test_login_form_needs_its_own_token(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as runtime, WebClient(base_url(runtime)) as client:
        await client.login_token()
        for token in ("", "forged"):
            response = await client.post(
                "/login", data={"csrf": token, "username": "tech", "password": TECH_PASSWORD}
            )
            assert response.status == 403
            assert "eag_session" not in response.cookies
        # A cross-site form post carries no cookie (SameSite=Strict) and an alien Origin.
        token = await client.login_token()
        response = await client.post(
            "/login",
            data={"csrf": token, "username": "tech", "password": TECH_PASSWORD},
            headers={"Origin": "http://evil.example"},
        )
        assert response.status == 403


async def test_static_files_cannot_be_escaped(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as runtime, WebClient(base_url(runtime)) as client:
        js = await client.get("/static/app.js")
        assert js.status == 200
        assert js.headers["Content-Type"].startswith("text/javascript")
        etag = js.headers["ETag"]
        assert (await client.get("/static/app.js", headers={"If-None-Match": etag})).status == 304
        for path in (
            "/static/../server.py",
            "/static/..%2fserver.py",
            "/static/%2e%2e/%2e%2e/agent.yaml",
            "/static/..%2F..%2F..%2Fetc%2Fpasswd",
            "/static/....//....//etc/passwd",
            "/static/%2e%2e%5cserver.py",
            "/static/app.js%00.css",
            "/static/.hidden.js",
            "/static/",
        ):
            response = await client.http.get(
                client.url + path, allow_redirects=False, headers={}, skip_auto_headers=()
            )
            body = await response.read()
            assert response.status in (303, 404), (path, response.status)
            assert b"import " not in body, path
            assert b"root:" not in body, path


async def test_login_brute_force_is_throttled(tmp_path: Path) -> None:
    web = web_section(login_max_failures=3, login_lockout_s=30)
    async with running_agent(tmp_path, web=web) as runtime, WebClient(base_url(runtime)) as client:
        for guess in ("a", "b", "c"):
            response = await client.try_login("tech", guess)
            assert response.status == 401
            assert "eag_session" not in response.cookies
        # Locked: even the right password is not even checked now...
        response = await client.try_login("tech", TECH_PASSWORD)
        assert response.status == 429
        assert 1 <= int(response.headers["Retry-After"]) <= 30
        assert "eag_session" not in response.cookies
        # ...and the address is locked whatever name it tries.
        assert (await client.try_login("view", VIEW_PASSWORD)).status == 429


async def test_a_guessing_neighbour_cannot_lock_the_technician_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Five wrong passwords for "tech" from any LAN machine used to lock "tech" out everywhere.
    import agent.web.server

    monkeypatch.setattr(agent.web.server, "_NAME_SLOWDOWN_MAX_S", 0.2)
    web = web_section(login_max_failures=3, login_lockout_s=30)
    async with running_agent(tmp_path, web=web) as runtime:
        url = base_url(runtime)
        async with WebClient(url, source="127.0.0.2") as attacker:
            for guess in ("a", "b", "c", "d"):
                assert (await attacker.try_login("tech", guess)).status in (401, 429)
            assert (await attacker.try_login("tech", TECH_PASSWORD)).status == 429
        async with WebClient(url, source="127.0.0.3") as technician:
            await technician.login("tech", TECH_PASSWORD)
            assert (await technician.api("/api/status"))["gateway"]["id"] == "gw-test"


async def test_unknown_names_cost_a_hash_too(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as runtime, WebClient(base_url(runtime)) as client:
        response = await client.try_login("nobody", "whatever-pass")
        assert response.status == 401
        text = await response.text()
        # The same answer for a wrong name as for a wrong password.
        wrong_pw = await (await client.try_login("tech", "whatever-pass")).text()
        strip = re.compile(r'name="csrf" value="[^"]+"')
        assert strip.sub("", text) == strip.sub("", wrong_pw)


async def test_no_secret_in_any_page_or_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "uplink.key").write_text(UPLINK_SECRET + "\n")
    monkeypatch.setenv("EDGE_TEST_SECRET", ENV_SECRET)
    devices = default_devices()
    devices[1]["name"] = "password=" + ENV_SECRET[:4]  # a name is not a secret: shown
    uplink = {
        "http": {
            "url": f"http://user:{ENV_SECRET}@127.0.0.1:9/api",
            "key_id": "gw-test",
            "secret": {"file": "uplink.key"},
            "commands": False,
            "first_attempt_jitter_s": 0,
        }
    }
    tech_hash = password_hash(TECH_PASSWORD)
    secrets = [UPLINK_SECRET, ENV_SECRET, TECH_PASSWORD, VIEW_PASSWORD, tech_hash]
    secrets += tech_hash.split("$")[4:]  # the salt and the key on their own
    async with (
        running_agent(tmp_path, devices, uplink=uplink) as runtime,
        WebClient(base_url(runtime)) as client,
    ):
        await client.login()
        await client.api_post("/api/devices/meter-1/read")
        await client.api_post(
            "/api/devices/meter-1/commands", {"action": "output.set", "args": {"on": True}}
        )
        paths = [
            "/",
            "/devices",
            "/devices/meter-1",
            "/devices/meter-2",
            "/events",
            "/config",
            "/api/status",
            "/api/devices",
            "/api/devices/meter-1",
            "/api/devices/meter-1/history",
            "/api/events",
            "/api/config",
            "/metrics",
            "/login",
        ]
        for path in paths:
            response = await client.get(path)
            assert response.status in (200, 303), path
            body = await response.text()
            for secret in secrets:
                assert secret not in body, (path, secret[:6])
        config = await client.api("/api/config")
        assert config["config"]["uplink"]["http"]["secret"] == "***"
        assert config["config"]["uplink"]["http"]["url"] == "http://user:***@127.0.0.1:9/api"
        assert {u["password_hash"] for u in config["config"]["web"]["users"]} == {"***"}


async def test_sessions_end_when_the_password_changes(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as runtime, WebClient(base_url(runtime)) as client:
        await client.login()
        assert runtime.config_path is not None
        text = runtime.config_path.read_text()
        new_hash = password_hash("a-new-password-1")
        runtime.config_path.write_text(text.replace(password_hash(TECH_PASSWORD), new_hash))
        assert await runtime.reload()
        assert (await client.get("/api/status")).status == 401
        assert (await client.try_login("tech", TECH_PASSWORD)).status == 401
        await client.login("tech", "a-new-password-1")


async def test_viewer_may_look_but_not_act(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as runtime, WebClient(base_url(runtime)) as client:
        await client.login("view", VIEW_PASSWORD)
        assert (await client.api("/api/devices/meter-1"))["commands"]
        read = await client.api_post("/api/devices/meter-1/read")
        assert read.status == 403
        command = await client.api_post(
            "/api/devices/meter-1/commands", {"action": "output.set", "args": {"on": True}}
        )
        assert command.status == 403
        assert runtime.devices["meter-1"].driver.outputs == {}
        assert runtime.state.commands == {}, "refused before the command path"


async def test_metrics_open_or_behind_a_login_or_its_own_token(tmp_path: Path) -> None:
    token = "scrape-token-5d1c9a0e7b3f"
    (tmp_path / "metrics.token").write_text(token + "\n")
    web = web_section(metrics_token={"file": str(tmp_path / "metrics.token")})
    async with (
        running_agent(tmp_path, web=web) as runtime,
        WebClient(base_url(runtime)) as client,
    ):
        denied = await client.get("/metrics")
        assert denied.status == 401
        assert denied.headers["WWW-Authenticate"].startswith("Bearer")
        response = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert response.status == 200
        assert "edge_agent_" in await response.text()
        for wrong in (f"Bearer {token}x", "Bearer ", token, f"Basic {token}"):
            assert (await client.get("/metrics", headers={"Authorization": wrong})).status == 401
        # A user's password is no way in any more: no scrypt per scrape, no lockout by a
        # misconfigured scraper...
        auth = base64.b64encode(f"view:{VIEW_PASSWORD}".encode()).decode()
        basic = await client.get("/metrics", headers={"Authorization": f"Basic {auth}"})
        assert basic.status == 401
        for _ in range(6):
            await client.get("/metrics", headers={"Authorization": "Bearer wrong"})
        # ...which could lock out nobody: the view user still logs in, and the session may
        # scrape too.
        await client.login("view", VIEW_PASSWORD)
        assert (await client.get("/metrics")).status == 200
    async with (
        running_agent(tmp_path / "open", web=web_section(metrics="open")) as runtime,
        WebClient(base_url(runtime)) as client,
    ):
        assert (await client.get("/metrics")).status == 200
        assert (await client.get("/api/status")).status == 401


async def test_a_viewer_flood_does_not_end_the_technicians_session(tmp_path: Path) -> None:
    async with running_agent(tmp_path, web=web_section(sessions_per_user=2)) as runtime:
        url = base_url(runtime)
        async with WebClient(url) as technician:
            await technician.login()
            viewers = [WebClient(url) for _ in range(8)]
            try:
                for viewer in viewers:
                    await viewer.login("view", VIEW_PASSWORD)
                assert (await technician.get("/api/status")).status == 200
                # Only the two newest viewer sessions live on.
                alive = [(await v.get("/api/status")).status for v in viewers]
                assert alive == [401] * 6 + [200] * 2
            finally:
                for viewer in viewers:
                    await viewer.http.close()


async def test_the_pages_own_refreshes_do_not_keep_a_session_alive(tmp_path: Path) -> None:
    web = web_section(session_idle_min=0.02)  # 1.2 s without a user's action
    async with running_agent(tmp_path, web=web) as runtime, WebClient(base_url(runtime)) as client:
        await client.login()
        refresh = {"X-Edge-Refresh": "1"}
        assert (await client.get("/api/status", headers=refresh)).status == 200

        async def refreshed_out() -> bool:
            return (await client.get("/api/status", headers=refresh)).status == 401

        deadline = asyncio.get_running_loop().time() + 20
        while not await refreshed_out():
            assert asyncio.get_running_loop().time() < deadline, "refreshes kept it alive"
            await asyncio.sleep(0.2)
        # A user's own request after that finds the session gone too.
        assert (await client.get("/api/status")).status == 401


async def test_no_users_no_page(tmp_path: Path) -> None:
    async with running_agent(tmp_path, web={"listen": "127.0.0.1:0"}) as runtime:
        assert web_of(runtime) is None
    # With /metrics open, the server runs for it alone; the login page says why it is off.
    web_cfg = {"listen": "127.0.0.1:0", "metrics": "open"}
    async with (
        running_agent(tmp_path / "metrics", web=web_cfg) as runtime,
        WebClient(base_url(runtime)) as client,
    ):
        assert (await client.get("/metrics")).status == 200
        login = await client.get("/login")
        assert "web.users" in await login.text()
        assert (await client.try_login("tech", TECH_PASSWORD)).status == 401


async def test_a_busy_port_does_not_stop_the_agent(tmp_path: Path) -> None:
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with running_agent(tmp_path, web=web_section(listen=f"127.0.0.1:{port}")) as rt:
            assert web_of(rt) is None
            assert rt.state.devices["meter-1"].reads >= 1
    finally:
        await runner.cleanup()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, made the way an installer makes one (web make-cert)."""
    made = make_cert(directory / "tls", ["127.0.0.1"])
    return made.cert_file, made.key_file


async def test_https_marks_cookies_secure(tmp_path: Path) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    tls = {"cert_file": str(cert_file), "key_file": str(key_file)}
    async with running_agent(tmp_path, web=web_section(tls=tls)) as runtime:
        assert web_of(runtime) is not None
        assert web_of(runtime).urls == [f"https://127.0.0.1:{web_of(runtime).port}/"]
        trust = ssl.create_default_context(cafile=str(cert_file))
        url = f"https://127.0.0.1:{web_of(runtime).port}"
        async with WebClient(url, ssl_context=trust) as client:
            await client.login_token()
            response = await client.try_login("tech", TECH_PASSWORD)
            assert response.status == 303
            assert response.cookies["eag_session"]["secure"]
            assert (await client.api("/api/status"))["gateway"]["id"] == "gw-test"


async def test_names_from_the_config_are_never_markup(tmp_path: Path) -> None:
    evil = '<img src=x onerror="alert(1)"></script><script>alert(2)</script>'
    devices = default_devices()
    devices[0]["name"] = evil
    gateway = {"id": "gw-test", "name": evil, "community": {"code": "350102001001"}}
    async with (
        running_agent(tmp_path, devices, gateway=gateway) as runtime,
        WebClient(base_url(runtime)) as client,
    ):
        await client.login()
        for path in ("/", "/devices", "/devices/meter-1", "/events", "/config", "/login"):
            page = await (await client.get(path)).text()
            assert "<img" not in page, path
            assert "<script>alert" not in page, path
            assert page.count("</script>") == page.count("<script"), path
        detail = await client.api("/api/devices/meter-1")
        assert detail["device"]["name"] == evil


async def test_no_version_in_server_and_hsts_under_tls(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as runtime, WebClient(base_url(runtime)) as client:
        page = await client.get("/login")
        assert page.headers["Server"] == "edge-agent"
        assert "Strict-Transport-Security" not in page.headers  # plain HTTP: it would lie
        missing = await client.get("/no/such/page")
        assert missing.headers["Server"] == "edge-agent"
    cert_file, key_file = _self_signed(tmp_path)
    tls = {"cert_file": str(cert_file), "key_file": str(key_file)}
    async with running_agent(tmp_path / "tls", web=web_section(tls=tls)) as runtime:
        trust = ssl.create_default_context(cafile=str(cert_file))
        url = f"https://127.0.0.1:{web_of(runtime).port}"  # type: ignore[union-attr]
        async with WebClient(url, ssl_context=trust) as client:
            page = await client.get("/login")
            assert page.headers["Strict-Transport-Security"].startswith("max-age=")
            assert page.headers["Server"] == "edge-agent"


async def test_listening_beyond_localhost_without_tls_is_warned_about(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        async with running_agent(tmp_path, web=web_section(listen="0.0.0.0:0")):
            pass
        async with running_agent(tmp_path / "local", web=web_section()):
            pass
    warned = [e for e in logs if e["event"] == "web.plaintext"]
    assert len(warned) == 1
    assert warned[0]["listen"] == "0.0.0.0:0"
    assert "web.tls" in warned[0]["hint"]


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 30)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _post(path: str, headers: dict[bytes, bytes], body: bytes) -> bytes:
    head = b"".join(k + b": " + v + b"\r\n" for k, v in headers.items())
    return (
        b"POST "
        + path.encode()
        + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + head
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


@pytest.mark.parametrize(
    "request_bytes",
    [
        # A non-ASCII X-CSRF-Token on an action.
        _post("/api/devices/meter-1/read", {b"X-CSRF-Token": b"\xe4\xb8\xad\xff"}, b""),
        # A login form that is not UTF-8.
        _post(
            "/login",
            {b"Content-Type": b"application/x-www-form-urlencoded"},
            b"username=\xff\xfe\xfd",
        ),
        # A broken multipart body.
        _post(
            "/login",
            {b"Content-Type": b"multipart/form-data; boundary=zz"},
            b"--zz\r\ngarbage\r\n--",
        ),
    ],
    ids=["non-ascii-csrf", "non-utf8-form", "broken-multipart"],
)
async def test_malformed_requests_are_4xx_not_500(tmp_path: Path, request_bytes: bytes) -> None:
    async with running_agent(tmp_path) as runtime:
        answer = await _raw(web_of(runtime).port, request_bytes)  # type: ignore[union-attr]
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500, answer[:300]
