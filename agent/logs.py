"""structlog set-up: JSON lines for journald, a readable renderer on a terminal.

Log events name the thing (``device.down``, ``uplink.recovered``) and are emitted once per state
change, never once per failed poll: that discipline lives in the callers.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import orjson
import structlog

from agent.secrecy import REDACTED, hide_url_password, secret_key

__all__ = ["configure_logging", "get_logger"]


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


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog once per process. ``fmt``: auto (TTY -> console), json, console."""
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


def get_logger(**bind: Any) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(**bind)
    return logger
