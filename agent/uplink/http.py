"""The HTTP uplink: buffer -> platform over uplink API v1 (docs/uplink-api.md).

One batch is in flight at a time, so records leave in the buffer's order (events and status
before readings, ``seq`` order within each) and a batch is acknowledged to the buffer only after
the platform answered 200, which it does only after storing it. A crash between the two means a
resend, which the platform counts as duplicates: end to end, exactly once. The work around the
request is pipelined instead: a few batches are taken at once, the next one is compressed and the
previous one acknowledged to the buffer while a request is on the wire.

Failures are classified once, in :meth:`HttpUplinkClient._classify`: network errors, timeouts,
408/409/425/429 and 5xx are transient (full-jitter exponential backoff, ``Retry-After``
honoured); 401/403/404/405/407 and redirects are configuration or credential problems (back off,
report, never discard data); 413 splits the batch; any other 4xx makes the batch poison: it is
set aside in the buffer and the rest keeps flowing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import random
import ssl
import time
import urllib.parse
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson
import structlog
import yarl
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from multidict import CIMultiDict

from agent import backoff
from agent.config.models import Gateway, HttpUplink
from agent.driver import CommandError
from agent.state import UplinkState
from agent.uplink.base import REFUSAL_REASONS, CommandExecutor
from agent.uplink.wire import (
    load_ed25519_public_key,
    parse_http_date_ms,
    signature_headers,
    verify_command,
)
from buffer import AsyncBuffer, Batch

__all__ = ["HttpUplinkClient", "UplinkConfigError"]

LONG_POLL_S: Final = 25.0
RETRY_AFTER_MAX_S: Final = 3600.0
"""A Retry-After longer than this is cut short: one bad header must not silence a gateway."""
_SKEW_RESOLUTION_MS: Final = 1500
"""Date has one-second resolution; estimates closer than this to the current one are noise."""
_SEEN_COMMANDS_MAX: Final = 4096
_INLINE_GZIP_MAX: Final = 64 * 1024
"""Bodies larger than this are compressed in a worker thread to keep the event loop free."""
_RESULT_ATTEMPTS: Final = 8
_CHUNK_BATCHES: Final = 4
"""Batches taken from the buffer at once (see ``_records_loop``)."""


class UplinkConfigError(ValueError):
    """The uplink cannot start: a TLS file or the command key is missing or invalid."""


class _Kind(enum.Enum):
    ACK = "ack"
    RETRY = "retry"
    """Transient: the platform or the network failed; try the same batch again later."""
    AUTH = "auth"
    """Credentials or configuration are wrong; retrying will not help until someone fixes it,
    but discarding data would not help either."""
    SPLIT = "split"
    POISON = "poison"


@dataclasses.dataclass(frozen=True, slots=True)
class _Outcome:
    kind: _Kind
    error: str | None = None
    retry_after_s: float | None = None
    body: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Prepared:
    body_size: int
    """Bytes of the JSON before compression."""
    data: bytes
    """What goes on the wire (gzip)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
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


class HttpUplinkClient:
    """Sends the buffer's records to the platform and runs the platform's commands.

    ``run`` works until cancelled; ``close`` releases the HTTP session. ``clock`` (wall time in
    seconds) and ``rng`` exist so tests can give the gateway a wrong clock and fix the jitter.
    """

    transport: Final = "http"

    def __init__(
        self,
        config: HttpUplink,
        *,
        gateway: Gateway,
        secret: str,
        buffer: AsyncBuffer,
        state: UplinkState,
        inventory: Callable[[], dict[str, Any]],
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
    ) -> None:
        if not secret:
            raise UplinkConfigError("uplink.http.secret is empty")
        self._config = config
        self._gateway = gateway
        self._secret = secret.encode("utf-8")
        self._buffer = buffer
        self._state = state
        self._inventory = inventory
        self._log = log.bind(transport="http")
        self._agent_version = agent_version
        self._clock = clock
        self._rng = rng or random.Random()
        self._backoff_base_s = backoff_base_s
        self._idle_poll_s = idle_poll_s
        self._inventory_check_s = inventory_check_s
        self._long_poll_s = long_poll_s
        self._gzip_level = gzip_level
        self._max_bytes = config.batch_max_kb * 1024
        base = config.url.rstrip("/")
        self._base = yarl.URL(base)
        self._gw_path = f"/v1/gateways/{urllib.parse.quote(gateway.id, safe='')}"
        self._ssl = _client_ssl_context(config) if self._base.scheme == "https" else None
        self._executor = commands if config.commands else None
        self._command_key: Ed25519PublicKey | None = None
        if self._executor is not None:
            self._command_key = _load_command_key(config.command_key_file)
        self._session: aiohttp.ClientSession | None = None
        self._started = False
        self._failures = 0
        self._link = "unknown"
        self._link_error: str | None = None
        self._down_since_ms: int | None = None
        self._skew_ms = 0
        self._inventory_sent: bytes | None = None
        self._inventory_checked = float("-inf")
        self._seen_commands: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._commands_failures = 0
        self._commands_error: str | None = None
        self.body_bytes_sent = 0
        """Uncompressed bytes of the acknowledged record batches (bytes_sent is compressed)."""
        state.transport = "http"

    # ------------------------------------------------------------------ public

    @property
    def state(self) -> UplinkState:
        return self._state

    def now_ms(self) -> int:
        """The platform's idea of now: the local clock corrected by the skew seen in ``Date``."""
        return int(self._clock() * 1000) + self._skew_ms

    async def run(self) -> None:
        """Upload until cancelled. Exceptions other than cancellation are bugs; the runtime's
        supervisor logs them and calls ``run`` again."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl or True, limit=4),
            )
        if not self._started:
            self._started = True
            await self._first_attempt_jitter()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._records_loop(), name="uplink[http].records")
            if self._executor is not None and self._command_key is not None:
                tasks.create_task(self._commands_loop(), name="uplink[http].commands")

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
        self._state.connected = False
        self._state.next_attempt_ms = None

    # ------------------------------------------------------------------ records

    async def _first_attempt_jitter(self) -> None:
        # A district power cut brings hundreds of gateways back at once: spread them out.
        delay = self._rng.uniform(0, self._config.first_attempt_jitter_s)
        if delay > 0:
            self._log.info("uplink.starting", first_attempt_in_s=round(delay, 2))
            await self._sleep_until_attempt(delay)

    async def _sleep_until_attempt(self, delay_s: float) -> None:
        self._state.next_attempt_ms = int(self._clock() * 1000 + delay_s * 1000)
        try:
            await asyncio.sleep(delay_s)
        finally:
            self._state.next_attempt_ms = None

    async def _records_loop(self) -> None:
        max_records = self._config.batch_max_records
        while True:
            outcome = await self._sync_inventory()
            if outcome is not None and outcome.kind in (_Kind.RETRY, _Kind.AUTH):
                await self._back_off(outcome)
                continue
            # Take several batches' worth at once and cut it into batches: while one batch is
            # on the wire, the next is compressed and the previous acknowledged on the other
            # core. The platform still sees one batch at a time, in order.
            chunk = await self._buffer.take(
                max_records * _CHUNK_BATCHES, self._max_bytes * _CHUNK_BATCHES
            )
            if chunk is None:
                await asyncio.sleep(self._idle_poll_s)
                continue
            await self._deliver_chunk(chunk.cut(max_records, self._max_bytes))

    async def _deliver_chunk(self, parts: list[Batch]) -> None:
        acks: list[asyncio.Future[int]] = []
        upcoming: asyncio.Task[_Prepared] | None = None
        try:
            upcoming = asyncio.create_task(self._prepare(parts[0]))
            for i, part in enumerate(parts):
                assert upcoming is not None
                prepared = await upcoming
                upcoming = None
                if i + 1 < len(parts):
                    upcoming = asyncio.create_task(self._prepare(parts[i + 1]))
                if not await self._deliver(part, prepared, acks):
                    # After a failure, take afresh: events that arrived meanwhile go first.
                    break
        except BaseException:
            await _settle(acks, quiet=True)
            raise
        finally:
            if upcoming is not None:
                upcoming.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await upcoming
        # Acks run on the buffer's own thread, in order; the next take must see them done, or
        # it would hand out the same records again.
        await _settle(acks, quiet=False)

    async def _deliver(
        self, batch: Batch, prepared: _Prepared, acks: list[asyncio.Future[int]]
    ) -> bool:
        """Send ``batch`` until it is acknowledged or set aside (split halves in order).

        False when it failed (the backoff has been waited here): the caller then takes from the
        buffer again instead of going on with its chunk, so what arrived meanwhile is ordered
        by priority again.
        """
        pending: collections.deque[tuple[Batch, _Prepared | None]] = collections.deque(
            [(batch, prepared)]
        )
        while pending:
            current, ready = pending[0]
            if ready is None:
                ready = await self._prepare(current)
                pending[0] = (current, ready)
            outcome = await self._post_batch(current, ready)
            if outcome.kind is _Kind.ACK:
                acks.append(asyncio.ensure_future(self._buffer.ack(current)))
                pending.popleft()
            elif outcome.kind is _Kind.SPLIT:
                first, second = current.split()
                pending.popleft()
                pending.extendleft(((second, None), (first, None)))
            elif outcome.kind is _Kind.POISON:
                reason = outcome.error or "rejected"
                await self._buffer.set_aside(current, reason)
                pending.popleft()
                self._state.batches_poisoned += 1
                self._log.error(
                    "uplink.batch_poisoned",
                    records=len(current.records),
                    epoch=current.epoch,
                    ranges=[list(r) for r in current.ranges],
                    reason=reason,
                    hint="set aside in the buffer's poison table; the rest keeps flowing",
                )
            else:
                await self._back_off(outcome)
                return False
        return True

    async def _prepare(self, batch: Batch) -> _Prepared:
        """The request body of ``batch``: its JSON and the gzip of it."""
        body = b'{"epoch":' + orjson.dumps(batch.epoch) + b',"records":' + batch.body() + b"}"
        if len(body) > _INLINE_GZIP_MAX:
            # zlib releases the GIL: a worker thread compresses on the other core.
            data = await asyncio.to_thread(zlib.compress, body, self._gzip_level, 31)
        else:
            data = zlib.compress(body, self._gzip_level, 31)
        return _Prepared(len(body), data)

    async def _post_batch(self, batch: Batch, prepared: _Prepared) -> _Outcome:
        data = prepared.data
        started = time.monotonic()
        try:
            resp = await self._request(
                "POST",
                f"{self._gw_path}/records",
                data,
                {"Content-Type": "application/json", "Content-Encoding": "gzip"},
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return self._failed(_network_error(exc))
        outcome = self._classify(resp, splittable=len(batch.records) > 1)
        if outcome.kind is _Kind.ACK:
            self._succeeded(time.monotonic() - started)
            self._state.records_sent += len(batch.records)
            self._state.bytes_sent += len(data)
            self.body_bytes_sent += prepared.body_size
            self._state.batches_sent += 1
            doc = outcome.body or {}
            if doc.get("duplicates"):
                self._log.info(
                    "uplink.duplicates",
                    duplicates=doc.get("duplicates"),
                    accepted=doc.get("accepted"),
                    hint="a resend after a lost acknowledgement; the platform stored them once",
                )
        elif outcome.kind in (_Kind.RETRY, _Kind.AUTH):
            return self._failed(outcome)
        else:
            # The platform answered: the link works even though this batch cannot go.
            self._succeeded(time.monotonic() - started)
        return outcome

    def _classify(self, resp: _Response, *, splittable: bool) -> _Outcome:
        status = resp.status
        if status in (200, 201, 204):
            doc = resp.json()
            return _Outcome(_Kind.ACK, body=doc if isinstance(doc, dict) else None)
        retry_after = self._retry_after(resp.headers.get("Retry-After"))
        if status in (408, 409, 425, 429) or status >= 500:
            return _Outcome(_Kind.RETRY, resp.describe(), retry_after)
        if status in (401, 403, 407):
            return _Outcome(
                _Kind.AUTH,
                f"authentication failed ({resp.describe()}): check uplink.http.key_id, the "
                "secret and the gateway id registered at the platform",
                retry_after,
            )
        if status in (404, 405):
            return _Outcome(
                _Kind.AUTH,
                f"the platform does not serve this API here ({resp.describe()}): "
                "check uplink.http.url",
                retry_after,
            )
        if 300 <= status < 400:
            return _Outcome(
                _Kind.AUTH,
                f"redirected to {resp.headers.get('Location')!r} ({status}); "
                "set uplink.http.url to the final address",
                retry_after,
            )
        if status == 413 or (status == 400 and resp.error_code() == "invalid_record"):
            # Too large, or some record in it is invalid: halve until the culprit is alone, so
            # only what really cannot go is set aside.
            if splittable:
                return _Outcome(_Kind.SPLIT, resp.describe())
            return _Outcome(_Kind.POISON, resp.describe())
        if 400 <= status < 500:
            return _Outcome(_Kind.POISON, resp.describe())
        return _Outcome(_Kind.RETRY, f"unexpected answer {resp.describe()}", retry_after)

    def _retry_after(self, value: str | None) -> float | None:
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
        return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)

    # ------------------------------------------------------------------ link state

    def _succeeded(self, latency_s: float) -> None:
        state = self._state
        now = int(self._clock() * 1000)
        state.last_success_ms = now
        state.last_latency_ms = round(latency_s * 1000, 1)
        if self._link != "up":
            if self._link == "down":
                self._log.info(
                    "uplink.recovered",
                    failed_attempts=self._failures,
                    down_for_s=round((now - (self._down_since_ms or now)) / 1000, 1),
                )
            else:
                self._log.info("uplink.connected", url=str(self._base))
        self._link = "up"
        self._link_error = None
        self._failures = 0
        self._down_since_ms = None
        state.connected = True

    def _failed(self, outcome: _Outcome) -> _Outcome:
        state = self._state
        now = int(self._clock() * 1000)
        state.connected = False
        state.batches_failed += 1
        state.last_error = outcome.error
        state.last_error_ms = now
        self._failures += 1
        category = _category(outcome)
        # One line per change of link state (or of the kind of failure), not one per retry.
        if self._link != "down" or self._link_error != category:
            log = self._log.error if outcome.kind is _Kind.AUTH else self._log.warning
            log(
                "uplink.auth_failed" if outcome.kind is _Kind.AUTH else "uplink.failing",
                error=outcome.error,
            )
            if self._link != "down":
                self._down_since_ms = now
        self._link = "down"
        self._link_error = category
        return outcome

    def _backoff_delay(self, failures: int, retry_after_s: float | None) -> float:
        delay = backoff.full_jitter(
            failures - 1,
            first_s=self._backoff_base_s,
            cap_s=self._config.backoff_cap_s,
            rng=self._rng,
        )
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        return delay

    async def _back_off(self, outcome: _Outcome) -> None:
        await self._sleep_until_attempt(self._backoff_delay(self._failures, outcome.retry_after_s))

    # ------------------------------------------------------------------ inventory

    def _inventory_body(self) -> dict[str, Any]:
        gw = self._gateway
        gateway: dict[str, Any] = {
            "id": gw.id,
            "name": gw.name,
            "code": gw.code,
            "community": {"code": gw.community.code, "name": gw.community.name},
            "timezone": gw.timezone,
            "agent_version": self._agent_version,
        }
        inventory = dict(self._inventory())
        extra = inventory.pop("gateway", None)
        if isinstance(extra, Mapping):
            # The runtime knows derived values (the gateway's code); it wins where it says
            # something, except the id, which must match the path the platform checks.
            gateway.update({k: v for k, v in extra.items() if v is not None and k != "id"})
        inventory.setdefault("devices", [])
        return {"gateway": gateway, **inventory}

    def inventory_changed(self) -> None:
        """Check the inventory on the next round, not after ``inventory_check_s``."""
        self._inventory_checked = float("-inf")

    async def _sync_inventory(self) -> _Outcome | None:
        """PUT the inventory at start and whenever it changed; None when nothing to do."""
        now = time.monotonic()
        if now - self._inventory_checked < self._inventory_check_s:
            return None
        self._inventory_checked = now
        try:
            doc = self._inventory_body()
        except Exception:
            # A bug in building the inventory must not stop the records.
            self._log.exception("uplink.inventory_failed")
            return None
        canonical = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
        if canonical == self._inventory_sent:
            return None
        started = time.monotonic()
        try:
            resp = await self._request(
                "PUT",
                f"{self._gw_path}/inventory",
                canonical,
                {"Content-Type": "application/json"},
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._inventory_checked = float("-inf")
            return self._failed(_network_error(exc))
        outcome = self._classify(resp, splittable=False)
        if outcome.kind is _Kind.ACK:
            self._succeeded(time.monotonic() - started)
            self._inventory_sent = canonical
            self._log.info("uplink.inventory_sent", devices=len(doc.get("devices") or ()))
        elif outcome.kind is _Kind.POISON or outcome.kind is _Kind.SPLIT:
            # The platform will not take this inventory; records still go. Try again only
            # when the inventory changes.
            self._succeeded(time.monotonic() - started)
            self._inventory_sent = canonical
            self._state.last_error = f"inventory rejected: {outcome.error}"
            self._state.last_error_ms = int(self._clock() * 1000)
            self._log.error("uplink.inventory_rejected", error=outcome.error)
        else:
            self._inventory_checked = float("-inf")
            return self._failed(outcome)
        return outcome

    # ------------------------------------------------------------------ commands

    async def _commands_loop(self) -> None:
        while True:
            try:
                resp = await self._request(
                    "GET",
                    f"{self._gw_path}/commands",
                    b"",
                    {},
                    query=f"wait_s={self._long_poll_s:g}",
                    timeout_s=self._long_poll_s + self._config.timeout_s,
                )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                await self._commands_back_off(_network_error(exc).error)
                continue
            outcome = self._classify(resp, splittable=False)
            if outcome.kind is not _Kind.ACK:
                await self._commands_back_off(outcome.error, outcome.retry_after_s)
                continue
            if self._commands_failures:
                self._log.info("uplink.commands_recovered", failed_polls=self._commands_failures)
            self._commands_failures = 0
            self._commands_error = None
            doc = outcome.body or {}
            commands = doc.get("commands")
            if not isinstance(commands, list):
                await self._commands_back_off("commands poll answer has no 'commands' array")
                continue
            for command in commands:
                await self._handle_command(command)

    async def _commands_back_off(
        self, error: str | None, retry_after_s: float | None = None
    ) -> None:
        self._commands_failures += 1
        if error != self._commands_error:
            self._log.warning("uplink.commands_failing", error=error)
            self._commands_error = error
        await asyncio.sleep(self._backoff_delay(self._commands_failures, retry_after_s))

    def _check_command(self, command: Mapping[str, Any]) -> tuple[str, str, str] | None:
        """(status, reason, message) when the command must not run; None when it may."""
        assert self._command_key is not None
        if not command.get("signature"):
            return "refused", "unsigned", "the command carries no signature"
        if not verify_command(self._command_key, command):
            return "refused", "bad_signature", "the signature does not verify (tampered?)"
        if command.get("gateway") != self._gateway.id:
            return (
                "refused",
                "wrong_gateway",
                f"the command is for gateway {command.get('gateway')!r}",
            )
        device, action, args = command.get("device"), command.get("action"), command.get("args")
        expires = command.get("expires_ms")
        if (
            not isinstance(device, str)
            or not isinstance(action, str)
            or not isinstance(args, dict)
            or not isinstance(expires, int)
        ):
            return "refused", "malformed", "device, action, args and expires_ms are required"
        now = self.now_ms()
        if expires < now:
            return "expired", "expired", f"expired {(now - expires) / 1000:.1f} s ago"
        return None

    async def _handle_command(self, command: Any) -> None:
        command_id = command.get("id") if isinstance(command, dict) else None
        if not isinstance(command_id, str) or not command_id:
            self._log.warning("command.malformed", hint="a command without an id is ignored")
            return
        if command_id in self._seen_commands:
            # Platforms may deliver twice (a lost poll answer); a command runs once.
            self._log.debug("command.duplicate", command_id=command_id)
            return
        self._seen_commands[command_id] = None
        while len(self._seen_commands) > _SEEN_COMMANDS_MAX:
            self._seen_commands.popitem(last=False)
        audit = {
            "command_id": command_id,
            "device": command.get("device"),
            "action": command.get("action"),
        }
        refusal = self._check_command(command)
        if refusal is not None:
            status, reason, message = refusal
            self._log.warning("command.refused", **audit, status=status, reason=reason)
            await self._report(command_id, status, reason=reason, error=message)
            return
        assert self._executor is not None
        try:
            result = await self._executor(
                command["device"],
                command["action"],
                command["args"],
                source="platform",
                command_id=command_id,
            )
        except CommandError as exc:
            status = "refused" if exc.reason in REFUSAL_REASONS else "failed"
            await self._report(command_id, status, reason=exc.reason, error=str(exc))
            return
        except Exception as exc:
            self._log.exception("command.crashed", **audit)
            await self._report(
                command_id, "failed", reason="internal_error", error=f"{type(exc).__name__}: {exc}"
            )
            return
        await self._report(command_id, "ok", result=dict(result))

    async def _report(
        self,
        command_id: str,
        status: str,
        *,
        result: Mapping[str, Any] | None = None,
        reason: str | None = None,
        error: str | None = None,
    ) -> None:
        path = f"{self._gw_path}/commands/{urllib.parse.quote(command_id, safe='')}/result"
        for attempt in range(1, _RESULT_ATTEMPTS + 1):
            doc: dict[str, Any] = {
                "status": status,
                "result": dict(result or {}),
                "ts": self.now_ms(),
            }
            if reason is not None:
                doc["reason"] = reason
            if error is not None:
                doc["error"] = error
            body = orjson.dumps(doc, default=str)
            try:
                resp = await self._request("POST", path, body, {"Content-Type": "application/json"})
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem: str | None = _network_error(exc).error
                retry_after = None
            else:
                outcome = self._classify(resp, splittable=False)
                if outcome.kind is _Kind.ACK:
                    return
                if outcome.kind is _Kind.POISON:
                    self._log.error(
                        "command.result_rejected", command_id=command_id, error=outcome.error
                    )
                    return
                problem, retry_after = outcome.error, outcome.retry_after_s
            if attempt < _RESULT_ATTEMPTS:
                await asyncio.sleep(self._backoff_delay(attempt, retry_after))
        self._log.error("command.result_lost", command_id=command_id, status=status, error=problem)

    # ------------------------------------------------------------------ HTTP

    async def _request(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        query: str = "",
        timeout_s: float | None = None,
    ) -> _Response:
        """One signed request; retried once at once when the platform says our clock is off."""
        if self._session is None:
            raise RuntimeError("the uplink is not running")
        url = self._base.with_path(self._base.raw_path.rstrip("/") + path, encoded=True)
        if query:
            url = url.with_query(query)
        # Signed exactly as it goes on the wire: aiohttp sends raw_path_qs as the target.
        target = url.raw_path_qs
        timeout = aiohttp.ClientTimeout(total=timeout_s or self._config.timeout_s)
        for attempt in (1, 2):
            wall_sent = self._clock()
            signed = signature_headers(
                self._config.key_id, self._secret, method, target, self.now_ms(), body
            )
            async with self._session.request(
                method,
                url,
                data=body or None,
                headers={**headers, **signed},
                timeout=timeout,
                # A redirect would be followed with a signature for another path: useless.
                allow_redirects=False,
                ssl=self._ssl or True,
            ) as raw:
                data = await raw.read()
                resp = _Response(raw.status, CIMultiDict(raw.headers), data)
            skew_changed = self._observe_date(
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


async def _settle(acks: list[asyncio.Future[int]], *, quiet: bool) -> None:
    """Wait for the buffer acks in flight, even when cancelled meanwhile.

    An ack abandoned halfway would not lose data (the platform dedups the resend) but would
    send it twice; so on cancellation the acks still finish, then the cancellation goes on.
    """
    if not acks:
        return
    done = asyncio.ensure_future(asyncio.gather(*acks, return_exceptions=quiet))
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        await asyncio.wait({done})
        if not done.cancelled():
            done.exception()  # retrieved: the cancellation is what goes on
        raise


def _category(outcome: _Outcome) -> str:
    return f"{outcome.kind.value}:{(outcome.error or '')[:40]}"


def _network_error(exc: BaseException) -> _Outcome:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        text = "timed out waiting for the platform"
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return _Outcome(_Kind.RETRY, text)


def _client_ssl_context(config: HttpUplink) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=config.ca_file)
        if config.cert_file is not None and config.key_file is not None:
            ctx.load_cert_chain(config.cert_file, config.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise UplinkConfigError(f"uplink.http TLS files: {exc}") from exc
    return ctx


def _load_command_key(path: Path | None) -> Ed25519PublicKey:
    if path is None:
        raise UplinkConfigError(
            "uplink.http.command_key_file is required when commands are on: it is the "
            "platform's Ed25519 public key (PEM) that proves commands come from the platform "
            "(or set uplink.http.commands: false)"
        )
    try:
        return load_ed25519_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise UplinkConfigError(f"uplink.http.command_key_file {path}: {exc}") from exc
