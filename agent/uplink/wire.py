"""The wire contract of uplink API v1, shared by the agent and the reference platform.

Both sides import this module so that what ``docs/uplink-api.md`` documents exists exactly once
in code: the HMAC request signature (``EA1-HMAC-SHA256``) with its nonce, the command envelope
(a command's exact signed bytes with a detached Ed25519 signature, verified before it is
parsed), and the shapes of a records batch, its acknowledgement, a command and a command's
result. ``tests/test_wire.py`` pins them with the published test vectors, so a change
here that would break a third-party platform fails a test.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import email.utils
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "AUTH_SCHEME",
    "MAX_SKEW_MS",
    "ack_document",
    "ack_problem",
    "batch_document",
    "canonical_command",
    "canonical_request",
    "command_envelope",
    "command_problem",
    "load_ed25519_private_key",
    "load_ed25519_public_key",
    "new_nonce",
    "open_envelope",
    "parse_authorization",
    "parse_http_date_ms",
    "result_document",
    "sha256_hex",
    "sign_command",
    "sign_request",
    "signature_headers",
    "valid_nonce",
    "verify_command",
    "verify_request_signature",
]

AUTH_SCHEME = "EA1-HMAC-SHA256"
MAX_SKEW_MS = 300_000
"""Requests whose X-Timestamp is further than this from the server's clock are rejected; a
platform remembers each nonce at least this long (either side of its timestamp)."""
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def sha256_hex(body: bytes) -> str:
    if not body:
        return _EMPTY_SHA256
    return hashlib.sha256(body).hexdigest()


def canonical_request(
    method: str, target: str, timestamp_ms: int, nonce: str, body_sha256: str
) -> bytes:
    """``METHOD\nPATH[?QUERY]\nTIMESTAMP\nNONCE\nBODY_SHA256`` as UTF-8.

    ``target`` is the request target exactly as it goes on the wire (percent-encoded path,
    ``?`` and query only when there is a query), including any path prefix of the base URL.
    ``nonce`` is the request's ``X-Nonce``: signed, so a replay cannot change it.
    """
    return f"{method.upper()}\n{target}\n{timestamp_ms}\n{nonce}\n{body_sha256.lower()}".encode()


def sign_request(
    secret: bytes, method: str, target: str, timestamp_ms: int, nonce: str, body_sha256: str
) -> str:
    return hmac.new(
        secret,
        canonical_request(method, target, timestamp_ms, nonce, body_sha256),
        hashlib.sha256,
    ).hexdigest()


def new_nonce() -> str:
    """A fresh ``X-Nonce``: 128 random bits as 32 hex digits."""
    return secrets.token_hex(16)


def valid_nonce(nonce: str) -> bool:
    """16 to 64 characters of ``[A-Za-z0-9_-]``."""
    return _NONCE.fullmatch(nonce) is not None


def signature_headers(
    key_id: str,
    secret: bytes,
    method: str,
    target: str,
    timestamp_ms: int,
    body: bytes,
    *,
    nonce: str | None = None,
) -> dict[str, str]:
    """The five authentication headers for one request (a fresh nonce unless one is given)."""
    digest = sha256_hex(body)
    nonce = nonce if nonce is not None else new_nonce()
    signature = sign_request(secret, method, target, timestamp_ms, nonce, digest)
    return {
        "X-Key-Id": key_id,
        "X-Timestamp": str(timestamp_ms),
        "X-Nonce": nonce,
        "X-Content-SHA256": digest,
        "Authorization": f"{AUTH_SCHEME} Signature={signature}",
    }


def parse_authorization(value: str | None) -> str | None:
    """The hex signature from an ``Authorization`` header, or None when it is not ours."""
    if not value:
        return None
    scheme, _, params = value.strip().partition(" ")
    if scheme != AUTH_SCHEME:
        return None
    for part in params.split(","):
        name, _, sig = part.strip().partition("=")
        if name == "Signature" and sig:
            return sig.strip().lower()
    return None


def verify_request_signature(
    secret: bytes,
    method: str,
    target: str,
    timestamp_ms: int,
    nonce: str,
    body_sha256: str,
    signature_hex: str,
) -> bool:
    expected = sign_request(secret, method, target, timestamp_ms, nonce, body_sha256)
    # Constant time, so that response timing does not reveal how much of a forged signature
    # was right.
    return hmac.compare_digest(expected.encode(), signature_hex.encode())


def parse_http_date_ms(value: str | None) -> int | None:
    """An RFC 9110 ``Date``/``Retry-After`` date as UTC ms, or None when absent or invalid."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        # RFC 9110 dates are always GMT; email.utils leaves "-0000" naive.
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return int(parsed.timestamp() * 1000)


# --- commands ------------------------------------------------------------------------------


def canonical_command(command: Mapping[str, Any]) -> bytes:
    """The bytes the reference platform signs for a command (it without ``signature``): keys
    sorted at every level, no insignificant whitespace, UTF-8 without ``\\u`` escapes. The
    gateway never rebuilds them: it verifies the payload as it came (:func:`open_envelope`)."""
    unsigned = {k: v for k, v in command.items() if k != "signature"}
    return orjson.dumps(unsigned, option=orjson.OPT_SORT_KEYS)


def sign_command(key: Ed25519PrivateKey, command: Mapping[str, Any]) -> str:
    """Base64 (RFC 4648, with padding) Ed25519 signature of the canonical command."""
    return base64.b64encode(key.sign(canonical_command(command))).decode("ascii")


def verify_command(key: Ed25519PublicKey, command: Mapping[str, Any]) -> bool:
    """The signature of a command held as a dict (the platform's side, and tests)."""
    signature = command.get("signature")
    if not isinstance(signature, str) or not signature:
        return False
    return _verify(key, canonical_command(command), signature)


def command_envelope(command: Mapping[str, Any]) -> dict[str, Any]:
    """How a command travels in a poll answer: its exact signed bytes (``payload``, base64) and
    the detached ``signature``. ``id`` is repeated outside, unsigned, only so that a refusal
    can be reported; the agent checks it against the payload's."""
    envelope: dict[str, Any] = {
        "id": command.get("id"),
        "payload": base64.b64encode(canonical_command(command)).decode("ascii"),
    }
    if command.get("signature"):
        envelope["signature"] = command["signature"]
    return envelope


def open_envelope(key: Ed25519PublicKey, envelope: Mapping[str, Any]) -> dict[str, Any] | str:
    """The command in ``envelope``, verified first and parsed second; or why it is refused:
    ``unsigned``, ``bad_signature``, ``malformed`` or ``id_mismatch``."""
    signature, payload = envelope.get("signature"), envelope.get("payload")
    if not isinstance(signature, str) or not signature:
        return "unsigned"
    if not isinstance(payload, str):
        return "malformed"
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return "malformed"
    if not _verify(key, raw, signature):
        return "bad_signature"
    try:
        command = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "malformed"
    if not isinstance(command, dict):
        return "malformed"
    if command.get("id") != envelope.get("id"):
        return "id_mismatch"
    return command


def _verify(key: Ed25519PublicKey, data: bytes, signature: str) -> bool:
    try:
        key.verify(base64.b64decode(signature, validate=True), data)
    except (InvalidSignature, binascii.Error, ValueError, TypeError):
        return False
    return True


def load_ed25519_public_key(data: bytes) -> Ed25519PublicKey:
    """A PEM public key; a PEM private key is accepted too (its public half is used)."""
    if b"PRIVATE KEY" in data:
        return load_ed25519_private_key(data).public_key()
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"not an Ed25519 public key ({type(key).__name__})")
    return key


def load_ed25519_private_key(data: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"not an Ed25519 private key ({type(key).__name__})")
    return key


# --- records --------------------------------------------------------------------------------


def batch_document(epoch: str, records: bytes) -> bytes:
    """``POST …/records`` body: ``{"epoch":…,"records":[…]}`` from the records' JSON array."""
    return b'{"epoch":' + orjson.dumps(epoch) + b',"records":' + records + b"}"


def ack_document(
    epoch: str, accepted: int, duplicates: int, last_seq: int | None
) -> dict[str, Any]:
    """The platform's answer once a batch is stored (``epoch`` is echoed since API v1.1)."""
    return {"accepted": accepted, "duplicates": duplicates, "last_seq": last_seq, "epoch": epoch}


def ack_problem(
    doc: Mapping[str, object] | None, *, epoch: str, records: int, last_seq: int
) -> str | None:
    """Why ``doc`` is not the acknowledgement of a batch of ``records`` records ending at
    ``last_seq`` in ``epoch``; None when it is.

    A captive portal, a proxy's page or a wrong URL can answer 200 too: only an answer that
    counts exactly this batch may delete it from the buffer.
    """
    if doc is None:
        return "the answer is not a JSON object"
    accepted, duplicates, last = doc.get("accepted"), doc.get("duplicates"), doc.get("last_seq")
    if not _is_int(accepted) or not _is_int(duplicates):
        return "the answer has no integer accepted and duplicates"
    assert isinstance(accepted, int)
    assert isinstance(duplicates, int)
    if accepted < 0 or duplicates < 0 or accepted + duplicates != records:
        return (
            f"the answer counts {accepted} accepted + {duplicates} duplicates "
            f"for a batch of {records}"
        )
    if not _is_int(last) or last != last_seq:
        return f"the answer's last_seq {last!r} is not the batch's {last_seq}"
    if "epoch" in doc and doc["epoch"] != epoch:
        return f"the answer's epoch {doc['epoch']!r} is not the batch's {epoch!r}"
    return None


# --- command shapes ---------------------------------------------------------------------------


def command_problem(command: Mapping[str, object]) -> str | None:
    """What is missing from a command for it to be run; None when its shape is right."""
    if not isinstance(command.get("id"), str) or not command.get("id"):
        return "a command needs a non-empty string id"
    if not isinstance(command.get("device"), str) or not isinstance(command.get("action"), str):
        return "device and action are required strings"
    if not isinstance(command.get("args"), dict):
        return "args must be an object"
    if not _is_int(command.get("issued_ms")) or not _is_int(command.get("expires_ms")):
        return "issued_ms and expires_ms are required (UTC ms)"
    return None


def result_document(
    status: str,
    ts_ms: int,
    *,
    result: Mapping[str, object] | None = None,
    reason: str | None = None,
    error: str | None = None,
) -> bytes:
    """``POST …/commands/{id}/result`` body."""
    doc: dict[str, object] = {"status": status, "result": dict(result or {}), "ts": ts_ms}
    if reason is not None:
        doc["reason"] = reason
    if error is not None:
        doc["error"] = error
    return orjson.dumps(doc, default=str)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
