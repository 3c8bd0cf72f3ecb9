"""One ONVIF camera (device scope, streaming): inventory, health, clock, events, snapshots.

- **Connection.** ``run`` opens the link (the camera's clock first, for WS-Security timestamps,
  then its service addresses), reads the inventory and the clock, and says ``ok``. A failure
  says ``down`` with its reason (timeout, unreachable, auth_failed, http_error, soap_fault,
  bad_xml, xml_forbidden, too_large, ...) and retries with backoff from 2 s to 2 min, so a wrong
  password is one ``auth_failed`` status, not a crash loop. A camera that was up gets one quiet
  reconnect first (cameras close idle keep-alive connections).
- **Liveness** every ``check_every_s``: GetSystemDateAndTime, whose answer is also the clock
  offset (reading ``clock_offset_s``, on change beyond 1.5 s or hourly). Beyond
  ``clock.max_offset_s``: ``camera.clock_drift``; with ``clock.set_manual``, a camera on manual
  time is set from the gateway's synchronised clock, at most hourly.
- **Events** through a PullPoint subscription with a ``lease_s`` lease, renewed at 80 % of it,
  SetSynchronizationPoint after each (re)subscribe. A lost subscription (a reboot, a fault) is
  re-created with backoff from 0.5 s to 30 s and the inventory is read again. Motion, tamper and
  video loss become ``camera.motion`` / ``camera.tamper`` / ``camera.video_loss`` start and end
  events (:mod:`drivers.onvif.events`); other topics ``camera.event``.
- **Snapshots** only on demand (``camera.snapshot``), never into the buffer by the driver.

Each camera has its own driver, link and tasks: one camera's slowness never delays another's.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import datetime as dt
import time
from collections.abc import Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, cast

from agent.backoff import delay
from agent.driver import CommandError, CommandSpec, DriverContext
from agent.driver.keys import SecretError, read_secret
from agent.driver.report import OnChange
from agent.records import Event, Quality, Reading, Severity
from drivers.onvif.camera import CameraFault, CameraLink, Clock, PullPoint
from drivers.onvif.events import AlarmKind, Alarms, Notice, alarm_kind, read_notice

if TYPE_CHECKING:
    from drivers.onvif.config import OnvifCamera

__all__ = ["OnvifDriver"]

_RETRY_FIRST_S: Final = 2.0
_RETRY_MAX_S: Final = 120.0
_RESUBSCRIBE_FIRST_S: Final = 0.5
_RESUBSCRIBE_MAX_S: Final = 30.0
_RENEW_AT: Final = 0.8
_CLOCK_DEADBAND_S: Final = 1.5
_CLOCK_HEARTBEAT_S: Final = 3600.0
_CLOCK_SET_EVERY_S: Final = 3600.0
_RAW_KEYS_MAX: Final = 256
_SEVERITY: Final[Mapping[AlarmKind, Severity]] = {
    "motion": Severity.INFO,
    "tamper": Severity.ALARM,
    "video_loss": Severity.ALARM,
}


class _ReconnectError(Exception):
    """The link must be opened again (the camera's clock was just set)."""


async def _first_failure(*coroutines: Coroutine[Any, Any, None]) -> None:
    """Run the coroutines together until one of them ends or fails; cancel the others; raise
    the first failure."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise cast("BaseException", task.exception())


def _validate_snapshot(args: Mapping[str, Any]) -> Mapping[str, Any]:
    unknown = set(args) - {"profile"}
    if unknown:
        raise CommandError("bad_args", f"unknown argument(s): {', '.join(sorted(unknown))}")
    profile = args.get("profile")
    if profile is not None and (not isinstance(profile, str) or not 0 < len(profile) <= 64):
        raise CommandError("bad_args", "'profile' is a media profile token (text)")
    return {"profile": profile} if profile is not None else {}


class OnvifDriver:
    """One camera."""

    def __init__(self, config: OnvifCamera, ctx: DriverContext) -> None:
        self.ctx = ctx
        self.config = config
        self.id = self.config.id
        self.counters: collections.Counter[str] = ctx.counters.get(self.id, collections.Counter())
        self.inventory: dict[str, str] = {}
        self.link: CameraLink | None = None
        """The open link, while connected (commands use it)."""
        self._clock_reported: OnChange[str] = OnChange(_CLOCK_HEARTBEAT_S)
        self._drifting = False
        self._clock_set_at = float("-inf")
        self._alarms = Alarms(self._alarm, self.config.motion_hold_s)
        self._raw_last: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}

    # -- the contract ------------------------------------------------------------------------

    def device_inventory(self) -> Mapping[str, Mapping[str, str]]:
        return {self.id: dict(self.inventory)} if self.inventory else {}

    def command_specs(self) -> Sequence[CommandSpec]:
        return (
            CommandSpec(
                "camera.snapshot",
                "take a JPEG snapshot (profile: a media profile token; default: the config's "
                "snapshot.profile or the first); returned, never buffered",
                _validate_snapshot,
            ),
        )

    async def execute(self, action: str, args: Mapping[str, Any]) -> Mapping[str, Any]:
        if action != "camera.snapshot":
            raise CommandError("unknown_action", f"{self.id!r} does not know {action!r}")
        link = self.link
        if link is None:
            raise CommandError("offline", f"camera {self.config.endpoint} is not connected")
        profiles = self.inventory.get("profiles", "").split()
        profile = args.get("profile") or self.config.snapshot.profile or next(iter(profiles), None)
        uri = self.inventory.get(f"snapshot_uri.{profile}")
        if uri is None:
            known = ", ".join(p for p in profiles if f"snapshot_uri.{p}" in self.inventory)
            raise CommandError(
                "no_snapshot",
                f"profile {profile!r} has no snapshot URI (profiles with one: {known or 'none'})",
            )
        try:
            shot = await link.snapshot(
                uri, self.config.snapshot.auth, self.config.snapshot.max_kb * 1024
            )
        except CameraFault as fault:
            self.counters[f"snapshot_{fault.reason}"] += 1
            raise CommandError(fault.reason, fault.message) from None
        self.counters["snapshots"] += 1
        return {
            "profile": profile,
            "content_type": shot.content_type,
            "bytes": len(shot.image),
            "sha256": shot.sha256,
            "taken_ms": shot.taken_ms,
            "image_base64": base64.b64encode(shot.image).decode("ascii"),
        }

    async def stop(self) -> None:
        link, self.link = self.link, None
        if link is not None:
            await link.close()

    # -- connection --------------------------------------------------------------------------

    def _password(self) -> str | None:
        return read_secret(self.config.password) if self.config.password is not None else None

    async def run(self) -> None:
        failures = 0
        quiet_used = False
        """The one quiet reconnect of a camera that was up has been spent."""
        while True:
            try:
                password = self._password()
            except SecretError as exc:
                self.ctx.health.down(self.id, "secret_unreadable", str(exc))
                self.counters["secret_unreadable"] += 1
                await asyncio.sleep(delay(failures, first_s=_RETRY_FIRST_S, cap_s=_RETRY_MAX_S))
                failures += 1
                continue
            link = CameraLink(
                self.config.host,
                self.config.port,
                self.config.username,
                password,
                timeout_s=self.config.timeout_s,
                max_response_kb=self.config.max_response_kb,
                longest_wait_s=self.config.pull_wait_s,
            )
            connected_at: float | None = None
            try:
                await link.open()
                self.link = link
                connected_at = time.monotonic()
                await self._connected(link)
            except _ReconnectError:
                failures = 0
            except CameraFault as fault:
                self.counters[fault.reason] += 1
                if connected_at is not None and (
                    time.monotonic() - connected_at >= self.config.check_every_s
                ):
                    failures, quiet_used = 0, False  # it was up for a while: a fresh start
                if connected_at is not None and not quiet_used:
                    quiet_used = True
                    self.ctx.log.info("camera.reconnect", device=self.id, reason=fault.reason)
                    continue
                self.ctx.health.down(self.id, fault.reason, fault.message)
                self.ctx.log.warning(
                    "camera.down", device=self.id, reason=fault.reason, error=fault.message
                )
                await asyncio.sleep(delay(failures, first_s=_RETRY_FIRST_S, cap_s=_RETRY_MAX_S))
                failures += 1
            finally:
                if self.link is link:
                    self.link = None
                with contextlib.suppress(Exception):
                    await asyncio.shield(link.close())

    async def _connected(self, link: CameraLink) -> None:
        self._set_inventory(await link.inventory())
        clock = await link.clock()
        self.ctx.health.ok(self.id)
        self.counters["connects"] += 1
        self.ctx.log.info("camera.up", device=self.id, endpoint=self.config.endpoint)
        await self._clock(link, clock)
        await _first_failure(self._liveness(link), self._events(link))

    def _set_inventory(self, inventory: dict[str, str]) -> None:
        if inventory != self.inventory:
            self.inventory = inventory
            self.ctx.inventory_changed()

    async def _liveness(self, link: CameraLink) -> None:
        inventory_due = time.monotonic() + self.config.inventory_every_s
        while True:
            await asyncio.sleep(self.config.check_every_s)
            await self._clock(link, await link.clock())
            if time.monotonic() >= inventory_due:
                self._set_inventory(await link.inventory())
                inventory_due = time.monotonic() + self.config.inventory_every_s

    # -- clock -------------------------------------------------------------------------------

    async def _clock(self, link: CameraLink, clock: Clock) -> None:
        ts, synced = self.ctx.stamp()
        records: list[Event | Reading] = []
        if self._clock_reported.due("offset", _CLOCK_DEADBAND_S, clock.offset_s, Quality.GOOD, ts):
            records.append(
                Reading(
                    device=self.id,
                    ts=ts,
                    ts_synced=synced,
                    point="clock_offset_s",
                    value=clock.offset_s,
                    unit="s",
                )
            )
        bound = self.config.clock.max_offset_s
        drifting = abs(clock.offset_s) > bound
        if drifting != self._drifting:
            self._drifting = drifting
            records.append(
                Event(
                    device=self.id,
                    ts=ts,
                    ts_synced=synced,
                    type="camera.clock_drift",
                    severity=Severity.WARNING if drifting else Severity.INFO,
                    data={
                        "state": "start" if drifting else "end",
                        "offset_s": clock.offset_s,
                        "max_offset_s": bound,
                        "mode": clock.mode,
                    },
                )
            )
        if records:
            self.ctx.push(records)
        if (
            drifting
            and self.config.clock.set_manual
            and clock.mode.lower() == "manual"
            and synced
            and time.monotonic() - self._clock_set_at >= _CLOCK_SET_EVERY_S
        ):
            self._clock_set_at = time.monotonic()
            await link.set_clock(dt.datetime.now(dt.UTC))
            self.counters["clock_set"] += 1
            self.ctx.push(
                [
                    Event(
                        device=self.id,
                        ts=ts,
                        ts_synced=synced,
                        type="camera.clock_set",
                        data={"offset_s": clock.offset_s, "mode": clock.mode},
                    )
                ]
            )
            self.ctx.log.info("camera.clock_set", device=self.id, offset_s=clock.offset_s)
            raise _ReconnectError  # its WS-Security timestamps follow the new clock

    # -- events ------------------------------------------------------------------------------

    async def _events(self, link: CameraLink) -> None:
        if not link.has_events:
            self.counters["no_event_service"] += 1
            await asyncio.Event().wait()
        failures = 0
        lost = False
        while True:
            try:
                pull = await link.subscribe(self.config.lease_s)
                self.counters["subscriptions"] += 1
                if lost:
                    # A reboot or a fault: its profiles and URIs may have changed too.
                    self._set_inventory(await link.inventory())
                try:
                    await pull.synchronise()
                except CameraFault:
                    self.counters["sync_failed"] += 1
                failures = 0
                await self._pull(pull)
            except CameraFault as fault:
                if fault.reason == "auth_failed":
                    raise
                self.counters["subscription_lost"] += 1
                self.counters[f"subscribe_{fault.reason}"] += 1
                self.ctx.log.info("camera.subscription_lost", device=self.id, reason=fault.reason)
                lost = True
                await asyncio.sleep(
                    delay(failures, first_s=_RESUBSCRIBE_FIRST_S, cap_s=_RESUBSCRIBE_MAX_S)
                )
                failures += 1

    async def _pull(self, pull: PullPoint) -> None:
        lease = self.config.lease_s
        renew_at = time.monotonic() + lease * _RENEW_AT
        while True:
            wait = min(self.config.pull_wait_s, max(0.5, renew_at - time.monotonic()))
            due = self._alarms.next_due()
            if due is not None:
                wait = max(0.1, min(wait, (due - self.ctx.stamp()[0]) / 1000))
            messages = await pull.pull(wait)
            for message in messages:
                await self._notice(message)
            self._alarms.flush(self.ctx.stamp()[0])
            self.counters["debounced"] = self._alarms.debounced
            if time.monotonic() >= renew_at:
                await pull.renew(lease)
                self.counters["renewals"] += 1
                renew_at = time.monotonic() + lease * _RENEW_AT

    async def _notice(self, message: Any) -> None:
        notice = read_notice(message)
        if notice is None:
            self.counters["bad_event"] += 1
            return
        self.counters["events"] += 1
        device_class, value = await _parsed(self.id, notice.topic, message)
        kind = alarm_kind(notice.topic, device_class)
        ts, synced = self.ctx.stamp()
        if kind is not None:
            on = notice.state if notice.state is not None else value
            if on is None:
                self.counters["bad_event"] += 1
                return
            self._alarms.update(kind, notice, ts, on=on)
            return
        if not self.config.raw_events:
            return
        key = (notice.topic, notice.source_key)
        data = tuple(notice.data.items())
        if notice.operation == "Initialized" and self._raw_last.get(key) == data:
            return  # the state it already reported, sent again after a (re)subscribe
        if len(self._raw_last) >= _RAW_KEYS_MAX and key not in self._raw_last:
            self._raw_last.clear()
        self._raw_last[key] = data
        self.ctx.push(
            [
                Event(
                    device=self.id,
                    ts=ts,
                    ts_synced=synced,
                    type="camera.event",
                    data={
                        "topic": notice.topic,
                        "operation": notice.operation,
                        "source": dict(notice.source),
                        "data": dict(notice.data),
                        "camera_time": notice.utc_time,
                    },
                )
            ]
        )

    def _alarm(self, kind: AlarmKind, state: str, notice: Notice, ts: int) -> None:
        self.ctx.push(
            [
                Event(
                    device=self.id,
                    ts=ts,
                    ts_synced=self.ctx.stamp()[1],
                    type=f"camera.{kind}",
                    severity=_SEVERITY[kind] if state == "start" else Severity.INFO,
                    data={
                        "state": state,
                        "topic": notice.topic,
                        "source": notice.source_key,
                        "camera_time": notice.utc_time,
                    },
                )
            ]
        )


async def _parsed(uid: str, topic: str, message: Any) -> tuple[str | None, bool | None]:
    """What ``onvif-parsers`` makes of a notification: its device class and boolean value, or
    ``(None, None)`` for a topic it does not know or a message it cannot read."""
    import onvif_parsers  # noqa: PLC0415 - with the driver's protocol library

    try:
        entities = await onvif_parsers.parse(topic, uid, message)
    except (onvif_parsers.errors.UnknownTopicError, AttributeError, KeyError, IndexError):
        return None, None
    except (TypeError, ValueError):
        return None, None
    for entity in entities:
        value = entity.value if isinstance(entity.value, bool) else None
        return entity.device_class, value
    return None, None
