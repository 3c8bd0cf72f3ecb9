"""The supervisor: starts what the config names, keeps it running, stops it cleanly.

Every long-lived task has a name (``driver[simulated:meter-3]``, ``uplink[http]``) and runs under
:meth:`Runtime._supervise`: a crash is logged, counted, reported as an ``agent.task_crashed``
event, backed off and restarted; it never takes the agent down. Records flow one way, through
:meth:`Runtime.sink` into the buffer; nothing is accepted that is not durable when ``sink``
returns, and SIGTERM waits for the buffer to flush before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent import __version__
from agent.clock import Clock
from agent.config.models import AgentConfig, DeviceConfig
from agent.control import ControlServer
from agent.driver import (
    CommandError,
    CommandHandler,
    DeviceError,
    DriverContext,
    Health,
    PolledDriver,
    StreamingDriver,
)
from agent.logs import get_logger
from agent.records import Event, Record, Severity, Status, StatusState
from agent.scheduler import BusLane, DriverCrashedError, PolledDevice
from agent.state import AgentState, DeviceState
from agent.systemd import Notifier, watchdog_loop
from buffer import AsyncBuffer
from drivers import driver_class

__all__ = ["Runtime"]

_RESTART_BACKOFF_MAX_S = 60.0
BUFFER_CHECK_ANNOUNCE_BYTES = 64 * 2**20
"""A buffer file this large gets systemd's start timeout extended while it is checked."""
BUFFER_CHECK_BYTES_PER_S = 2 * 2**20
"""A pessimistic read rate of a worn SD card, for that extension."""


class _Device:
    """One running device: its driver, its poller (if polled) and its supervising task."""

    def __init__(self, config: DeviceConfig, driver: Any, poller: PolledDevice | None) -> None:
        self.config = config
        self.driver = driver
        self.poller = poller
        self.task: asyncio.Task[None] | None = None


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
        self.buffer: AsyncBuffer | None = None
        self.devices: dict[str, _Device] = {}
        self.lanes: dict[str, BusLane] = {}
        self._shared: dict[str, Any] = {}
        self._shared_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self.uplink: Any = None
        self.control: ControlServer | None = None
        self._unwritable_since: int | None = None
        self._lost_at_failure = 0
        self.web: Any = None
        """The diagnostic page (:class:`agent.web.server.WebServer`) while it is served."""

    # ---------------------------------------------------------------- records

    async def sink(self, records: Sequence[Record]) -> None:
        """Accept records: they are durable in the buffer when this returns."""
        if not records:
            return
        assert self.buffer is not None
        for record in records:
            self.state.observe(record)
        try:
            # Shielded: a poll task cancelled at shutdown must not abandon records it handed over.
            await asyncio.shield(self.buffer.append(records))
        except (sqlite3.Error, OSError) as exc:
            # A full disk or a failing card: these records cannot be accepted. Polling goes on,
            # the loss is counted and reported, and appends resume when the buffer can write.
            self._buffer_write_failed(len(records), exc)
            return
        self.state.records_accepted += len(records)
        if self._unwritable_since is not None:
            await self._buffer_writable_again()

    def _buffer_write_failed(self, count: int, exc: Exception) -> None:
        self.state.records_lost_unwritable += count
        self.state.buffer.last_error = f"{type(exc).__name__}: {exc}"
        if self._unwritable_since is None:
            self._unwritable_since = self.clock.stamp()[0]
            self._lost_at_failure = self.state.records_lost_unwritable - count
            self.log.error(
                "buffer.write_failed",
                error=self.state.buffer.last_error,
                path=str(self.config.buffer.path),
                hint="free space on the gateway's flash; records are lost until it can write",
            )

    async def _buffer_writable_again(self) -> None:
        since, self._unwritable_since = self._unwritable_since, None
        lost = self.state.records_lost_unwritable - self._lost_at_failure
        error, self.state.buffer.last_error = self.state.buffer.last_error, None
        self.log.warning("buffer.write_recovered", records_lost=lost, since_ms=since)
        await self.event(
            "agent.buffer_write_failed",
            Severity.ALARM,
            records_lost=lost,
            since_ms=since,
            error=error,
        )

    async def event(self, type_: str, severity: Severity = Severity.INFO, **data: Any) -> None:
        ts, synced = self.clock.stamp()
        await self.sink(
            [
                Event(
                    device=self.config.gateway.id,
                    ts=ts,
                    ts_synced=synced,
                    type=type_,
                    severity=severity,
                    data=data,
                )
            ]
        )

    # ---------------------------------------------------------------- tasks

    def _spawn(self, name: str, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _supervise(
        self,
        name: str,
        body: Callable[[], Awaitable[None]],
        *,
        device: DeviceState | None = None,
    ) -> None:
        """Run ``body`` until it returns; restart it with backoff whenever it raises."""
        restarts = 0
        while not self._stop.is_set():
            try:
                await body()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                restarts += 1
                self.state.task_restarts += 1
                if device is not None:
                    device.restarts += 1
                    device.last_error = f"driver_error: {exc}"
                    device.errors["driver_error"] += 1
                    if device.set_health(Health.DOWN):
                        # Not being read is offline for the platform, whatever the cause; the
                        # next good read reports it online again.
                        ts, synced = self.clock.stamp()
                        await self.sink(
                            [
                                Status(
                                    device=device.id,
                                    ts=ts,
                                    ts_synced=synced,
                                    state=StatusState.OFFLINE,
                                    reason="driver_error",
                                )
                            ]
                        )
                delay = min(2.0 ** min(restarts - 1, 10), _RESTART_BACKOFF_MAX_S)
                delay *= random.uniform(0.8, 1.2)
                self.log.error(
                    "task.crashed",
                    task=name,
                    error=f"{type(exc).__name__}: {exc}",
                    restarts=restarts,
                    restart_in_s=round(delay, 2),
                    exc_info=exc if restarts == 1 else None,
                )
                await self.event(
                    "agent.task_crashed",
                    Severity.WARNING,
                    task=name,
                    error=f"{type(exc).__name__}: {exc}",
                    restarts=restarts,
                    restart_in_s=round(delay, 2),
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
            else:
                return

    # ---------------------------------------------------------------- devices

    async def _shared_resource(self, key: str, factory: Callable[[], Awaitable[Any]]) -> Any:
        async with self._shared_lock:
            if key not in self._shared:
                self._shared[key] = await factory()
            return self._shared[key]

    def _lane(self, device: DeviceConfig) -> BusLane:
        if device.bus is None:
            # A device without a bus (simulated, BLE) only serialises with itself.
            key = f"device:{device.id}"
            if key not in self.lanes:
                self.lanes[key] = BusLane(key)
            return self.lanes[key]
        key = f"bus:{device.bus}"
        if key not in self.lanes:
            bus = self.config.bus(device.bus)
            assert bus is not None, "validated config names only declared buses"
            gap_s = (
                bus.serial.inter_frame_ms / 1000
                if bus.serial is not None and bus.serial.inter_frame_ms is not None
                else 0.0
            )
            self.lanes[key] = BusLane(key, max_in_flight=bus.max_in_flight, gap_s=gap_s)
        return self.lanes[key]

    def _make_driver(self, device: DeviceConfig) -> Any:
        cls = driver_class(device.driver)
        ctx = DriverContext(
            device=device,
            bus=self.config.bus(device.bus) if device.bus else None,
            config=self.config,
            sink=self.sink,
            stamp=self.clock.stamp,
            log=self.log.bind(device=device.id, driver=device.driver),
            shared=self._shared_resource,
        )
        return cls(device, ctx)

    def _start_device(self, device: DeviceConfig) -> None:
        state = self.state.devices.setdefault(
            device.id, DeviceState(id=device.id, driver=device.driver)
        )
        name = f"driver[{device.driver}:{device.id}]"
        try:
            driver = self._make_driver(device)
        except ImportError as exc:
            # A gateway installed without this driver's extra: the other devices go on, and the
            # page and the platform say exactly what is missing.
            state.set_health(Health.DOWN)
            state.last_error = f"driver_unavailable: {exc}"
            self.log.error("device.driver_unavailable", device=device.id, error=str(exc))
            self._spawn(
                f"event[{device.id}]",
                self.event(
                    "agent.driver_unavailable", Severity.ALARM, device=device.id, error=str(exc)
                ),
            )
            return
        entry = _Device(device, driver, None)
        self.devices[device.id] = entry

        if isinstance(driver, PolledDriver):

            async def body() -> None:
                poller = PolledDevice(
                    device,
                    entry.driver,
                    lane=self._lane(device),
                    state=state,
                    emit=self.sink,
                    stamp=self.clock.stamp,
                    log=self.log,
                )
                entry.poller = poller
                try:
                    await poller.run()
                except DriverCrashedError:
                    # A fresh driver instance after a crash: state inside the old one is suspect.
                    await poller.stop()
                    entry.driver = self._make_driver(device)
                    raise

        elif isinstance(driver, StreamingDriver):

            async def body() -> None:
                try:
                    await entry.driver.run()
                finally:
                    with contextlib.suppress(Exception):
                        await entry.driver.stop()

        else:
            msg = f"driver {device.driver!r} is neither polled nor streaming"
            raise TypeError(msg)

        entry.task = self._spawn(name, self._supervise(name, body, device=state))

    async def _stop_device(self, device_id: str, *, timeout_s: float = 5.0) -> None:
        entry = self.devices.pop(device_id, None)
        if entry is None:
            return
        if entry.poller is not None:
            entry.poller.request_stop()
        if entry.task is not None:
            # Let an in-flight read finish and hand its records over; then cancel.
            done, _ = await asyncio.wait({entry.task}, timeout=timeout_s)
            if not done:
                entry.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await entry.task
        if entry.poller is not None:
            await entry.poller.stop()
        else:
            with contextlib.suppress(Exception):
                await entry.driver.stop()

    async def read_device(self, device_id: str) -> Sequence[Record]:
        """A technician's one-off read, through the bus lane so the schedule is not disturbed."""
        entry = self.devices.get(device_id)
        if entry is None or entry.poller is None:
            raise DeviceError("not_polled", f"{device_id!r} is not a polled device")
        return await entry.poller.read_once()

    # ---------------------------------------------------------------- commands

    def _command_target(
        self, device: str, action: str, args: Mapping[str, Any]
    ) -> tuple[_Device, CommandHandler, Mapping[str, Any]]:
        entry = self.devices.get(device)
        if entry is None:
            raise CommandError("unknown_device", f"no device {device!r} on this gateway")
        if action not in entry.config.commands:
            raise CommandError(
                "not_allowed", f"{action!r} is not allowed for {device!r} by the config"
            )
        driver = entry.driver
        if not isinstance(driver, CommandHandler):
            raise CommandError("unsupported", f"{device!r} takes no commands")
        spec = next((s for s in driver.command_specs() if s.action == action), None)
        if spec is None:
            raise CommandError("unknown_action", f"{device!r} does not know {action!r}")
        return entry, driver, spec.validate(args)

    async def execute_command(
        self,
        device: str,
        action: str,
        args: Mapping[str, Any],
        *,
        source: str,
        command_id: str,
    ) -> Mapping[str, Any]:
        """Run a command on the driver that owns ``device``; every outcome is audited."""
        audit: dict[str, Any] = {
            "id": command_id,
            "source": source,
            "target": device,
            "action": action,
        }
        try:
            entry, driver, clean = self._command_target(device, action, args)
            if entry.poller is not None:
                async with entry.poller.lane.hold():
                    result = await driver.execute(action, clean)
            else:
                result = await driver.execute(action, clean)
        except CommandError as exc:
            self.log.warning("command.refused", **audit, reason=exc.reason, error=str(exc))
            await self.event(
                "agent.command",
                Severity.WARNING,
                **audit,
                status="failed",
                reason=exc.reason,
                error=str(exc),
            )
            raise
        except Exception as exc:
            self.log.error("command.failed", **audit, error=str(exc))
            await self.event(
                "agent.command",
                Severity.WARNING,
                **audit,
                status="failed",
                reason="driver_error",
                error=f"{type(exc).__name__}: {exc}",
            )
            raise CommandError("driver_error", f"{type(exc).__name__}: {exc}") from exc
        self.log.info("command.done", **audit)
        await self.event("agent.command", Severity.INFO, **audit, status="ok", result=dict(result))
        return result

    # ---------------------------------------------------------------- inventory

    def inventory(self) -> dict[str, Any]:
        gw = self.config.gateway
        return {
            "gateway": {
                "id": gw.id,
                "code": gw.code,
                "name": gw.name,
                "community": {"code": gw.community.code, "name": gw.community.name},
                "timezone": gw.timezone,
                "agent_version": __version__,
            },
            "devices": [
                {
                    "id": d.id,
                    "code": d.code,
                    "driver": d.driver,
                    "kind": d.kind.value,
                    "name": d.name,
                    "manufacturer": d.manufacturer,
                    "model": d.model,
                    "firmware": d.firmware,
                    "bus": d.bus,
                    "location": d.location.model_dump() if d.location else None,
                }
                for d in self.config.devices
                if d.enabled
            ],
        }

    # ---------------------------------------------------------------- lifecycle

    def request_stop(self) -> None:
        self._stop.set()

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
        assert self.buffer is not None
        self.state.clock_synced = True
        fixed = await self.buffer.correct_unsynced(self.clock.boot_id, delta_ms)
        self.log.info("clock.synced", correction_ms=delta_ms, records_corrected=fixed)
        await self.event("agent.clock_synced", correction_ms=delta_ms, records_corrected=fixed)

    async def _start_uplink(self) -> None:
        http = self.config.uplink.http
        if http is None:
            self.log.info("uplink.none", hint="no uplink configured: records stay in the buffer")
            return
        from agent.config.secrets import SecretError, read_secret  # noqa: PLC0415
        from agent.uplink.http import HttpUplinkClient, UplinkConfigError  # noqa: PLC0415

        assert self.buffer is not None
        self.state.uplink.transport = "http"
        try:
            self.uplink = HttpUplinkClient(
                http,
                gateway=self.config.gateway,
                secret=read_secret(http.secret),
                buffer=self.buffer,
                state=self.state.uplink,
                inventory=self.inventory,
                commands=self.execute_command,
                log=self.log.bind(task="uplink[http]"),
                agent_version=__version__,
            )
        except (SecretError, UplinkConfigError) as exc:
            # Polling and buffering go on: nothing is lost while an installer fixes the key
            # file, and SIGHUP (systemctl reload) tries the uplink again.
            self.state.uplink.last_error = f"misconfigured: {exc}"
            self.state.uplink.last_error_ms = self.clock.stamp()[0]
            self.log.error("uplink.misconfigured", error=str(exc), hint="fix, then reload")
            await self.event("agent.uplink_misconfigured", Severity.ALARM, error=str(exc))
            return
        uplink = self.uplink
        self._spawn("uplink[http]", self._supervise("uplink[http]", uplink.run))

    async def _stop_uplink(self) -> None:
        if self.uplink is None:
            return
        task = next((t for t in self._tasks if t.get_name() == "uplink[http]"), None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.uplink.close()
        self.uplink = None

    async def reload(self) -> bool:
        """Re-read the config file; apply it only if valid. True when applied."""
        if self.config_path is None or self._loader is None:
            return False
        from agent.config.errors import ConfigError  # noqa: PLC0415

        try:
            new = await asyncio.to_thread(self._loader, self.config_path)
        except ConfigError as exc:
            problems = [str(i) for i in exc.issues]
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
        old_devices = {d.id: d for d in old.devices if d.enabled}
        new_devices = {d.id: d for d in new.devices if d.enabled}
        changed_buses = {b.id for b in new.buses if old.bus(b.id) != b}
        for lane in [k for k in self.lanes if k.removeprefix("bus:") in changed_buses]:
            del self.lanes[lane]
        stopped = [
            i
            for i, d in old_devices.items()
            if new_devices.get(i) != d or (d.bus is not None and d.bus in changed_buses)
        ]
        for device_id in stopped:
            await self._stop_device(device_id)
        for device_id in [i for i in old_devices if i not in new_devices]:
            self.state.devices.pop(device_id, None)
        started = [i for i in new_devices if i not in self.devices]
        for device_id in started:
            self._start_device(new_devices[device_id])
        if old.uplink != new.uplink or (self.uplink is None and new.uplink.http is not None):
            await self._stop_uplink()
            await self._start_uplink()
        self.log.info(
            "config.reloaded",
            devices_restarted=sorted(set(stopped) & set(started)),
            devices_added=sorted(set(started) - set(stopped)),
            devices_removed=sorted(set(stopped) - set(started)),
            restart_needed_for=restart_needed or None,
        )
        await self.event(
            "agent.config_reloaded",
            devices=len(new_devices),
            restart_needed_for=restart_needed,
        )
        return True

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(
            signal.SIGHUP, lambda: self._spawn("config-reload", self._reload_logged())
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

    async def start(self) -> None:
        cfg = self.config
        self._announce_buffer_check()
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
        self.state.buffer.epoch = self.buffer.epoch
        if self.buffer.recovered_from is not None:
            self.log.error(
                "buffer.recovered",
                moved_to=str(self.buffer.recovered_from),
                epoch=self.buffer.epoch,
            )
        self.log.info(
            "agent.starting",
            version=__version__,
            devices=len([d for d in cfg.devices if d.enabled]),
            buffer=str(cfg.buffer.path),
            epoch=self.buffer.epoch,
            clock_synced=self.clock.synced,
        )
        await self.event("agent.started", version=__version__, epoch=self.buffer.epoch)
        self._spawn("buffer-figures", self._refresh_buffer_figures())
        if not self.clock.synced:
            self.log.warning("clock.unsynced", hint="records are marked ts_synced=false until NTP")
            self._spawn("clock-watch", self.clock.watch(self._clock_synced))
        await self._start_uplink()
        for device in cfg.devices:
            if device.enabled:
                self._start_device(device)
        self.control = ControlServer(self.control_path(cfg), self.execute_command)
        try:
            await self.control.start()
        except OSError as exc:
            # On-site commands are a convenience; the agent's main job goes on without them.
            self.log.error("control.unavailable", path=str(self.control.path), error=str(exc))
            self.control = None
        from agent.web.server import start_web  # noqa: PLC0415 - aiohttp only when it runs

        self.web = await start_web(self)

    @staticmethod
    def control_path(config: AgentConfig) -> Path:
        return config.control.socket or config.buffer.path.parent / "control.sock"

    async def shutdown(self) -> None:
        self.log.info("agent.stopping")
        if self._notifier is not None:
            self._notifier.stopping()
        if self.control is not None:
            await self.control.close()
        if self.web is not None:
            await self.web.close()
            self.web = None
        await asyncio.gather(*(self._stop_device(i) for i in list(self.devices)))
        await self._stop_uplink()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for resource in self._shared.values():
            closer = getattr(resource, "aclose", None) or getattr(resource, "close", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    result = closer()
                    if asyncio.iscoroutine(result):
                        await result
        if self.buffer is not None:
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
                self._spawn("systemd-watchdog", watchdog_loop(self._notifier, self._watchdog_s))
        try:
            await self._stop.wait()
        finally:
            await self.shutdown()
        return 0
