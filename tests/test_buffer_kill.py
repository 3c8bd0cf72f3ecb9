"""kill -9 at random moments never loses an append the buffer had confirmed (DESIGN.md 4.1/4.2).

A real child process (tests/buffer_helpers/appender.py) appends through AsyncBuffer (eight
concurrent appenders, group commit) or the plain Buffer, and prints every batch after its append
returned. We SIGKILL it 20 times at random moments, restarting it on the same file, and after
each kill check the file the way the agent's next start would find it.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from buffer._schema import schema_version

ROOT = Path(__file__).resolve().parent.parent
APPENDER = Path(__file__).resolve().parent / "buffer_helpers" / "appender.py"
KILLS = 20


class Appender:
    """The child, with a thread collecting its complete stdout lines."""

    def __init__(self, path: Path, mode: str, seed: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(APPENDER), str(path), mode, str(seed)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.lines: list[bytes] = []
        self.producing = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            # A line cut short by SIGKILL has no newline: that append's print never finished.
            if line.endswith(b"\n") and line.startswith(b"OK "):
                self.lines.append(line[3:])
                self.producing.set()

    def wait_producing(self, timeout_s: float) -> None:
        if not self.producing.wait(timeout_s):
            self.proc.kill()
            self.proc.wait(timeout=30)
            self._reader.join(timeout=30)
            assert self.proc.stdout is not None
            assert self.proc.stderr is not None
            err = self.proc.stderr.read()
            self.proc.stdout.close()
            self.proc.stderr.close()
            pytest.fail(f"appender printed nothing in {timeout_s} s; stderr:\n{err.decode()}")

    def kill(self) -> list[tuple[list[int], list[bytes]]]:
        self.proc.kill()
        self.proc.wait(timeout=30)
        self._reader.join(timeout=30)
        assert not self._reader.is_alive()
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()
        out = []
        for line in self.lines:
            item = orjson.loads(line)
            out.append((item["seqs"], [b.encode() for b in item["bodies"]]))
        return out


def check_file(path: Path, confirmed: dict[int, bytes]) -> str:
    """What the agent's next start would see; returns the epoch."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA user_version").fetchone() == (schema_version(),)
        epoch, last_seq = conn.execute("SELECT epoch, last_seq FROM meta").fetchone()
        stored: dict[int, bytes] = {}
        for table in ("alarms", "events", "readings", "poison"):
            for seq, body in conn.execute(f"SELECT seq, body FROM {table}"):  # noqa: S608
                assert seq not in stored, f"seq {seq} stored twice"
                stored[seq] = body
    finally:
        conn.close()
    # Nothing is ever acknowledged here, so the file holds exactly seqs 1..last_seq.
    assert sorted(stored) == list(range(1, len(stored) + 1)), "gap or repeat in seq"
    assert last_seq == len(stored)
    missing = [seq for seq in confirmed if seq not in stored]
    assert not missing, f"confirmed appends lost: {missing[:10]}"
    changed = [seq for seq, body in confirmed.items() if stored[seq] != body]
    assert not changed, f"confirmed records changed: {changed[:10]}"
    return str(epoch)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_9_never_loses_a_confirmed_append(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    rng = random.Random(int(os.environ.get("BUFFER_KILL_SEED", "20240607")))
    confirmed: dict[int, bytes] = {}
    epoch: str | None = None
    for run in range(KILLS):
        # Mostly AsyncBuffer with concurrent appenders (the runtime's way), sometimes plain Buffer.
        mode = "sync" if run % 4 == 3 else "async"
        child = Appender(path, mode, seed=run)
        child.wait_producing(timeout_s=120)
        time.sleep(rng.uniform(0.05, 0.5))  # the random kill moment, not a synchronisation
        for seqs, bodies in child.kill():
            assert len(seqs) == len(bodies)
            for seq, body in zip(seqs, bodies, strict=True):
                assert seq not in confirmed, f"seq {seq} handed out twice"
                confirmed[seq] = body
        seen = check_file(path, confirmed)
        if epoch is None:
            epoch = seen
        assert seen == epoch, "epoch changed although the file was never corrupt"
    assert len(confirmed) > KILLS
    assert not list(tmp_path.glob("*.corrupt-*"))
