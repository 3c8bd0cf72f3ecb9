"""The synchronous store-and-forward buffer (DESIGN.md section 4) on the standard ``sqlite3``.

One SQLite file in WAL mode holds the records not yet acknowledged by the platform. The six
promises and how this module keeps them:

1. Durable on acceptance: ``append`` returns after ``COMMIT`` with ``synchronous=FULL`` (or
   ``NORMAL``); one transaction per call, so a group commit is one fsync.
2. ``seq``: ``meta.last_seq`` is read and written inside every write transaction, so a seq is
   never reused (not after ack-all, not after reopen, not by a second process) and a rolled-back
   transaction consumes none.
3. Priorities: alarms (events of severity alarm or critical) live in ``alarms``, other events
   and status in ``events``, readings in ``readings``; ``take`` drains them in that order, each
   in seq order.
4. Bounded: logical bytes (body length + :data:`ROW_OVERHEAD` per row) are kept in ``meta`` and
   the oldest readings, then events, then alarms, are range-deleted when the bound is hit; every
   drop is counted and reported by an ``agent.buffer_overflow`` event in the same transaction.
5. Acknowledged deletion: ``ack`` deletes exactly the seq ranges the batch covered.
6. Recoverable: a file that is not a database, fails ``quick_check`` or has an unreadable schema
   is renamed aside (never deleted) and a fresh file with a new epoch reports it in an
   ``agent.buffer_corrupt`` event.

A :class:`Buffer` is used from one thread at a time; :class:`buffer.AsyncBuffer` gives it a
worker thread of its own. Its seams are modules of their own: :mod:`buffer.batches` (what
``take`` hands out, cut and split with exact ranges), :mod:`buffer.recovery` (opening safely,
moving a damaged file aside), :mod:`buffer.eviction` (the bound and its overflow events).
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import operator
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, Self, TypeVar

import orjson
import structlog

from agent.records import (
    PRIORITY_READING,
    Event,
    Record,
    Severity,
    now_ms,
)
from agent.records import boot_id as records_boot_id

from ._encode import RecordEncoder
from ._meta import ROW_OVERHEAD, TABLE, TS, Counters
from ._schema import (
    BufferVersionError,
    SchemaError,
    check_schema,
    refuse_newer,
    schema_version,
    user_version,
)
from .batches import Batch, BufferStats
from .durability import Durability
from .eviction import EVICT_SLACK_DIVISOR, Eviction
from .recovery import (
    BUSY_TIMEOUT_S,
    CorruptError,
    file_bytes,
    fsync_dir,
    move_aside,
    open_checked,
)
from .reserve import DiskFullError, DiskReserve, reserve_size

__all__ = [
    "AGE_CHECK_INTERVAL_S",
    "EVICT_SLACK_DIVISOR",
    "MIN_MAX_BYTES",
    "ROW_OVERHEAD",
    "Batch",
    "Buffer",
    "BufferClosedError",
    "BufferStats",
    "BufferUnreadableError",
    "BufferVersionError",
]

AGE_CHECK_INTERVAL_S: Final = 5.0
"""``max_age_s`` is enforced on append at most this often."""

MIN_MAX_BYTES: Final = 4096

_SYNCED: Final = operator.attrgetter("ts_synced")
_POISON_EVENT: Final = "agent.uplink_poison"
_POISON_NEEDLE: Final = b'"type":"agent.uplink_poison"'
_REASON_MAX: Final = 500

_COUNTERS: Final = "last_seq, bytes, events, readings, dropped_readings, dropped_events, poisoned"
_SELECT_COUNTERS: Final = f"SELECT {_COUNTERS} FROM meta WHERE id = 1"  # noqa: S608
_UPDATE_COUNTERS: Final = (
    "UPDATE meta SET last_seq = ?, bytes = ?, events = ?, readings = ?, "
    "dropped_readings = ?, dropped_events = ?, poisoned = ? WHERE id = 1"
)

_VALUES_ROWS: Final = 512


@functools.cache
def _values_sql(table: str, synced: bool, rows: int) -> str:
    columns, one = ("seq, body", "(?,?)") if synced else ("seq, boot, body", "(?,?,?)")
    return f"INSERT INTO {table} ({columns}) VALUES " + ",".join([one] * rows)  # noqa: S608


_log = structlog.get_logger("buffer")


_T = TypeVar("_T")
_CLAIM_KEPT_AFTER_EXPIRY_MS: Final = 86_400_000
"""A claim outlives its command's expiry by a day: a gateway clock that jumps back cannot make
an expired claim look unexpired and forgotten."""
_TRUNCATE_AFTER_BYTES: Final = 16 * 2**20
"""Deleted bytes after which the WAL is checkpointed and truncated."""
_APPEND_ROOM_PER_RECORD: Final = 512
"""Disk room an append of one record is taken to need while the disk is full (a generous
record plus its share of index and WAL pages)."""


def _disk_full(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF == sqlite3.SQLITE_FULL) or "disk is full" in str(exc)


class BufferClosedError(RuntimeError):
    """The buffer was closed (or is closing) and takes no more work."""


class BufferUnreadableError(RuntimeError):
    """A read-only inspection could not read the file as a buffer (corrupt, foreign, old)."""


class Buffer(Eviction):
    """Synchronous core of the buffer. Use from one thread at a time."""

    epoch: str
    recovered_from: Path | None
    commits: int
    """Write transactions committed through this object (group commit shows up here)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        epoch: str,
        max_bytes: int,
        max_age_s: float | None,
        durability: Durability,
        source: str,
        boot_id: str,
        clock_synced: Callable[[], bool] | None,
        recovered_from: Path | None,
        read_only: bool,
    ) -> None:
        self._conn = conn
        self.path = path
        self.epoch = epoch
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.durability = durability
        self.source = source
        self.boot_id = boot_id
        self.recovered_from = recovered_from
        self.commits = 0
        self._read_only = read_only
        self._clock_synced = clock_synced
        self._last_synced = True
        self._closed = False
        self._encode = RecordEncoder()
        self._counters = self._load_counters()
        self._next_age_check = 0.0
        # Highest seq per priority handed out by take() and not yet acked: those records are on
        # their way to the platform, so eviction spares them while it can (a record both
        # delivered and counted as dropped would make the platform's gap accounting lie).
        self._taken: dict[int, int] = {}
        self._age_check_interval_s = AGE_CHECK_INTERVAL_S
        self._reserve = self._overflow_reserve()
        self.disk = DiskReserve(path.with_name(path.name + "-reserve"), reserve_size(max_bytes))
        """Room an acknowledgement can delete with on a full disk (:mod:`buffer.reserve`)."""
        self._deleted_since_truncate = 0

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        max_bytes: int = 1024 * 2**20,
        max_age_s: float | None = None,
        durability: Durability | str = "full",
        source: str = "agent",
        boot_id: str | None = None,
        clock_synced: Callable[[], bool] | None = None,
        found_corrupt: str | None = None,
    ) -> Buffer:
        """Open (create, migrate, or recover) the buffer file at ``path`` for writing.

        ``boot_id`` is stored with records stamped before clock sync (default: the kernel's).
        ``clock_synced`` says whether the buffer's own events (overflow, poison, corrupt) get a
        trusted stamp; by default they follow the ``ts_synced`` of the last appended record.
        ``found_corrupt``: the file is known to be corrupt (found while running, see
        :meth:`recover`): move it aside without looking at it again.
        """
        path = Path(path)
        mode = Durability(durability)
        if max_bytes < MIN_MAX_BYTES:
            raise ValueError(f"max_bytes must be at least {MIN_MAX_BYTES}, got {max_bytes}")
        if max_age_s is not None and max_age_s <= 0:
            raise ValueError(f"max_age_s must be positive, got {max_age_s}")
        path.parent.mkdir(parents=True, exist_ok=True)
        wal = path.with_name(path.name + "-wal")
        error: str | None = found_corrupt
        conn: sqlite3.Connection | None = None
        reserve = path.with_name(path.name + "-reserve")
        if error is not None:
            pass  # known corrupt (found while running): straight to moving it aside
        elif not path.exists() and wal.exists():
            error = "a WAL file without its database"
        elif path.exists() and path.stat().st_size == 0 and reserve.exists():
            # The reserve says a buffer lived here: an empty file is one that lost its
            # contents (a crash while the card truncated it), not a new one.
            error = "the file is empty (0 bytes) where a buffer was"
        elif path.exists():
            try:
                conn = open_checked(path, mode)
            except CorruptError as exc:
                error = str(exc)
        recovered_from: Path | None = None
        if error is not None:
            recovered_from = move_aside(path)
            _log.error("buffer.corrupt", path=str(path), moved_to=str(recovered_from), error=error)
        if conn is None:
            existed = path.exists()
            try:
                conn = open_checked(path, mode)
            except CorruptError as exc:  # a fresh file that fails is the disk's fault
                raise OSError(f"{path}: cannot create a buffer file: {exc}") from exc
            if not existed:
                fsync_dir(path.parent)
        try:
            buf = cls(
                conn,
                path,
                epoch=check_schema(conn),
                max_bytes=max_bytes,
                max_age_s=max_age_s,
                durability=mode,
                source=source,
                boot_id=boot_id if boot_id is not None else records_boot_id(),
                clock_synced=clock_synced,
                recovered_from=recovered_from,
                read_only=False,
            )
            buf._after_open(error)
            # The WAL never holds more than half the reserve: on a full disk, the checkpoint
            # that moves it into the database file fits in the reserve given back.
            pages = max(16, min(1000, buf.disk.size // 2 // 4096))
            conn.execute(f"PRAGMA wal_autocheckpoint = {pages}")
            if not buf.disk.ensure():
                _log.warning(
                    "buffer.no_disk_reserve",
                    path=str(buf.disk.path),
                    free_bytes=buf.disk.free_bytes(),
                    hint="the disk is nearly full: free space, or acks may fail when it fills",
                )
        except BaseException:
            conn.close()
            raise
        return buf

    def _after_open(self, corrupt_error: str | None) -> None:
        conn = self._conn
        # Defence in depth: should meta ever lag the tables, never hand out a used seq.
        high = 0
        for table in (*TABLE.values(), "poison"):
            row = conn.execute(f"SELECT max(seq) FROM {table}").fetchone()  # noqa: S608
            high = max(high, row[0] or 0)
        config = (self.max_bytes, self.max_age_s, self.durability.value)
        stored = conn.execute(
            "SELECT max_bytes, max_age_s, durability FROM meta WHERE id = 1"
        ).fetchone()
        if high > self._counters.last_seq or tuple(stored) != config or corrupt_error:
            with self._write() as c:
                c.last_seq = max(c.last_seq, high)
                conn.execute(
                    "UPDATE meta SET max_bytes = ?, max_age_s = ?, durability = ? WHERE id = 1",
                    config,
                )
                if corrupt_error is not None and self.recovered_from is not None:
                    conn.execute(
                        "UPDATE meta SET recovered_from = ? WHERE id = 1",
                        (str(self.recovered_from),),
                    )
                    self._insert(
                        c,
                        [
                            self._own_event(
                                "agent.buffer_corrupt",
                                Severity.ALARM,
                                {"moved_to": str(self.recovered_from), "error": corrupt_error},
                            )
                        ],
                    )
                    self._enforce_size(c)

    @classmethod
    def open_readonly(cls, path: Path) -> Buffer:
        """Open for inspection only: nothing is created, migrated, recovered or written.

        Raises FileNotFoundError, :class:`BufferVersionError` or :class:`BufferUnreadableError`.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no buffer file there")
        # Without a -wal file nobody is writing; immutable=1 then keeps SQLite from creating
        # -wal/-shm files next to the technician's copy.
        has_wal = path.with_name(path.name + "-wal").exists()
        uri = path.absolute().as_uri() + ("?mode=ro" if has_wal else "?mode=ro&immutable=1")
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        try:
            try:
                version = user_version(conn)
                refuse_newer(version, path)
                if version < schema_version():
                    what = "not a buffer file" if version == 0 else f"schema version {version}"
                    raise BufferUnreadableError(
                        f"{path}: {what}; the agent migrates or initialises it when it next "
                        f"starts (this tool reads version {schema_version()} only)"
                    )
                epoch = check_schema(conn)
                row = conn.execute(
                    "SELECT max_bytes, max_age_s, durability, recovered_from FROM meta"
                ).fetchone()
            except (sqlite3.Error, SchemaError) as exc:
                raise BufferUnreadableError(
                    f"{path}: not a readable buffer file ({exc}); if it is corrupt, the agent "
                    "moves it aside when it next starts"
                ) from exc
            try:
                durability = Durability(row[2] or "full")
            except ValueError:
                durability = Durability.FULL
            return cls(
                conn,
                path,
                epoch=epoch,
                max_bytes=int(row[0] or 0),
                max_age_s=row[1],
                durability=durability,
                source="",
                boot_id="",
                clock_synced=None,
                recovered_from=Path(row[3]) if row[3] else None,
                read_only=True,
            )
        except BaseException:
            conn.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._conn.close()

    def recover(self, error: str) -> Buffer:
        """After SQLite found corruption while running: close this file, move it aside (never
        deleted) and return a fresh buffer with a new epoch, as a corrupt file at start gets,
        with its ``agent.buffer_corrupt`` event. This object is closed afterwards."""
        with contextlib.suppress(sqlite3.Error):
            self.close()
        _log.error("buffer.corrupt_while_running", path=str(self.path), error=error)
        return Buffer.open(
            self.path,
            max_bytes=self.max_bytes,
            max_age_s=self.max_age_s,
            durability=self.durability,
            source=self.source,
            boot_id=self.boot_id,
            clock_synced=self._clock_synced,
            found_corrupt=error,
        )

    # ------------------------------------------------------------------ writing

    def append(self, records: Sequence[Record]) -> list[int]:
        """Store ``records`` in one transaction; returns their seqs once they are durable.

        Raises :class:`buffer.reserve.DiskFullError` while the disk is full and its reserve has
        been spent on deletes, unless the pages acknowledged batches freed can hold them."""
        self._check_writable()
        if not records:
            return []
        if not self.disk.present:
            self._check_room(len(records))
        with self._write() as c:
            seqs = self._insert(c, records)
            self._maybe_enforce_age(c)
            self._enforce_size(c)
        return seqs

    def take(self, max_records: int, max_bytes: int) -> Batch | None:
        """The oldest waiting records: alarms first, then other events and status, then
        readings, each class in seq order.

        Stops before ``max_records`` or ``max_bytes`` would be exceeded but always returns at
        least one record; ``None`` when empty. Nothing changes until ``ack``/``set_aside``, so
        taking again returns the same records (a resend after a crash is the same batch).
        """
        self._check_open()
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        out: list[bytes] = []
        ranges: list[tuple[int, int, int]] = []
        size = 0
        full = False
        for prio, table in TABLE.items():
            want = max_records - len(out)
            if want <= 0 or full:
                break
            cursor = self._conn.execute(
                f"SELECT seq, body FROM {table} ORDER BY seq LIMIT ?",  # noqa: S608
                (want,),
            )
            first = last = -1
            for seq, body in cursor:
                record = b'{"seq":%d,' % seq + body[1:]
                if out and size + len(record) > max_bytes:
                    full = True
                    break
                out.append(record)
                size += len(record)
                if first < 0:
                    first = seq
                last = seq
            cursor.close()
            if first >= 0:
                ranges.append((prio, first, last))
                self._taken[prio] = max(self._taken.get(prio, 0), last)
        if not out:
            return None
        return Batch(self.epoch, out, tuple(ranges), size)

    def ack(self, batch: Batch) -> int:
        """Delete exactly the batch's records (those still present); returns how many."""
        self._check_writable()
        self._check_batch(batch)
        return self._deleting(lambda: self._ack(batch), batch.size)

    def _ack(self, batch: Batch) -> int:
        deleted = 0
        with self._write() as c:
            for prio, first, last in batch.ranges:
                count, nbytes = self._delete_range(prio, first, last)
                deleted += count
                self._forget(c, prio, count, nbytes)
                if last >= self._taken.get(prio, 0):
                    self._taken.pop(prio, None)
        return deleted

    def set_aside(self, batch: Batch, reason: str) -> None:
        """Move the batch's records to the poison table (kept, exportable) and report it."""
        self._check_writable()
        self._check_batch(batch)
        self._deleting(lambda: self._set_aside(batch, reason), batch.size)

    def _set_aside(self, batch: Batch, reason: str) -> None:
        moved = own = 0
        when = now_ms()
        with self._write() as c:
            for prio, first, last in batch.ranges:
                table = TABLE[prio]
                row = self._conn.execute(
                    f"SELECT count(*), coalesce(sum(instr(body, ?) > 0), 0) FROM {table} "  # noqa: S608
                    "WHERE seq BETWEEN ? AND ?",
                    (_POISON_NEEDLE, first, last),
                ).fetchone()
                own += row[1]
                self._conn.execute(
                    "INSERT INTO poison (seq, prio, boot, body, reason, poisoned_ms) "  # noqa: S608
                    f"SELECT seq, ?, boot, body, ?, ? FROM {table} "
                    "WHERE seq BETWEEN ? AND ?",
                    (prio, reason, when, first, last),
                )
                count, _nbytes = self._delete_range(prio, first, last)
                moved += count
                # No longer waiting, still on the card: poison counts against the bound.
                self._forget(c, prio, count, 0)
            c.poisoned += moved
            # A platform that rejects our own poison report would otherwise get a new one for
            # every rejection, forever.
            if moved and own < moved:
                self._insert(
                    c,
                    [
                        self._own_event(
                            _POISON_EVENT,
                            Severity.WARNING,
                            {
                                "reason": reason[:_REASON_MAX],
                                "count": moved,
                                "first_seq": min(r[1] for r in batch.ranges),
                                "last_seq": max(r[2] for r in batch.ranges),
                            },
                        )
                    ],
                )
                self._enforce_size(c)
        if moved:
            _log.warning("buffer.poisoned", count=moved, ranges=list(batch.ranges), reason=reason)

    # ------------------------------------------------------------------ commands run once

    def claim_command(self, command_id: str, expires_ms: int) -> bool:
        """Record, durably, that the platform's command ``command_id`` is about to run; False
        when it was claimed before (by this process or one before a restart): it must not run
        again. Claims are kept until a day after ``expires_ms``."""
        self._check_writable()
        now = now_ms()
        with self._write():
            claimed = self._conn.execute(
                "INSERT OR IGNORE INTO commands (id, expires_ms, claimed_ms) VALUES (?, ?, ?)",
                (command_id, expires_ms, now),
            ).rowcount
            self._conn.execute(
                "DELETE FROM commands WHERE expires_ms < ?", (now - _CLAIM_KEPT_AFTER_EXPIRY_MS,)
            )
        return bool(claimed)

    # ------------------------------------------------------------------ a full disk

    def _deleting(self, delete: Callable[[], _T], nbytes: int) -> _T:
        """Run ``delete``; when the disk is full, give back the reserve and run it again."""
        try:
            result = delete()
        except sqlite3.OperationalError as exc:
            if not _disk_full(exc) or not self.disk.release():
                raise
            _log.warning(
                "buffer.disk_full",
                path=str(self.path),
                released_bytes=self.disk.size,
                hint="reserve given back so acknowledged records can be deleted; new records "
                "go to the space they free",
            )
            result = delete()
        self._deleted_since_truncate += nbytes
        if not self.disk.present or self._deleted_since_truncate >= _TRUNCATE_AFTER_BYTES:
            self._truncate_wal()
            if not self.disk.present and self.disk.ensure():
                _log.info("buffer.disk_reserve_restored", path=str(self.disk.path))
        return result

    def _truncate_wal(self) -> None:
        """Move the WAL into the database file and cut it to nothing: after a large delete the
        WAL would otherwise keep its size on a card that needs the room."""
        self._deleted_since_truncate = 0
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _check_room(self, count: int) -> None:
        """While the reserve is given back, an append may use the pages deletes freed, but not
        grow the database into the last ``disk.size`` bytes of the disk."""
        if self.disk.ensure():
            return
        page_size, free_pages = (
            self._conn.execute("PRAGMA page_size").fetchone()[0],
            self._conn.execute("PRAGMA freelist_count").fetchone()[0],
        )
        room = free_pages * page_size + self.disk.free_bytes() - self.disk.size
        if room < count * _APPEND_ROOM_PER_RECORD:
            raise DiskFullError(
                f"{self.path}: the disk is full (its reserve of {self.disk.size} bytes is kept "
                "for deleting acknowledged records): free space on the card"
            )

    def requeue_poison(self) -> int:
        """Put every set-aside record back in line, with its own seq (the platform stores a
        record it already has once). Returns how many; for after the platform was fixed."""
        self._check_writable()
        moved = 0
        with self._write() as c:
            for prio, table in TABLE.items():
                count = self._conn.execute(
                    f"INSERT INTO {table} (seq, boot, body) "  # noqa: S608
                    "SELECT seq, boot, body FROM poison WHERE prio = ?",
                    (prio,),
                ).rowcount
                self._conn.execute("DELETE FROM poison WHERE prio = ?", (prio,))
                if prio == PRIORITY_READING:
                    c.readings += count
                else:
                    c.events += count
                moved += count
        if moved:
            _log.info("buffer.poison_requeued", count=moved)
        return moved

    def correct_unsynced(self, boot_id: str, delta_ms: int, *, mark_synced: bool = True) -> int:
        """Shift ``ts`` by ``delta_ms`` for records stamped before clock sync in boot
        ``boot_id`` (poisoned ones included) and, with ``mark_synced``, mark them
        ``ts_synced`` (without it they stay unsynced: a step seen before the kernel's flag).
        Returns how many waiting records."""
        self._check_writable()
        fixed = 0
        set_body = (
            "body = CAST(json_set(CAST(body AS TEXT), '$.ts', "
            f"{TS} + ?, '$.ts_synced', json('true')) AS BLOB), boot = NULL"
            if mark_synced
            else f"body = CAST(json_set(CAST(body AS TEXT), '$.ts', {TS} + ?) AS BLOB)"
        )
        with self._write() as c:
            for table in TABLE.values():
                count, before = self._conn.execute(
                    f"SELECT count(*), coalesce(sum(length(body)), 0) FROM {table} "  # noqa: S608
                    "WHERE boot = ?",
                    (boot_id,),
                ).fetchone()
                if not count:
                    continue
                after = self._conn.execute(
                    f"UPDATE {table} SET {set_body} WHERE boot = ? RETURNING length(body)",  # noqa: S608
                    (delta_ms, boot_id),
                ).fetchall()
                c.bytes += sum(r[0] for r in after) - before
                fixed += count
            before = self._conn.execute(
                "SELECT coalesce(sum(length(body)), 0) FROM poison WHERE boot = ?", (boot_id,)
            ).fetchone()[0]
            after = self._conn.execute(
                f"UPDATE poison SET {set_body} WHERE boot = ? RETURNING length(body)",  # noqa: S608
                (delta_ms, boot_id),
            ).fetchall()
            c.bytes += sum(r[0] for r in after) - before  # poison counts against the bound
            self._enforce_size(c)
        return fixed

    # ------------------------------------------------------------------ reading

    def stats(self) -> BufferStats:
        self._check_open()
        conn = self._conn
        row = conn.execute(
            f"SELECT {_COUNTERS}, recovered_from FROM meta WHERE id = 1"  # noqa: S608
        ).fetchone()
        c = Counters(*row[:7])
        oldest: dict[str, int | None] = {}
        for table in TABLE.values():
            ts = conn.execute(
                f"SELECT {TS} FROM {table} ORDER BY seq LIMIT 1"  # noqa: S608
            ).fetchone()
            oldest[table] = ts[0] if ts is not None and isinstance(ts[0], int) else None
        candidates = [v for v in oldest.values() if v is not None]
        events = [v for t, v in oldest.items() if t != "readings" and v is not None]
        return BufferStats(
            epoch=self.epoch,
            path=str(self.path),
            records=c.events + c.readings,
            events=c.events,
            readings=c.readings,
            bytes=c.bytes,
            file_bytes=file_bytes(self.path),
            max_bytes=self.max_bytes,
            oldest_ms=min(candidates) if candidates else None,
            oldest_event_ms=min(events) if events else None,
            last_seq=c.last_seq,
            dropped_readings=c.dropped_readings,
            dropped_events=c.dropped_events,
            poisoned=c.poisoned,
            durability=self.durability.value,
            recovered_from=row[7],
        )

    def export(self, *, poison: bool = False) -> Iterator[dict[str, Any]]:
        """Every waiting record (or every poisoned one) as a dict with ``seq`` and ``epoch``,
        in seq order, streamed row by row from one consistent snapshot."""
        self._check_open()
        conn = self._conn
        began = not conn.in_transaction
        if began:
            conn.execute("BEGIN")
        try:
            epoch = self.epoch
            if poison:
                cursor = conn.execute(
                    "SELECT seq, body, reason, poisoned_ms FROM poison ORDER BY seq"
                )
                for seq, body, reason, when in cursor:
                    yield {
                        "seq": seq,
                        "epoch": epoch,
                        **orjson.loads(body),
                        "poison_reason": reason,
                        "poisoned_ms": when,
                    }
            else:
                # Merge the seq-ordered tables instead of sorting: constant memory.
                streams = [
                    conn.execute(f"SELECT seq, body FROM {t} ORDER BY seq")  # noqa: S608
                    for t in TABLE.values()
                ]
                for seq, body in heapq.merge(*streams):
                    yield {"seq": seq, "epoch": epoch, **orjson.loads(body)}
        finally:
            if began and not self._closed and conn.in_transaction:
                conn.execute("COMMIT")

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise BufferClosedError(f"{self.path}: buffer is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._read_only:
            raise BufferClosedError(f"{self.path}: opened read-only")

    def _check_batch(self, batch: Batch) -> None:
        if batch.epoch != self.epoch:
            raise ValueError(
                f"batch belongs to buffer epoch {batch.epoch}, this buffer is {self.epoch}"
            )
        for prio, _first, _last in batch.ranges:
            if prio not in TABLE:
                raise ValueError(f"unknown priority {prio} in batch ranges")

    def _load_counters(self) -> Counters:
        return Counters(*self._conn.execute(_SELECT_COUNTERS).fetchone())

    @contextlib.contextmanager
    def _write(self) -> Iterator[Counters]:
        """One write transaction. Counters are re-read under the write lock (another process,
        e.g. a maintenance tool, may have written) and cached only once COMMIT succeeded."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            counters = Counters(*conn.execute(_SELECT_COUNTERS).fetchone())
            yield counters
            conn.execute(_UPDATE_COUNTERS, counters.row())
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        self._counters = counters
        self.commits += 1

    def _insert(self, c: Counters, records: Sequence[Record]) -> list[int]:
        # The hot path: per record one dict lookup, one generated encoder call and two list
        # appends; rows go to SQLite as multi-row VALUES (about 1.6x executemany's rate).
        kinds = self._encode.kinds
        learn = self._encode.learn
        first = c.last_seq + 1
        only = None
        if len(set(map(type, records))) == 1:
            only = kinds.get(type(records[0])) or learn(records[0])
        if only is not None and only.priority is not None and all(map(_SYNCED, records)):
            # The common group: one record class of one priority (readings, status), all
            # stamped by a synced clock. Same result as the loop below, with the per-record
            # work done by C-level map/slice operations.
            bodies = list(map(only.encode, records))
            n = len(bodies)
            values: list[Any] = [None] * (2 * n)
            values[0::2] = range(first, first + n)
            values[1::2] = bodies
            self._insert_rows(TABLE[only.priority], values, synced=True)
            c.last_seq += n
            c.bytes += sum(map(len, bodies)) + ROW_OVERHEAD * n
            if only.priority == PRIORITY_READING:
                c.readings += n
            else:
                c.events += n
            self._last_synced = True
            return list(range(first, first + n))
        boot = self.boot_id
        flat: dict[tuple[int, bool], list[Any]] = {
            (prio, synced): [] for prio in TABLE for synced in (True, False)
        }
        synced_rows = {prio: flat[prio, True] for prio in TABLE}
        seq = c.last_seq
        size = 0
        for record in records:
            seq += 1
            kind = kinds.get(type(record))
            if kind is None:
                kind = learn(record)
            body = kind.encode(record)
            size += len(body)
            prio = kind.priority
            if prio is None:
                prio = record.priority
            if record.ts_synced:
                rows = synced_rows[prio]
                rows.append(seq)
                rows.append(body)
            else:
                flat[prio, False].extend((seq, boot, body))
        n_readings = n_events = 0
        for (prio, synced), values in flat.items():
            if values:
                width = 2 if synced else 3
                self._insert_rows(TABLE[prio], values, synced=synced)
                if prio == PRIORITY_READING:
                    n_readings += len(values) // width
                else:
                    n_events += len(values) // width
        c.last_seq = seq
        c.bytes += size + ROW_OVERHEAD * len(records)
        c.readings += n_readings
        c.events += n_events
        self._last_synced = records[-1].ts_synced
        return list(range(first, seq + 1))

    def _insert_rows(self, table: str, values: list[Any], *, synced: bool) -> None:
        width = 2 if synced else 3
        rows = len(values) // width
        done = 0
        while done < rows:
            # Full chunks of _VALUES_ROWS, then powers of two: a handful of cached statements.
            left = rows - done
            k = _VALUES_ROWS if left >= _VALUES_ROWS else 1 << (left.bit_length() - 1)
            sql = _values_sql(table, synced, k)
            self._conn.execute(sql, values[done * width : (done + k) * width])
            done += k

    def _delete_range(self, prio: int, first: int, last: int) -> tuple[int, int]:
        table = TABLE[prio]
        count, nbytes = self._conn.execute(
            f"SELECT count(*), coalesce(sum(length(body)), 0) FROM {table} "  # noqa: S608
            "WHERE seq BETWEEN ? AND ?",
            (first, last),
        ).fetchone()
        if count:
            self._conn.execute(
                f"DELETE FROM {table} WHERE seq BETWEEN ? AND ?",  # noqa: S608
                (first, last),
            )
        return int(count), int(nbytes) + ROW_OVERHEAD * int(count)

    @staticmethod
    def _forget(c: Counters, prio: int, count: int, nbytes: int) -> None:
        c.bytes -= nbytes
        if prio == PRIORITY_READING:
            c.readings -= count
        else:
            c.events -= count

    def _own_event(self, type_: str, severity: Severity, data: dict[str, Any]) -> Event:
        synced = self._clock_synced() if self._clock_synced is not None else self._last_synced
        return Event(
            device=self.source,
            ts=now_ms(),
            ts_synced=synced,
            type=type_,
            severity=severity,
            data=data,
        )
