"""The supervisor: every long-lived task of the agent, named, and restarted when it crashes.

Tasks have names (``driver[simulated:meter-3]``, ``uplink[http]``, ``buffer-figures``,
``clock-watch``). A crash is logged (with its traceback the first time), counted, reported as an
``agent.task_crashed`` event, backed off (:mod:`agent.backoff`, up to a minute) and restarted;
it never takes the agent down. The devices a crashed driver served are reported offline with
``driver_error`` until their next good read. :meth:`Supervisor.stop` ends every task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import structlog

from agent import backoff
from agent.availability import Availability
from agent.records import Severity
from agent.sink import Sink
from agent.state import AgentState, DeviceState

__all__ = ["Supervisor"]

RESTART_BACKOFF_MAX_S: Final = 60.0


class Supervisor:
    def __init__(
        self,
        *,
        state: AgentState,
        availability: Availability,
        sink: Sink,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._state = state
        self._availability = availability
        self._sink = sink
        self._log = log
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    def spawn(self, name: str, coro: Awaitable[None]) -> asyncio.Task[None]:
        """A named task, cancelled at :meth:`stop` (not restarted: see :meth:`keep`)."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def keep(self, name: str, body: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """A long-lived task, supervised: one sqlite error in the buffer's figures must not
        freeze them for good."""
        return self.spawn(name, self.supervise(name, body))

    async def supervise(
        self,
        name: str,
        body: Callable[[], Awaitable[None]],
        devices: Sequence[DeviceState] = (),
    ) -> None:
        """Run ``body`` until it returns; restart it with backoff whenever it raises."""
        restarts = 0
        while not self._stopping.is_set():
            try:
                await body()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                restarts += 1
                await self._crashed(name, exc, restarts, devices)
            else:
                return

    async def _crashed(
        self, name: str, exc: Exception, restarts: int, devices: Sequence[DeviceState]
    ) -> None:
        self._state.task_restarts += 1
        # Not being read is offline for the platform, whatever the cause; the next good read
        # (or record) reports the device online again.
        offline = []
        for device in devices:
            device.restarts += 1
            device.errors["driver_error"] += 1
            status = self._availability.down(device.id, "driver_error", str(exc))
            if status is not None:
                offline.append(status)
        if offline:
            await self._sink(offline)
        delay = backoff.spread(
            backoff.delay(restarts - 1, first_s=1.0, cap_s=RESTART_BACKOFF_MAX_S), 0.2
        )
        error = f"{type(exc).__name__}: {exc}"
        self._log.error(
            "task.crashed",
            task=name,
            error=error,
            restarts=restarts,
            restart_in_s=round(delay, 2),
            exc_info=exc if restarts == 1 else None,
        )
        await self._sink.event(
            "agent.task_crashed",
            Severity.WARNING,
            task=name,
            error=error,
            restarts=restarts,
            restart_in_s=round(delay, 2),
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    def winding_down(self) -> None:
        """The agent is stopping: a task that crashes now is not restarted."""
        self._stopping.set()

    async def stop(self) -> None:
        """No more restarts; cancel every task and wait for them."""
        self._stopping.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
