"""``edge-agent buffer stats|export``: read-only inspection for technicians.

Both open the file with ``mode=ro`` and never create, migrate, recover or move anything: a
technician looking at a sick gateway must not change what the agent will find. Exit codes: 0 ok,
1 no such file or not readable as a buffer (the message says why).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import orjson

from ._schema import BufferVersionError
from .core import Buffer, BufferStats, BufferUnreadableError

__all__ = ["export_command", "stats_command"]


def _open(path: Path) -> Buffer | None:
    try:
        return Buffer.open_readonly(path)
    except FileNotFoundError:
        print(f"error: {path}: no buffer file there (check --path or buffer.path)", file=sys.stderr)
    except (BufferVersionError, BufferUnreadableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    return None


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _when(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "-"
    stamp = datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    age_s = max(0, (now_ms - ms) // 1000)
    days, rest = divmod(age_s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    age = (
        f"{days} d {hours} h" if days else f"{hours} h {minutes} min" if hours else f"{minutes} min"
    )
    return f"{stamp} ({age} ago)"


def _table(stats: BufferStats, now_ms: int) -> str:
    used = (
        f"{_size(stats.bytes)} of {_size(stats.max_bytes)}"
        if stats.max_bytes
        else _size(stats.bytes)
    )
    if stats.max_bytes:
        used += f" ({100 * stats.bytes / stats.max_bytes:.1f} %)"
    rows = [
        ("file", stats.path),
        ("epoch", stats.epoch),
        ("records", f"{stats.records} (events/status {stats.events}, readings {stats.readings})"),
        ("size", f"{used}; on disk {_size(stats.file_bytes)}"),
        ("oldest", _when(stats.oldest_ms, now_ms)),
        ("oldest event", _when(stats.oldest_event_ms, now_ms)),
        ("last seq", str(stats.last_seq)),
        ("dropped", f"readings {stats.dropped_readings}, events {stats.dropped_events}"),
        ("poisoned", str(stats.poisoned)),
        ("durability", stats.durability),
        ("recovered from", stats.recovered_from or "-"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows) + "\n"


def stats_command(path: Path, *, as_json: bool, out: TextIO) -> int:
    """Print the buffer's figures as a table, or one JSON object with ``as_json``."""
    buf = _open(path)
    if buf is None:
        return 1
    try:
        stats = buf.stats()
    finally:
        buf.close()
    if as_json:
        out.write(orjson.dumps(stats.as_dict()).decode() + "\n")
    else:
        out.write(_table(stats, int(datetime.now(UTC).timestamp() * 1000)))
    return 0


def export_command(path: Path, *, poison: bool, out: TextIO) -> int:
    """Write every waiting record (or every poisoned one) as JSON lines, in seq order."""
    buf = _open(path)
    if buf is None:
        return 1
    try:
        out.writelines(orjson.dumps(r).decode() + "\n" for r in buf.export(poison=poison))
        out.flush()
    except BrokenPipeError:
        # `export | head` is normal use: stop quietly, and keep Python's exit-time flush of
        # the dead pipe from printing a traceback.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out.fileno())
    finally:
        buf.close()
    return 0


def requeue_poison_command(path: Path, *, out: TextIO, err: TextIO) -> int:
    """Put every set-aside record back in line for the uplink (the one command that writes).

    Safe while the agent runs: the buffer's writes take SQLite's lock and re-read its counters.
    """
    if not path.is_file():
        print(f"{path}: no buffer file there", file=err)
        return 1
    try:
        buf = Buffer.open(path)
    except (OSError, sqlite3.Error, BufferVersionError) as exc:
        print(f"{path}: cannot open the buffer for writing: {exc}", file=err)
        return 1
    try:
        moved = buf.requeue_poison()
    finally:
        buf.close()
    print(f"{path}: {moved} set-aside record(s) queued again for the platform", file=out)
    return 0
