"""structlog set-up: JSON lines for journald, a readable renderer on a terminal.

Log events name the thing (``device.down``, ``uplink.recovered``) and are emitted once per state
change, never once per failed poll: that discipline lives in the callers.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Hashable, Mapping, MutableMapping
from typing import Any, TextIO

import orjson
import structlog

from agent.secrecy import REDACTED, hide_url_password, secret_key

__all__ = ["RateLimiter", "configure_logging", "get_logger"]


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """Values under secret-like keys (:mod:`agent.secrecy`) never reach a log line, whoever
    passes them by mistake; nor does a password in a URL."""
    for key, value in event.items():
        if key == "event":
            continue
        if secret_key(key):
            event[key] = REDACTED
        elif isinstance(value, str):
            event[key] = hide_url_password(value)
    return event


def _dumps(obj: Any, **_kw: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


class RateLimiter:
    """At most one log line per key per ``interval_s``; the next one says how many were held back.

    What a hostile or broken peer can repeat (a malformed request, a refused connection, an
    accept error) goes through one of these, so a flood costs a line per interval, not a line per
    attempt: a slow-loris once wrote 425 MB of tracebacks in 90 s.
    """

    def __init__(
        self,
        interval_s: float = 10.0,
        *,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._clock = clock
        self._keys: dict[Hashable, tuple[float, int]] = {}

    def allow(self, key: Hashable) -> int | None:
        """None: hold this line back. Otherwise log it, with this many held back since the last."""
        now = self._clock()
        last = self._keys.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._keys[key] = (last[0], last[1] + 1)
            return None
        if last is None and len(self._keys) >= self.max_keys:
            # Many distinct keys (addresses, say): forget the stale ones, or all of them.
            stale = [k for k, (at, _) in self._keys.items() if now - at >= self.interval_s]
            for k in stale or list(self._keys):
                del self._keys[k]
        self._keys[key] = (now, 0)
        return 0 if last is None else last[1]


class _StdlibBridge(logging.Handler):
    """Records of the standard ``logging`` module (aiohttp, asyncio, pymodbus) as one structlog
    line each: no multi-line traceback in the journal, and repeats rate-limited per message."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.limiter = RateLimiter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            held_back = self.limiter.allow((record.name, record.msg))
            if held_back is None:
                return
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                fields["error"] = f"{type(exc).__name__}: {exc}"
            if held_back:
                fields["suppressed"] = held_back
            level = record.levelname.lower()
            log = get_logger()
            emit = getattr(log, level if level in _LEVELS else "error")
            emit(record.getMessage(), **fields)
        except Exception:
            self.handleError(record)


def _bridge_stdlib_logging() -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _StdlibBridge) for h in root.handlers):
        root.addHandler(_StdlibBridge())


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog once per process. ``fmt``: auto (TTY -> console), json, console.

    The standard ``logging`` module's warnings and errors go to the same stream, one line each.
    """
    out = stream if stream is not None else sys.stdout
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if console
        else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    _bridge_stdlib_logging()


def get_logger(**bind: Any) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(**bind)
    return logger
