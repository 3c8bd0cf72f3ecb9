"""The runtime: the agent's lifecycle for one config.

It opens the buffer, starts the devices (:mod:`agent.devices`), the uplink and the services it
is given (:mod:`agent.app`: the control socket, the page), reloads on SIGHUP and stops cleanly
on SIGTERM, waiting for the buffer to flush before the process exits. It also answers what the
page asks (:class:`agent.view.AgentView`). Its seams are modules of their own: every long-lived
task runs under the supervisor (:mod:`agent.supervisor`), records enter through the sink
(:mod:`agent.sink`: nothing is accepted that is not durable when it returns), commands are
routed by :mod:`agent.commands`, the inventory is built by :mod:`agent.inventory`, availability
is :mod:`agent.availability`, and the uplink is built by :func:`agent.uplink.client.build_uplink`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent import __version__
from agent.availability import Availability
from agent.bus import Priority, priority
from agent.clock import Clock
from agent.commands import CommandRouter
from agent.config.models import AgentConfig
from agent.devices import DeviceEntry, Devices
from agent.driver import CommandHandler, DeviceError, GatewayIdentity
from agent.ingest import IngestQueue
from agent.inventory import build_inventory
from agent.logs import get_logger
from agent.records import Record, Severity
from agent.sink import Sink
from agent.state import AgentState
from agent.supervisor import Supervisor
from agent.systemd import Notifier, watchdog_loop
from agent.tools import run_on_own_bus
from buffer import AsyncBuffer

if TYPE_CHECKING:
    from agent.uplink.client import UplinkClient

__all__ = ["Runtime", "Service"]


class Service(Protocol):
    """Something the agent serves beside its main job (the control socket, the page)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


BUFFER_CHECK_ANNOUNCE_BYTES = 64 * 2**20
"""A buffer file this large gets systemd's start timeout extended while it is checked."""
BUFFER_CHECK_BYTES_PER_S = 2 * 2**20
"""A pessimistic read rate of a worn SD card, for that extension."""
BUFFER_RETRY_S = 30.0
"""How often a buffer that cannot be opened (a card remounted read-only) is tried again."""


class Runtime:
    """Runs the agent for one validated config until stopped."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        config_path: Path | None = None,
        loader: Callable[[Path], AgentConfig] | None = None,
        notifier: Notifier | None = None,
        watchdog_s: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self._loader = loader
        self._notifier = notifier
        self._watchdog_s = watchdog_s
        self.clock = clock or Clock(config.clock.synced)
        self.log = get_logger(gateway=config.gateway.id)
        self.state = AgentState(gateway_id=config.gateway.id, version=__version__)
        self.state.clock_synced = self.clock.synced
        self._unsynced_shift_ms = 0
        """Steps applied to unsynced records before the clock was synchronised."""
        self.buffer: AsyncBuffer | None = None
        self.sink = Sink(
            lambda: self.buffer,
            state=self.state,
            source=config.gateway.id,
            where=str(config.buffer.path),
            stamp=self.clock.stamp,
            log=self.log,
        )
        """Where every record enters the buffer (:mod:`agent.sink`)."""
        self.event = self.sink.event
        self.ingest = IngestQueue(
            self.sink,
            source=config.gateway.id,
            stamp=self.clock.stamp,
            log=self.log.bind(task="ingest"),
        )
        """The push path of streaming drivers and bus events (never blocks its caller)."""
        self.availability = Availability(
            self.state, push=self.ingest.push, stamp=self.clock.stamp, log=self.log
        )
        self.supervisor = Supervisor(
            state=self.state, availability=self.availability, sink=self.sink, log=self.log
        )
        self._devices = Devices(
            gateway=GatewayIdentity(config.gateway.id, config.gateway.community.code),
            state=self.state,
            availability=self.availability,
            sink=self.sink,
            push=self.ingest.push,
            stamp=self.clock.stamp,
            log=self.log,
            supervise=self.supervisor.supervise,
            spawn=self.supervisor.spawn,
            inventory_changed=self._inventory_changed,
        )
        self._stop = asyncio.Event()
        self.uplink: UplinkClient | None = None
        self._uplink_task: asyncio.Task[None] | None = None
        self.commands = CommandRouter(lambda: self.devices, event=self.event, log=self.log)
        self.services: list[Service] = []
        """Started in order after the devices and the uplink, closed in reverse first at stop:
        the control socket and the page (:mod:`agent.app` puts them here)."""

    # ---------------------------------------------------------------- devices

    @property
    def devices(self) -> dict[str, DeviceEntry]:
        """The running devices by id."""
        return self._devices.entries

    def bus_figures(self) -> list[dict[str, Any]]:
        """Every bus in use: state, cause, busy time, utilisation, counters, and how long a full
        cycle takes (every polled device on it read once, from their last reads) against the
        shortest interval asked of it (the page, /api, /metrics)."""
        out = []
        for bus_id, handle in sorted(self._devices.buses.items()):
            figures = handle.figures()
            reads = [
                (entry.poller.last_read_s, entry.poller.device.interval_s)
                for entry in self._devices.entries.values()
                if entry.config.bus == bus_id and entry.poller is not None
            ]
            known = [s for s, _ in reads if s is not None]
            figures["polled"] = len(reads)
            figures["cycle_s"] = round(sum(known), 3) if known else None
            figures["interval_s"] = min((i for _, i in reads), default=None)
            out.append(figures)
        return out

    def busy_figures(self) -> dict[str, float]:
        return self._devices.busy_figures()

    def device_commands(self, device: str) -> Mapping[str, str]:
        entry = self.devices.get(device)
        if entry is None or not isinstance(entry.driver, CommandHandler):
            return {}
        return {s.action: s.description for s in entry.driver.command_specs()}

    def device_reported(self, device: str) -> Mapping[str, str]:
        return self._devices.reported().get(device, {})

    def can_test_read(self, device: str) -> bool:
        entry = self.devices.get(device)
        return entry is not None and entry.poller is not None

    def _inventory_changed(self) -> None:
        if self.uplink is not None:
            self.uplink.inventory_changed()

    async def read_device(self, device_id: str) -> Sequence[Record]:
        """A technician's one-off read, ahead of bulk polls on its bus."""
        entry = self.devices.get(device_id)
        if entry is None or entry.poller is None:
            raise DeviceError("not_polled", f"{device_id!r} is not a polled device")
        with priority(Priority.TEST_READ):
            return await entry.poller.read_once()

    async def execute_command(
        self,
        device: str,
        action: str,
        args: Mapping[str, Any],
        *,
        source: str,
        command_id: str,
    ) -> Mapping[str, Any]:
        """Run a command on the driver that owns ``device`` (:mod:`agent.commands`)."""
        return await self.commands.execute_command(
            device, action, args, source=source, command_id=command_id
        )

    # ---------------------------------------------------------------- installer tools

    async def run_tool(
        self, driver: str, tool: str, bus: Mapping[str, Any], options: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """A driver's bus tool on the agent's own line (:func:`agent.tools.run_on_own_bus`)."""
        return await run_on_own_bus(
            self.config.buses, self._devices.bus, driver, tool, bus, options, log=self.log
        )

    def inventory(self) -> dict[str, Any]:
        return build_inventory(self.config, self._devices.reported())

    # ---------------------------------------------------------------- lifecycle

    def request_stop(self) -> None:
        self._stop.set()
        self.supervisor.winding_down()

    async def _refresh_buffer_figures(self) -> None:
        assert self.buffer is not None
        while True:
            stats = await self.buffer.stats()
            fig = self.state.buffer
            fig.epoch = stats.epoch
            fig.records = stats.records
            fig.bytes = stats.bytes
            fig.oldest_ms = stats.oldest_ms
            fig.dropped = stats.dropped_readings + stats.dropped_events
            fig.poisoned = stats.poisoned
            await asyncio.sleep(2.0)

    async def _clock_synced(self, delta_ms: int) -> None:
        self.state.clock_synced = True
        fixed = 0
        if self.buffer is not None:
            fixed = await self.buffer.correct_unsynced(self.clock.boot_id, delta_ms)
        total = self._unsynced_shift_ms + delta_ms
        self.log.info("clock.synced", correction_ms=total, records_corrected=fixed)
        await self.event("agent.clock_synced", correction_ms=total, records_corrected=fixed)

    async def _clock_stepped(self, delta_ms: int, synced: bool) -> None:
        if not synced:
            # NTP set the clock before the kernel says so: what was stamped so far moves with
            # it now (still unsynced), or the correction at sync would miss this step.
            self._unsynced_shift_ms += delta_ms
            moved = 0
            if self.buffer is not None:
                moved = await self.buffer.correct_unsynced(
                    self.clock.boot_id, delta_ms, mark_synced=False
                )
            self.log.info("clock.stepped_unsynced", step_ms=delta_ms, records_shifted=moved)
            return
        self.log.warning(
            "clock.step", step_ms=delta_ms, hint="the clock moved after synchronisation"
        )
        await self.event("agent.clock_step", Severity.WARNING, step_ms=delta_ms)

    async def _start_uplink(self) -> None:
        from agent.config.secrets import SecretError  # noqa: PLC0415
        from agent.uplink.base import UplinkConfigError  # noqa: PLC0415
        from agent.uplink.client import build_uplink  # noqa: PLC0415

        assert self.buffer is not None
        try:
            self.uplink = build_uplink(
                self.config.uplink,
                gateway=self.config.gateway,
                buffer=self.buffer,
                state=self.state.uplink,
                inventory=self.inventory,
                commands=self.execute_command,
                log=self.log,
                agent_version=__version__,
                clock_synced=lambda: self.clock.synced,
                alarm=self.event,
            )
        except (SecretError, UplinkConfigError) as exc:
            # Polling and buffering go on: nothing is lost while an installer fixes the key
            # file, and SIGHUP (systemctl reload) tries the uplink again.
            self.state.uplink.last_error = f"misconfigured: {exc}"
            self.state.uplink.last_error_reason = "misconfigured"
            self.state.uplink.last_error_ms = self.clock.stamp()[0]
            self.log.error("uplink.misconfigured", error=str(exc), hint="fix, then reload")
            await self.event("agent.uplink_misconfigured", Severity.ALARM, error=str(exc))
            return
        if self.uplink is None:
            self.log.info("uplink.none", hint="no uplink configured: records stay in the buffer")
            return
        name = f"uplink[{self.uplink.transport.name}]"
        self._uplink_task = self.supervisor.keep(name, self.uplink.run)

    async def _stop_uplink(self) -> None:
        uplink, task = self.uplink, self._uplink_task
        self.uplink = self._uplink_task = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if uplink is not None:
            with contextlib.suppress(Exception):
                await uplink.close()

    async def reload(self) -> bool:
        """Re-read the config file; apply it only if valid. True when applied."""
        if self.config_path is None or self._loader is None:
            return False
        from agent.config.errors import ConfigError  # noqa: PLC0415

        try:
            new = await asyncio.to_thread(self._loader, self.config_path)
        except Exception as exc:
            problems = (
                [str(i) for i in exc.issues]
                if isinstance(exc, ConfigError)
                else [f"{self.config_path}: cannot load: {type(exc).__name__}: {exc}"]
            )
            self.log.error(
                "config.rejected",
                path=str(self.config_path),
                errors=problems,
                hint="still running on the previous config",
            )
            await self.event("agent.config_rejected", Severity.WARNING, errors=problems[:20])
            return False
        old = self.config
        restart_needed = [
            section
            for section in ("gateway", "buffer", "logging", "clock", "control")
            if getattr(old, section) != getattr(new, section)
        ]
        # The page's users and roles are read live; where it listens is fixed at start.
        if (old.web.listen, old.web.tls, old.web.enabled) != (
            new.web.listen,
            new.web.tls,
            new.web.enabled,
        ):
            restart_needed.append("web")
        self.config = new
        changes = await self._devices.reload(old, new)
        if old.uplink != new.uplink or (self.uplink is None and new.uplink.http is not None):
            await self._stop_uplink()
            await self._start_uplink()
        self.log.info(
            "config.reloaded",
            devices_restarted=changes["restarted"],
            devices_added=changes["added"],
            devices_removed=changes["removed"],
            restart_needed_for=restart_needed or None,
        )
        await self.event(
            "agent.config_reloaded",
            devices=len([d for d in new.devices if d.enabled]),
            restart_needed_for=restart_needed,
        )
        return True

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(
            signal.SIGHUP, lambda: self.supervisor.spawn("config-reload", self._reload_logged())
        )

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except Exception as exc:
            self.log.error("config.reload_failed", error=str(exc), exc_info=exc)

    def _announce_buffer_check(self) -> None:
        """Opening checks the whole buffer file (``quick_check``): a week's backlog on an SD card
        can take longer than systemd's start timeout, and a start killed for it would be retried
        forever. Tell systemd how long to wait, and the technician what is happening."""
        if self._notifier is None:
            return
        try:
            size = self.config.buffer.path.stat().st_size
        except OSError:
            return
        if size < BUFFER_CHECK_ANNOUNCE_BYTES:
            return
        self._notifier.status(f"checking the buffer ({size / 2**20:.0f} MB)")
        self._notifier.extend_timeout(60 + size / BUFFER_CHECK_BYTES_PER_S)

    async def _open_buffer(self) -> bool:
        """Open the buffer; False (logged once per distinct error) when the file system will
        not let it, e.g. a card the kernel remounted read-only after I/O errors."""
        cfg = self.config
        try:
            self.buffer = await AsyncBuffer.open(
                cfg.buffer.path,
                commit_interval_ms=cfg.buffer.commit_interval_ms,
                max_bytes=int(cfg.buffer.max_size_mb * 2**20),
                max_age_s=cfg.buffer.max_age_days * 86400 if cfg.buffer.max_age_days else None,
                durability=cfg.buffer.durability,
                source=cfg.gateway.id,
                boot_id=self.clock.boot_id,
                clock_synced=lambda: self.clock.synced,
            )
        except (OSError, sqlite3.Error) as exc:
            error = f"cannot open {cfg.buffer.path}: {type(exc).__name__}: {exc}"
            if self.state.buffer.last_error != error:
                self.log.error(
                    "buffer.unavailable",
                    error=error,
                    retry_s=BUFFER_RETRY_S,
                    hint="is the card read-only or failing (dmesg)? Polling and the page go on; "
                    "records are lost until the buffer opens",
                )
            self.state.buffer.last_error = error
            return False
        self.state.buffer.last_error = None
        self.state.buffer.epoch = self.buffer.epoch
        if self.buffer.recovered_from is not None:
            self.log.error(
                "buffer.recovered",
                moved_to=str(self.buffer.recovered_from),
                epoch=self.buffer.epoch,
            )
        return True

    async def _buffer_opened(self) -> None:
        """What needs the buffer starts once it is open: its figures and the uplink."""
        self.supervisor.keep("buffer-figures", self._refresh_buffer_figures)
        await self._start_uplink()

    async def _open_buffer_later(self) -> None:
        while True:
            await asyncio.sleep(BUFFER_RETRY_S)
            if await self._open_buffer():
                break
        assert self.buffer is not None
        self.log.warning("buffer.available", epoch=self.buffer.epoch)
        await self._buffer_opened()

    async def _buffer_alive(self) -> None:
        """The watchdog's round trip through the buffer's thread (when there is a buffer)."""
        if self.buffer is not None:
            await self.buffer.ping()

    async def start(self) -> None:
        cfg = self.config
        self._announce_buffer_check()
        opened = await self._open_buffer()
        self.log.info(
            "agent.starting",
            version=__version__,
            devices=len([d for d in cfg.devices if d.enabled]),
            buffer=str(cfg.buffer.path),
            epoch=self.state.buffer.epoch or None,
            clock_synced=self.clock.synced,
        )
        await self.event("agent.started", version=__version__, epoch=self.state.buffer.epoch)
        keep = self.supervisor.keep
        if not self.clock.synced:
            self.log.warning("clock.unsynced", hint="records are marked ts_synced=false until NTP")
        keep("clock-watch", lambda: self.clock.watch(self._clock_synced, self._clock_stepped))
        keep("ingest", self.ingest.run)
        keep("stale-watch", self.availability.watch_stale)
        if opened:
            await self._buffer_opened()
        else:
            # Degraded, not dead: a crash loop would take the page and /metrics with it.
            keep("buffer-open", self._open_buffer_later)
        self._devices.start(cfg, cfg.devices)
        for service in self.services:
            await service.start()

    @staticmethod
    def control_path(config: AgentConfig) -> Path:
        return config.control.socket or config.buffer.path.parent / "control.sock"

    async def shutdown(self) -> None:
        self.log.info("agent.stopping")
        if self._notifier is not None:
            self._notifier.stopping()
        for service in reversed(self.services):
            with contextlib.suppress(Exception):
                await service.close()
        await self._devices.stop()
        await self._stop_uplink()
        await self.supervisor.stop()
        if self.buffer is not None:
            # What push drivers queued was accepted from them: it reaches the buffer too.
            with contextlib.suppress(Exception):
                await self.ingest.flush()
            with contextlib.suppress(Exception):
                await self.event("agent.stopped")
            await self.buffer.close()
        self.log.info("agent.stopped", records_accepted=self.state.records_accepted)

    async def run(self, *, install_signals: bool = True, started: bool = False) -> int:
        """Start (unless ``started``), run until SIGTERM/SIGINT or :meth:`request_stop`, stop
        cleanly."""
        if install_signals:
            self._install_signals()
        if not started:
            await self.start()
        if self._notifier is not None:
            self._notifier.ready(f"{len(self.devices)} devices")
            if self._watchdog_s:
                # Pinged from this event loop: a stuck loop stops the pings and systemd restarts
                # the agent. Only after READY: a slow start is TimeoutStartSec's business.
                watchdog = watchdog_loop(self._notifier, self._watchdog_s, self._buffer_alive)
                self.supervisor.spawn("systemd-watchdog", watchdog)
        try:
            await self._stop.wait()
        finally:
            await self.shutdown()
        return 0
