"""What a request body must be: the checks every request gets, and (in contract mode) the
schemas of ``docs/openapi.yaml``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import orjson
from aiohttp import web

RECORD_KINDS: Final = frozenset({"reading", "event", "status"})


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


_INT64 = 2**63
"""SQLite stores 64-bit integers: larger ones are refused, not a 500."""


def validate_record(rec: Any) -> str | None:
    """Why a record is invalid, or None. Cheap checks only: this runs for every record."""
    if type(rec) is not dict:
        return "a record must be an object"
    seq = rec.get("seq")
    if type(seq) is not int or not 0 <= seq < _INT64:
        return "seq must be a non-negative integer below 2^63"
    kind = rec.get("kind")
    if kind not in RECORD_KINDS:
        return f"seq {seq}: kind must be reading, event or status"
    device = rec.get("device")
    if type(device) is not str or not device:
        return f"seq {seq}: device must be a non-empty string"
    ts = rec.get("ts")
    if type(ts) is not int or not 0 <= ts < _INT64:
        return f"seq {seq}: ts must be integer UTC milliseconds (0 to 2^63)"
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


def first_problem(records: Sequence[Any]) -> str:
    for rec in records:
        problem = validate_record(rec)
        if problem is not None:
            return problem
    return "unknown"


def validate_inventory(doc: Any, gateway: str) -> str | None:
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


async def read_json(request: web.Request) -> dict[str, Any]:
    try:
        doc = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "malformed_json", "body must be an object")
    return doc


DEFAULT_SPEC: Final = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"


class OpenApiContract:
    """Contract mode: every request body is checked against its schema in ``docs/openapi.yaml``
    too, after the platform's own checks. The test suite runs the platform so, so that the
    document and the agent cannot drift apart: a request the document does not allow is a 400
    ``contract_violation`` (and listed in :attr:`violations`). Needs ``jsonschema`` (a test
    dependency); a platform in production does not use it."""

    def __init__(self, spec_path: Path = DEFAULT_SPEC) -> None:
        import jsonschema  # noqa: PLC0415
        import yaml  # noqa: PLC0415

        spec = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
        self.spec_path = spec_path
        self._validators: dict[tuple[str, str], Any] = {}
        for path, operations in spec["paths"].items():
            for method, operation in operations.items():
                body = operation.get("requestBody") if isinstance(operation, dict) else None
                if body is None:
                    continue
                schema = body["content"]["application/json"]["schema"]
                root = {**schema, "components": spec.get("components", {})}
                self._validators[method.upper(), path] = jsonschema.Draft202012Validator(root)
        self.violations: list[str] = []

    @property
    def routes(self) -> list[tuple[str, str]]:
        return sorted(self._validators)

    def check(self, method: str, path: str, doc: Any) -> None:
        """Raise :class:`ApiError` (400 ``contract_violation``) if ``doc`` breaks the schema of
        the request body of ``method path`` (a path template of the document)."""
        validator = self._validators.get((method, path))
        if validator is None:
            return
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        if not errors:
            return
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(body)"
        message = f"{method} {path}: {where}: {first.message}"
        self.violations.append(message)
        raise ApiError(400, "contract_violation", f"not as docs/openapi.yaml says: {message}")
