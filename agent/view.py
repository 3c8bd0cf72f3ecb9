"""What the diagnostic page and ``/metrics`` see of the running agent (:class:`AgentView`).

The page reads the agent through this protocol only: the running config, the figures in
:class:`agent.state.AgentState` (drivers push their counters there), each bus's figures, and the
few things a technician may ask for (a test read, a command). It never reaches into a driver, a
scheduler or the runtime's private parts, and the runtime never imports the page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import structlog

    from agent.config.models import AgentConfig
    from agent.records import Record
    from agent.state import AgentState

__all__ = ["AgentView"]


class AgentView(Protocol):
    @property
    def config(self) -> AgentConfig: ...

    @property
    def config_path(self) -> Path | None: ...

    @property
    def state(self) -> AgentState: ...

    @property
    def log(self) -> structlog.typing.FilteringBoundLogger: ...

    def bus_figures(self) -> list[dict[str, Any]]:
        """Every bus in use: state, cause, busy time, counters."""
        ...

    def busy_figures(self) -> dict[str, float]:
        """Seconds each lane (a bus, or a bus-less device) was held."""
        ...

    def device_commands(self, device: str) -> Mapping[str, str]:
        """The commands the device's driver accepts: action → description."""
        ...

    def device_reported(self, device: str) -> Mapping[str, str]:
        """What the device's driver found out about it (a camera's maker, serial, MAC, stream
        addresses): the inventory's ``reported`` part."""
        ...

    def can_test_read(self, device: str) -> bool: ...

    async def read_device(self, device: str) -> Sequence[Record]: ...

    async def execute_command(
        self,
        device: str,
        action: str,
        args: Mapping[str, Any],
        *,
        source: str,
        command_id: str,
    ) -> Mapping[str, Any]: ...
