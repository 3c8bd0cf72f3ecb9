"""``/metrics`` in the Prometheus text exposition format (version 0.0.4).

Written by hand rather than with ``prometheus_client``: the figures already live in
:class:`~agent.state.AgentState`, a scrape is a snapshot of them, and one dependency fewer
matters on a gateway. Every family has HELP and TYPE; counters end in ``_total``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from agent.driver import Health
from agent.records import now_ms

if TYPE_CHECKING:
    from agent.view import AgentView
    from agent.web._data import Probes

__all__ = ["CONTENT_TYPE", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]
Sample = tuple[Labels, float | int | None]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if value is None:
                continue
            if labels:
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                self.lines.append(f"{name}{{{text}}} {_number(value)}")
            else:
                self.lines.append(f"{name} {_number(value)}")

    def one(self, name: str, kind: str, help_text: str, value: float | None) -> None:
        self.family(name, kind, help_text, [((), value)])

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render_metrics(runtime: AgentView, probes: Probes) -> str:
    state = runtime.state
    cfg = runtime.config
    w = _Writer()
    gw = cfg.gateway
    w.family(
        "edge_agent_info",
        "gauge",
        "Agent version and identity (always 1).",
        [
            (
                (
                    ("version", state.version),
                    ("gateway", gw.id),
                    ("community", gw.community.code),
                ),
                1,
            )
        ],
    )
    w.one("edge_agent_uptime_seconds", "gauge", "Seconds since the agent started.", state.uptime_s)
    w.one(
        "edge_agent_clock_synced",
        "gauge",
        "1 when the system clock is known to be synchronised.",
        int(state.clock_synced),
    )
    w.one(
        "edge_agent_records_accepted_total",
        "counter",
        "Records made durable in the buffer.",
        state.records_accepted,
    )
    w.one(
        "edge_agent_records_lost_total",
        "counter",
        "Records the buffer could not store (disk full, I/O error).",
        state.records_lost_unwritable,
    )
    w.one(
        "edge_agent_task_restarts_total",
        "counter",
        "Supervised task crashes that were restarted.",
        state.task_restarts,
    )
    # Seconds each bus was held by a request: its rate is the bus's utilisation, the figure that
    # says whether a slow RS-485 line has room for another meter.
    w.family(
        "edge_agent_bus_busy_seconds_total",
        "counter",
        "Seconds the bus (or a bus-less device's own lane) was held by requests.",
        [((("lane", name),), busy) for name, busy in sorted(runtime.busy_figures().items())],
    )
    buses = runtime.bus_figures()
    w.family(
        "edge_agent_bus_cycle_seconds",
        "gauge",
        "Line time of one full cycle: every polled device on the bus read once (last reads).",
        [((("bus", b["id"]),), b["cycle_s"]) for b in buses if b.get("cycle_s") is not None],
    )
    w.family(
        "edge_agent_bus_up",
        "gauge",
        "1 while the bus's port or connection is open and working (0 down, 0 never opened).",
        [((("bus", b["id"]), ("state", b["state"])), int(b["state"] == "up")) for b in buses],
    )
    w.family(
        "edge_agent_bus_events_total",
        "counter",
        "What each bus saw: requests, replies, reconnects, noise bytes, CRC errors, retries...",
        [
            ((("bus", b["id"]), ("what", what)), count)
            for b in buses
            for what, count in sorted(b["counters"].items())
        ],
    )
    disk = probes.disk()
    w.one(
        "edge_agent_disk_free_bytes",
        "gauge",
        "Free bytes on the buffer's filesystem.",
        disk.get("free_bytes"),
    )

    devices = sorted(state.devices.values(), key=lambda d: d.id)

    def dev(d_id: str, driver: str) -> Labels:
        return (("device", d_id), ("driver", driver))

    w.family(
        "edge_agent_device_up",
        "gauge",
        "1 when the device answered its last read (health ok), else 0.",
        [(dev(d.id, d.driver), int(d.health is Health.OK)) for d in devices],
    )
    w.family(
        "edge_agent_device_health",
        "gauge",
        "Device health as a state set: 1 for the current one.",
        [
            ((*dev(d.id, d.driver), ("health", h.value)), int(d.health is h))
            for d in devices
            for h in Health
        ],
    )
    w.family(
        "edge_agent_device_reads_total",
        "counter",
        "Successful reads of the device.",
        [(dev(d.id, d.driver), d.reads) for d in devices],
    )
    w.family(
        "edge_agent_device_errors_total",
        "counter",
        "Failed reads of the device by reason (timeout, crc_error, exception_02, ...).",
        [
            ((*dev(d.id, d.driver), ("reason", reason)), count)
            for d in devices
            for reason, count in sorted(d.errors.items())
        ],
    )
    w.family(
        "edge_agent_device_restarts_total",
        "counter",
        "Driver crashes restarted by the supervisor.",
        [(dev(d.id, d.driver), d.restarts) for d in devices],
    )

    buf = state.buffer
    w.one(
        "edge_agent_buffer_writable",
        "gauge",
        "1 while the buffer accepts records; 0 on a full disk, a read-only card, I/O errors.",
        int(buf.last_error is None),
    )
    w.one("edge_agent_buffer_records", "gauge", "Records waiting in the buffer.", buf.records)
    w.one("edge_agent_buffer_bytes", "gauge", "Bytes of records waiting in the buffer.", buf.bytes)
    w.one(
        "edge_agent_buffer_oldest_age_seconds",
        "gauge",
        "Age of the oldest record waiting in the buffer (0 when empty).",
        max(0, now_ms() - buf.oldest_ms) / 1000 if buf.oldest_ms is not None else 0,
    )
    w.one(
        "edge_agent_buffer_dropped_total",
        "counter",
        "Records dropped because the buffer was full or too old.",
        buf.dropped,
    )
    w.one(
        "edge_agent_buffer_poisoned_total",
        "counter",
        "Records set aside because the platform rejected their batch.",
        buf.poisoned,
    )

    up = state.uplink
    w.one(
        "edge_agent_uplink_connected",
        "gauge",
        "1 when the last exchange with the platform succeeded.",
        int(up.connected),
    )
    w.one(
        "edge_agent_uplink_records_sent_total",
        "counter",
        "Records acknowledged by the platform.",
        up.records_sent,
    )
    w.one(
        "edge_agent_uplink_bytes_sent_total",
        "counter",
        "Bytes of record batches acknowledged by the platform.",
        up.bytes_sent,
    )
    w.one(
        "edge_agent_uplink_batches_sent_total",
        "counter",
        "Batches acknowledged by the platform.",
        up.batches_sent,
    )
    w.one(
        "edge_agent_uplink_batches_failed_total",
        "counter",
        "Batch uploads that failed and will be retried.",
        up.batches_failed,
    )
    w.one(
        "edge_agent_uplink_batches_poisoned_total",
        "counter",
        "Batches the platform refused for good.",
        up.batches_poisoned,
    )
    w.one(
        "edge_agent_uplink_latency_seconds",
        "gauge",
        "Round trip of the last successful upload.",
        up.last_latency_ms / 1000 if up.last_latency_ms is not None else None,
    )
    w.one(
        "edge_agent_uplink_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful exchange with the platform.",
        up.last_success_ms / 1000 if up.last_success_ms is not None else None,
    )
    w.family(
        "edge_agent_commands_total",
        "counter",
        "Device commands by source (platform, local, web) and outcome (ok, failed).",
        [
            ((("source", source), ("status", status)), count)
            for (source, status), count in sorted(state.commands.items())
        ],
    )
    return w.text()
