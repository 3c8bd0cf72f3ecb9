"""Connection limits and read deadlines for the page's listener: a hostile LAN's slow-loris.

aiohttp has no header read timeout and keeps a connection that has sent nothing for an hour.
1,100 half-open connections once took ``/metrics`` down at 1,024 open files. Here every
connection passes through a :class:`Guard` before aiohttp sees it:

- at most ``per_source`` connections from one address and ``total`` in all; one more is closed
  at once (one rate-limited log line, ``web.connection_refused``);
- a connection that is idle (just opened, or between keep-alive requests) is closed after
  ``idle_s``; once a request's first byte arrives its header must be complete within
  ``header_s``; its body must arrive within ``body_s`` (:meth:`Guard.read_body`).

The wrapper forwards every protocol call to aiohttp's own handler, so TLS and keep-alive work as
before.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import http_exceptions, web, web_response

from agent.logs import RateLimiter

if TYPE_CHECKING:
    import structlog

__all__ = ["Guard", "GuardLimits", "GuardedSite", "Handler", "request_logger"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SERVER_NAME = "edge-agent"
"""The ``Server:`` header: no versions for a scanner on the LAN to match against advisories."""
# aiohttp answers a request it cannot parse before any middleware runs, with its default
# "Python/3.x aiohttp/3.y" Server header; that default is this module-level name of aiohttp's.
web_response.SERVER_SOFTWARE = SERVER_NAME  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class GuardLimits:
    per_source: int = 32
    total: int = 256
    idle_s: float = 15.0
    header_s: float = 10.0
    body_s: float = 10.0


class _Phase(enum.Enum):
    IDLE = "idle"
    HEADER = "header"
    BUSY = "busy"


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the guard's counters and deadlines."""

    def __init__(self, guard: Guard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.source = ""
        self.admitted = False
        self.phase = _Phase.IDLE
        self._timer: asyncio.TimerHandle | None = None

    # -- the deadline of the current phase

    def _arm(self, phase: _Phase, after_s: float) -> None:
        self._disarm()
        self.phase = phase
        if after_s > 0:
            self._timer = asyncio.get_running_loop().call_later(after_s, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        self.guard.note("web.connection_timeout", self.source, phase=self.phase.value)
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.source = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        refused = self.guard.admit(self)
        if refused is not None:
            self.guard.note("web.connection_refused", self.source, reason=refused)
            transport.abort()
            return
        self.admitted = True
        self._arm(_Phase.IDLE, self.guard.limits.idle_s)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        if self.phase is _Phase.IDLE:
            self._arm(_Phase.HEADER, self.guard.limits.header_s)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.admitted:
            self.admitted = False
            self.guard.release(self)
            self.inner.connection_lost(exc)
        self.transport = None

    def pause_writing(self) -> None:
        if self.admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.admitted:
            self.inner.resume_writing()

    # -- told by the middleware

    def request_started(self) -> None:
        self._disarm()
        self.phase = _Phase.BUSY

    def request_done(self) -> None:
        if self.transport is not None and self.admitted:
            self._arm(_Phase.IDLE, self.guard.limits.idle_s)


class Guard:
    """A protocol factory in front of aiohttp's server, and the middleware that tells it when a
    request has arrived (install :meth:`middleware` first)."""

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        limits: GuardLimits,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.factory = factory
        self.limits = limits
        self.log = log
        self.limiter = RateLimiter()
        self.by_source: Counter[str] = Counter()
        self.open = 0

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self, self.factory())

    def admit(self, conn: _Guarded) -> str | None:
        """None when the connection may stay; else why not."""
        if self.open >= self.limits.total:
            return "total"
        if self.by_source[conn.source] >= self.limits.per_source:
            return "per_source"
        self.open += 1
        self.by_source[conn.source] += 1
        return None

    def release(self, conn: _Guarded) -> None:
        self.open -= 1
        self.by_source[conn.source] -= 1
        if self.by_source[conn.source] <= 0:
            del self.by_source[conn.source]

    def note(self, event: str, source: str, **fields: str) -> None:
        """One warning per event per source per interval, with the count held back."""
        held_back = self.limiter.allow((event, source))
        if held_back is not None:
            self.log.warning(
                event, remote=source, open=self.open, suppressed=held_back or None, **fields
            )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        conn = transport.get_protocol() if transport is not None else None
        guarded = conn if isinstance(conn, _Guarded) else None
        if guarded is not None:
            guarded.request_started()
        try:
            if request.body_exists:
                await self.read_body(request, guarded)
            return await handler(request)
        finally:
            if guarded is not None:
                guarded.request_done()

    async def read_body(self, request: web.Request, conn: _Guarded | None) -> None:
        """Read the body now, within ``body_s`` (aiohttp keeps it for ``post()``/``json()``)."""
        try:
            async with asyncio.timeout(self.limits.body_s):
                await request.read()
        except TimeoutError:
            self.note("web.connection_timeout", request.remote or "?", phase="body")
            if conn is not None and conn.transport is not None:
                conn.transport.abort()
            raise web.HTTPRequestTimeout(text="request body too slow\n") from None


class GuardedSite(web.TCPSite):
    """aiohttp's TCP site with a :class:`Guard` between the listener and aiohttp's handler."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str | None,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        guard: Callable[[Callable[[], asyncio.Protocol]], Guard],
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context)
        self._make_guard = guard
        self.guard: Guard | None = None

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        self.guard = self._make_guard(server)
        self._server = await asyncio.get_running_loop().create_server(
            self.guard,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )


class _RequestErrors(logging.Handler):
    """aiohttp's "Error handling request" records (with a traceback each) as one rate-limited
    structlog line: ``web.bad_request`` for a malformed request, ``web.request_error`` else."""

    def __init__(self, log: structlog.typing.FilteringBoundLogger) -> None:
        super().__init__(logging.WARNING)
        self.log = log
        self.limiter = RateLimiter()

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        bad = isinstance(exc, http_exceptions.HttpProcessingError)
        event = "web.bad_request" if bad else "web.request_error"
        remote = str(record.args[0]) if isinstance(record.args, tuple) and record.args else "?"
        held_back = self.limiter.allow((event, remote))
        if held_back is None:
            return
        error = f"{type(exc).__name__}: {exc}" if exc is not None else record.getMessage()
        self.log.warning(event, remote=remote, error=error[:300], suppressed=held_back or None)


def request_logger(log: structlog.typing.FilteringBoundLogger) -> logging.Logger:
    """The logger to hand aiohttp's request handler: its own, outside the logging tree."""
    # Not logging.getLogger: one per server, bound to its structlog logger, in no global tree.
    logger = logging.Logger("agent.web.http", logging.WARNING)  # noqa: LOG001
    logger.addHandler(_RequestErrors(log))
    logger.propagate = False
    return logger
