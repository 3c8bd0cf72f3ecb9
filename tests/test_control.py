"""The local control socket: every request gets one JSON answer, whatever it is."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.control import ControlServer, send_request


async def execute(
    device: str, action: str, args: Mapping[str, Any], *, source: str, command_id: str
) -> Mapping[str, Any]:
    return {"device": device, "action": action, "source": source}


async def raw_exchange(path: Path, data: bytes) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(data)
        await writer.drain()
        answer = orjson.loads(await asyncio.wait_for(reader.readline(), 10))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert isinstance(answer, dict)
    return answer


@pytest.mark.parametrize("size", [64 * 1024 + 10, 1024 * 1024])
async def test_a_line_over_64_kib_gets_an_error_answer_not_a_traceback(
    tmp_path: Path, size: int
) -> None:
    seen: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    server = ControlServer(tmp_path / "control.sock", execute)
    await server.start()
    try:
        answer = await raw_exchange(server.path, b'{"device": "' + b"x" * size + b'"}\n')
        assert answer["reason"] == "bad_request"
        assert "too large" in answer["error"]
        # The server still answers the next request.
        ok = await send_request(server.path, {"device": "d", "action": "a"})
        assert ok["status"] == "ok"
        assert ok["result"] == {"device": "d", "action": "a", "source": "local"}
    finally:
        await server.close()
    assert seen == [], "nothing reached the loop's exception handler"


async def test_garbage_gets_a_bad_request_answer(tmp_path: Path) -> None:
    server = ControlServer(tmp_path / "control.sock", execute)
    await server.start()
    try:
        for garbage in (b"\xff\xfe\n", b"[1, 2]\n", b'{"device": 5, "action": "a"}\n', b"\n"):
            answer = await raw_exchange(server.path, garbage)
            assert answer["reason"] == "bad_request", garbage
    finally:
        await server.close()
