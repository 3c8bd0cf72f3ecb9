"""Helpers for tests that run the agent: config files, a real agent process, buffer contents."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def sim_device(device_id: str, **extra: Any) -> dict[str, Any]:
    """A simulated device with one counter point, overridable by keyword."""
    device: dict[str, Any] = {
        "id": device_id,
        "driver": "simulated",
        "interval_s": 0.5,
        "latency_ms": 1,
        "points": [{"name": "v", "kind": "counter"}],
    }
    device.update(extra)
    return device


def write_config(
    directory: Path,
    devices: list[dict[str, Any]],
    *,
    name: str = "agent.yaml",
    **sections: Any,
) -> Path:
    config: dict[str, Any] = {
        "gateway": {"id": "gw-test", "community": {"code": "350102001001", "name": "东街社区"}},
        "buffer": {"path": str(directory / "buffer.db"), "commit_interval_ms": 5},
        "clock": {"synced": "always"},
        "devices": devices,
    }
    config.update(sections)
    path = directory / name
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
    return path


def buffer_records(path: Path) -> list[dict[str, Any]]:
    """Every record in a buffer file, in seq order (opens it with the buffer's own code)."""
    from buffer import Buffer

    buf = Buffer.open(path)
    try:
        return list(buf.export())
    finally:
        buf.close()


def wait_for(
    condition: Callable[[], Any], *, timeout_s: float = 30.0, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class AgentProcess:
    """``edge-agent run CONFIG`` as a real child process, its JSON log lines collected."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", str(config), "--log-format", "json"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        # This thread alone reads and closes the pipe: closing it from another thread while a
        # read is blocked in it can fail and leave the file to the garbage collector.
        stdout = self.proc.stdout
        assert stdout is not None
        with stdout:
            for line in stdout:
                self._queue.put(line)
        self._queue.put(None)

    def _drain(self) -> None:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is None:
                return
            self.raw.append(line)
            try:
                self.lines.append(json.loads(line))
            except json.JSONDecodeError:
                self.lines.append({"event": "<raw>", "text": line})

    def events(self, name: str) -> list[dict[str, Any]]:
        self._drain()
        return [line for line in self.lines if line.get("event") == name]

    def wait_event(self, name: str, *, timeout_s: float = 30.0, count: int = 1) -> dict[str, Any]:
        try:
            found = wait_for(
                lambda: len(self.events(name)) >= count and self.events(name),
                timeout_s=timeout_s,
                what=f"log event {name!r}",
            )
        except AssertionError as exc:
            self._drain()
            tail = "".join(self.raw[-30:])
            raise AssertionError(f"{exc}; exit code {self.proc.poll()}; log:\n{tail}") from None
        return found[count - 1]  # type: ignore[no-any-return]

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, *, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout_s)
        self._close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._close()

    def _close(self) -> None:
        # The child has exited, so its end of the pipe is closed and the reader sees EOF.
        self._reader.join(30)
        assert not self._reader.is_alive(), "the log reader did not see the pipe close"
        self._drain()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._drain()
        return iter(self.lines)
