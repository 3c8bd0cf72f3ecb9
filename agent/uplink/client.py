"""One uplink: a transport with the pump, the inventory sender and the command service on it.

Every transport gets the same behaviour from here: the first attempt spread after a start (a
district power cut brings hundreds of gateways back at once), one link state, and commands only
when a command key is configured. A transport module (``agent.uplink.http``) builds one from its
config section.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.config.models import Gateway, UplinkConfig
from agent.state import UplinkState
from agent.uplink.base import CommandExecutor, Transport
from agent.uplink.commands import CommandService, CommandVerifier
from agent.uplink.inventory import InventorySender
from agent.uplink.link import Link
from agent.uplink.pump import Alarm, UploadPump
from buffer import AsyncBuffer

__all__ = ["UplinkClient", "build_uplink"]


class UplinkClient:
    """Sends the buffer's records to the platform and runs the platform's commands.

    ``run`` works until cancelled (exceptions other than cancellation are bugs: the runtime's
    supervisor logs them and calls ``run`` again); ``close`` releases the transport. ``clock``
    (wall time in seconds) and ``rng`` exist so tests can give the gateway a wrong clock and fix
    the jitter.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        gateway_id: str,
        buffer: AsyncBuffer,
        state: UplinkState,
        inventory: Callable[[], Mapping[str, object]],
        commands: tuple[CommandExecutor, Ed25519PublicKey] | None,
        log: structlog.typing.FilteringBoundLogger,
        command_max_lifetime_s: float = 600.0,
        clock_synced: Callable[[], bool] | None = None,
        alarm: Alarm | None = None,
        max_records: int,
        max_bytes: int,
        backoff_cap_s: float,
        first_attempt_jitter_s: float,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        backoff_first_s: float = 1.0,
        idle_poll_s: float = 0.5,
        inventory_check_s: float = 10.0,
        gzip_level: int = 6,
    ) -> None:
        self.transport = transport
        self._state = state
        self._first_attempt_jitter_s = first_attempt_jitter_s
        self._log = log
        self._started = False
        state.transport = transport.name
        self.link = Link(
            state,
            address=transport.address,
            log=log,
            backoff_first_s=backoff_first_s,
            backoff_cap_s=backoff_cap_s,
            clock=clock,
            rng=rng,
        )
        self._inventory = InventorySender(
            transport, inventory=inventory, link=self.link, log=log, check_s=inventory_check_s
        )
        self.pump = UploadPump(
            transport,
            buffer=buffer,
            link=self.link,
            inventory=self._inventory,
            log=log,
            max_records=max_records,
            max_bytes=max_bytes,
            idle_poll_s=idle_poll_s,
            gzip_level=gzip_level,
            alarm=alarm,
        )
        self.commands: CommandService | None = None
        if commands is not None:
            executor, key = commands

            def now_ms() -> int:
                # The gateway's clock while NTP vouches for it: the skew estimate comes from an
                # unsigned Date header, which must not decide that a command is still valid.
                if clock_synced is not None and clock_synced():
                    return int(clock() * 1000)
                return transport.now_ms()

            verifier = CommandVerifier(
                key, gateway_id=gateway_id, now_ms=now_ms, max_lifetime_s=command_max_lifetime_s
            )
            self.commands = CommandService(
                transport,
                verifier=verifier,
                executor=executor,
                claim=buffer.claim_command,
                link=self.link,
                log=log,
            )

    @property
    def state(self) -> UplinkState:
        return self._state

    def now_ms(self) -> int:
        """The platform's idea of now."""
        return self.transport.now_ms()

    def inventory_changed(self) -> None:
        """Check the inventory on the next round, not after ``inventory_check_s``."""
        self._inventory.changed()

    async def run(self) -> None:
        await self.transport.open()
        if not self._started:
            self._started = True
            delay = self.link.uniform(self._first_attempt_jitter_s)
            if delay > 0:
                self._log.info("uplink.starting", first_attempt_in_s=round(delay, 2))
                await self.link.wait(delay)
        name = f"uplink[{self.transport.name}]"
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.pump.run(), name=f"{name}.records")
            if self.commands is not None:
                tasks.create_task(self.commands.run(), name=f"{name}.commands")

    async def close(self) -> None:
        await self.transport.close()
        self._state.connected = False
        self._state.next_attempt_ms = None


def build_uplink(
    config: UplinkConfig,
    *,
    gateway: Gateway,
    buffer: AsyncBuffer,
    state: UplinkState,
    inventory: Callable[[], Mapping[str, object]],
    commands: CommandExecutor,
    log: structlog.typing.FilteringBoundLogger,
    agent_version: str,
    clock_synced: Callable[[], bool],
    alarm: Alarm,
) -> UplinkClient | None:
    """The uplink the config asks for, None when it asks for none. Raises
    :class:`agent.uplink.base.UplinkConfigError` or :class:`agent.config.secrets.SecretError`
    when it cannot start (a key file missing or invalid). The transport's module is imported
    only here."""
    if config.http is None:
        return None
    from agent.config.secrets import read_secret  # noqa: PLC0415
    from agent.uplink.http import HttpUplinkClient  # noqa: PLC0415

    return HttpUplinkClient(
        config.http,
        gateway=gateway,
        secret=read_secret(config.http.secret),
        buffer=buffer,
        state=state,
        inventory=inventory,
        commands=commands,
        log=log.bind(task="uplink[http]"),
        agent_version=agent_version,
        clock_synced=clock_synced,
        alarm=alarm,
    )
