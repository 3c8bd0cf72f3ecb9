"""The inventory sender: ``PUT …/inventory`` at start and whenever the inventory changed.

The document comes whole from the runtime's one builder (:func:`agent.inventory.build_inventory`);
the sender only compares its canonical form with what the platform last took. It is checked
every ``check_s`` and at once after :meth:`InventorySender.changed`. A platform that refuses the
inventory does not stop the records: it is tried again when the inventory changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import orjson
import structlog

from agent.uplink.base import Kind, Outcome, Transport
from agent.uplink.link import Link

__all__ = ["InventorySender"]


class InventorySender:
    def __init__(
        self,
        transport: Transport,
        *,
        inventory: Callable[[], Mapping[str, object]],
        link: Link,
        log: structlog.typing.FilteringBoundLogger,
        check_s: float = 10.0,
    ) -> None:
        self._transport = transport
        self._inventory = inventory
        self._link = link
        self._log = log
        self._check_s = check_s
        self._sent: bytes | None = None
        self._checked = float("-inf")

    def changed(self) -> None:
        """Check on the next round, not after ``check_s``."""
        self._checked = float("-inf")

    async def sync(self) -> Outcome | None:
        """Send the inventory if it changed; None when there was nothing to do."""
        now = time.monotonic()
        if now - self._checked < self._check_s:
            return None
        self._checked = now
        try:
            doc = self._inventory()
            canonical = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
        except Exception:
            # A bug in building the inventory must not stop the records.
            self._log.exception("uplink.inventory_failed")
            return None
        if canonical == self._sent:
            return None
        started = time.monotonic()
        with self._link.sending():
            outcome = await self._transport.put_inventory(canonical)
        if outcome.kind in (Kind.RETRY, Kind.AUTH):
            self._checked = float("-inf")
            return self._link.failed(outcome)
        self._link.succeeded(time.monotonic() - started)
        self._sent = canonical
        if outcome.kind is Kind.ACK:
            devices = doc.get("devices")
            self._log.info(
                "uplink.inventory_sent", devices=len(devices) if isinstance(devices, list) else 0
            )
        else:
            # The platform will not take this inventory; records still go.
            self._link.problem(
                f"inventory rejected: {outcome.error}", "inventory_rejected", outcome.status
            )
            self._log.error("uplink.inventory_rejected", error=outcome.error)
        return outcome
