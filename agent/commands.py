"""Commands to devices (open a door, write a register), from the platform, the page or on site:
one route for all of them.

A command runs only if the device's ``commands:`` allowlist names it and its driver validates
the arguments; it goes ahead of bulk polls on the device's bus and its frames go out together;
every outcome, refused, failed or done, is audited as an ``agent.command`` event.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from agent.bus import Priority, priority
from agent.driver import CommandError, CommandHandler
from agent.records import Severity
from drivers import DRIVERS

if TYPE_CHECKING:
    import structlog

    from agent.devices import DeviceEntry

__all__ = ["AUDIT_TEXT_MAX", "CommandRouter", "audited"]

EventFn = Callable[..., Awaitable[None]]

AUDIT_TEXT_MAX = 512
"""A result string longer than this (a snapshot's image) is audited by its length only: the
audit says what was done, it does not carry the payload into the buffer."""


def audited(result: Mapping[str, Any]) -> dict[str, Any]:
    """``result`` as the audit event stores it: long strings replaced by their length."""
    return {
        key: f"<{len(value)} characters>"
        if isinstance(value, str) and len(value) > AUDIT_TEXT_MAX
        else value
        for key, value in result.items()
    }


class CommandRouter:
    """Routes a command to the driver that owns its device."""

    def __init__(
        self,
        devices: Callable[[], Mapping[str, DeviceEntry]],
        *,
        event: EventFn,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._devices = devices
        self._event = event
        self.log = log

    def _command_target(
        self, device: str, action: str, args: Mapping[str, Any]
    ) -> tuple[DeviceEntry, CommandHandler, Mapping[str, Any]]:
        entry = self._devices().get(device)
        if entry is None:
            raise CommandError("unknown_device", f"no device {device!r} on this gateway")
        if action not in entry.config.commands:
            raise CommandError(
                "not_allowed", f"{action!r} is not allowed for {device!r} by the config"
            )
        driver = entry.driver
        if not isinstance(driver, CommandHandler):
            raise CommandError("unsupported", f"{device!r} takes no commands")
        spec = next((s for s in driver.command_specs() if s.action == action), None)
        if spec is None:
            raise CommandError("unknown_action", f"{device!r} does not know {action!r}")
        return entry, driver, spec.validate(args)

    async def execute_command(
        self,
        device: str,
        action: str,
        args: Mapping[str, Any],
        *,
        source: str,
        command_id: str,
    ) -> Mapping[str, Any]:
        """Run a command on the driver that owns ``device``; every outcome is audited."""
        audit: dict[str, Any] = {
            "id": command_id,
            "source": source,
            "target": device,
            "action": action,
        }
        try:
            entry, driver, clean = self._command_target(device, action, args)
            if DRIVERS[entry.config.driver].scope == "bus":
                clean = {**clean, "device": device}  # which of its devices (a reserved key)
            # A command waits for at most the transaction in flight on its bus, and its frames
            # (a write, its read-back) go out together.
            with priority(Priority.COMMAND):
                bus = entry.unit.bus
                if bus is None:
                    result = await driver.execute(action, clean)
                else:
                    async with bus.hold():
                        result = await driver.execute(action, clean)
        except CommandError as exc:
            self.log.warning("command.refused", **audit, reason=exc.reason, error=str(exc))
            await self._event(
                "agent.command",
                Severity.WARNING,
                **audit,
                status="failed",
                reason=exc.reason,
                error=str(exc),
            )
            raise
        except Exception as exc:
            self.log.error("command.failed", **audit, error=str(exc))
            await self._event(
                "agent.command",
                Severity.WARNING,
                **audit,
                status="failed",
                reason="driver_error",
                error=f"{type(exc).__name__}: {exc}",
            )
            raise CommandError("driver_error", f"{type(exc).__name__}: {exc}") from exc
        self.log.info("command.done", **audit)
        await self._event(
            "agent.command", Severity.INFO, **audit, status="ok", result=audited(result)
        )
        return result
