"""The HTTP API of the reference platform: the gateway endpoints of API v1 and the
integrator's admin endpoints (records, inventory, commands, faults)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import hmac
import math
import secrets
import sqlite3
import ssl
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final

import orjson
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.uplink.wire import (
    MAX_SKEW_MS,
    ack_document,
    command_envelope,
    parse_authorization,
    sha256_hex,
    sign_command,
    valid_nonce,
    verify_request_signature,
)
from reference_platform.contract import (
    ApiError,
    OpenApiContract,
    first_problem,
    read_json,
    validate_inventory,
    validate_record,
)
from reference_platform.faults import FAULT_MODES, Fault
from reference_platform.keys import GatewayKey, parse_keys, public_pem
from reference_platform.store import Store

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

COMMAND_STATUSES: Final = ("ok", "failed", "refused", "expired")
MAX_BODY_BYTES: Final = 32 * 1024 * 1024
"""Largest request body accepted as sent (compressed)."""
_NONCES_MAX: Final = 1_000_000
"""Nonces remembered at most (some 55 requests a second from every gateway for 10 minutes)."""
MAX_INVENTORY_BYTES: Final = 8 * 1024 * 1024
"""Largest inventory accepted, decompressed (some 20,000 devices)."""
MAX_BATCH_BYTES: Final = 64 * 1024 * 1024
"""Largest batch after decompression; more is 413 (and guards against gzip bombs)."""
MAX_WAIT_S: Final = 60.0
_MAX_INVALID_SEQS: Final = 20
_LOG_ENTRY: Final = web.RequestKey("log_entry", dict)


def _json(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(obj), status=status, content_type="application/json", headers=headers
    )


def _error_response(err: ApiError) -> web.Response:
    return _json({"error": err.code, "message": err.message, **err.extra}, err.status, err.headers)


def _http_date(ms: float) -> str:
    return email.utils.formatdate(ms / 1000, usegmt=True)


def _int_param(request: web.Request, name: str, default: int | None) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ApiError(400, "bad_parameter", f"{name} must be an integer") from None
    if not -(2**63) <= number < 2**63:
        raise ApiError(400, "bad_parameter", f"{name} must fit in 64 bits")
    return number


def _gunzip(body: bytes, limit: int, too_large: str) -> bytes | ApiError:
    """A gzip body decompressed, at most ``limit`` bytes: a small bomb must not become a
    gigabyte in memory."""
    if body[:2] != b"\x1f\x8b":
        # aiohttp decompresses request bodies itself unless auto_decompress=False.
        return ApiError(400, "bad_encoding", "Content-Encoding: gzip but the body is not gzip")
    dec = zlib.decompressobj(wbits=31)
    try:
        raw = dec.decompress(body, limit + 1)
    except zlib.error as exc:
        return ApiError(400, "bad_encoding", f"invalid gzip data: {exc}")
    if len(raw) > limit or dec.unconsumed_tail:
        return ApiError(413, too_large, f"the body exceeds {limit} bytes decompressed")
    if not dec.eof:
        return ApiError(400, "bad_encoding", "truncated gzip data")
    return raw


class ReferencePlatform:
    """State and handlers of one reference platform app."""

    def __init__(
        self,
        db_path: Path,
        keys: Mapping[str, GatewayKey],
        *,
        command_key: Ed25519PrivateKey | None = None,
        admin_token: str | None = None,
        durability: str = "full",
        clock: Callable[[], float] = time.time,
        contract: OpenApiContract | None = None,
        redeliver_after_s: float = 30.0,
    ) -> None:
        self.keys = dict(keys)
        self.redeliver_after_ms = int(redeliver_after_s * 1000)
        """A command delivered but not answered goes out again after this: it counts as
        delivered only once the gateway's result arrives (the agent runs it at most once)."""
        self._nonces: collections.OrderedDict[tuple[str, str], int] = collections.OrderedDict()
        self.contract = contract
        """Contract mode (the test suite's): bodies are checked against docs/openapi.yaml."""
        self.store = Store(db_path, durability=durability)
        self.command_key = command_key or Ed25519PrivateKey.generate()
        pub = self.command_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        # A short, stable id of the signing key, so a platform can rotate keys visibly.
        self.command_key_id = sha256_hex(pub)[:16]
        self.admin_token = admin_token or secrets.token_urlsafe(24)
        self.clock = clock
        self.fault = Fault()
        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=10_000)
        self._command_waiters: dict[str, asyncio.Event] = {}
        self._fault_changed = asyncio.Event()
        self._closing = asyncio.Event()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- lifecycle

    async def on_startup(self, _app: web.Application) -> None:
        await self.store.open()

    async def on_shutdown(self, _app: web.Application) -> None:
        # Wake hung handlers and long polls so shutdown does not wait for them.
        self._closing.set()
        self._fault_changed.set()
        for ev in self._command_waiters.values():
            ev.set()

    async def on_cleanup(self, _app: web.Application) -> None:
        await self.store.close()

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        # Every answer carries Date from the platform's clock: agents correct their skew by it.
        del request
        response.headers["Date"] = _http_date(self.now_ms())

    # -- middleware

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        entry: dict[str, Any] = {
            "ms": self.now_ms(),
            "method": request.method,
            "path": request.path,
            "key_id": request.headers.get("X-Key-Id"),
            "status": None,
        }
        self.requests.append(entry)
        request[_LOG_ENTRY] = entry
        try:
            response = await handler(request)
        except ApiError as err:
            response = _error_response(err)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = _json(
                {"error": exc.reason.lower().replace(" ", "_"), "message": exc.text or exc.reason},
                exc.status,
            )
            for name in ("Allow", "Retry-After"):
                if name in exc.headers:
                    response.headers[name] = exc.headers[name]
        entry["status"] = response.status
        return response

    # -- authentication

    def _check_admin(self, request: web.Request) -> None:
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme != "Bearer" or not hmac.compare_digest(
            token.strip().encode(), self.admin_token.encode()
        ):
            raise ApiError(
                401,
                "unauthorized",
                "admin endpoints need 'Authorization: Bearer <admin token>'",
                headers={"WWW-Authenticate": 'Bearer realm="reference-platform"'},
            )

    async def _authenticate(self, request: web.Request) -> tuple[GatewayKey, bytes]:
        """Verify the EA1-HMAC-SHA256 signature; return the key and the body as sent."""
        key_id = request.headers.get("X-Key-Id")
        ts_text = request.headers.get("X-Timestamp")
        nonce = request.headers.get("X-Nonce")
        digest = request.headers.get("X-Content-SHA256")
        signature = parse_authorization(request.headers.get("Authorization"))
        if not key_id or not ts_text or not nonce or not digest or not signature:
            raise ApiError(
                401,
                "missing_auth",
                "X-Key-Id, X-Timestamp, X-Nonce, X-Content-SHA256 and "
                "'Authorization: EA1-HMAC-SHA256 Signature=<hex>' are required",
            )
        if not valid_nonce(nonce):
            raise ApiError(401, "bad_nonce", "X-Nonce must be 16 to 64 of [A-Za-z0-9_-]")
        key = self.keys.get(key_id)
        if key is None:
            raise ApiError(401, "unknown_key", "unknown key id")
        try:
            ts = int(ts_text)
        except ValueError:
            raise ApiError(401, "bad_timestamp", "X-Timestamp must be UTC milliseconds") from None
        if not verify_request_signature(
            key.secret, request.method, request.raw_path, ts, nonce, digest, signature
        ):
            raise ApiError(401, "bad_signature", "signature does not match")
        now = self.now_ms()
        skew = ts - now
        if abs(skew) > MAX_SKEW_MS:
            raise ApiError(
                401,
                "stale_timestamp",
                f"X-Timestamp is {skew / 1000:+.0f} s from the platform's clock "
                f"(allowed ±{MAX_SKEW_MS // 1000} s); correct it with the Date header",
            )
        if key.gateway != request.match_info.get("gateway_id"):
            raise ApiError(403, "wrong_gateway", "this key belongs to another gateway")
        body = await request.read()
        if sha256_hex(body) != digest.lower():
            raise ApiError(401, "digest_mismatch", "X-Content-SHA256 does not match the body")
        self._remember_nonce(key_id, nonce, now)
        return key, body

    def _remember_nonce(self, key_id: str, nonce: str, now: int) -> None:
        """Refuse a nonce seen within the timestamp window: a captured request replayed (a long
        poll that would take the gateway's door command) is refused, not served."""
        nonces = self._nonces
        while nonces and (next(iter(nonces.values())) < now or len(nonces) >= _NONCES_MAX):
            nonces.popitem(last=False)
        if (key_id, nonce) in nonces:
            raise ApiError(401, "replayed_request", "this X-Nonce was used already")
        # Kept for both halves of the window: a timestamp accepted now may be up to
        # MAX_SKEW_MS in the future.
        nonces[(key_id, nonce)] = now + 2 * MAX_SKEW_MS

    async def _apply_fault(self, request: web.Request) -> web.StreamResponse | None:
        """Misbehave as configured with POST /admin/fault; only agent-facing endpoints do."""
        fault = self.fault
        if fault.mode == "none":
            return None
        if fault.count is not None:
            fault.count -= 1
            if fault.count <= 0:
                self.fault = Fault(max_records=fault.max_records)
        request[_LOG_ENTRY]["fault"] = fault.mode
        if fault.mode == "refuse":
            # Drop the connection without an answer: the agent sees a network error.
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        if fault.mode == "hang":
            # Accept and never answer (until the fault changes or the platform stops).
            while not self._closing.is_set() and self.fault.mode == "hang":
                self._fault_changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._fault_changed.wait(), 1.0)
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        if fault.mode == "slow":
            await asyncio.sleep(fault.delay_s)
            return None
        if fault.mode == "portal":
            # What a hotel-style captive portal or a proxy's login page answers: 200, HTML.
            page = "<html><body><h1>Welcome</h1><p>Please log in first.</p></body></html>"
            return web.Response(status=200, text=page, content_type="text/html")
        if fault.mode == "bad_ack":
            return _json({"ok": True})
        status = int(fault.mode)
        headers = {}
        if fault.retry_after_s is not None:
            headers["Retry-After"] = str(max(0, round(fault.retry_after_s)))
        code = {
            "400": "bad_request",
            "503": "unavailable",
            "500": "internal_error",
            "429": "too_many_requests",
        }
        raise ApiError(status, code[fault.mode], f"fault injected: {fault.mode}", headers=headers)

    def _agent(
        self, handler: Callable[[web.Request, GatewayKey, bytes], Awaitable[web.Response]]
    ) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            faulted = await self._apply_fault(request)
            if faulted is not None:
                return faulted
            key, body = await self._authenticate(request)
            return await handler(request, key, body)

        return wrapped

    def _admin(self, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            self._check_admin(request)
            return await handler(request)

        return wrapped

    def _known_gateway(self, gateway_id: str) -> None:
        if not any(k.gateway == gateway_id for k in self.keys.values()):
            raise ApiError(404, "unknown_gateway", f"no key is registered for {gateway_id}")

    # -- agent endpoints

    async def post_records(
        self, request: web.Request, key: GatewayKey, body: bytes
    ) -> web.Response:
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        max_records = self.fault.max_records
        result = await self.store.run(
            self._ingest, key.gateway, body, encoding, self.now_ms(), max_records
        )
        if isinstance(result, ApiError):
            raise result
        return _json(result)

    def _ingest(
        self,
        gateway: str,
        body: bytes,
        encoding: str,
        received_ms: int,
        max_records: int | None,
    ) -> dict[str, Any] | ApiError:
        """Decode, validate and store one batch (runs on the store's thread)."""
        if encoding == "gzip":
            unzipped = _gunzip(body, MAX_BATCH_BYTES, "batch_too_large")
            if isinstance(unzipped, ApiError):
                return unzipped
            raw = unzipped
        elif encoding in ("identity", ""):
            raw = body
        else:
            return ApiError(415, "unsupported_encoding", f"Content-Encoding {encoding!r}")
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return ApiError(400, "malformed_batch", f"body is not JSON: {exc}")
        if not isinstance(doc, dict):
            return ApiError(400, "malformed_batch", "body must be an object")
        epoch, records = doc.get("epoch"), doc.get("records")
        if not isinstance(epoch, str) or not 0 < len(epoch) <= 128:
            return ApiError(400, "malformed_batch", "epoch must be a string of 1..128 chars")
        if not isinstance(records, list):
            return ApiError(400, "malformed_batch", "records must be an array")
        if max_records is not None and len(records) > max_records:
            return ApiError(
                413,
                "batch_too_large",
                f"at most {max_records} records per batch",
                extra={"max_records": max_records},
            )
        rows: list[tuple[Any, ...]] = []
        bad: list[Any] = []
        last_seq: int | None = None
        dumps = orjson.dumps
        for rec in records:
            problem = validate_record(rec)
            if problem is not None:
                bad.append(rec.get("seq") if isinstance(rec, dict) else None)
                if len(bad) >= _MAX_INVALID_SEQS:
                    break
                continue
            seq = rec["seq"]
            if last_seq is None or seq > last_seq:
                last_seq = seq
            rows.append(
                (
                    gateway,
                    epoch,
                    seq,
                    rec["kind"],
                    rec["device"],
                    rec["ts"],
                    received_ms,
                    dumps(rec),
                )
            )
        if bad:
            return ApiError(
                400,
                "invalid_record",
                f"{len(bad)} invalid record(s); first problem: {first_problem(records)}",
                extra={"seqs": bad},
            )
        if self.contract is not None:
            try:
                self.contract.check("POST", "/v1/gateways/{gateway_id}/records", doc)
            except ApiError as exc:
                return exc
        added = self.store.insert_records(rows) if rows else 0
        return ack_document(epoch, added, len(rows) - added, last_seq)

    async def put_inventory(
        self, request: web.Request, key: GatewayKey, body: bytes
    ) -> web.Response:
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding == "gzip":
            unzipped = await self.store.run(
                _gunzip, body, MAX_INVENTORY_BYTES, "inventory_too_large"
            )
            if isinstance(unzipped, ApiError):
                raise unzipped
            body = unzipped
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "malformed_inventory", f"body is not JSON: {exc}") from None
        problem = validate_inventory(doc, key.gateway)
        if problem is not None:
            raise ApiError(400, "malformed_inventory", problem)
        if self.contract is not None:
            self.contract.check("PUT", "/v1/gateways/{gateway_id}/inventory", doc)
        canonical = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
        now = self.now_ms()

        def store() -> tuple[int, bool]:
            rows = self.store.query(
                "SELECT body, revision FROM inventory WHERE gateway = ?", (key.gateway,)
            )
            if rows and rows[0][0] == canonical:
                return int(rows[0][1]), False
            revision = int(rows[0][1]) + 1 if rows else 1
            self.store.execute(
                "INSERT OR REPLACE INTO inventory (gateway, body, updated_ms, revision)"
                " VALUES (?, ?, ?, ?)",
                (key.gateway, canonical, now, revision),
            )
            return revision, True

        revision, changed = await self.store.run(store)
        return _json({"devices": len(doc["devices"]), "revision": revision, "changed": changed})

    async def get_commands(
        self, request: web.Request, key: GatewayKey, body: bytes
    ) -> web.Response:
        del body
        wait = request.query.get("wait_s", "25")
        try:
            wait_s = float(wait)
        except ValueError:
            raise ApiError(400, "bad_parameter", "wait_s must be a number") from None
        if not math.isfinite(wait_s):
            raise ApiError(400, "bad_parameter", "wait_s must be a finite number of seconds")
        wait_s = min(max(wait_s, 0.0), MAX_WAIT_S)
        deadline = time.monotonic() + wait_s
        gateway = key.gateway
        while True:
            waiter = self._command_waiters.setdefault(gateway, asyncio.Event())
            transport = request.transport
            if transport is None or transport.is_closing():
                # The agent gave up on this poll: do not mark commands delivered to nobody.
                raise asyncio.CancelledError
            commands = await self.store.run(self._take_commands, gateway, self.now_ms())
            remaining = deadline - time.monotonic()
            if commands or remaining <= 0 or self._closing.is_set():
                return _json({"commands": commands})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), remaining)

    def _take_commands(self, gateway: str, now: int) -> list[dict[str, Any]]:
        conn = self.store.conn
        conn.execute("BEGIN")
        try:
            # Past their expiry, platform-made commands are not delivered at all; raw ones
            # (queued verbatim through /admin/raw-command for tests) always are.
            conn.execute(
                "UPDATE commands SET status = 'expired', error = 'expired before delivery',"
                " result_ms = ? WHERE gateway = ? AND status IN ('queued', 'delivered')"
                " AND result_ms IS NULL AND raw = 0 AND expires_ms < ?",
                (now, gateway, now),
            )
            # Delivered counts only once the result arrives: a delivery nobody answered (a
            # lost answer, a gateway that restarted) goes out again after a while.
            rows = conn.execute(
                "SELECT id, body FROM commands WHERE gateway = ? AND (status = 'queued'"
                " OR (status = 'delivered' AND result_ms IS NULL AND delivered_ms <= ?))"
                " ORDER BY created_ms, rowid",
                (gateway, now - self.redeliver_after_ms),
            ).fetchall()
            conn.executemany(
                "UPDATE commands SET status = 'delivered', delivered_ms = ? WHERE id = ?",
                [(now, r[0]) for r in rows],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        # Each command as its exact signed bytes with the signature beside them (docs,
        # "Commands"): the gateway verifies before it parses.
        return [command_envelope(orjson.loads(r[1])) for r in rows]

    async def post_command_result(
        self, request: web.Request, key: GatewayKey, body: bytes
    ) -> web.Response:
        command_id = request.match_info["command_id"]
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "malformed_result", f"body is not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("status") not in COMMAND_STATUSES:
            raise ApiError(
                400, "malformed_result", f"status must be one of {', '.join(COMMAND_STATUSES)}"
            )
        result = doc.get("result")
        if result is not None and not isinstance(result, dict):
            raise ApiError(400, "malformed_result", "result must be an object")
        error = doc.get("error")
        if error is not None and not isinstance(error, str):
            raise ApiError(400, "malformed_result", "error must be a string")
        if self.contract is not None:
            self.contract.check(
                "POST", "/v1/gateways/{gateway_id}/commands/{command_id}/result", doc
            )
        now = self.now_ms()

        def store() -> str | None:
            rows = self.store.query(
                "SELECT status, result_ms FROM commands WHERE id = ? AND gateway = ?",
                (command_id, key.gateway),
            )
            if not rows:
                return None
            if rows[0][1] is not None and rows[0][0] in COMMAND_STATUSES:
                return "duplicate"
            self.store.execute(
                "UPDATE commands SET status = ?, result = ?, error = ?, result_ms = ? WHERE id = ?",
                (doc["status"], orjson.dumps(doc), error, now, command_id),
            )
            return "stored"

        outcome = await self.store.run(store)
        if outcome is None:
            raise ApiError(404, "unknown_command", f"no command {command_id} for this gateway")
        return _json({"stored": outcome == "stored", "duplicate": outcome == "duplicate"})

    # -- integrator (admin) endpoints

    async def list_gateways(self, request: web.Request) -> web.Response:
        del request

        def collect() -> list[dict[str, Any]]:
            counts = {
                r[0]: (r[1], r[2])
                for r in self.store.query(
                    "SELECT gateway, count(*), max(received_ms) FROM records GROUP BY gateway"
                )
            }
            inv = {
                r[0]: (r[1], r[2])
                for r in self.store.query("SELECT gateway, updated_ms, revision FROM inventory")
            }
            pending = dict(
                self.store.query(
                    "SELECT gateway, count(*) FROM commands"
                    " WHERE status IN ('queued', 'delivered') GROUP BY gateway"
                )
            )
            ids = sorted({k.gateway for k in self.keys.values()} | set(counts) | set(inv))
            return [
                {
                    "id": gw,
                    "key_ids": sorted(k.key_id for k in self.keys.values() if k.gateway == gw),
                    "records": counts.get(gw, (0, None))[0],
                    "last_record_ms": counts.get(gw, (0, None))[1],
                    "inventory_updated_ms": inv.get(gw, (None, None))[0],
                    "inventory_revision": inv.get(gw, (None, None))[1],
                    "pending_commands": pending.get(gw, 0),
                }
                for gw in ids
            ]

        return _json({"gateways": await self.store.run(collect)})

    async def get_records(self, request: web.Request) -> web.Response:
        gateway = request.match_info["gateway_id"]
        device = request.query.get("device")
        kind = request.query.get("kind")
        epoch = request.query.get("epoch")
        after_seq = _int_param(request, "after_seq", None)
        after_id = _int_param(request, "after_id", 0)
        limit = _int_param(request, "limit", 1000) or 1000
        limit = min(max(limit, 1), 10_000)
        order = request.query.get("order", "oldest")
        if order not in ("oldest", "newest"):
            raise ApiError(400, "bad_parameter", "order must be oldest or newest")
        newest = order == "newest"
        sql = ["SELECT rowid, epoch, seq, received_ms, body FROM records WHERE gateway = ?"]
        params: list[Any] = [gateway]
        for column, value in (("device", device), ("kind", kind), ("epoch", epoch)):
            if value:
                sql.append(f"AND {column} = ?")
                params.append(value)
        if after_seq is not None:
            sql.append("AND seq > ?")
            params.append(after_seq)
        # The newest: the last ``limit`` of them, still listed in arrival order.
        sql.append(f"AND rowid > ? ORDER BY rowid {'DESC' if newest else ''} LIMIT ?")
        params += [after_id, limit]
        rows = await self.store.run(self.store.query, " ".join(sql), params)
        if newest:
            rows.reverse()
        out = [
            {
                "id": r[0],
                "epoch": r[1],
                "seq": r[2],
                "received_ms": r[3],
                "record": orjson.loads(r[4]),
            }
            for r in rows
        ]
        return _json({"records": out, "next_after_id": out[-1]["id"] if out else after_id})

    async def get_inventory(self, request: web.Request) -> web.Response:
        gateway = request.match_info["gateway_id"]
        rows = await self.store.run(
            self.store.query,
            "SELECT body, updated_ms, revision FROM inventory WHERE gateway = ?",
            (gateway,),
        )
        if not rows:
            raise ApiError(404, "no_inventory", f"{gateway} has not sent its inventory yet")
        body, updated_ms, revision = rows[0]
        return _json(
            {"inventory": orjson.loads(body), "updated_ms": updated_ms, "revision": revision}
        )

    async def queue_command(self, request: web.Request) -> web.Response:
        gateway = request.match_info["gateway_id"]
        self._known_gateway(gateway)
        doc = await read_json(request)
        device, action = doc.get("device"), doc.get("action")
        args = doc.get("args", {})
        expires_in_s = doc.get("expires_in_s", 300)
        if not isinstance(device, str) or not device or not isinstance(action, str) or not action:
            raise ApiError(400, "malformed_command", "device and action are required strings")
        if not isinstance(args, dict):
            raise ApiError(400, "malformed_command", "args must be an object")
        if not isinstance(expires_in_s, (int, float)) or not 0 < expires_in_s <= 86_400:
            raise ApiError(400, "malformed_command", "expires_in_s must be in (0, 86400]")
        if self.contract is not None:
            self.contract.check("POST", "/v1/gateways/{gateway_id}/commands", doc)
        now = self.now_ms()
        command: dict[str, Any] = {
            "id": str(doc.get("id") or uuid.uuid4().hex),
            "gateway": gateway,
            "device": device,
            "action": action,
            "args": args,
            "issued_ms": now,
            "expires_ms": now + int(expires_in_s * 1000),
            "key_id": self.command_key_id,
        }
        command["signature"] = sign_command(self.command_key, command)
        await self._queue(gateway, command, raw=False, expires_ms=command["expires_ms"])
        return _json({"command": command, "status": "queued"}, status=201)

    async def queue_raw_command(self, request: web.Request) -> web.Response:
        doc = await read_json(request)
        gateway, command = doc.get("gateway"), doc.get("command")
        if not isinstance(gateway, str) or not isinstance(command, dict):
            raise ApiError(400, "malformed_command", "gateway (string) and command (object)")
        if not isinstance(command.get("id"), str) or not command["id"]:
            raise ApiError(400, "malformed_command", "command.id must be a non-empty string")
        self._known_gateway(gateway)
        expires = command.get("expires_ms")
        await self._queue(
            gateway, command, raw=True, expires_ms=expires if isinstance(expires, int) else None
        )
        return _json({"command": command, "status": "queued"}, status=201)

    async def _queue(
        self, gateway: str, command: Mapping[str, Any], *, raw: bool, expires_ms: int | None
    ) -> None:
        now = self.now_ms()
        try:
            await self.store.run(
                self.store.execute,
                "INSERT INTO commands (id, gateway, body, raw, status, created_ms, expires_ms)"
                " VALUES (?, ?, ?, ?, 'queued', ?, ?)",
                (command["id"], gateway, orjson.dumps(command), int(raw), now, expires_ms),
            )
        except sqlite3.IntegrityError:
            raise ApiError(409, "duplicate_command", "a command with this id exists") from None
        # Wake the gateway's long poll.
        waiter = self._command_waiters.pop(gateway, None)
        if waiter is not None:
            waiter.set()

    async def get_command(self, request: web.Request) -> web.Response:
        gateway = request.match_info["gateway_id"]
        command_id = request.match_info["command_id"]
        rows = await self.store.run(
            self.store.query,
            "SELECT body, status, created_ms, delivered_ms, result, error, result_ms"
            " FROM commands WHERE id = ? AND gateway = ?",
            (command_id, gateway),
        )
        if not rows:
            raise ApiError(404, "unknown_command", f"no command {command_id} for {gateway}")
        body, status, created, delivered, result, error, result_ms = rows[0]
        reported = orjson.loads(result) if result is not None else None
        return _json(
            {
                "command": orjson.loads(body),
                "status": status,
                "created_ms": created,
                "delivered_ms": delivered,
                "result": reported.get("result") if reported else None,
                "reason": reported.get("reason") if reported else None,
                "error": error,
                "result_ms": result_ms,
                "reported_ts": reported.get("ts") if reported else None,
            }
        )

    async def get_command_key(self, request: web.Request) -> web.Response:
        del request
        return _json(
            {"key_id": self.command_key_id, "public_key_pem": public_pem(self.command_key).decode()}
        )

    async def health(self, request: web.Request) -> web.Response:
        del request
        return _json({"ok": True, "time_ms": self.now_ms()})

    async def set_fault(self, request: web.Request) -> web.Response:
        doc = await read_json(request)
        mode = str(doc.get("mode", "none"))
        if mode not in FAULT_MODES:
            raise ApiError(400, "bad_fault", f"mode must be one of {', '.join(FAULT_MODES)}")
        count = doc.get("count")
        retry_after = doc.get("retry_after_s")
        delay = doc.get("delay_s", 0)
        max_records = doc.get("max_records")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ApiError(400, "bad_fault", "count must be a positive integer or null")
        if retry_after is not None and not isinstance(retry_after, (int, float)):
            raise ApiError(400, "bad_fault", "retry_after_s must be a number")
        if not isinstance(delay, (int, float)) or delay < 0:
            raise ApiError(400, "bad_fault", "delay_s must be a non-negative number")
        if max_records is not None and (not isinstance(max_records, int) or max_records < 1):
            raise ApiError(400, "bad_fault", "max_records must be a positive integer or null")
        self.fault = Fault(mode, retry_after, float(delay), count, max_records)
        self._fault_changed.set()
        return _json({"fault": self.fault.as_dict()})

    async def get_fault(self, request: web.Request) -> web.Response:
        del request
        return _json({"fault": self.fault.as_dict()})

    async def get_requests(self, request: web.Request) -> web.Response:
        contains = request.query.get("path_contains", "")
        since = _int_param(request, "since_ms", 0) or 0
        out = [r for r in list(self.requests) if contains in r["path"] and r["ms"] >= since]
        return _json({"requests": out})


PLATFORM: Final = web.AppKey("platform", ReferencePlatform)


def build_app(
    db_path: Path,
    keys: Mapping[str, GatewayKey] | Mapping[str, Mapping[str, Any]],
    *,
    command_key: Ed25519PrivateKey | None = None,
    admin_token: str | None = None,
    durability: str = "full",
    clock: Callable[[], float] = time.time,
    contract: OpenApiContract | None = None,
    redeliver_after_s: float = 30.0,
) -> web.Application:
    """The reference platform as an aiohttp application (its state is ``app[PLATFORM]``)."""
    platform = ReferencePlatform(
        db_path,
        parse_keys(keys),
        command_key=command_key,
        admin_token=admin_token,
        durability=durability,
        clock=clock,
        contract=contract,
        redeliver_after_s=redeliver_after_s,
    )
    app = web.Application(
        middlewares=[platform.middleware],
        client_max_size=MAX_BODY_BYTES,
        # The body digest is over the bytes as sent (gzip): aiohttp must not inflate them.
        handler_args={"auto_decompress": False},
    )
    app[PLATFORM] = platform
    app.on_startup.append(platform.on_startup)
    app.on_shutdown.append(platform.on_shutdown)
    app.on_cleanup.append(platform.on_cleanup)
    app.on_response_prepare.append(platform.on_response_prepare)
    gw = "/v1/gateways/{gateway_id}"
    p = platform
    app.router.add_post(f"{gw}/records", p._agent(p.post_records))
    app.router.add_put(f"{gw}/inventory", p._agent(p.put_inventory))
    app.router.add_get(f"{gw}/commands", p._agent(p.get_commands), allow_head=False)
    app.router.add_post(f"{gw}/commands/{{command_id}}/result", p._agent(p.post_command_result))
    app.router.add_get("/v1/gateways", p._admin(p.list_gateways), allow_head=False)
    app.router.add_get(f"{gw}/records", p._admin(p.get_records), allow_head=False)
    app.router.add_get(f"{gw}/inventory", p._admin(p.get_inventory), allow_head=False)
    app.router.add_post(f"{gw}/commands", p._admin(p.queue_command))
    app.router.add_get(f"{gw}/commands/{{command_id}}", p._admin(p.get_command), allow_head=False)
    app.router.add_get("/v1/command-key", p.get_command_key, allow_head=False)
    app.router.add_get("/v1/health", p.health, allow_head=False)
    app.router.add_post("/admin/fault", p._admin(p.set_fault))
    app.router.add_get("/admin/fault", p._admin(p.get_fault), allow_head=False)
    app.router.add_get("/admin/requests", p._admin(p.get_requests), allow_head=False)
    app.router.add_post("/admin/raw-command", p._admin(p.queue_raw_command))
    return app


def server_ssl_context(
    cert: Path | None, key: Path | None, client_ca: Path | None
) -> ssl.SSLContext | None:
    if cert is None:
        if key is not None or client_ca is not None:
            raise ValueError("--tls-key and --client-ca need --tls-cert")
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def start_site(
    app: web.Application,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ssl_context: ssl.SSLContext | None = None,
    shutdown_timeout: float = 2.0,
) -> tuple[web.AppRunner, int]:
    """Start ``app`` on host:port (0: an ephemeral port); returns the runner and the port."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
    await site.start()
    server = site._server
    bound = port
    if isinstance(server, asyncio.base_events.Server) and server.sockets:
        bound = int(server.sockets[0].getsockname()[1])
    return runner, bound
