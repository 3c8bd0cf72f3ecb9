"""The reference platform: the far end of uplink API v1 (docs/uplink-api.md).

City integrators run it to see exactly what the agent sends; the demo and the tests use it as the
platform. It verifies every request the way a real platform must (HMAC signature, timestamp
window, key bound to the gateway), stores records in SQLite once per ``(gateway, epoch, seq)``
and answers 200 only after the commit, keeps each gateway's inventory, queues Ed25519-signed
commands for the long poll and stores their results. ``POST /admin/fault`` makes it misbehave
(refuse, 503, 500, hang, slow, 413) so the agent's retry logic can be seen and tested.

Run it with ``edge-agent reference-platform`` or ``python -m agent.uplink.reference_platform``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import email.utils
import hmac
import json
import os
import secrets
import signal
import sqlite3
import ssl
import sys
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson
import yaml
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.uplink.auth import (
    MAX_SKEW_MS,
    load_ed25519_private_key,
    parse_authorization,
    sha256_hex,
    sign_command,
    verify_request_signature,
)

__all__ = [
    "FAULT_MODES",
    "PLATFORM",
    "GatewayKey",
    "ReferencePlatform",
    "build_app",
    "load_command_key",
    "load_keys",
    "main",
    "serve",
    "start_site",
]

FAULT_MODES: Final = ("none", "refuse", "503", "500", "429", "hang", "slow")
COMMAND_STATUSES: Final = ("ok", "failed", "refused", "expired")
RECORD_KINDS: Final = frozenset({"reading", "event", "status"})
MAX_BODY_BYTES: Final = 32 * 1024 * 1024
"""Largest request body accepted as sent (compressed)."""
MAX_BATCH_BYTES: Final = 64 * 1024 * 1024
"""Largest batch after decompression; more is 413 (and guards against gzip bombs)."""
MAX_WAIT_S: Final = 60.0
_MAX_INVALID_SEQS: Final = 20
_T = TypeVar("_T")
_LOG_ENTRY: Final = web.RequestKey("log_entry", dict)


@dataclasses.dataclass(frozen=True, slots=True)
class GatewayKey:
    key_id: str
    gateway: str
    secret: bytes = dataclasses.field(repr=False)


def load_keys(path: Path) -> dict[str, GatewayKey]:
    """Read a keys file: YAML or JSON mapping ``key_id -> {gateway: id, secret: text}``."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return parse_keys(data, source=str(path))


def parse_keys(data: Any, *, source: str = "keys") -> dict[str, GatewayKey]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a mapping key_id -> {{gateway, secret}}")
    keys: dict[str, GatewayKey] = {}
    for key_id, entry in data.items():
        if isinstance(entry, GatewayKey):
            keys[str(key_id)] = entry
            continue
        if not isinstance(entry, Mapping):
            raise ValueError(f"{source}: {key_id}: expected {{gateway: ..., secret: ...}}")
        gateway, secret = entry.get("gateway"), entry.get("secret")
        if not isinstance(gateway, str) or not gateway:
            raise ValueError(f"{source}: {key_id}.gateway: a gateway id is required")
        if not isinstance(secret, str) or not secret:
            raise ValueError(f"{source}: {key_id}.secret: a non-empty secret is required")
        keys[str(key_id)] = GatewayKey(str(key_id), gateway, secret.encode("utf-8"))
    return keys


def load_command_key(path: Path | None) -> Ed25519PrivateKey:
    """Load the platform's Ed25519 signing key; generate and save it (and FILE.pub) if missing."""
    if path is None:
        return Ed25519PrivateKey.generate()
    if path.exists():
        return load_ed25519_private_key(path.read_bytes())
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    Path(f"{path}.pub").write_bytes(public_pem(key))
    return key


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class ApiError(Exception):
    """An error answer: ``{"error": code, "message": ...}`` with an HTTP status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


@dataclasses.dataclass(slots=True)
class Fault:
    mode: str = "none"
    retry_after_s: float | None = None
    delay_s: float = 0.0
    count: int | None = None
    """Agent requests still to affect; None: until changed."""
    max_records: int | None = None
    """Batches with more records than this get 413 (independent of ``mode``)."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- storage -------------------------------------------------------------------------------

# No secondary index on records: each one costs about a third more per insert, and the insert
# path is what keeps up with a draining gateway; queries by device scan, which suits a
# reference platform. The rowid is the arrival order the integrator GET pages by.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    gateway TEXT NOT NULL,
    epoch TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    device TEXT NOT NULL,
    ts INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (gateway, epoch, seq)
);
CREATE TABLE IF NOT EXISTS inventory (
    gateway TEXT PRIMARY KEY,
    body BLOB NOT NULL,
    updated_ms INTEGER NOT NULL,
    revision INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    body BLOB NOT NULL,
    raw INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER,
    delivered_ms INTEGER,
    result BLOB,
    error TEXT,
    result_ms INTEGER
);
CREATE INDEX IF NOT EXISTS commands_pending ON commands (gateway, status);
"""

_INSERT = (
    "INSERT OR IGNORE INTO records (gateway, epoch, seq, kind, device, ts, received_ms, body)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


class Store:
    """SQLite behind one worker thread: every call runs there, so the event loop never blocks
    and the connection is only ever used by one thread."""

    def __init__(self, path: Path, *, durability: str = "full") -> None:
        self._path = path
        self._durability = durability
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="refplatform-db"
        )
        self._conn: sqlite3.Connection | None = None

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        await self.run(self._open)

    def _open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per batch.
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        sync = "FULL" if self._durability == "full" else "NORMAL"
        conn.execute(f"PRAGMA synchronous={sync}")
        conn.executescript(_SCHEMA)
        self._conn = conn

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.run(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, params).fetchall()

    def insert_records(self, rows: Sequence[tuple[Any, ...]]) -> int:
        """Insert one batch in one transaction; the number of new rows (the rest are dups)."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            cur = conn.executemany(_INSERT, rows)
            added = cur.rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return added

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement in its own (autocommit) transaction; rows changed."""
        return self.conn.execute(sql, params).rowcount


# --- the application ------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
        return int(value)
    except ValueError:
        raise ApiError(400, "bad_parameter", f"{name} must be an integer") from None


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
    ) -> None:
        self.keys = dict(keys)
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
        digest = request.headers.get("X-Content-SHA256")
        signature = parse_authorization(request.headers.get("Authorization"))
        if not key_id or not ts_text or not digest or not signature:
            raise ApiError(
                401,
                "missing_auth",
                "X-Key-Id, X-Timestamp, X-Content-SHA256 and "
                "'Authorization: EA1-HMAC-SHA256 Signature=<hex>' are required",
            )
        key = self.keys.get(key_id)
        if key is None:
            raise ApiError(401, "unknown_key", "unknown key id")
        try:
            ts = int(ts_text)
        except ValueError:
            raise ApiError(401, "bad_timestamp", "X-Timestamp must be UTC milliseconds") from None
        if not verify_request_signature(
            key.secret, request.method, request.raw_path, ts, digest, signature
        ):
            raise ApiError(401, "bad_signature", "signature does not match")
        skew = ts - self.now_ms()
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
        return key, body

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
        status = int(fault.mode)
        headers = {}
        if fault.retry_after_s is not None:
            headers["Retry-After"] = str(max(0, round(fault.retry_after_s)))
        code = {"503": "unavailable", "500": "internal_error", "429": "too_many_requests"}
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
            if body[:2] != b"\x1f\x8b":
                # aiohttp decompresses request bodies itself unless auto_decompress=False.
                return ApiError(
                    400, "bad_encoding", "Content-Encoding: gzip but the body is not gzip"
                )
            dec = zlib.decompressobj(wbits=31)
            try:
                raw = dec.decompress(body, MAX_BATCH_BYTES + 1)
            except zlib.error as exc:
                return ApiError(400, "bad_encoding", f"invalid gzip data: {exc}")
            if len(raw) > MAX_BATCH_BYTES or dec.unconsumed_tail:
                return ApiError(
                    413, "batch_too_large", f"batch exceeds {MAX_BATCH_BYTES} bytes decompressed"
                )
            if not dec.eof:
                return ApiError(400, "bad_encoding", "truncated gzip data")
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
            problem = _validate_record(rec)
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
                f"{len(bad)} invalid record(s); first problem: {_first_problem(records)}",
                extra={"seqs": bad},
            )
        added = self.store.insert_records(rows) if rows else 0
        return {"accepted": added, "duplicates": len(rows) - added, "last_seq": last_seq}

    async def put_inventory(
        self, request: web.Request, key: GatewayKey, body: bytes
    ) -> web.Response:
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding == "gzip":
            try:
                body = zlib.decompress(body, wbits=31)
            except zlib.error as exc:
                raise ApiError(400, "bad_encoding", f"invalid gzip data: {exc}") from None
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "malformed_inventory", f"body is not JSON: {exc}") from None
        problem = _validate_inventory(doc, key.gateway)
        if problem is not None:
            raise ApiError(400, "malformed_inventory", problem)
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
            wait_s = min(max(float(wait), 0.0), MAX_WAIT_S)
        except ValueError:
            raise ApiError(400, "bad_parameter", "wait_s must be a number") from None
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
                " result_ms = ? WHERE gateway = ? AND status = 'queued' AND raw = 0"
                " AND expires_ms < ?",
                (now, gateway, now),
            )
            rows = conn.execute(
                "SELECT id, body FROM commands WHERE gateway = ? AND status = 'queued'"
                " ORDER BY created_ms, rowid",
                (gateway,),
            ).fetchall()
            conn.executemany(
                "UPDATE commands SET status = 'delivered', delivered_ms = ? WHERE id = ?",
                [(now, r[0]) for r in rows],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return [orjson.loads(r[1]) for r in rows]

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
        sql = ["SELECT rowid, epoch, seq, received_ms, body FROM records WHERE gateway = ?"]
        params: list[Any] = [gateway]
        for column, value in (("device", device), ("kind", kind), ("epoch", epoch)):
            if value:
                sql.append(f"AND {column} = ?")
                params.append(value)
        if after_seq is not None:
            sql.append("AND seq > ?")
            params.append(after_seq)
        sql.append("AND rowid > ? ORDER BY rowid LIMIT ?")
        params += [after_id, limit]
        rows = await self.store.run(self.store.query, " ".join(sql), params)
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
        doc = await _read_json(request)
        device, action = doc.get("device"), doc.get("action")
        args = doc.get("args", {})
        expires_in_s = doc.get("expires_in_s", 300)
        if not isinstance(device, str) or not device or not isinstance(action, str) or not action:
            raise ApiError(400, "malformed_command", "device and action are required strings")
        if not isinstance(args, dict):
            raise ApiError(400, "malformed_command", "args must be an object")
        if not isinstance(expires_in_s, (int, float)) or not 0 < expires_in_s <= 86_400:
            raise ApiError(400, "malformed_command", "expires_in_s must be in (0, 86400]")
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
        doc = await _read_json(request)
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
        doc = await _read_json(request)
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


def _validate_record(rec: Any) -> str | None:
    """Why a record is invalid, or None. Cheap checks only: this runs for every record."""
    if type(rec) is not dict:
        return "a record must be an object"
    seq = rec.get("seq")
    if type(seq) is not int or seq < 0:
        return "seq must be a non-negative integer"
    kind = rec.get("kind")
    if kind not in RECORD_KINDS:
        return f"seq {seq}: kind must be reading, event or status"
    device = rec.get("device")
    if type(device) is not str or not device:
        return f"seq {seq}: device must be a non-empty string"
    if type(rec.get("ts")) is not int:
        return f"seq {seq}: ts must be integer UTC milliseconds"
    if kind == "reading":
        if type(rec.get("point")) is not str:
            return f"seq {seq}: a reading needs a point"
        value = rec.get("value")
        if value is not None and type(value) not in (int, float, bool, str):
            return f"seq {seq}: value must be a number, boolean, string or null"
    elif kind == "event":
        if type(rec.get("type")) is not str:
            return f"seq {seq}: an event needs a type"
    elif rec.get("state") not in ("online", "offline"):
        return f"seq {seq}: a status needs state online or offline"
    return None


def _first_problem(records: Sequence[Any]) -> str:
    for rec in records:
        problem = _validate_record(rec)
        if problem is not None:
            return problem
    return "unknown"


def _validate_inventory(doc: Any, gateway: str) -> str | None:
    if not isinstance(doc, dict):
        return "body must be an object"
    gw = doc.get("gateway")
    if not isinstance(gw, dict) or gw.get("id") != gateway:
        return f"gateway.id must be {gateway!r}"
    devices = doc.get("devices")
    if not isinstance(devices, list):
        return "devices must be an array"
    seen: set[str] = set()
    for i, dev in enumerate(devices):
        if not isinstance(dev, dict) or not isinstance(dev.get("id"), str) or not dev["id"]:
            return f"devices[{i}].id must be a non-empty string"
        if dev["id"] in seen:
            return f"devices[{i}].id {dev['id']!r} is repeated"
        seen.add(dev["id"])
    return None


async def _read_json(request: web.Request) -> dict[str, Any]:
    try:
        doc = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "malformed_json", "body must be an object")
    return doc


PLATFORM: Final = web.AppKey("platform", ReferencePlatform)


def build_app(
    db_path: Path,
    keys: Mapping[str, GatewayKey] | Mapping[str, Mapping[str, Any]],
    *,
    command_key: Ed25519PrivateKey | None = None,
    admin_token: str | None = None,
    durability: str = "full",
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The reference platform as an aiohttp application (its state is ``app[PLATFORM]``)."""
    platform = ReferencePlatform(
        db_path,
        parse_keys(keys),
        command_key=command_key,
        admin_token=admin_token,
        durability=durability,
        clock=clock,
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


def _parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen must be HOST:PORT, not {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - a server binds all on ":PORT"


async def serve(
    listen: str,
    db: Path,
    keys_file: Path,
    *,
    command_key_file: Path | None = None,
    admin_token: str | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    client_ca: Path | None = None,
    durability: str = "full",
    ready: Callable[[int], None] | None = None,
) -> None:
    """Run the reference platform until cancelled (or SIGINT/SIGTERM)."""
    host, port = _parse_listen(listen)
    app = build_app(
        db,
        load_keys(keys_file),
        command_key=load_command_key(command_key_file),
        admin_token=admin_token,
        durability=durability,
    )
    platform = app[PLATFORM]
    ctx = server_ssl_context(tls_cert, tls_key, client_ca)
    runner, bound = await start_site(app, host, port, ssl_context=ctx)
    scheme = "https" if ctx else "http"
    print(
        json.dumps(
            {
                "listening": f"{scheme}://{host}:{bound}",
                "port": bound,
                "db": str(db),
                "admin_token": platform.admin_token if admin_token is None else "(as given)",
                "command_key_id": platform.command_key_id,
            }
        ),
        flush=True,
    )
    if ready is not None:
        ready(bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        await runner.cleanup()


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="edge-agent reference-platform",
        description="Run the uplink API v1 reference platform (docs/uplink-api.md).",
    )
    parser.add_argument("--listen", default="127.0.0.1:8700", help="HOST:PORT (port 0: any)")
    parser.add_argument("--db", type=Path, required=True, help="SQLite file for what it receives")
    parser.add_argument(
        "--keys", type=Path, required=True, help="YAML/JSON: key_id -> {gateway, secret}"
    )
    parser.add_argument(
        "--command-key",
        type=Path,
        help="Ed25519 private key (PEM) that signs commands; generated if missing, "
        "its public key written to FILE.pub",
    )
    parser.add_argument(
        "--admin-token",
        default=os.environ.get("EDGE_PLATFORM_ADMIN_TOKEN"),
        help="Bearer token of the integrator/admin endpoints "
        "(default: $EDGE_PLATFORM_ADMIN_TOKEN, else generated and printed)",
    )
    parser.add_argument("--tls-cert", type=Path, help="server certificate chain (PEM)")
    parser.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    parser.add_argument("--client-ca", type=Path, help="require client certificates from this CA")
    parser.add_argument(
        "--durability",
        choices=("full", "normal"),
        default="full",
        help="SQLite synchronous mode of the platform's store",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        asyncio.run(
            serve(
                args.listen,
                args.db,
                args.keys,
                command_key_file=args.command_key,
                admin_token=args.admin_token,
                tls_cert=args.tls_cert,
                tls_key=args.tls_key,
                client_ca=args.client_ca,
                durability=args.durability,
            )
        )
    except (OSError, ValueError) as exc:
        print(f"reference-platform: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
