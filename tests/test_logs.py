"""Log lines: one JSON object each, libraries' records included, floods rate-limited."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from agent.logs import RateLimiter, configure_logging


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    out = io.StringIO()
    root = logging.getLogger()
    before = list(root.handlers)
    configure_logging("info", "json", stream=out)
    try:
        yield out
    finally:
        root.handlers[:] = before
        structlog.reset_defaults()


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_library_traceback_is_one_json_line(json_logs: io.StringIO) -> None:
    logging.getLogger("aiohttp.server").error(
        "Error handling request from %s",
        "10.1.2.3",
        exc_info=ConnectionResetError("peer went away"),
    )
    [line] = lines(json_logs)
    assert line["event"] == "Error handling request from 10.1.2.3"
    assert line["logger"] == "aiohttp.server"
    assert line["level"] == "error"
    assert line["error"] == "ConnectionResetError: peer went away"
    assert "Traceback" not in json_logs.getvalue()


def test_a_flood_of_the_same_record_is_rate_limited(json_logs: io.StringIO) -> None:
    log = logging.getLogger("asyncio")
    for _ in range(1000):
        log.error("socket.accept() out of system resource")
    log.warning("something else")
    assert [line["event"] for line in lines(json_logs)] == [
        "socket.accept() out of system resource",
        "something else",
    ]
    # Below WARNING, libraries stay quiet, as before.
    logging.getLogger("pymodbus").info("chatter")
    assert len(lines(json_logs)) == 2


def test_configuring_twice_bridges_once(json_logs: io.StringIO) -> None:
    configure_logging("info", "json", stream=json_logs)
    logging.getLogger("x").warning("once")
    assert [line["event"] for line in lines(json_logs)] == ["once"]


def test_rate_limiter_says_how_many_it_held_back() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, clock=clock)
    assert limiter.allow("a") == 0
    assert [limiter.allow("a") for _ in range(5)] == [None] * 5
    assert limiter.allow("b") == 0
    clock.now += 10
    assert limiter.allow("a") == 5
    assert limiter.allow("a") is None


def test_rate_limiter_memory_is_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, max_keys=100, clock=clock)
    for i in range(10_000):
        limiter.allow(f"10.0.{i // 256}.{i % 256}")
        clock.now += 0.001
    assert len(limiter._keys) <= 100
