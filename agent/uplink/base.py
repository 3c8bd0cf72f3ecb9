"""The transport-independent uplink contract (DESIGN.md section 5).

An uplink is an :class:`agent.uplink.client.UplinkClient`: the upload pump
(:mod:`agent.uplink.pump`), the inventory sender (:mod:`agent.uplink.inventory`) and the command
service (:mod:`agent.uplink.commands`) over one :class:`Transport`. A transport only moves
documents of uplink API v1 and maps what the platform answered to an :class:`Outcome`; what an
outcome means for the buffer (acknowledge, split, set aside, retry) is decided once, in the pump,
for every transport. "Acknowledged" means the platform answered that it *stored* the batch.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol, runtime_checkable

from agent.state import UplinkState
from buffer import Batch

__all__ = [
    "LINK_REASONS",
    "REFUSAL_REASONS",
    "CommandExecutor",
    "Kind",
    "Outcome",
    "Payload",
    "Polled",
    "Transport",
    "Uplink",
    "UplinkConfigError",
]


REFUSAL_REASONS = frozenset(
    {"unknown_device", "not_allowed", "unsupported", "unknown_action", "bad_args", "refused"}
)
"""CommandError reasons reported to the platform as "refused" (the command was not run);
any other reason is reported as "failed"."""


class UplinkConfigError(ValueError):
    """The uplink cannot start: a TLS file or the command key is missing or invalid."""


LINK_REASONS: Final = (
    "timeout",  # no answer within uplink.http.timeout_s
    "refused",  # the connection was refused: nothing listens there
    "unreachable",  # no route to the platform's host
    "dns",  # the platform's host name does not resolve
    "tls",  # the TLS handshake or the certificate check failed
    "network",  # the connection broke in the middle
    "too_large",  # the platform's answer was too large to read
    "busy",  # 408, 409, 425, 429: the platform asks to come back later
    "server_error",  # 5xx
    "auth",  # 401, 403, 407: the key or the gateway id is wrong
    "wrong_url",  # 404, 405: no such API at uplink.http.url
    "redirect",  # 3xx: the URL moved
    "not_ack",  # 200, but not an acknowledgement of what was sent
    "refusing_everything",  # every batch refused: stopped setting batches aside
    "inventory_rejected",  # the platform will not take the inventory; records still go
    "misconfigured",  # the uplink cannot start: a key or TLS file is missing or invalid
    "unexpected",  # any other answer
)
"""The reason codes of :attr:`Outcome.reason`; the page has a catalog entry for each."""


class Kind(enum.Enum):
    """What the platform's answer means for what was sent."""

    ACK = "ack"
    """Answered with a document; for a batch, the pump still checks that it acknowledges it."""
    RETRY = "retry"
    """Transient: the platform or the network failed; try the same thing again later."""
    AUTH = "auth"
    """Credentials or configuration are wrong; retrying will not help until someone fixes it,
    but discarding data would not help either."""
    SPLIT = "split"
    """Too large, or some record in it is invalid: halve it until the culprit is alone."""
    POISON = "poison"
    """The platform will never take this: set it aside, the rest keeps flowing."""


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    kind: Kind
    error: str | None = None
    retry_after_s: float | None = None
    """The platform asked for this pause (HTTP ``Retry-After``); the backoff waits at least it."""
    body: Mapping[str, object] | None = None
    """The answer's JSON object, when it was one."""
    reason: str | None = None
    """What went wrong, as a code the page translates (:data:`LINK_REASONS`); ``None`` when
    nothing did."""
    status: int | None = None
    """The HTTP status, when the platform answered."""


@dataclasses.dataclass(frozen=True, slots=True)
class Payload:
    """One batch as it goes to the platform: the ``POST …/records`` document and its gzip."""

    batch: Batch
    document: bytes
    gzipped: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Polled:
    """The answer to one commands poll: the outcome and, when it is an ACK, the commands."""

    outcome: Outcome
    commands: Sequence[object] = ()


class Transport(Protocol):
    """How documents of uplink API v1 reach the platform (HTTP; MQTT later).

    No method raises for a network or platform failure: each returns an :class:`Outcome` of
    kind RETRY (with the error's text) instead. ``now_ms`` is the platform's idea of now, for
    the timestamps the transport sends.
    """

    @property
    def name(self) -> str: ...

    @property
    def address(self) -> str:
        """Where it connects, for logs and the page (never carries a secret)."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def now_ms(self) -> int: ...

    async def send(self, payload: Payload) -> Outcome:
        """Deliver one batch; ACK only when the platform answered after storing it."""
        ...

    async def put_inventory(self, document: bytes) -> Outcome: ...

    async def poll_commands(self) -> Polled:
        """Wait (long poll, or until the broker delivers) for the platform's commands."""
        ...

    async def report_result(self, command_id: str, document: bytes) -> Outcome: ...


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
    """One uplink to the platform. ``run`` works until cancelled; ``close`` frees it."""

    @property
    def state(self) -> UplinkState: ...

    async def run(self) -> None: ...

    async def close(self) -> None: ...

    def inventory_changed(self) -> None: ...
