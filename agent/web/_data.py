"""What the page, ``/api`` and ``/metrics`` show, as plain data built from the running agent.

Everything here reads :class:`~agent.state.AgentState` and the config; nothing does I/O except
:class:`Probes` (disk usage, config re-validation), which caches and runs the slow part in a
thread. The page renders exactly these payloads, so "the page equals /api" holds by construction.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from agent.config.errors import ConfigError
from agent.config.models import DeviceKind, PolledDeviceConfig, StreamedDeviceConfig
from agent.config.secrets import REDACTED, redact
from agent.driver import Health
from agent.records import Event, Status, now_ms

if TYPE_CHECKING:
    from agent.config.models import AgentConfig, DeviceConfig, Location
    from agent.state import DeviceState
    from agent.view import AgentView

__all__ = [
    "HEALTH_ORDER",
    "Probes",
    "Throughput",
    "config_payload",
    "device_detail",
    "device_history",
    "device_summary",
    "devices_payload",
    "event_dict",
    "events_payload",
    "scrub",
    "status_payload",
]

HEALTH_ORDER = {"down": 0, "unknown": 1, "degraded": 2, "starting": 3, "ok": 4, "disabled": 5}
"""Problems first: a technician scans the top of the list."""

_PROBLEMS_ON_OVERVIEW = 20

# Event data comes from drivers and the runtime; keys that look like secrets are hidden the same
# way the config page hides them.
_SECRET_KEY = re.compile(
    r"password|passwd|secret|token|api_?key|private_?key|psk|credential|signature|authorization",
    re.IGNORECASE,
)


def scrub(value: Any, key: str | None = None) -> Any:
    """``value`` as JSON-able data with secret-looking keys replaced by ``***``."""
    if key is not None and value is not None and _SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, Mapping):
        return {str(k): scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


# ---------------------------------------------------------------------------- probes


@dataclasses.dataclass(slots=True)
class _Validation:
    key: tuple[int, int] | None = None
    checked_ms: int = 0
    checked_at: float = 0.0
    valid: bool | None = None
    errors: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    matches_running: bool | None = None


class Probes:
    """Disk usage and config validation, cached: a page polled every 2 s must not stat the
    filesystem or re-parse YAML each time."""

    DISK_TTL_S = 5.0
    CONFIG_TTL_S = 10.0

    def __init__(self, runtime: AgentView) -> None:
        self._runtime = runtime
        self._disk: dict[str, Any] = {}
        self._disk_at = -1e9
        self._validation = _Validation()
        self._lock = asyncio.Lock()

    def disk(self) -> dict[str, Any]:
        now = time.monotonic()
        if now - self._disk_at > self.DISK_TTL_S:
            directory = self._runtime.config.buffer.path.parent
            try:
                usage = shutil.disk_usage(directory)
                self._disk = {
                    "path": str(directory),
                    "free_bytes": usage.free,
                    "total_bytes": usage.total,
                }
            except OSError:
                self._disk = {"path": str(directory), "free_bytes": None, "total_bytes": None}
            self._disk_at = now
        return self._disk

    async def validation(self) -> dict[str, Any]:
        path = self._runtime.config_path
        if path is None:
            return {"path": None, "valid": None, "errors": [], "matches_running": None}
        async with self._lock:
            v = self._validation
            try:
                st = path.stat()
                key: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
            except OSError:
                key = None
            fresh = time.monotonic() - v.checked_at < self.CONFIG_TTL_S
            if key is None or key != v.key or not fresh:
                self._validation = await asyncio.to_thread(self._validate, path, key)
            v = self._validation
        return {
            "path": str(path),
            "checked_ms": v.checked_ms,
            "valid": v.valid,
            "errors": v.errors,
            "matches_running": v.matches_running,
        }

    def _validate(self, path: Path, key: tuple[int, int] | None) -> _Validation:
        from agent.config.loader import load_config  # noqa: PLC0415 - pulls in every driver model

        result = _Validation(key=key, checked_ms=now_ms(), checked_at=time.monotonic())
        try:
            loaded = load_config(path)
        except ConfigError as exc:
            result.valid = False
            result.errors = [_issue(i.file, i.line, i.col, i.path, i.message) for i in exc.issues]
            return result
        except OSError as exc:
            result.valid = False
            result.errors = [_issue(str(path), 0, 0, "", exc.strerror or str(exc))]
            return result
        result.valid = True
        result.matches_running = loaded == self._runtime.config
        return result


def _issue(file: str, line: int, col: int, path: str, message: str) -> dict[str, Any]:
    # An error about a secret-looking key may quote the value the installer typed there.
    if _SECRET_KEY.search(path.rsplit(".", 1)[-1]):
        message = "invalid value (not shown: it may be a secret)"
    return {"file": file, "line": line, "col": col, "path": path, "message": message}


class Throughput:
    """Records per second into the buffer and out to the platform over the last minute."""

    WINDOW_S = 60.0

    def __init__(self) -> None:
        self._samples: collections.deque[tuple[float, int, int]] = collections.deque(maxlen=32)

    def sample(self, accepted: int, sent: int) -> None:
        self._samples.append((time.monotonic(), accepted, sent))

    def rates(self, accepted: int, sent: int) -> dict[str, Any]:
        now = time.monotonic()
        old = next((s for s in self._samples if now - s[0] <= self.WINDOW_S), None)
        if old is None or now - old[0] < 1.0:
            return {"in_per_s": None, "out_per_s": None, "window_s": None}
        span = now - old[0]
        return {
            "in_per_s": round((accepted - old[1]) / span, 2),
            "out_per_s": round((sent - old[2]) / span, 2),
            "window_s": round(span, 1),
        }


# ---------------------------------------------------------------------------- overview


def _location(location: Location | None) -> dict[str, Any] | None:
    return location.model_dump(exclude_none=True) if location is not None else None


def _health_counts(states: Iterable[DeviceState], disabled: int) -> dict[str, int]:
    counts = collections.Counter(s.health.value for s in states)
    return {
        "total": sum(counts.values()) + disabled,
        "ok": counts[Health.OK.value],
        "degraded": counts[Health.DEGRADED.value],
        "down": counts[Health.DOWN.value],
        "starting": counts[Health.STARTING.value],
        "unknown": counts[Health.UNKNOWN.value],
        "disabled": disabled,
    }


def status_payload(runtime: AgentView, probes: Probes, throughput: Throughput) -> dict[str, Any]:
    state = runtime.state
    cfg = runtime.config
    gw = cfg.gateway
    now = now_ms()
    buffer = state.buffer.as_dict()
    buffer["oldest_age_s"] = (
        round(max(0, now - state.buffer.oldest_ms) / 1000, 1)
        if state.buffer.oldest_ms is not None
        else None
    )
    uplink = state.uplink.as_dict()
    # The page shows the reason code (translated) and the HTTP status, never the error text: for
    # a network failure that is an exception's words, in English, with addresses in it.
    del uplink["last_error"]
    http = cfg.uplink.http
    uplink["configured"] = http is not None
    uplink["state"] = "none" if http is None else state.uplink.link(now, http.stalled_after_s)
    uplink["stalled_after_s"] = None if http is None else http.stalled_after_s
    disabled = sum(not d.enabled for d in cfg.devices)
    states = list(state.devices.values())
    problems = sorted(
        (s for s in states if s.health in (Health.DOWN, Health.UNKNOWN, Health.DEGRADED)),
        key=lambda s: (HEALTH_ORDER[s.health.value], s.since_ms),
    )
    names = {d.id: d.name for d in cfg.devices}
    return {
        "now_ms": now,
        "gateway": {
            "id": gw.id,
            "name": gw.name,
            "code": gw.code,
            "community": {"code": gw.community.code, "name": gw.community.name},
            "timezone": gw.timezone,
        },
        "version": state.version,
        "uptime_s": round(state.uptime_s, 1),
        "started_ms": state.started_ms,
        "clock_synced": state.clock_synced,
        "disk": probes.disk(),
        "buffer": buffer,
        "uplink": uplink,
        "throughput": throughput.rates(state.records_accepted, state.uplink.records_sent),
        "records_accepted": state.records_accepted,
        "records_lost_unwritable": state.records_lost_unwritable,
        "task_restarts": state.task_restarts,
        "memory_rss_bytes": process_rss_bytes(),
        "devices": _health_counts(states, disabled),
        "problems": [
            {
                "id": s.id,
                "name": names.get(s.id),
                "health": s.health.value,
                "since_ms": s.since_ms,
                "last_error": s.last_error,
            }
            for s in problems[:_PROBLEMS_ON_OVERVIEW]
        ],
        "problems_total": len(problems),
        "buses": runtime.bus_figures(),
        "doors": _doors(states, names),
        "tags": _tags(cfg.devices, state.devices),
    }


def _doors(states: list[DeviceState], names: Mapping[str, str | None]) -> list[dict[str, Any]]:
    """Devices that report a door (a ``door_open`` point: OSDP readers, door controllers),
    with its state, since when, and whether the link to the reader is secured."""
    doors = []
    for s in states:
        door = s.points.get("door_open")
        secure = s.points.get("secure_channel")
        if door is None and secure is None:
            continue
        doors.append(
            {
                "id": s.id,
                "name": names.get(s.id),
                "health": s.health.value,
                "open": door.value if door is not None else None,
                "since_ms": door.ts if door is not None else None,
                "secure_channel": secure.value if secure is not None else None,
            }
        )
    return doors


_TAGS_ON_OVERVIEW = 30
_TAG_ORDER = {"away": 0, "unknown": 1, "never": 2, "present": 3}
"""Who is missing first: a tag away, one whose adapter is down, one never heard."""


def _tags(devices: Iterable[DeviceConfig], states: Mapping[str, DeviceState]) -> dict[str, Any]:
    """Tags (devices of kind ``tag``: BLE wristbands, buttons, beacons): whether each is in
    range, since when, when it was last heard, its signal and battery; the missing first, at
    most :data:`_TAGS_ON_OVERVIEW` of them (the devices page lists all)."""
    rows: list[dict[str, Any]] = []
    for device in devices:
        if device.kind is not DeviceKind.TAG or not device.enabled:
            continue
        st = states.get(device.id)
        points = st.points if st is not None else {}
        presence = points.get("presence")
        if st is not None and st.health is Health.UNKNOWN:
            shown = "unknown"  # the adapter is down: whatever it last knew is not known now
        else:
            shown = str(presence.value) if presence is not None else "never"
        battery = points.get("battery")
        low = getattr(device, "battery_low_pct", None) or 20
        rssi, distance = points.get("rssi"), points.get("distance")
        rows.append(
            {
                "id": device.id,
                "name": device.name,
                "health": st.health.value if st is not None else Health.STARTING.value,
                "presence": shown,
                "since_ms": presence.ts if presence is not None else None,
                "last_seen_ms": st.last_success_ms if st is not None else None,
                "rssi": rssi.value if rssi is not None else None,
                "distance": distance.value if distance is not None else None,
                "battery": battery.value if battery is not None else None,
                "battery_low": (
                    isinstance(battery.value, int | float) and battery.value < low
                    if battery is not None
                    else None
                ),
            }
        )
    rows.sort(key=lambda r: (_TAG_ORDER.get(r["presence"], 9), r["id"]))
    return {"total": len(rows), "shown": rows[:_TAGS_ON_OVERVIEW]}


# ---------------------------------------------------------------------------- devices


def _last_point(state: DeviceState | None) -> dict[str, Any] | None:
    if state is None or not state.points:
        return None
    name, point = max(state.points.items(), key=lambda item: item[1].ts)
    return {
        "point": name,
        "value": scrub(point.value),
        "unit": point.unit,
        "ts": point.ts,
        "quality": point.quality.value,
    }


def device_summary(device: DeviceConfig, state: DeviceState | None) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": device.id,
        "name": device.name,
        "driver": device.driver,
        "kind": device.kind.value,
        "bus": device.bus,
        "location": _location(device.location),
    }
    if state is None:
        health = "disabled" if not device.enabled else Health.STARTING.value
        return base | {
            "health": health,
            "since_ms": None,
            "last": None,
            "reads": 0,
            "failures": 0,
            "consecutive_failures": 0,
            "errors": {},
            "restarts": 0,
            "last_error": None,
            "last_error_ms": None,
            "last_success_ms": None,
        }
    return base | {
        "health": state.health.value,
        "since_ms": state.since_ms,
        "last": _last_point(state),
        "reads": state.reads,
        "failures": state.failures,
        "consecutive_failures": state.consecutive_failures,
        "errors": dict(state.errors),
        "restarts": state.restarts,
        "last_error": state.last_error,
        "last_error_ms": state.last_error_ms,
        "last_success_ms": state.last_success_ms,
    }


def _matches(summary: Mapping[str, Any], query: str) -> bool:
    location = summary["location"] or {}
    haystack = " ".join(
        str(v)
        for v in (
            summary["id"],
            summary["name"],
            summary["driver"],
            summary["kind"],
            summary["bus"],
            summary["last_error"],
            *location.values(),
        )
        if v is not None
    )
    return query.casefold() in haystack.casefold()


def devices_payload(
    runtime: AgentView, *, query: str = "", health: str = "", sort: bool = True
) -> dict[str, Any]:
    states = runtime.state.devices
    items = [device_summary(d, states.get(d.id)) for d in runtime.config.devices]
    if health:
        wanted = set(health.split(","))
        items = [i for i in items if i["health"] in wanted]
    if query:
        items = [i for i in items if _matches(i, query)]
    if sort:
        items.sort(key=lambda i: (HEALTH_ORDER.get(i["health"], 9), i["id"]))
    return {"now_ms": now_ms(), "devices": items}


def _commands(runtime: AgentView, device: DeviceConfig) -> list[dict[str, Any]]:
    specs = runtime.device_commands(device.id)
    return [{"action": a, "description": specs.get(a)} for a in device.commands]


def device_detail(runtime: AgentView, device: DeviceConfig) -> dict[str, Any]:
    state = runtime.state.devices.get(device.id)
    polled = device if isinstance(device, PolledDeviceConfig) else None
    points = []
    if state is not None:
        points = [
            {
                "name": name,
                "value": scrub(p.value),
                "unit": p.unit,
                "ts": p.ts,
                "quality": p.quality.value,
                "reason": p.reason,
            }
            for name, p in sorted(state.points.items())
        ]
    events = [
        event_dict(r)
        for r in reversed(runtime.state.recent_events)
        if r.device == device.id or _about(r, device.id)
    ][:50]
    return {
        "now_ms": now_ms(),
        "device": device_summary(device, state)
        | {
            "code": device.code,
            "manufacturer": device.manufacturer,
            "model": device.model,
            "firmware": device.firmware,
            "enabled": device.enabled,
            "interval_s": polled.interval_s if polled else None,
            "timeout_s": polled.timeout_s if polled else None,
            "offline_after": polled.offline_after if polled else None,
            "stale_after_s": (
                device.stale_after_s if isinstance(device, StreamedDeviceConfig) else None
            ),
            "next_poll_in_s": (
                round(state.next_poll_in_s, 1)
                if state is not None and state.next_poll_in_s is not None
                else None
            ),
        },
        # Drivers may count finer than the scheduler sees (a Modbus read that half failed): what
        # they push into the device's state is shown as it is.
        "driver_counters": dict(state.driver_counters) if state is not None else {},
        "points": points,
        "events": events,
        "commands": _commands(runtime, device),
        "can_test_read": runtime.can_test_read(device.id),
        # What its driver found out (a camera's serial, MAC, stream addresses), sorted.
        "reported": dict(sorted(runtime.device_reported(device.id).items())),
    }


def device_history(runtime: AgentView, device_id: str) -> dict[str, Any]:
    from agent.state import PointHistory  # noqa: PLC0415 - avoid a cycle at import time

    state = runtime.state.devices.get(device_id)
    series: dict[str, Any] = {}
    if state is not None:
        for name, history in sorted(state.history.items()):
            pairs = history.series()
            unit = state.points[name].unit if name in state.points else None
            series[name] = {
                "unit": unit,
                "t": [t for t, _ in pairs],
                "v": [round(v, 6) for _, v in pairs],
            }
    return {
        "now_ms": now_ms(),
        "bucket_s": PointHistory.SLOT_MS // 1000,
        "points": series,
    }


# ---------------------------------------------------------------------------- events


def _about(record: Event | Status, device_id: str) -> bool:
    """Runtime events name the device in their data (a command's target, a crashed task)."""
    if not isinstance(record, Event):
        return False
    data = record.data
    return data.get("target") == device_id or data.get("task", "").endswith(f":{device_id}]")


def event_dict(record: Event | Status) -> dict[str, Any]:
    if isinstance(record, Status):
        return {
            "ts": record.ts,
            "ts_synced": record.ts_synced,
            "device": record.device,
            "kind": "status",
            "type": f"status.{record.state.value}",
            "severity": "warning" if record.state.value == "offline" else "info",
            "data": {"reason": record.reason} if record.reason else {},
        }
    return {
        "ts": record.ts,
        "ts_synced": record.ts_synced,
        "device": record.device,
        "kind": "event",
        "type": record.type,
        "severity": record.severity.value,
        "data": scrub(record.data),
    }


def events_payload(
    runtime: AgentView, *, type_: str = "", device: str = "", limit: int = 200
) -> dict[str, Any]:
    records = list(runtime.state.recent_events)
    types = sorted({event_dict(r)["type"] for r in records})
    devices = sorted({r.device for r in records})
    out = []
    for record in reversed(records):
        item = event_dict(record)
        if type_ and not (
            item["type"] == type_ or item["type"].startswith(type_.rstrip(".") + ".")
        ):
            continue
        if device and not (record.device == device or _about(record, device)):
            continue
        out.append(item)
        if len(out) >= limit:
            break
    return {"now_ms": now_ms(), "events": out, "types": types, "devices": devices}


# ---------------------------------------------------------------------------- config


def config_payload(config: AgentConfig, validation: Mapping[str, Any]) -> dict[str, Any]:
    plain = redact(config)
    return {
        "now_ms": now_ms(),
        "config": plain,
        "yaml": yaml.safe_dump(plain, allow_unicode=True, sort_keys=False, width=100),
        "validation": dict(validation),
    }


def process_rss_bytes() -> int | None:
    """Resident memory of this process, for the overview; None off Linux."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path("/proc/self/statm").read_text().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    return None
