"""The buffer file's schema and its migrations (``PRAGMA user_version``).

``MIGRATIONS[i]`` takes a file from version ``i`` to ``i + 1``; the code's version is
``len(MIGRATIONS)``. Version 0 is an empty SQLite file. Each step runs in its own transaction
together with the ``user_version`` bump, so a crash mid-migration leaves the previous version.
A file with a newer version than the code knows is refused, never rewritten: it belongs to a newer
agent, and downgrading the agent must not destroy what that agent buffered.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
from collections.abc import Callable

from agent.records import now_ms

__all__ = [
    "MIGRATIONS",
    "BufferVersionError",
    "SchemaError",
    "check_schema",
    "migrate",
    "new_epoch",
    "schema_version",
    "user_version",
]


class BufferVersionError(RuntimeError):
    """The file was written by a newer agent (its schema version is unknown to this code)."""


class SchemaError(Exception):
    """The file is a database but not a readable buffer (a table or the meta row is missing)."""


def new_epoch() -> str:
    """A fresh random id for a new buffer file: ``(epoch, seq)`` is never reused anywhere."""
    return secrets.token_hex(8)


def _v1(conn: sqlite3.Connection) -> None:
    # One table per priority class: both are rowid tables keyed by seq, so appends hit the
    # b-tree's right edge (SQLite's append fast path) and take/ack/evict are rowid range scans.
    # ``boot`` is set only for records stamped before clock sync; the partial indexes stay
    # tiny and let correct_unsynced find them without a scan.
    statements = [
        """CREATE TABLE meta (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            epoch TEXT NOT NULL,
            created_ms INTEGER NOT NULL,
            last_seq INTEGER NOT NULL DEFAULT 0,
            bytes INTEGER NOT NULL DEFAULT 0,
            events INTEGER NOT NULL DEFAULT 0,
            readings INTEGER NOT NULL DEFAULT 0,
            dropped_readings INTEGER NOT NULL DEFAULT 0,
            dropped_events INTEGER NOT NULL DEFAULT 0,
            poisoned INTEGER NOT NULL DEFAULT 0,
            max_bytes INTEGER,
            max_age_s REAL,
            durability TEXT,
            recovered_from TEXT
        )""",
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, boot TEXT, body BLOB NOT NULL)",
        "CREATE TABLE readings (seq INTEGER PRIMARY KEY, boot TEXT, body BLOB NOT NULL)",
        "CREATE INDEX events_unsynced ON events (boot) WHERE boot IS NOT NULL",
        "CREATE INDEX readings_unsynced ON readings (boot) WHERE boot IS NOT NULL",
        """CREATE TABLE poison (
            seq INTEGER PRIMARY KEY,
            prio INTEGER NOT NULL,
            boot TEXT,
            body BLOB NOT NULL,
            reason TEXT NOT NULL,
            poisoned_ms INTEGER NOT NULL
        )""",
    ]
    for statement in statements:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO meta (id, epoch, created_ms) VALUES (1, ?, ?)", (new_epoch(), now_ms())
    )


def _v2(conn: sqlite3.Connection) -> None:
    # The platform's commands this gateway has run, kept until their expiry has passed: a
    # command redelivered after a restart (kill -9, power cut) must not run again.
    conn.execute(
        """CREATE TABLE commands (
            id TEXT PRIMARY KEY,
            expires_ms INTEGER NOT NULL,
            claimed_ms INTEGER NOT NULL
        ) WITHOUT ROWID"""
    )


def _v3(conn: sqlite3.Connection) -> None:
    # Alarms (an SOS, a forced door) in a class of their own that leaves before every other
    # event. Alarm events already waiting in ``events`` stay there, in their order.
    conn.execute("CREATE TABLE alarms (seq INTEGER PRIMARY KEY, boot TEXT, body BLOB NOT NULL)")
    conn.execute("CREATE INDEX alarms_unsynced ON alarms (boot) WHERE boot IS NOT NULL")


Migration = Callable[[sqlite3.Connection], None]

MIGRATIONS: list[Migration] = [_v1, _v2, _v3]
"""``MIGRATIONS[i]`` migrates version ``i`` to ``i + 1``. Append new steps; never edit old ones."""


def schema_version() -> int:
    """The schema version this code writes (read at call time so tests can extend the list)."""
    return len(MIGRATIONS)


def user_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def refuse_newer(version: int, where: object) -> None:
    known = schema_version()
    if version > known:
        raise BufferVersionError(
            f"{where}: buffer schema version {version} is newer than this agent knows ({known}); "
            "it was written by a newer agent. Upgrade the agent, or move the file away to start "
            "an empty buffer (it is left untouched)"
        )


def migrate(conn: sqlite3.Connection, where: object) -> int:
    """Bring the file to :func:`schema_version`, one step per transaction. Returns the old version.

    Raises :class:`BufferVersionError` for a newer file and lets SQLite errors through (the caller
    decides whether they mean corruption).
    """
    start = user_version(conn)
    refuse_newer(start, where)
    for target in range(start + 1, schema_version() + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while we waited for the write lock.
            current = user_version(conn)
            refuse_newer(current, where)
            if current < target:
                MIGRATIONS[target - 1](conn)
                conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
    return start


def check_schema(conn: sqlite3.Connection) -> str:
    """Prove the tables the buffer needs are readable; return the file's epoch."""
    tables = [
        ("events", "seq, boot, body"),
        ("readings", "seq, boot, body"),
        ("poison", "seq, prio, boot, body, reason, poisoned_ms"),
    ]
    if user_version(conn) >= 2:  # v2 added the command ledger
        tables.append(("commands", "id, expires_ms, claimed_ms"))
    if user_version(conn) >= 3:  # v3 added the alarm class
        tables.append(("alarms", "seq, boot, body"))
    try:
        for table, columns in tables:
            conn.execute(f"SELECT {columns} FROM {table} LIMIT 0").fetchall()  # noqa: S608
        row = conn.execute(
            "SELECT epoch, last_seq, bytes, events, readings FROM meta WHERE id = 1"
        ).fetchone()
    except sqlite3.OperationalError as exc:
        raise SchemaError(f"schema unreadable: {exc}") from exc
    if row is None or not isinstance(row[0], str) or not row[0]:
        raise SchemaError("schema unreadable: the meta row is missing")
    return row[0]
