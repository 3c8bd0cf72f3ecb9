"""The transport-independent uplink contract (DESIGN.md section 5).

An uplink takes batches from the buffer and acknowledges them only when the platform says it
stored them; HTTP is the first transport, MQTT can come later behind the same :class:`Uplink`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from agent.state import UplinkState

__all__ = ["REFUSAL_REASONS", "CommandExecutor", "Uplink"]


REFUSAL_REASONS = frozenset(
    {"unknown_device", "not_allowed", "unsupported", "unknown_action", "bad_args", "refused"}
)
"""CommandError reasons reported to the platform as "refused" (the command was not run);
any other reason is reported as "failed"."""


class CommandExecutor(Protocol):
    """Runs a command on a device; the runtime implements it (allowlist check and audit).

    Raises :class:`agent.driver.CommandError` when the command is refused or fails; its
    ``reason`` decides whether the platform hears "refused" or "failed".
    """

    async def __call__(
        self,
        device: str,
        action: str,
        args: Mapping[str, Any],
        *,
        source: str,
        command_id: str,
    ) -> Mapping[str, Any]: ...


@runtime_checkable
class Uplink(Protocol):
    """One transport to the platform. ``run`` works until cancelled; ``close`` frees it."""

    @property
    def state(self) -> UplinkState: ...

    async def run(self) -> None: ...

    async def close(self) -> None: ...
