"""The HTTP transport of uplink API v1 (docs/uplink-api.md): signing, clock skew, and what each
HTTP answer means (:meth:`HttpTransport.classify`).

Network errors, timeouts, 408/409/425/429 and 5xx are transient (retried with backoff,
``Retry-After`` honoured); 401/403/404/405/407 and redirects are configuration or credential
problems (back off, report, never discard data); 413 and ``invalid_record`` split the batch; any
other 4xx makes it poison. What the pump does with each outcome is the same for every transport
(:mod:`agent.uplink.pump`).
"""

from __future__ import annotations

import dataclasses
import math
import random
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Final

import aiohttp
import orjson
import structlog
import yarl
from multidict import CIMultiDict

from agent.config.models import Gateway, HttpUplink
from agent.state import UplinkState
from agent.uplink.base import (
    CommandExecutor,
    Kind,
    Outcome,
    Payload,
    Polled,
    UplinkConfigError,
)
from agent.uplink.client import UplinkClient
from agent.uplink.commands import load_command_key
from agent.uplink.pump import Alarm
from agent.uplink.wire import parse_http_date_ms, signature_headers
from buffer import AsyncBuffer

__all__ = ["HttpTransport", "HttpUplinkClient", "UplinkConfigError"]

LONG_POLL_S: Final = 25.0
RETRY_AFTER_MAX_S: Final = 3600.0
"""A Retry-After longer than this is cut short: one bad header must not silence a gateway."""
ANSWER_MAX_BYTES: Final = 1 << 20
"""The platform's answers are small JSON documents; a larger one is refused unread."""
_SKEW_RESOLUTION_MS: Final = 1500
"""Date has one-second resolution; estimates closer than this to the current one are noise."""
_NETWORK_ERRORS: Final = (aiohttp.ClientError, TimeoutError, OSError)


def network_reason(exc: BaseException) -> str:
    """The reason code of a request that got no answer (:data:`LINK_REASONS`): what the page
    shows instead of the exception's text."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return "tls"
    # aiohttp wraps a failed connect; the OS error inside says why.
    cause: BaseException = exc
    otherwise = "network"
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause, otherwise = exc.os_error, "unreachable"
    if isinstance(cause, socket.gaierror):
        return "dns"
    if isinstance(cause, ConnectionRefusedError):
        return "refused"
    return otherwise


_JSON: Final = {"Content-Type": "application/json"}
_GZIPPED_JSON: Final = {**_JSON, "Content-Encoding": "gzip"}


class _AnswerTooLargeError(Exception):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    """Below the base URL, percent-encoded."""
    body: bytes
    headers: Mapping[str, str] = dataclasses.field(default_factory=lambda: _JSON)
    query: str = ""
    timeout_s: float | None = None
    """None: ``uplink.http.timeout_s``."""
    observe_date: bool = True
    """Correct the clock skew from the answer's ``Date``."""


class _Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> object:
        try:
            return orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError:
            return None

    def error_code(self) -> str | None:
        doc = self.json()
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return str(doc["error"])
        return None

    def describe(self) -> str:
        doc = self.json()
        if isinstance(doc, dict) and "error" in doc:
            return f"HTTP {self.status} {doc.get('error')}: {doc.get('message', '')}".rstrip(": ")
        text = self.body[:200].decode("utf-8", "replace").strip()
        return f"HTTP {self.status}" + (f": {text}" if text else "")


class HttpTransport:
    """Signed requests to one platform base URL over one aiohttp session."""

    name: Final = "http"

    def __init__(
        self,
        config: HttpUplink,
        *,
        gateway_id: str,
        secret: str,
        state: UplinkState,
        log: structlog.typing.FilteringBoundLogger,
        agent_version: str,
        clock: Callable[[], float] = time.time,
        long_poll_s: float = LONG_POLL_S,
    ) -> None:
        if not secret:
            raise UplinkConfigError("uplink.http.secret is empty")
        self._config = config
        self._secret = secret.encode("utf-8")
        self._state = state
        self._log = log
        self._clock = clock
        self._long_poll_s = long_poll_s
        self._user_agent = f"community-edge-agent/{agent_version}"
        self._base = yarl.URL(config.url.rstrip("/"))
        self._gw_path = f"/v1/gateways/{urllib.parse.quote(gateway_id, safe='')}"
        self._ssl = _client_ssl_context(config) if self._base.scheme == "https" else None
        self._session: aiohttp.ClientSession | None = None
        self._skew_ms = 0

    @property
    def address(self) -> str:
        return str(self._base.with_user(None))

    def now_ms(self) -> int:
        """The platform's idea of now: the local clock corrected by the skew seen in ``Date``."""
        return int(self._clock() * 1000) + self._skew_ms

    async def open(self) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl or True, limit=4),
                headers={"User-Agent": self._user_agent},
            )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    # ------------------------------------------------------------------ the interface

    async def send(self, payload: Payload) -> Outcome:
        return await self._call(
            _Request("POST", f"{self._gw_path}/records", payload.gzipped, _GZIPPED_JSON)
        )

    async def put_inventory(self, document: bytes) -> Outcome:
        return await self._call(_Request("PUT", f"{self._gw_path}/inventory", document))

    async def poll_commands(self) -> Polled:
        outcome = await self._call(
            _Request(
                "GET",
                f"{self._gw_path}/commands",
                b"",
                {},
                query=f"wait_s={self._long_poll_s:g}",
                timeout_s=self._long_poll_s + self._config.timeout_s,
                # The platform answers at the end of the wait: its Date is not the middle of it.
                observe_date=False,
            )
        )
        if outcome.kind is not Kind.ACK:
            return Polled(outcome)
        commands = (outcome.body or {}).get("commands")
        if not isinstance(commands, list):
            return Polled(
                Outcome(
                    Kind.RETRY,
                    "commands poll answer has no 'commands' array",
                    reason="unexpected",
                    status=outcome.status,
                )
            )
        return Polled(outcome, commands)

    async def report_result(self, command_id: str, document: bytes) -> Outcome:
        path = f"{self._gw_path}/commands/{urllib.parse.quote(command_id, safe='')}/result"
        return await self._call(_Request("POST", path, document))

    # ------------------------------------------------------------------ outcomes

    async def _call(self, request: _Request) -> Outcome:
        """The outcome of one request: network errors are RETRY outcomes, never raised."""
        try:
            resp = await self._request(request)
        except _AnswerTooLargeError:
            return Outcome(
                Kind.RETRY,
                f"the platform's answer is larger than {ANSWER_MAX_BYTES} bytes: not read",
                reason="too_large",
            )
        except _NETWORK_ERRORS as exc:
            reason = network_reason(exc)
            if reason == "timeout":
                text = "timed out waiting for the platform"
            else:
                text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return Outcome(Kind.RETRY, text, reason=reason)
        return self.classify(resp)

    def classify(self, resp: _Response) -> Outcome:
        status = resp.status
        if status in (200, 201, 204):
            doc = resp.json()
            return Outcome(Kind.ACK, body=doc if isinstance(doc, dict) else None, status=status)
        retry_after = self.retry_after(resp.headers.get("Retry-After"))
        if status in (408, 409, 425, 429) or status >= 500:
            reason = "server_error" if status >= 500 else "busy"
            return Outcome(Kind.RETRY, resp.describe(), retry_after, reason=reason, status=status)
        if status in (401, 403, 407):
            return Outcome(
                Kind.AUTH,
                f"authentication failed ({resp.describe()}): check uplink.http.key_id, the "
                "secret and the gateway id registered at the platform",
                retry_after,
                reason="auth",
                status=status,
            )
        if status in (404, 405):
            return Outcome(
                Kind.AUTH,
                f"the platform does not serve this API here ({resp.describe()}): "
                "check uplink.http.url",
                retry_after,
                reason="wrong_url",
                status=status,
            )
        if 300 <= status < 400:
            return Outcome(
                Kind.AUTH,
                f"redirected to {resp.headers.get('Location')!r} ({status}); "
                "set uplink.http.url to the final address",
                retry_after,
                reason="redirect",
                status=status,
            )
        if status == 413 or (status == 400 and resp.error_code() == "invalid_record"):
            return Outcome(Kind.SPLIT, resp.describe(), status=status)
        if 400 <= status < 500:
            return Outcome(Kind.POISON, resp.describe(), status=status)
        return Outcome(
            Kind.RETRY,
            f"unexpected answer {resp.describe()}",
            retry_after,
            reason="unexpected",
            status=status,
        )

    def retry_after(self, value: str | None) -> float | None:
        if not value:
            return None
        value = value.strip()
        try:
            seconds = float(value)
        except ValueError:
            when = parse_http_date_ms(value)
            if when is None:
                return None
            seconds = (when - self.now_ms()) / 1000
        if math.isnan(seconds):
            return None
        return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)

    # ------------------------------------------------------------------ HTTP

    async def _request(self, request: _Request) -> _Response:
        """One signed request; retried once at once when the platform says our clock is off."""
        if self._session is None:
            raise RuntimeError("the uplink is not running")
        method, body = request.method, request.body
        url = self._base.with_path(self._base.raw_path.rstrip("/") + request.path, encoded=True)
        if request.query:
            url = url.with_query(request.query)
        # Signed exactly as it goes on the wire: aiohttp sends raw_path_qs as the target.
        target = url.raw_path_qs
        timeout = aiohttp.ClientTimeout(total=request.timeout_s or self._config.timeout_s)
        for attempt in (1, 2):
            wall_sent = self._clock()
            signed = signature_headers(
                self._config.key_id, self._secret, method, target, self.now_ms(), body
            )
            async with self._session.request(
                method,
                url,
                data=body or None,
                headers={**request.headers, **signed},
                timeout=timeout,
                # A redirect would be followed with a signature for another path: useless.
                allow_redirects=False,
                ssl=self._ssl or True,
            ) as raw:
                data = await raw.content.read(ANSWER_MAX_BYTES + 1)
                if len(data) > ANSWER_MAX_BYTES:
                    raise _AnswerTooLargeError
                resp = _Response(raw.status, CIMultiDict(raw.headers), data)
            skew_changed = request.observe_date and self._observe_date(
                resp.headers.get("Date"), (wall_sent + self._clock()) / 2
            )
            if (
                attempt == 1
                and resp.status == 401
                and resp.error_code() == "stale_timestamp"
                and skew_changed
            ):
                continue
            return resp
        return resp

    def _observe_date(self, date: str | None, local_mid_s: float) -> bool:
        """Correct the clock skew from the platform's ``Date``; True when the estimate moved."""
        server_ms = parse_http_date_ms(date)
        if server_ms is None:
            return False
        # Date is truncated to the second: the platform's clock was somewhere in the next one.
        estimate = server_ms + 500 - int(local_mid_s * 1000)
        if abs(estimate - self._skew_ms) <= _SKEW_RESOLUTION_MS:
            return False
        self._log.warning(
            "uplink.clock_skew",
            skew_ms=estimate,
            hint="signing with the platform's time; check NTP on the gateway",
        )
        self._skew_ms = estimate
        self._state.clock_skew_ms = estimate
        return True


def _client_ssl_context(config: HttpUplink) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=config.ca_file)
        if config.cert_file is not None and config.key_file is not None:
            ctx.load_cert_chain(config.cert_file, config.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise UplinkConfigError(f"uplink.http TLS files: {exc}") from exc
    return ctx


class HttpUplinkClient(UplinkClient):
    """An :class:`UplinkClient` over :class:`HttpTransport`, built from ``uplink.http``."""

    def __init__(
        self,
        config: HttpUplink,
        *,
        gateway: Gateway,
        secret: str,
        buffer: AsyncBuffer,
        state: UplinkState,
        inventory: Callable[[], Mapping[str, object]],
        commands: CommandExecutor | None,
        log: structlog.typing.FilteringBoundLogger,
        agent_version: str,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        backoff_base_s: float = 1.0,
        idle_poll_s: float = 0.5,
        inventory_check_s: float = 10.0,
        long_poll_s: float = LONG_POLL_S,
        gzip_level: int = 6,
        clock_synced: Callable[[], bool] | None = None,
        alarm: Alarm | None = None,
    ) -> None:
        log = log.bind(transport="http")
        transport = HttpTransport(
            config,
            gateway_id=gateway.id,
            secret=secret,
            state=state,
            log=log,
            agent_version=agent_version,
            clock=clock,
            long_poll_s=long_poll_s,
        )
        command_key = None
        if config.commands and commands is not None:
            command_key = (
                commands,
                load_command_key(config.command_key_file, section="uplink.http"),
            )
        super().__init__(
            transport,
            gateway_id=gateway.id,
            buffer=buffer,
            state=state,
            inventory=inventory,
            commands=command_key,
            log=log,
            command_max_lifetime_s=config.command_max_lifetime_s,
            clock_synced=clock_synced,
            alarm=alarm,
            max_records=config.batch_max_records,
            max_bytes=config.batch_max_kb * 1024,
            backoff_cap_s=config.backoff_cap_s,
            first_attempt_jitter_s=config.first_attempt_jitter_s,
            clock=clock,
            rng=rng,
            backoff_first_s=backoff_base_s,
            idle_poll_s=idle_poll_s,
            inventory_check_s=inventory_check_s,
            gzip_level=gzip_level,
        )
