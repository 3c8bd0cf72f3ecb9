"""The platform's commands, for every transport: poll, verify, run at most once, report.

A command runs only when its Ed25519 signature verifies with the platform's key, it is for this
gateway, it is well formed, its lifetime (``expires_ms - issued_ms``) is within the configured
cap, it is not expired, and its id has never been run. Only a command that passed those checks
claims its id, durably, in the buffer file (:meth:`buffer.Buffer.claim_command`) before it runs:
a redelivery, even after a kill -9 or a power cut, is refused as ``duplicate``, and a forged
command cannot use up the id of a real one. The executor (the runtime's
:class:`agent.commands.CommandRouter`) then applies the device's allowlist and audits it. The
result is reported with retries; a refusal is reported with its reason, so the operator sees
why a door did not open.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Final

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.driver import CommandError
from agent.uplink.base import (
    REFUSAL_REASONS,
    CommandExecutor,
    Kind,
    Transport,
    UplinkConfigError,
)
from agent.uplink.link import Link
from agent.uplink.wire import (
    command_problem,
    load_ed25519_public_key,
    open_envelope,
    result_document,
)

__all__ = ["CommandService", "CommandVerifier", "Refusal", "load_command_key"]

RESULT_ATTEMPTS: Final = 8
_OPEN_PROBLEMS: Final = {
    "unsigned": "the command carries no signature",
    "bad_signature": "the signature does not verify (tampered?)",
    "malformed": "the payload is not base64 of a JSON object",
    "id_mismatch": "the id outside the payload is not the signed one",
}
_SEEN_MAX: Final = 4096


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    status: str
    """What the platform hears: "refused" or "expired"."""
    reason: str
    message: str


Claim = Callable[[str, int], Awaitable[bool]]
"""``claim(command_id, expires_ms)``: True when the id is new, recorded durably."""


class CommandVerifier:
    """Decides whether a command from the platform may run. ``now_ms`` is the clock expiry is
    judged by: the gateway's own while it is synchronised, else the platform's estimate."""

    def __init__(
        self,
        key: Ed25519PublicKey,
        *,
        gateway_id: str,
        now_ms: Callable[[], int],
        max_lifetime_s: float,
    ) -> None:
        self._key = key
        self._gateway_id = gateway_id
        self._now_ms = now_ms
        self._max_lifetime_ms = int(max_lifetime_s * 1000)

    def open(self, envelope: Mapping[str, object]) -> dict[str, object] | Refusal:
        """The command, once its signature verified over the exact bytes it came as."""
        opened = open_envelope(self._key, envelope)
        if isinstance(opened, dict):
            return opened
        return Refusal("refused", opened, _OPEN_PROBLEMS[opened])

    def check(self, command: Mapping[str, object]) -> Refusal | None:
        """Whether an opened (verified) command may run."""
        if command.get("gateway") != self._gateway_id:
            return Refusal(
                "refused", "wrong_gateway", f"the command is for gateway {command.get('gateway')!r}"
            )
        problem = command_problem(command)
        if problem is not None:
            return Refusal("refused", "malformed", problem)
        expires, issued = command["expires_ms"], command["issued_ms"]
        assert isinstance(expires, int)
        assert isinstance(issued, int)
        if expires - issued > self._max_lifetime_ms:
            return Refusal(
                "refused",
                "lifetime_too_long",
                f"valid for {(expires - issued) / 1000:.0f} s; this gateway accepts at most "
                f"{self._max_lifetime_ms / 1000:.0f} s (uplink command_max_lifetime_s)",
            )
        now = self._now_ms()
        if expires < now:
            return Refusal("expired", "expired", f"expired {(now - expires) / 1000:.1f} s ago")
        return None


class _Seen:
    """Ids of the commands this process ran, the newest ``limit`` of them (the durable record
    is the buffer's; this spares it the duplicates of one session)."""

    def __init__(self, limit: int = _SEEN_MAX) -> None:
        self._ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._limit = limit

    def __contains__(self, command_id: str) -> bool:
        return command_id in self._ids

    def add(self, command_id: str) -> None:
        self._ids[command_id] = None
        while len(self._ids) > self._limit:
            self._ids.popitem(last=False)


class CommandService:
    def __init__(
        self,
        transport: Transport,
        *,
        verifier: CommandVerifier,
        executor: CommandExecutor,
        claim: Claim,
        link: Link,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._transport = transport
        self._verifier = verifier
        self._claim = claim
        self._executor = executor
        self._link = link
        self._log = log
        self._seen = _Seen()
        self._failures = 0
        self._error: str | None = None

    async def run(self) -> None:
        while True:
            polled = await self._transport.poll_commands()
            outcome = polled.outcome
            if outcome.kind is not Kind.ACK:
                await self._back_off(outcome.error, outcome.retry_after_s)
                continue
            if self._failures:
                self._log.info("uplink.commands_recovered", failed_polls=self._failures)
            self._failures = 0
            self._error = None
            for command in polled.commands:
                await self.handle(command)

    async def _back_off(self, error: str | None, retry_after_s: float | None) -> None:
        self._failures += 1
        if error != self._error:
            self._log.warning("uplink.commands_failing", error=error)
            self._error = error
        await asyncio.sleep(self._link.delay(self._failures, retry_after_s))

    async def handle(self, envelope: object) -> None:
        command_id = envelope.get("id") if isinstance(envelope, dict) else None
        if not isinstance(envelope, dict) or not isinstance(command_id, str) or not command_id:
            self._log.warning("command.malformed", hint="a command without an id is ignored")
            return
        if command_id in self._seen:
            # Delivered twice while this process runs (a lost poll answer): its result is
            # reported, or being reported, already.
            self._log.debug("command.duplicate", command_id=command_id)
            return
        opened = self._verifier.open(envelope)
        command: Mapping[str, object] = opened if isinstance(opened, dict) else {}
        audit = {
            "command_id": command_id,
            "device": command.get("device"),
            "action": command.get("action"),
        }
        refusal = (
            opened
            if isinstance(opened, Refusal)
            else self._verifier.check(command) or await self._claimed(command)
        )
        if refusal is not None:
            self._log.warning(
                "command.refused", **audit, status=refusal.status, reason=refusal.reason
            )
            await self._report(
                command_id, refusal.status, reason=refusal.reason, error=refusal.message
            )
            return
        self._seen.add(command_id)
        device, action, args = command["device"], command["action"], command["args"]
        # Checked by command_problem (wire) before: the shapes the executor takes.
        assert isinstance(device, str)
        assert isinstance(action, str)
        assert isinstance(args, dict)
        try:
            result = await self._executor(
                device, action, args, source="platform", command_id=command_id
            )
        except CommandError as exc:
            status = "refused" if exc.reason in REFUSAL_REASONS else "failed"
            await self._report(command_id, status, reason=exc.reason, error=str(exc))
            return
        except Exception as exc:
            self._log.exception("command.crashed", **audit)
            await self._report(
                command_id, "failed", reason="internal_error", error=f"{type(exc).__name__}: {exc}"
            )
            return
        await self._report(command_id, "ok", result=dict(result))

    async def _claimed(self, command: Mapping[str, object]) -> Refusal | None:
        """Claim the command's id durably; a refusal when it was claimed before or cannot be."""
        command_id, expires = command["id"], command["expires_ms"]
        assert isinstance(command_id, str)
        assert isinstance(expires, int)
        try:
            if await self._claim(command_id, expires):
                return None
        except (OSError, sqlite3.Error) as exc:
            # Not recorded, not run: at most once holds even when the card fails.
            self._log.error("command.unrecorded", command_id=command_id, error=str(exc))
            return Refusal("refused", "unrecorded", f"cannot record the command durably: {exc}")
        return Refusal(
            "refused",
            "duplicate",
            "this command was received before (the agent restarted since); at most once: "
            "it is not run again",
        )

    async def _report(
        self,
        command_id: str,
        status: str,
        *,
        result: Mapping[str, object] | None = None,
        reason: str | None = None,
        error: str | None = None,
    ) -> None:
        problem: str | None = None
        for attempt in range(1, RESULT_ATTEMPTS + 1):
            document = result_document(
                status, self._transport.now_ms(), result=result, reason=reason, error=error
            )
            outcome = await self._transport.report_result(command_id, document)
            if outcome.kind is Kind.ACK:
                return
            if outcome.kind in (Kind.POISON, Kind.SPLIT):
                self._log.error(
                    "command.result_rejected", command_id=command_id, error=outcome.error
                )
                return
            problem = outcome.error
            if attempt < RESULT_ATTEMPTS:
                await asyncio.sleep(self._link.delay(attempt, outcome.retry_after_s))
        self._log.error("command.result_lost", command_id=command_id, status=status, error=problem)


def load_command_key(path: Path | None, *, section: str) -> Ed25519PublicKey:
    """The platform's Ed25519 public key from ``path``, the ``command_key_file`` of the config
    section ``section`` (``uplink.http``), which the errors name."""
    if path is None:
        raise UplinkConfigError(
            f"{section}.command_key_file is required when commands are on: it is the "
            "platform's Ed25519 public key (PEM) that proves commands come from the platform "
            f"(or set {section}.commands: false)"
        )
    try:
        return load_ed25519_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise UplinkConfigError(f"{section}.command_key_file {path}: {exc}") from exc
