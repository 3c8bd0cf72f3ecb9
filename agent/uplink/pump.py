"""The upload pump: buffer -> transport, for every transport.

Take, cut, send, then acknowledge, split, set aside or retry. One batch is in flight at a time,
so records leave in the buffer's order (events and status before readings, ``seq`` order within
each), and a batch is acknowledged to the buffer only after the platform's answer counted
exactly that batch (:func:`agent.uplink.wire.ack_problem`): a crash between the two means a
resend, which the platform counts as duplicates, so end to end it is exactly once. Any other
answer, even a 200, deletes nothing.

The work around the request is pipelined: a few batches are taken at once, the next one is
compressed and the previous one acknowledged to the buffer while a request is on the wire.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import zlib
from typing import Any, Final, Protocol

import structlog

from agent.records import Severity
from agent.state import UplinkState
from agent.uplink.base import Kind, Outcome, Payload, Transport
from agent.uplink.inventory import InventorySender
from agent.uplink.link import Link
from agent.uplink.wire import ack_problem, batch_document
from buffer import AsyncBuffer, Batch

__all__ = ["UploadPump"]

_INLINE_GZIP_MAX: Final = 64 * 1024
"""Bodies larger than this are compressed in a worker thread to keep the event loop free."""
_CHUNK_BATCHES: Final = 4
"""Batches taken from the buffer at once (see :meth:`UploadPump.run`)."""
POISON_RUN_MAX: Final = 10
"""Batches set aside in a row after which the pump stops setting aside and waits: a platform
(or a proxy in front of it) that refuses everything must not turn the backlog into poison."""


class Alarm(Protocol):
    """Raises an agent event (the runtime's :meth:`agent.sink.Sink.event`)."""

    async def __call__(
        self, type_: str, severity: Severity = Severity.INFO, **data: Any
    ) -> None: ...


class UploadPump:
    def __init__(
        self,
        transport: Transport,
        *,
        buffer: AsyncBuffer,
        link: Link,
        inventory: InventorySender,
        log: structlog.typing.FilteringBoundLogger,
        max_records: int,
        max_bytes: int,
        idle_poll_s: float = 0.5,
        gzip_level: int = 6,
        alarm: Alarm | None = None,
    ) -> None:
        self._transport = transport
        self._alarm = alarm
        self._poison_run = 0
        """Batches set aside since the last acknowledgement."""
        self._buffer = buffer
        self._link = link
        self._state: UplinkState = link.state
        self._inventory = inventory
        self._log = log
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._idle_poll_s = idle_poll_s
        self._gzip_level = gzip_level
        self.body_bytes_sent = 0
        """Uncompressed bytes of the acknowledged batches (``bytes_sent`` counts gzip)."""

    async def run(self) -> None:
        while True:
            outcome = await self._inventory.sync()
            if outcome is not None and outcome.kind in (Kind.RETRY, Kind.AUTH):
                await self._link.back_off(outcome)
                continue
            # Take several batches' worth at once and cut it into batches: while one batch is
            # on the wire, the next is compressed and the previous acknowledged on the other
            # core. The platform still sees one batch at a time, in order.
            chunk = await self._buffer.take(
                self._max_records * _CHUNK_BATCHES, self._max_bytes * _CHUNK_BATCHES
            )
            if chunk is None:
                await asyncio.sleep(self._idle_poll_s)
                continue
            await self._deliver_chunk(chunk.cut(self._max_records, self._max_bytes))

    async def _deliver_chunk(self, parts: list[Batch]) -> None:
        acks: list[asyncio.Future[int]] = []
        upcoming: asyncio.Task[Payload] | None = None
        try:
            upcoming = asyncio.create_task(self._encode(parts[0]))
            for i in range(len(parts)):
                assert upcoming is not None
                payload = await upcoming
                upcoming = None
                if i + 1 < len(parts):
                    upcoming = asyncio.create_task(self._encode(parts[i + 1]))
                if not await self._deliver(payload, acks):
                    # After a failure, take afresh: events that arrived meanwhile go first.
                    break
        except BaseException:
            await _settle(acks, quiet=True)
            raise
        finally:
            if upcoming is not None:
                upcoming.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await upcoming
        # Acks run on the buffer's own thread, in order; the next take must see them done, or
        # it would hand out the same records again.
        await _settle(acks, quiet=False)

    async def _deliver(self, payload: Payload, acks: list[asyncio.Future[int]]) -> bool:
        """Send one batch until it is acknowledged or set aside (split halves in order).

        False when it failed (the backoff has been waited here): the caller then takes from the
        buffer again instead of going on with its chunk, so what arrived meanwhile is ordered
        by priority again.
        """
        pending: collections.deque[Batch | Payload] = collections.deque([payload])
        while pending:
            head = pending[0]
            current = head if isinstance(head, Payload) else await self._encode(head)
            pending[0] = current
            batch = current.batch
            outcome = await self._send(current)
            if outcome.kind is Kind.ACK:
                acks.append(asyncio.ensure_future(self._buffer.ack(batch)))
                pending.popleft()
                self._poison_run = 0
            elif outcome.kind in (Kind.SPLIT, Kind.POISON) and len(batch.records) > 1:
                # Refused: halve until what the platform refuses is alone, so only that is
                # set aside.
                first, second = batch.split()
                pending.popleft()
                pending.extendleft((second, first))
            elif outcome.kind in (Kind.SPLIT, Kind.POISON) and self._poison_run < POISON_RUN_MAX:
                await self._set_aside(batch, outcome.error or "rejected")
                pending.popleft()
            else:
                if outcome.kind in (Kind.SPLIT, Kind.POISON):
                    outcome = await self._refusing(outcome)
                await self._link.back_off(outcome)
                return False
        return True

    async def _encode(self, batch: Batch) -> Payload:
        document = batch_document(batch.epoch, batch.body())
        if len(document) > _INLINE_GZIP_MAX:
            # zlib releases the GIL: a worker thread compresses on the other core.
            gzipped = await asyncio.to_thread(zlib.compress, document, self._gzip_level, 31)
        else:
            gzipped = zlib.compress(document, self._gzip_level, 31)
        return Payload(batch, document, gzipped)

    async def _send(self, payload: Payload) -> Outcome:
        started = time.monotonic()
        with self._link.sending():
            outcome = await self._transport.send(payload)
        batch = payload.batch
        if outcome.kind is Kind.ACK:
            problem = ack_problem(
                outcome.body,
                epoch=batch.epoch,
                records=len(batch.records),
                last_seq=max(last for _prio, _first, last in batch.ranges),
            )
            if problem is not None:
                outcome = Outcome(
                    Kind.RETRY,
                    f"the platform's answer is not an acknowledgement ({problem}); nothing "
                    f"was deleted: check uplink.{self._transport.name}.url",
                    reason="not_ack",
                    status=outcome.status,
                )
        if outcome.kind in (Kind.RETRY, Kind.AUTH):
            return self._link.failed(outcome)
        # The platform answered: the link works even when this batch cannot go.
        self._link.succeeded(time.monotonic() - started)
        if outcome.kind is Kind.ACK:
            state = self._state
            state.last_ack_ms = self._link.wall_ms()
            state.records_sent += len(batch.records)
            state.bytes_sent += len(payload.gzipped)
            state.batches_sent += 1
            self.body_bytes_sent += len(payload.document)
            duplicates = (outcome.body or {}).get("duplicates")
            if duplicates:
                self._log.info(
                    "uplink.duplicates",
                    duplicates=duplicates,
                    accepted=(outcome.body or {}).get("accepted"),
                    hint="a resend after a lost acknowledgement; the platform stored them once",
                )
        return outcome

    async def _refusing(self, outcome: Outcome) -> Outcome:
        """The platform refused :data:`POISON_RUN_MAX` records in a row: stop setting aside,
        raise the alarm once, and wait as for a credentials problem until one is accepted."""
        error = (
            f"the platform refused {self._poison_run} records in a row (last: {outcome.error}); "
            "not setting more aside: check the platform, or a proxy in front of it "
            "(`edge-agent buffer requeue-poison` sends the set-aside ones again)"
        )
        if self._poison_run == POISON_RUN_MAX:
            self._poison_run += 1  # the alarm once per run
            self._log.error("uplink.refusing_everything", error=outcome.error)
            if self._alarm is not None:
                await self._alarm(
                    "agent.uplink_refused",
                    Severity.ALARM,
                    error=outcome.error or "",
                    set_aside=POISON_RUN_MAX,
                )
        return self._link.failed(
            Outcome(
                Kind.AUTH,
                error,
                outcome.retry_after_s,
                reason="refusing_everything",
                status=outcome.status,
            )
        )

    async def _set_aside(self, batch: Batch, reason: str) -> None:
        await self._buffer.set_aside(batch, reason)
        self._poison_run += 1
        self._state.batches_poisoned += 1
        self._log.error(
            "uplink.batch_poisoned",
            records=len(batch.records),
            epoch=batch.epoch,
            ranges=[list(r) for r in batch.ranges],
            reason=reason,
            hint="set aside in the buffer's poison table; the rest keeps flowing",
        )


async def _settle(acks: list[asyncio.Future[int]], *, quiet: bool) -> None:
    """Wait for the buffer acks in flight, even when cancelled meanwhile.

    An ack abandoned halfway would not lose data (the platform dedups the resend) but would
    send it twice; so on cancellation the acks still finish, then the cancellation goes on.
    """
    if not acks:
        return
    done = asyncio.ensure_future(asyncio.gather(*acks, return_exceptions=quiet))
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        await asyncio.wait({done})
        if not done.cancelled():
            done.exception()  # retrieved: the cancellation is what goes on
        raise
