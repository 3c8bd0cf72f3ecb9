"""Opening a buffer file safely: checks, and moving a damaged file aside (never deleting it).

A file that is not a database, fails ``quick_check`` or has an unreadable schema raises
:class:`CorruptError`; :func:`move_aside` renames it with its -wal/-shm to ``.corrupt-<UTC>``.
A file is first checked through a read-only connection (:func:`probe`), so that a damaged file
is moved aside exactly as it was found.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from ._schema import SchemaError, check_schema, migrate, refuse_newer, user_version
from .durability import Durability

__all__ = [
    "BUSY_TIMEOUT_S",
    "CorruptError",
    "file_bytes",
    "fsync_dir",
    "is_corruption",
    "move_aside",
    "open_checked",
    "probe",
    "quick_check",
]

BUSY_TIMEOUT_S: Final = 30.0
CORRUPT_CODES: Final = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB (primary codes)


class CorruptError(Exception):
    """The file is damaged: it is moved aside and a new epoch starts."""


def fsync_dir(directory: Path) -> None:
    # A rename or a new file is durable only once its directory entry is.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_bytes(path: Path) -> int:
    total = 0
    for p in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total


def is_corruption(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and (code & 0xFF) in CORRUPT_CODES


def move_aside(path: Path) -> Path:
    """Rename the file (and its -wal/-shm, which stay paired with it) to ``.corrupt-<UTC>``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while any(
        target.with_name(target.name + s).exists() or target.with_name(target.name + s).is_symlink()
        for s in ("", "-wal", "-shm")
    ):
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    for suffix in ("", "-wal", "-shm"):
        src = path.with_name(path.name + suffix)
        if src.exists():
            src.rename(target.with_name(target.name + suffix))
    fsync_dir(path.parent)
    return target


def open_checked(path: Path, durability: Durability) -> sqlite3.Connection:
    checked = path.exists() and path.stat().st_size > 0 and probe(path)
    conn = sqlite3.connect(
        path, isolation_level=None, timeout=BUSY_TIMEOUT_S, check_same_thread=True
    )
    try:
        try:
            if not checked:
                quick_check(conn, path)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OSError(f"{path}: cannot switch to WAL mode (got {mode!r})")
            sync = "FULL" if durability is Durability.FULL else "NORMAL"
            conn.execute(f"PRAGMA synchronous = {sync}")
            conn.execute("PRAGMA cache_size = -8192")
            conn.execute("PRAGMA journal_size_limit = 67108864")
            # Debian builds SQLite with secure_delete on: every delete rewrites the freed pages
            # with zeros, doubling what an acknowledgement writes to the card. FAST still zeroes
            # what it writes anyway.
            conn.execute("PRAGMA secure_delete = FAST")
            migrate(conn, path)
            check_schema(conn)
        except SchemaError as exc:
            raise CorruptError(str(exc)) from exc
        except sqlite3.Error as exc:
            if is_corruption(exc):
                raise CorruptError(str(exc)) from exc
            if isinstance(exc, sqlite3.OperationalError) and "already exists" in str(exc):
                # Our migration collided with tables of something that is not a buffer.
                raise CorruptError(f"schema unreadable: {exc}") from exc
            raise
    except BaseException:
        conn.close()
        raise
    return conn


def quick_check(conn: sqlite3.Connection, path: Path) -> None:
    rows = conn.execute("PRAGMA quick_check").fetchall()
    if rows != [("ok",)]:
        raise CorruptError("quick_check: " + "; ".join(str(r[0]) for r in rows[:5]))
    refuse_newer(user_version(conn), path)


def probe(path: Path) -> bool:
    """Check the file through a read-only connection; True if that was possible.

    Read-only on purpose: closing a read-write connection to a damaged file can checkpoint
    into it or delete its -wal, and the file must be moved aside exactly as found.
    """
    sidecars = [path.with_name(path.name + s) for s in ("-wal", "-shm")]
    existed = [p.exists() for p in sidecars]
    uri = path.absolute().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error:
        return False
    try:
        try:
            quick_check(conn, path)
        except sqlite3.Error as exc:
            if is_corruption(exc):
                raise CorruptError(str(exc)) from exc
            return False  # e.g. a hot rollback journal only a writer can replay
        finally:
            conn.close()
    except CorruptError:
        # Move the file aside as found: drop the -shm index and the empty -wal this probe
        # itself created (neither holds data).
        wal, shm = sidecars
        if not existed[0] and wal.exists() and wal.stat().st_size == 0:
            wal.unlink()
        if not existed[1]:
            shm.unlink(missing_ok=True)
        raise
    return True
