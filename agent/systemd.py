"""The service manager's notification protocol (``sd_notify``), without libsystemd.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET`` (a filesystem path, or ``@name`` for a
socket in the abstract namespace) and the agent sends it newline-separated ``KEY=VALUE``
datagrams: ``READY=1`` once it is serving, ``WATCHDOG=1`` at least every ``WatchdogSec/2``,
``STOPPING=1`` when it begins to shut down, ``STATUS=...`` for ``systemctl status``.

Usage from the runtime::

    notifier = Notifier()
    ...  # load config, open the buffer, start the supervisor
    notifier.ready("polling 12 devices")
    interval = watchdog_interval()
    if interval is not None:
        watchdog = asyncio.create_task(watchdog_loop(notifier, interval), name="systemd-watchdog")
    ...  # on SIGTERM:
    notifier.stopping()

Design points:

- Outside systemd (``$NOTIFY_SOCKET`` unset, e.g. a technician running ``edge-agent run`` in a
  shell) every call is a cheap no-op.
- Sending never blocks and never raises: the socket is non-blocking, a full queue or a vanished
  socket is logged once per outage and the message dropped. Failing to tell systemd something
  must not take the agent down; if it matters (the watchdog), systemd acts on the silence.
- The watchdog is fed by a coroutine on the event loop, not by a thread, so a loop stuck in a
  blocking call stops the pings and systemd restarts the agent (``WatchdogSec=`` in the unit).
  It proves the loop turns, not that every task makes progress; the supervisor handles those.
- Like ``sd_notify(0, ...)`` the variables are left in the environment, so child processes
  inherit ``$NOTIFY_SOCKET``. That is harmless under the unit's ``NotifyAccess=main``: systemd
  ignores datagrams from any process but the main one. A :class:`Notifier` reads the variable
  once, at construction, so later changes to the environment do not affect it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping

import structlog

__all__ = ["Notifier", "watchdog_interval", "watchdog_loop"]

_log = structlog.get_logger("agent.systemd")

# Non-blocking: a full receive queue drops the message instead of stalling the event loop.
_SOCK_TYPE = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC


def _parse_address(value: str | None) -> str | None:
    """The ``sendto`` address for ``$NOTIFY_SOCKET``, or ``None`` when there is none to use."""
    if not value:
        return None
    if value.startswith("@"):
        # Abstract namespace: the name is the rest after a leading NUL byte.
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # sd_notify accepts only absolute paths and "@name" (newer systemd also "vsock:"); anything
    # else is a misconfiguration we report rather than guess at.
    _log.warning("systemd.notify_socket_invalid", notify_socket=value, hint="notifications off")
    return None


def _one_line(text: str) -> str:
    # A newline would start a new assignment: "ok\nREADY=1" must not be able to signal readiness.
    return " ".join(text.splitlines())


class Notifier:
    """Sends state changes and watchdog pings to the service manager.

    ``env`` defaults to :data:`os.environ`; tests pass a mapping. Each method returns whether a
    datagram was sent (``False`` when notifications are off or the send failed).
    """

    __slots__ = ("_address", "_failing")

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        environ = os.environ if env is None else env
        self._address = _parse_address(environ.get("NOTIFY_SOCKET"))
        self._failing = False

    @property
    def enabled(self) -> bool:
        """Whether there is a service manager to notify."""
        return self._address is not None

    def ready(self, status: str | None = None) -> bool:
        """The agent is up and serving (``READY=1``), optionally with a status line."""
        fields = ["READY=1"]
        if status is not None:
            fields.append(f"STATUS={_one_line(status)}")
        return self._send(fields)

    def reloading(self) -> bool:
        """A configuration reload began (``RELOADING=1``); send :meth:`ready` when it is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self._send(["RELOADING=1", f"MONOTONIC_USEC={usec}"])

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before the start (or stop) times out (``EXTEND_TIMEOUT_USEC``):
        opening a large buffer on slow flash may take longer than ``TimeoutStartSec``."""
        return self._send([f"EXTEND_TIMEOUT_USEC={max(1, round(seconds * 1_000_000))}"])

    def stopping(self) -> bool:
        """The agent began to shut down (``STOPPING=1``)."""
        return self._send(["STOPPING=1"])

    def status(self, text: str) -> bool:
        """A free-form one-line status shown by ``systemctl status`` (``STATUS=...``)."""
        return self._send([f"STATUS={_one_line(text)}"])

    def watchdog(self) -> bool:
        """Keep-alive ping (``WATCHDOG=1``)."""
        return self._send(["WATCHDOG=1"])

    def _send(self, fields: list[str]) -> bool:
        address = self._address
        if address is None:
            return False
        data = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, _SOCK_TYPE) as sock:
                sock.sendto(data, address)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                # Once per outage: the watchdog alone would otherwise log every 15 s.
                _log.warning(
                    "systemd.notify_failed",
                    notify_socket=_printable(address),
                    message=fields[0],
                    error=str(exc),
                )
            return False
        if self._failing:
            self._failing = False
            _log.info("systemd.notify_recovered", notify_socket=_printable(address))
        return True


def _printable(address: str) -> str:
    return "@" + address[1:] if address.startswith("\0") else address


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings, or ``None`` when no watchdog is expected of this process.

    Half of ``$WATCHDOG_USEC``, as systemd recommends; ``None`` when it is unset, not a
    positive integer, or when ``$WATCHDOG_PID`` is set to another process's id (the variables
    were inherited from a parent that is the one being watched).
    """
    environ = os.environ if env is None else env
    usec_text = environ.get("WATCHDOG_USEC")
    if not usec_text:
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        usec = 0
    if usec <= 0:
        _log.warning("systemd.watchdog_usec_invalid", value=usec_text, hint="watchdog off")
        return None
    pid_text = environ.get("WATCHDOG_PID")
    if pid_text:
        try:
            pid = int(pid_text)
        except ValueError:
            _log.warning("systemd.watchdog_pid_invalid", value=pid_text, hint="watchdog off")
            return None
        if pid != os.getpid():
            return None
    return usec / 2 / 1_000_000


async def watchdog_loop(
    notifier: Notifier,
    interval: float,
    alive: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Ping the watchdog now and then every ``interval`` seconds, until cancelled.

    Runs on the event loop on purpose: while the loop is blocked no ping goes out. With
    ``alive`` (a round trip to the buffer's thread), a ping goes out only once it answered
    within the interval: a write hung on a failing SD card gets the agent restarted, instead of
    an event loop that pings while nothing is stored.
    """
    if not interval > 0:
        raise ValueError(f"watchdog interval must be positive, got {interval!r}")
    while True:
        if alive is not None:
            try:
                await asyncio.wait_for(alive(), interval)
            except TimeoutError:
                continue  # no ping: systemd restarts an agent whose buffer does not answer
        notifier.watchdog()
        await asyncio.sleep(interval)
