"""The diagnostic page, its JSON API and /metrics: an aiohttp application in the agent's process.

Every route but the login form, the static assets and (when ``web.metrics: open``) ``/metrics``
needs a session. Every state-changing request needs the session's CSRF token (a form field or
the ``X-CSRF-Token`` header) and, when the browser sends one, a same-origin ``Origin``. The page
itself is server-rendered HTML with the first figures embedded; its one script keeps them fresh by
polling ``/api`` and fills values in with ``textContent`` only. No asset comes from the internet.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import re
import secrets
import ssl
import time
import urllib.parse
from collections.abc import Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import http_exceptions, web
from multidict import MultiDictProxy

from agent.config.secrets import SecretError, read_secret
from agent.driver import CommandError, DeviceError
from agent.records import Event, Reading, Record, Status
from agent.scheduler import DriverCrashedError
from agent.web import _data
from agent.web._render import render
from agent.web.auth import (
    DUMMY_HASH,
    LoginThrottle,
    Session,
    SessionStore,
    fingerprint,
    verify_password,
)
from agent.web.guard import (
    SERVER_NAME,
    Guard,
    GuardedSite,
    GuardLimits,
    Handler,
    request_logger,
)
from agent.web.i18n import LANGUAGES, Catalog, catalog, negotiate, script_json
from agent.web.metrics import CONTENT_TYPE, render_metrics

if TYPE_CHECKING:
    import structlog

    from agent.config.models import DeviceConfig, WebConfig, WebUser
    from agent.view import AgentView

__all__ = ["WebServer", "start_web"]

SESSION_COOKIE = "eag_session"
LOGIN_COOKIE = "eag_login"
"""Before login there is no session to hold a CSRF token: the login form's token is
double-submitted, once in this cookie and once in the form."""
LANG_COOKIE = "eag_lang"
REFRESH_HEADER = "X-Edge-Refresh"
"""Sent by the page's script on its timed refreshes, which are not a user's action."""

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_PUBLIC = frozenset({("GET", "/login"), ("HEAD", "/login"), ("POST", "/login"), ("POST", "/lang")})
_STATIC_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(js|css|svg)$")
_STATIC_TYPES = {
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
}
_MAX_PASSWORD = 1024
_MAX_NAME = 64
_MIN_METRICS_TOKEN = 16
_NAME_SLOWDOWN_MAX_S = 5.0
"""The most a failed address waits per try while the name it tries is under attack."""

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def _dumps(data: Any) -> str:
    return orjson.dumps(data, default=str).decode()


def _json(data: Any, *, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, default=str),
        status=status,
        content_type="application/json",
    )


def _safe_next(value: object) -> str:
    """A local path to go back to; anything else (an absolute URL, //host) becomes ``/``."""
    if (
        isinstance(value, str)
        and value.startswith("/")
        and not value.startswith("//")
        and "\\" not in value
        and not any(ord(c) < 32 for c in value)
    ):
        return value
    return "/"


def _record_dict(record: Record) -> dict[str, Any]:
    if isinstance(record, Reading):
        return {
            "kind": "reading",
            "point": record.point,
            "value": _data.scrub(record.value),
            "unit": record.unit,
            "quality": record.quality.value,
            "reason": record.reason,
            "ts": record.ts,
        }
    if isinstance(record, Event | Status):
        return _data.event_dict(record)
    return {"kind": "unknown"}


class _Static:
    """The page's assets, read once at start into memory and served only by exact name, so no
    request path can reach the filesystem (no traversal, no symlink surprises)."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str, str]] = {}
        root = resources.files("agent.web").joinpath("static")
        for item in root.iterdir():
            match = _STATIC_NAME.match(item.name)
            if match is None or not item.is_file():
                continue
            body = item.read_bytes()
            etag = hashlib.sha256(body).hexdigest()[:16]
            self.files[item.name] = (body, _STATIC_TYPES[match.group(1)], etag)

    def version(self, name: str) -> str:
        return self.files[name][2]


class WebServer:
    """The diagnostic page of one running agent. ``start`` binds, ``close`` stops."""

    def __init__(
        self, runtime: AgentView, config: WebConfig | None = None, *, metrics_token: str = ""
    ) -> None:
        self.runtime = runtime
        self.config = config or runtime.config.web
        self.log: structlog.typing.FilteringBoundLogger = runtime.log.bind(task="web")
        self.metrics_token = metrics_token
        self.sessions = SessionStore(
            idle_s=self.config.session_idle_min * 60,
            max_age_s=self.config.session_max_h * 3600,
            per_user=self.config.sessions_per_user,
        )
        self.limits = GuardLimits(
            per_source=self.config.max_connections_per_source,
            total=self.config.max_connections,
            idle_s=self.config.idle_timeout_s,
            header_s=self.config.header_timeout_s,
            body_s=self.config.body_timeout_s,
        )
        self.guard: Guard | None = None
        self.throttle = LoginThrottle(
            max_failures=self.config.login_max_failures, lockout_s=self.config.login_lockout_s
        )
        self.probes = _data.Probes(runtime)
        self.throughput = _data.Throughput()
        self.static = _Static()
        # scrypt costs 16 MiB and tens of ms: at most two at once, whatever arrives.
        self._hash_slots = asyncio.Semaphore(2)
        self._reading: set[str] = set()
        self._runner: web.AppRunner | None = None
        self._sampler: asyncio.Task[None] | None = None
        self.port: int | None = None
        self.urls: list[str] = []
        self.app = self._build_app()

    # ------------------------------------------------------------------ lifecycle

    @property
    def users(self) -> list[WebUser]:
        # Read from the running config each time, so a SIGHUP reload changes passwords and roles
        # at once (sessions of changed users end: see _session_of).
        return self.runtime.config.web.users

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self.config.tls
        if tls is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.cert_file, tls.key_file)
        return context

    async def start(self) -> None:
        runner = web.AppRunner(
            self.app,
            access_log=None,
            shutdown_timeout=2.0,
            keepalive_timeout=self.limits.idle_s,
            logger=request_logger(self.log),
        )
        await runner.setup()
        try:
            site = GuardedSite(
                runner,
                self.config.host or None,
                self.config.port,
                ssl_context=self._ssl_context(),
                guard=lambda factory: Guard(factory, self.limits, self.log),
            )
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.guard = site.guard
        scheme = "https" if self.config.tls is not None else "http"
        addresses = runner.addresses
        self.port = int(addresses[0][1]) if addresses else None
        self.urls = [
            f"{scheme}://[{a[0]}]:{a[1]}/" if ":" in str(a[0]) else f"{scheme}://{a[0]}:{a[1]}/"
            for a in addresses
        ]
        self._sampler = asyncio.create_task(self._sample(), name="web[throughput]")

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
            self._sampler = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _sample(self) -> None:
        while True:
            state = self.runtime.state
            self.throughput.sample(state.records_accepted, state.uplink.records_sent)
            await asyncio.sleep(5.0)

    def _build_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._guard_mw, self._headers_mw, self._auth_mw],
            client_max_size=64 * 1024,
        )
        r = app.router
        r.add_get("/login", self.login_page)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_post("/lang", self.set_language)
        r.add_get("/", self.page_overview)
        r.add_get("/devices", self.page_devices)
        r.add_get("/devices/{device}", self.page_device)
        r.add_get("/events", self.page_events)
        r.add_get("/config", self.page_config)
        r.add_get("/api/status", self.api_status)
        r.add_get("/api/devices", self.api_devices)
        r.add_get("/api/devices/{device}", self.api_device)
        r.add_get("/api/devices/{device}/history", self.api_history)
        r.add_post("/api/devices/{device}/read", self.api_read)
        r.add_post("/api/devices/{device}/commands", self.api_command)
        r.add_get("/api/events", self.api_events)
        r.add_get("/api/config", self.api_config)
        r.add_get("/metrics", self.metrics)
        r.add_get("/static/{name}", self.static_file)
        return app

    # ------------------------------------------------------------------ middleware

    @web.middleware
    async def _guard_mw(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.guard is None:  # the app served without the guarded site (unit tests)
            return await handler(request)
        return await self.guard.middleware(request, handler)

    @web.middleware
    async def _headers_mw(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            self._secure_headers(request, exc)
            raise
        self._secure_headers(request, response)
        return response

    def _secure_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        headers.setdefault("Content-Security-Policy", _CSP)
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Referrer-Policy", "same-origin")
        headers["Server"] = SERVER_NAME
        if self.config.tls is not None:
            headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        if not request.path.startswith("/static/"):
            # Figures and pages are live and may be private: never from a cache.
            headers.setdefault("Cache-Control", "no-store")

    @web.middleware
    async def _auth_mw(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/static/") or (request.method, path) in _PUBLIC:
            return await handler(request)
        if path == "/metrics":
            if self.config.metrics == "open" or self._metrics_allowed(request):
                return await handler(request)
            raise web.HTTPUnauthorized(
                text="a page session or Authorization: Bearer <web.metrics_token> required\n",
                headers={"WWW-Authenticate": 'Bearer realm="edge-agent"'},
            )
        # The page's own refreshes say so (X-Edge-Refresh): they keep no session alive.
        session = self._session_of(request, touch=request.headers.get(REFRESH_HEADER) != "1")
        if session is None:
            if path.startswith("/api/") or request.method not in _SAFE_METHODS:
                raise web.HTTPUnauthorized(
                    text=_dumps({"error": "login_required"}),
                    content_type="application/json",
                )
            target = urllib.parse.quote(request.path_qs, safe="")
            raise web.HTTPSeeOther(f"/login?next={target}")
        if request.method not in _SAFE_METHODS:
            await self._check_csrf(request, session.csrf)
        return await handler(request)

    def _session_of(self, request: web.Request, *, touch: bool = True) -> Session | None:
        token = request.cookies.get(SESSION_COOKIE)
        session = self.sessions.get(token, touch=touch)
        if session is None:
            return None
        user = self.runtime.config.web.user(session.user)
        if user is None or fingerprint(user.role, user.password_hash) != session.fingerprint:
            self.sessions.delete(token)
            return None
        return session

    @staticmethod
    def _same_origin(request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        return origin is None or origin == f"{request.scheme}://{request.host}"

    async def _check_csrf(self, request: web.Request, expected: str) -> None:
        token = request.headers.get("X-CSRF-Token")
        if token is None and request.content_type in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ):
            field = (await _form(request)).get("csrf")
            token = field if isinstance(field, str) else None
        if not self._same_origin(request) or not token or not _same_secret(token, expected):
            self.log.warning("web.csrf_refused", path=request.path, remote=request.remote)
            raise web.HTTPForbidden(
                text=_dumps({"error": "csrf", "message": "missing or wrong CSRF token"}),
                content_type="application/json",
            )

    def _metrics_allowed(self, request: web.Request) -> bool:
        """A page session, or the scraper's own token (``web.metrics_token``). No password is
        checked here: a scrape must not cost a scrypt, nor a wrong one lock a user out."""
        if self._session_of(request, touch=False) is not None:
            return True
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return (
            bool(self.metrics_token)
            and scheme.lower() == "bearer"
            and _same_secret(token.strip(), self.metrics_token)
        )

    # ------------------------------------------------------------------ helpers

    def _language(self, request: web.Request) -> str:
        return negotiate(request.cookies.get(LANG_COOKIE), self.config.language)

    def _catalog(self, request: web.Request) -> Catalog:
        return catalog(self._language(request))

    def _session(self, request: web.Request) -> Session:
        # Looked up again rather than stored on the request: request storage wants
        # web.RequestKey, which older aiohttp releases lack; the lookup is a dict hit.
        session = self._session_of(request, touch=False)
        if session is None:
            raise web.HTTPUnauthorized(
                text=_dumps({"error": "login_required"}), content_type="application/json"
            )
        return session

    def _require_technician(self, request: web.Request) -> Session:
        session = self._session(request)
        if session.role != "technician":
            raise web.HTTPForbidden(
                text=_dumps({"error": "forbidden", "message": "only a technician may do this"}),
                content_type="application/json",
            )
        return session

    def _device(self, request: web.Request) -> DeviceConfig:
        device_id = request.match_info["device"]
        device = next((d for d in self.runtime.config.devices if d.id == device_id), None)
        if device is None:
            if request.path.startswith("/api/"):
                raise web.HTTPNotFound(
                    text=_dumps({"error": "unknown_device", "device": device_id}),
                    content_type="application/json",
                )
            raise web.HTTPNotFound(text=f"no device {device_id!r}\n")
        return device

    async def _verify(self, request: web.Request, name: str, password: str) -> WebUser | None:
        """Check a name and password under the throttle; None when wrong or throttled.

        The address is what gets locked. A name that keeps failing (from many addresses) slows
        down only the addresses that have failed too; an address that has not failed always gets
        its answer at once, so a guessing neighbour cannot lock the technician out.
        """
        name = name.strip()[:_MAX_NAME]
        address, user_key = f"ip:{request.remote}", f"user:{name.casefold()}"
        if self.throttle.has_failed(address):
            slow = min(self.throttle.retry_after(user_key), _NAME_SLOWDOWN_MAX_S)
            if slow > 0:
                await asyncio.sleep(slow)
        async with self._hash_slots:
            # Checked inside the slot: parallel guesses queue here and meet the lockout.
            if (wait := self.throttle.retry_after(address)) > 0:
                raise _ThrottledError(wait)
            user = self.runtime.config.web.user(name)
            ok = await asyncio.to_thread(
                verify_password,
                password[:_MAX_PASSWORD],
                user.password_hash if user is not None else DUMMY_HASH,
            )
        if ok and user is not None:
            self.throttle.succeeded(address, user_key)
            return user
        locked = self.throttle.failed(address, user_key)
        self.log.warning(
            "web.login_failed",
            user=name,
            remote=request.remote,
            locked_for_s=round(self.throttle.retry_after(address)) if locked else None,
        )
        return None

    def _page(
        self,
        request: web.Request,
        *,
        page: str,
        title_key: str,
        content: str,
        boot: Mapping[str, Any],
        device: str = "",
        status: int = 200,
    ) -> web.Response:
        cat = self._catalog(request)
        session = self._session(request)
        gw = self.runtime.config.gateway
        body = render(content, cat, {})
        values = {
            "lang": cat.language,
            "csrf": session.csrf,
            "title": cat.t(title_key),
            "gateway": gw.name or gw.id,
            "gateway_id": gw.id,
            "page": page,
            "tz": gw.timezone,
            "role": session.role,
            "role_label": cat.t(f"role.{session.role}"),
            "user": session.user,
            "refresh_ms": str(int(self.config.refresh_s * 1000)),
            "device": device,
            "here": _safe_next(request.path_qs),
            "v_js": self.static.version("app.js"),
            "v_css": self.static.version("app.css"),
            "content": body,
            "catalog": cat.json(),
            "boot": script_json(boot),
        }
        return web.Response(
            text=render("base.html", cat, values), status=status, content_type="text/html"
        )

    # ------------------------------------------------------------------ login

    def _login_response(
        self,
        request: web.Request,
        *,
        error: str = "",
        status: int = 200,
        retry_after: float = 0,
        next_: object = None,
    ) -> web.Response:
        cat = self._catalog(request)
        token = request.cookies.get(LOGIN_COOKIE)
        if not token or not re.fullmatch(r"[A-Za-z0-9_-]{40,64}", token):
            token = secrets.token_urlsafe(32)
        gw = self.runtime.config.gateway
        no_users = not self.users
        message = error or (cat.t("login.no_users") if no_users else "")
        values = {
            "lang": cat.language,
            "csrf": token,
            "gateway": gw.name or gw.id,
            "gateway_id": gw.id,
            "next": _safe_next(next_ if next_ is not None else request.query.get("next", "/")),
            "here": _safe_next(request.path_qs),
            "v_css": self.static.version("app.css"),
            "error": message,
            "error_hidden": "" if message else "hidden",
        }
        response = web.Response(
            text=render("login.html", cat, values), status=status, content_type="text/html"
        )
        response.set_cookie(
            LOGIN_COOKIE,
            token,
            max_age=3600,
            httponly=True,
            samesite="Strict",
            secure=self.config.tls is not None,
        )
        if retry_after:
            response.headers["Retry-After"] = str(max(1, round(retry_after)))
        return response

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        if self._session_of(request) is not None:
            raise web.HTTPSeeOther(_safe_next(request.query.get("next", "/")))
        return self._login_response(request)

    def _login_token_ok(self, request: web.Request, field: object) -> bool:
        cookie = request.cookies.get(LOGIN_COOKIE)
        return (
            self._same_origin(request)
            and bool(cookie)
            and isinstance(field, str)
            and bool(field)
            and _same_secret(field, str(cookie))
        )

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await _form(request)
        cat = self._catalog(request)
        # A failed attempt shows the form again, still leading where the user was going.
        again = functools.partial(self._login_response, request, next_=form.get("next", "/"))
        if not self._login_token_ok(request, form.get("csrf")):
            self.log.warning("web.csrf_refused", path=request.path, remote=request.remote)
            return again(error=cat.t("login.expired"), status=403)
        name = form.get("username")
        password = form.get("password")
        if not isinstance(name, str) or not isinstance(password, str) or not self.users:
            return again(error=cat.t("login.wrong"), status=401)
        try:
            user = await self._verify(request, name, password)
        except _ThrottledError as exc:
            self.log.warning("web.login_throttled", user=name[:_MAX_NAME], remote=request.remote)
            return again(
                error=cat.t("login.throttled", s=max(1, round(exc.retry_after))),
                status=429,
                retry_after=exc.retry_after,
            )
        if user is None:
            return again(error=cat.t("login.wrong"), status=401)
        # A fresh token at every login: a token planted before login is worth nothing after it.
        self.sessions.delete(request.cookies.get(SESSION_COOKIE))
        session = self.sessions.create(
            user.name, user.role, fingerprint(user.role, user.password_hash)
        )
        self.log.info("web.login", user=user.name, role=user.role, remote=request.remote)
        response = web.HTTPSeeOther(_safe_next(form.get("next", "/")))
        response.set_cookie(
            SESSION_COOKIE,
            session.token,
            httponly=True,
            samesite="Strict",
            secure=self.config.tls is not None,
        )
        response.del_cookie(LOGIN_COOKIE)
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        self.sessions.delete(session.token)
        self.log.info("web.logout", user=session.user)
        response = web.HTTPSeeOther("/login")
        response.del_cookie(SESSION_COOKIE)
        raise response

    async def set_language(self, request: web.Request) -> web.StreamResponse:
        form = await _form(request)
        session = self._session_of(request)
        if session is not None:
            await self._check_csrf(request, session.csrf)
        elif not self._login_token_ok(request, form.get("csrf")):
            raise web.HTTPForbidden(text="missing or wrong CSRF token\n")
        language = form.get("lang")
        response = web.HTTPSeeOther(_safe_next(form.get("next", "/")))
        if language in LANGUAGES:
            response.set_cookie(
                LANG_COOKIE,
                str(language),
                max_age=365 * 86400,
                samesite="Strict",
                secure=self.config.tls is not None,
            )
        raise response

    # ------------------------------------------------------------------ pages

    async def page_overview(self, request: web.Request) -> web.StreamResponse:
        data = _data.status_payload(self.runtime, self.probes, self.throughput)
        return self._page(
            request,
            page="overview",
            title_key="nav.overview",
            content="overview.html",
            boot={"data": data},
        )

    async def page_devices(self, request: web.Request) -> web.StreamResponse:
        return self._page(
            request,
            page="devices",
            title_key="nav.devices",
            content="devices.html",
            boot={"data": _data.devices_payload(self.runtime)},
        )

    async def page_device(self, request: web.Request) -> web.StreamResponse:
        device_id = request.match_info["device"]
        if not any(d.id == device_id for d in self.runtime.config.devices):
            # A stale link (the device was removed from the config): say so in the page's words.
            return self._page(
                request,
                page="notfound",
                title_key="device.not_found",
                content="notfound.html",
                boot={},
                status=404,
            )
        device = self._device(request)
        return self._page(
            request,
            page="device",
            title_key="nav.device",
            content="device.html",
            boot={
                "data": _data.device_detail(self.runtime, device),
                "history": _data.device_history(self.runtime, device.id),
            },
            device=device.id,
        )

    async def page_events(self, request: web.Request) -> web.StreamResponse:
        return self._page(
            request,
            page="events",
            title_key="nav.events",
            content="events.html",
            boot={"data": self._events(request)},
        )

    async def page_config(self, request: web.Request) -> web.StreamResponse:
        return self._page(
            request,
            page="config",
            title_key="nav.config",
            content="config.html",
            boot={"data": await self._config()},
        )

    # ------------------------------------------------------------------ API

    async def api_status(self, _request: web.Request) -> web.StreamResponse:
        return _json(_data.status_payload(self.runtime, self.probes, self.throughput))

    async def api_devices(self, request: web.Request) -> web.StreamResponse:
        return _json(
            _data.devices_payload(
                self.runtime,
                query=request.query.get("q", "")[:200],
                health=request.query.get("health", "")[:100],
            )
        )

    async def api_device(self, request: web.Request) -> web.StreamResponse:
        return _json(_data.device_detail(self.runtime, self._device(request)))

    async def api_history(self, request: web.Request) -> web.StreamResponse:
        return _json(_data.device_history(self.runtime, self._device(request).id))

    def _events(self, request: web.Request) -> dict[str, Any]:
        try:
            limit = min(max(int(request.query.get("limit", "200")), 1), 500)
        except ValueError:
            limit = 200
        return _data.events_payload(
            self.runtime,
            type_=request.query.get("type", "")[:100],
            device=request.query.get("device", "")[:100],
            limit=limit,
        )

    async def api_events(self, request: web.Request) -> web.StreamResponse:
        return _json(self._events(request))

    async def _config(self) -> dict[str, Any]:
        return _data.config_payload(self.runtime.config, await self.probes.validation())

    async def api_config(self, _request: web.Request) -> web.StreamResponse:
        return _json(await self._config())

    async def api_read(self, request: web.Request) -> web.StreamResponse:
        session = self._require_technician(request)
        device = self._device(request)
        if device.id in self._reading:
            return _json(
                {"ok": False, "reason": "busy", "error": "a test read is running"}, status=429
            )
        self._reading.add(device.id)
        started = time.monotonic()
        try:
            records = await self.runtime.read_device(device.id)
        except DeviceError as exc:
            answer: dict[str, Any] = {"ok": False, "reason": exc.reason, "error": str(exc)}
        except DriverCrashedError as exc:
            answer = {"ok": False, "reason": "driver_error", "error": str(exc)}
        else:
            answer = {"ok": True, "records": [_record_dict(r) for r in records]}
        finally:
            self._reading.discard(device.id)
        answer["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
        self.log.info(
            "web.test_read",
            user=session.user,
            device=device.id,
            ok=answer["ok"],
            reason=answer.get("reason"),
        )
        return _json(answer)

    async def api_command(self, request: web.Request) -> web.StreamResponse:
        session = self._require_technician(request)
        device = self._device(request)
        try:
            body = await request.json(loads=orjson.loads)
        except (ValueError, UnicodeDecodeError):
            body = None
        action = body.get("action") if isinstance(body, dict) else None
        args = body.get("args", {}) if isinstance(body, dict) else None
        if not isinstance(action, str) or not isinstance(args, dict):
            return _json(
                {
                    "status": "failed",
                    "reason": "bad_request",
                    "error": 'expected {"action": "...", "args": {...}}',
                },
                status=400,
            )
        command_id = f"web-{secrets.token_hex(4)}"
        try:
            result = await self.runtime.execute_command(
                device.id, action, args, source=f"web:{session.user}", command_id=command_id
            )
        except CommandError as exc:
            return _json(
                {"status": "failed", "id": command_id, "reason": exc.reason, "error": str(exc)}
            )
        return _json({"status": "ok", "id": command_id, "result": _data.scrub(dict(result))})

    # ------------------------------------------------------------------ metrics, static

    async def metrics(self, _request: web.Request) -> web.StreamResponse:
        response = web.Response(text=render_metrics(self.runtime, self.probes))
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    async def static_file(self, request: web.Request) -> web.StreamResponse:
        entry = self.static.files.get(request.match_info["name"])
        if entry is None:
            raise web.HTTPNotFound(text="not found\n")
        body, content_type, etag = entry
        headers = {"ETag": f'"{etag}"', "Cache-Control": "public, max-age=86400"}
        if request.headers.get("If-None-Match") == f'"{etag}"':
            return web.Response(status=304, headers=headers)
        response = web.Response(body=body, headers=headers)
        response.headers["Content-Type"] = content_type
        return response


class _ThrottledError(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after:.0f} s")
        self.retry_after = retry_after


def _same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of a token a client sent; anything but ASCII is simply wrong
    (a non-ASCII ``X-CSRF-Token`` was a 500)."""
    if not given.isascii():
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


async def _form(request: web.Request) -> MultiDictProxy[str | bytes | bytearray | web.FileField]:
    """The request's form; a form that cannot be read (not UTF-8, broken multipart) is a 400."""
    try:
        return await request.post()
    except (
        UnicodeDecodeError,
        ValueError,
        AssertionError,
        http_exceptions.HttpProcessingError,
    ) as exc:
        raise web.HTTPBadRequest(
            text=_dumps({"error": "bad_request", "message": f"unreadable form: {exc}"[:200]}),
            content_type="application/json",
        ) from None


async def start_web(runtime: AgentView) -> WebServer | None:
    """Start the page as the config says (``web.enabled`` is the caller's, :mod:`agent.app`);
    None (and a log line saying why) when it stays off.

    There is no default password: without users the page does not start (unless /metrics is
    open, which then is all it serves). A port already in use is logged, not fatal: the agent's
    real work goes on without its page.
    """
    config = runtime.config.web
    log = runtime.log.bind(task="web")
    if not config.users and config.metrics != "open":
        log.warning(
            "web.off",
            reason="no users configured: the page has no default password",
            hint="run 'edge-agent hash-password' and add the hash under web.users",
        )
        return None
    metrics_token = ""
    if config.metrics_token is not None:
        try:
            metrics_token = read_secret(config.metrics_token)
        except SecretError as exc:
            log.error("web.metrics_token_unreadable", error=str(exc), hint="/metrics needs a login")
        else:
            if len(metrics_token) < _MIN_METRICS_TOKEN:
                log.warning(
                    "web.metrics_token_short",
                    length=len(metrics_token),
                    hint=f"use at least {_MIN_METRICS_TOKEN} random characters "
                    "(openssl rand -hex 24)",
                )
    server = WebServer(runtime, config, metrics_token=metrics_token)
    try:
        await server.start()
    except (OSError, ssl.SSLError) as exc:
        log.error("web.unavailable", listen=config.listen, error=str(exc))
        return None
    log.info(
        "web.listening",
        urls=server.urls,
        port=server.port,
        users=len(config.users),
        metrics=config.metrics,
        tls=config.tls is not None,
    )
    if not config.users:
        log.warning(
            "web.no_users",
            hint="only /metrics is served; add users with 'edge-agent hash-password'",
        )
    host = config.listen.rpartition(":")[0].strip("[]")
    if config.tls is None and host not in ("127.0.0.1", "::1", "localhost"):
        log.warning(
            "web.plaintext",
            listen=config.listen,
            hint="passwords and session cookies cross the LAN in clear: make a certificate "
            "with 'edge-agent web make-cert' and set web.tls, or listen on 127.0.0.1",
        )
    return server
