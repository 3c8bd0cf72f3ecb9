"""What every bus handle has: turns by priority, link state, counters and busy time.

A transaction takes a *turn* on its bus. Turns are granted by priority (commands, then
technician test reads, then drivers with a cadence, then bulk polls, then probes of devices that
are failing) and, within one priority, in arrival order. A *session* (:meth:`BusHandle.hold`:
one device's poll, a multi-frame exchange) keeps the bus across its transactions, so that a
device's read is not spread over other devices' turns; but between two of its transactions it
lets any more urgent waiter in first. A transaction in flight is never interrupted, so a command
on a saturated line waits at most for the one transaction in flight. The priority comes from
the caller's context (:func:`priority`): the core sets it around polls, commands and test reads,
so drivers need not pass it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import dataclasses
import enum
import heapq
import itertools
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

from agent import backoff
from agent.driver import BusError
from agent.records import Event, Severity

if TYPE_CHECKING:
    from agent.config.models import Bus

__all__ = [
    "BusHandle",
    "LinkListener",
    "Priority",
    "link_event",
    "priority",
    "waiting_time",
]

_RETRY_FIRST_S: Final = 0.5
_RETRY_MAX_S: Final = 10.0
_UTILISATION_WINDOW_S: Final = 60.0


class Priority(enum.IntEnum):
    """Who goes first on a bus: lower first."""

    COMMAND = 0
    TEST_READ = 1
    CADENCE = 2
    """A driver that must poll on a cadence (an OSDP panel, every reader about every 200 ms). It
    sleeps between its turns, so bulk polls fill the gaps."""
    POLL = 3
    PROBE = 4
    """A poll of a device that is failing: it waits for the healthy ones."""


@dataclasses.dataclass(slots=True)
class _Session:
    """A turn held by one task: its priority, and since when it holds the bus."""

    level: Priority
    since: float = 0.0


_priority: contextvars.ContextVar[Priority] = contextvars.ContextVar(
    "bus_priority", default=Priority.POLL
)
_held: contextvars.ContextVar[dict[int, _Session]] = contextvars.ContextVar("bus_held")
_waited: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar(
    "bus_waited", default=None
)


@contextlib.contextmanager
def priority(level: Priority) -> Iterator[None]:
    """Run the transactions inside at ``level`` (tasks started inside inherit it)."""
    token = _priority.set(level)
    try:
        yield
    finally:
        _priority.reset(token)


@contextlib.contextmanager
def waiting_time() -> Iterator[list[float]]:
    """Add up, in ``[0]``, the time the transactions inside spend waiting for a turn: a read's
    guard counts the driver's time, not the queue on a busy line."""
    box = [0.0]
    token = _waited.set(box)
    try:
        yield box
    finally:
        _waited.reset(token)


class _Turns:
    """A semaphore of ``slots`` that grants waiters by (priority, arrival)."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count(1)

    @property
    def waiting(self) -> int:
        return sum(not f.done() for _, _, f in self._waiters)

    def urgent(self, level: Priority) -> bool:
        """Is anyone more urgent than ``level`` waiting?"""
        return bool(self._waiters) and any(p < level and not f.done() for p, _, f in self._waiters)

    async def acquire(self, level: Priority, *, front: bool = False) -> None:
        """Wait for a turn; ``front``: ahead of the others of the same priority (a session
        taking its turn back after letting an urgent waiter in)."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        order = -next(self._order) if front else next(self._order)
        heapq.heappush(self._waiters, (int(level), order, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted just as we were cancelled: pass the turn on
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)
                return
        self._free += 1


class _Hold:
    """``async with bus.hold():`` (a class, not a generator: it runs once per transaction)."""

    __slots__ = ("_bus", "_session", "_token")

    def __init__(self, bus: BusHandle) -> None:
        self._bus = bus
        self._session: _Session | None = None
        self._token: contextvars.Token[dict[int, _Session]] | None = None

    async def __aenter__(self) -> None:
        bus = self._bus
        held = _held.get(_NOTHING_HELD)
        session = held.get(id(bus))
        if session is not None:
            if bus._turns.urgent(session.level):
                # Between two transactions of a session: let the command in, then carry on
                # ahead of the other polls.
                bus._release(session)
                await bus._acquire(session, front=True)
            return
        session = self._session = _Session(_priority.get())
        await bus._acquire(session)
        self._token = _held.set({**held, id(bus): session})

    async def __aexit__(self, *exc: object) -> None:
        if self._session is None:
            return
        assert self._token is not None
        _held.reset(self._token)
        self._bus._release(self._session)


_NOTHING_HELD: Final[dict[int, _Session]] = {}

LinkListener = Callable[["BusHandle"], None]
"""Called on every link transition; ``bus.state`` says which."""


class BusHandle:
    """The core's handle of one configured bus (base of :class:`SerialLine` and
    :class:`TcpHost`)."""

    kind: str = "bus"

    def __init__(self, config: Bus, *, slots: int, on_link: LinkListener | None = None) -> None:
        self.id = config.id
        self.config = config
        self._turns = _Turns(slots)
        self._on_link = on_link
        self.state = "unknown"
        """unknown (never opened), up or down."""
        self.down_reason: str | None = None
        self.down_error: str | None = None
        self.since_ms: int | None = None
        self._retry_at = 0.0
        self._failed_opens = 0
        self.busy_s = 0.0
        """Total time turns were held: divided by wall time, the bus's utilisation."""
        self._busy_samples: collections.deque[tuple[float, float]] = collections.deque()
        """(monotonic, busy_s) about once a second over the last minute: the utilisation now."""
        self.counters: collections.Counter[str] = collections.Counter()
        """Bus-wide figures: requests, replies, reconnects, noise bytes, and what the protocols
        on it count (crc_error, retries, ...)."""

    @property
    def where(self) -> str:
        raise NotImplementedError

    @property
    def waiting(self) -> int:
        """Transactions waiting for a turn."""
        return self._turns.waiting

    def note(self, what: str, count: int = 1) -> None:
        """Count something a protocol saw on this bus (a CRC error, a retry)."""
        self.counters[what] += count

    # ------------------------------------------------------------------ turns

    async def _acquire(self, session: _Session, *, front: bool = False) -> None:
        asked = time.monotonic()
        await self._turns.acquire(session.level, front=front)
        session.since = time.monotonic()
        box = _waited.get()
        if box is not None:
            box[0] += session.since - asked

    def _release(self, session: _Session) -> None:
        now = time.monotonic()
        self.busy_s += now - session.since
        samples = self._busy_samples
        if not samples or now - samples[-1][0] >= 1.0:
            samples.append((now, self.busy_s))
            while now - samples[0][0] > _UTILISATION_WINDOW_S:
                samples.popleft()
        self._turns.release()

    @property
    def utilisation(self) -> float | None:
        """The share of the last minute (or since the first turn) the bus was held."""
        samples = self._busy_samples
        if not samples:
            return None
        now = time.monotonic()
        since, busy_then = samples[0]
        if now - since < 1.0:
            return None
        # A turn in flight counts up to now only when released: a figure, not a meter.
        return min(1.0, (self.busy_s - busy_then) / (now - since))

    def hold(self) -> _Hold:
        """Hold the bus for a session: a device's poll, a multi-frame exchange, a simulated
        device's read. Exchanges inside take no turn of their own; before each, a more urgent
        waiter (a command, a test read) goes first. Re-entrant within one task."""
        return _Hold(self)

    # ------------------------------------------------------------------ link state

    def check_retry(self) -> None:
        """Fail fast while a down link waits for its next attempt."""
        if self.state != "down":
            return
        wait = self._retry_at - asyncio.get_running_loop().time()
        if wait > 0:
            raise BusError(
                self.down_reason or "io_error",
                f"{self.down_error}; next attempt in {wait:.1f} s",
            )

    def link_down(self, reason: str, error: str, *, retry_now: bool = False) -> None:
        """The bus failed: ``retry_now`` for a connection that broke (try again at once), else
        the next attempt waits longer each time (0.5 s doubling to 10 s)."""
        if retry_now:
            self._failed_opens = 0
            self._retry_at = 0.0
        else:
            wait = backoff.delay(self._failed_opens, first_s=_RETRY_FIRST_S, cap_s=_RETRY_MAX_S)
            self._failed_opens += 1
            self._retry_at = asyncio.get_running_loop().time() + wait
        self.down_reason, self.down_error = reason, error
        self.counters[reason] += 1
        if self.state != "down":
            self.state = "down"
            self.since_ms = int(time.time() * 1000)
            if self._on_link is not None:
                self._on_link(self)

    def link_up(self) -> None:
        """The bus works. A transition (and an event) only when it was down: the first open
        of a bus is not news."""
        self._failed_opens = 0
        before, self.state = self.state, "up"
        if before == "up":
            return
        self.since_ms = int(time.time() * 1000)
        if before == "down":
            self.counters["reconnects"] += 1
            if self._on_link is not None:
                self._on_link(self)

    def figures(self) -> dict[str, Any]:
        """What the page and ``/api`` show of the bus."""
        return {
            "id": self.id,
            "kind": self.kind,
            "where": self.where,
            "state": self.state,
            "since_ms": self.since_ms,
            "reason": self.down_reason if self.state == "down" else None,
            "error": self.down_error if self.state == "down" else None,
            "busy_s": round(self.busy_s, 3),
            "utilisation": None if self.utilisation is None else round(self.utilisation, 3),
            "waiting": self.waiting,
            "counters": dict(self.counters),
        }

    async def aclose(self) -> None:
        """Close what is open; the handle opens again on the next transaction."""


def link_event(
    bus: BusHandle, up: bool, *, source: str, stamp: tuple[int, bool], devices: list[str]
) -> Event:
    """The one event of a bus transition (``bus.link_down`` / ``bus.link_up``)."""
    ts, synced = stamp
    data: dict[str, Any] = {"bus": bus.id, "where": bus.where, "devices": devices}
    if up:
        type_, severity = "bus.link_up", Severity.INFO
    else:
        type_, severity = "bus.link_down", Severity.WARNING
        data |= {"reason": bus.down_reason, "error": bus.down_error}
    return Event(device=source, ts=ts, ts_synced=synced, type=type_, severity=severity, data=data)
