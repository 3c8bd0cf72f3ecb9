"""The local control socket: how ``edge-agent command`` reaches the running agent on site.

A Unix stream socket (mode 0660, so only root and the agent's group may use it) carrying one
JSON request and one JSON answer per connection. Commands take exactly the same path as the
platform's: allowlist, validation, the driver, an audit event.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from agent.driver import CommandError

__all__ = ["ControlServer", "send_request"]

Executor = Callable[..., Awaitable[Mapping[str, Any]]]
ToolRunner = Callable[
    [str, str, Mapping[str, Any], Mapping[str, Any]], Awaitable[Mapping[str, Any]]
]
"""``(driver, tool, bus, options)``: an installer tool on the agent's own bus."""
_MAX_REQUEST = 64 * 1024
_TOO_LARGE = {
    "status": "failed",
    "reason": "bad_request",
    "error": f"request too large (at most {_MAX_REQUEST} bytes on one line)",
}


class ControlServer:
    def __init__(self, path: Path, execute: Executor, tools: ToolRunner | None = None) -> None:
        self.path = path
        self._execute = execute
        self._tools = tools
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a killed agent
        old = os.umask(0o117)
        try:
            # One byte over the largest request, so a longer line is seen to be too long.
            self._server = await asyncio.start_unix_server(
                self._handle, path=str(self.path), limit=_MAX_REQUEST + 1
            )
        finally:
            os.umask(old)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(_read_line(reader), 10)
            answer = await self._answer(line) if line is not None else _TOO_LARGE
        except (TimeoutError, ConnectionError):
            answer = {"status": "failed", "reason": "bad_request", "error": "no request"}
        with contextlib.suppress(ConnectionError):
            writer.write(orjson.dumps(answer) + b"\n")
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        if len(line) > _MAX_REQUEST:
            return _TOO_LARGE
        try:
            request = orjson.loads(line)
            if isinstance(request, dict) and request.get("op") == "tool":
                return await self._tool(request)
            device, action = request["device"], request["action"]
            args = request.get("args", {})
            if not (isinstance(device, str) and isinstance(action, str) and isinstance(args, dict)):
                raise TypeError  # noqa: TRY301 - one answer for every malformed request
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return {
                "status": "failed",
                "reason": "bad_request",
                "error": 'expected {"device": …, "action": …, "args": {…}}',
            }
        command_id = f"local-{secrets.token_hex(4)}"
        try:
            result = await self._execute(
                device, action, args, source="local", command_id=command_id
            )
        except CommandError as exc:
            return {"status": "failed", "id": command_id, "reason": exc.reason, "error": str(exc)}
        return {"status": "ok", "id": command_id, "result": dict(result)}

    async def _tool(self, request: Mapping[str, Any]) -> dict[str, Any]:
        driver, tool = request.get("driver"), request.get("tool")
        bus, options = request.get("bus"), request.get("options", {})
        if not (
            isinstance(driver, str)
            and isinstance(tool, str)
            and isinstance(bus, dict)
            and isinstance(options, dict)
        ):
            return {
                "status": "failed",
                "reason": "bad_request",
                "error": 'expected {"op": "tool", "driver", "tool", "bus": {…}, "options": {…}}',
            }
        if self._tools is None:
            return {"status": "failed", "reason": "unsupported", "error": "no tools here"}
        try:
            result = await self._tools(driver, tool, bus, options)
        except CommandError as exc:
            return {"status": "failed", "reason": exc.reason, "error": str(exc)}
        except Exception as exc:
            return {
                "status": "failed",
                "reason": "tool_error",
                "error": f"{type(exc).__name__}: {exc}",
            }
        return {"status": "ok", "result": dict(result)}


async def _read_line(reader: asyncio.StreamReader, most: int = 16 * 2**20) -> bytes | None:
    """One request line; None when it is longer than the reader's limit. The rest of a long
    line is read and dropped (up to ``most`` bytes), so the client is not reset while it still
    writes and gets the answer."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        return exc.partial  # the client closed without a newline: answer what it sent
    except asyncio.LimitOverrunError:
        pass
    dropped = 0
    while dropped < most:
        chunk = await reader.read(64 * 1024)
        if not chunk or b"\n" in chunk:
            break
        dropped += len(chunk)
    return None


async def send_request(path: Path, request: Mapping[str, Any], *, timeout_s: float = 30) -> Any:
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout_s)
    try:
        writer.write(orjson.dumps(request) + b"\n")
        await writer.drain()
        return orjson.loads(await asyncio.wait_for(reader.readline(), timeout_s))
    finally:
        writer.close()
