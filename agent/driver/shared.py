"""Typed shared resources (``ctx.shared``), the core's and :mod:`agent.driver.testing`'s."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from agent.driver import SharedKey

__all__ = ["SharedStore"]

T = TypeVar("T")


class SharedStore:
    """Typed shared resources (``ctx.shared``): one per key, created on first use, closed when
    their bus changes and at stop."""

    def __init__(self) -> None:
        self._items: dict[SharedKey[Any], object] = {}
        self._lock = asyncio.Lock()

    async def get(self, key: SharedKey[T], factory: Callable[[], Awaitable[T]], /) -> T:
        async with self._lock:
            if key not in self._items:
                self._items[key] = await factory()
            found: T = self._items[key]  # type: ignore[assignment]
            return found

    async def close(self, bus: str | None = None, *, every: bool = False) -> None:
        """Close the resources of ``bus`` (or all of them)."""
        for key in [k for k in self._items if every or k.bus == bus]:
            resource = self._items.pop(key)
            closer = getattr(resource, "aclose", None) or getattr(resource, "close", None)
            if closer is None:
                continue
            with contextlib.suppress(Exception):
                result = closer()
                if asyncio.iscoroutine(result):
                    await result
