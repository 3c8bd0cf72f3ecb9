"""A multi-drop RS-485 line for tests: what the agent sends on its pty reaches every device's
pty, and what any device sends reaches the agent, as on a real two-wire bus (the addressed device
answers; the others hear and ignore it).

    hub = Rs485Hub(line.peer, devices=2)  # line: a socat PtyPair; the agent opens line.agent
    hub.start()
    hub.ports[0], hub.ports[1]            # the paths each device opens
    hub.stop()

A device's echo of what it hears is not modelled (the agent's side never sees its own bytes).
``mangle`` (when set) rewrites what devices send before the agent gets it: noise, a bad CRC, a
truncated or replayed frame, for fault tests.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import tty
from collections.abc import Callable
from pathlib import Path

__all__ = ["Rs485Hub"]


class Rs485Hub:
    def __init__(self, line_end: Path, devices: int) -> None:
        self.line_end = line_end
        self._pairs = [os.openpty() for _ in range(devices)]
        for master, slave in self._pairs:
            tty.setraw(slave)
            tty.setraw(master)
        self.ports = [Path(os.ttyname(slave)) for _, slave in self._pairs]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._line_fd = -1
        self.mangle: Callable[[bytes], bytes] | None = None

    def start(self) -> None:
        self._line_fd = os.open(self.line_end, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self._line_fd)
        self._thread = threading.Thread(target=self._run, name="rs485-hub", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        masters = [master for master, _ in self._pairs]
        while not self._stop.is_set():
            ready, _, _ = select.select([self._line_fd, *masters], [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue  # a device's end is closed (its process restarted): EIO
                if not data:
                    continue
                targets = masters if fd == self._line_fd else [self._line_fd]
                if fd != self._line_fd and self.mangle is not None:
                    data = self.mangle(data)
                for target in targets:
                    with contextlib.suppress(OSError):
                        os.write(target, data)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for master, slave in self._pairs:
            for fd in (master, slave):
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self._line_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._line_fd)
            self._line_fd = -1
