"""One TCP endpoint (a Modbus TCP device, an RTU-over-TCP gateway): turns and link state.

A TCP host allows ``max_in_flight`` transactions at once, granted by the same priorities as a
serial line. The connection itself belongs to the protocol that speaks on it (pymodbus's TCP
client for Modbus): the protocol takes a turn per transaction and reports what happens to the
connection here (:meth:`TcpHost.connected`, :meth:`connect_failed`, :meth:`connection_lost`),
so that a host that goes away is one bus-level transition with its devices ``unknown``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.bus._base import BusHandle, LinkListener

if TYPE_CHECKING:
    from agent.config.models import Bus

__all__ = ["TcpHost"]


class TcpHost(BusHandle):
    """The core's handle of a TCP bus."""

    kind = "tcp"

    def __init__(self, config: Bus, *, on_link: LinkListener | None = None) -> None:
        if config.tcp is None:
            raise ValueError(f"bus {config.id!r} is not a TCP bus")
        super().__init__(config, slots=config.tcp.max_in_flight, on_link=on_link)
        self.settings = config.tcp

    @property
    def where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    @property
    def max_in_flight(self) -> int:
        return self.settings.max_in_flight

    def connected(self) -> None:
        self.counters["connects"] += 1
        self.link_up()

    def connect_failed(self, error: str) -> None:
        self.link_down("io_error", error)

    def connection_lost(self, error: str) -> None:
        """An open connection broke (the host rebooted): the next transaction reconnects at
        once."""
        self.counters["link_lost"] += 1
        self.link_down("io_error", error, retry_now=True)
