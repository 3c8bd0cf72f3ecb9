"""Buses owned by the core (DESIGN.md section 6): a serial line, a TCP host or a Bluetooth adapter
per configured bus.

Drivers never open a port: they frame their protocol and call ``exchange`` on the handle the
core gives them (``ctx.bus``), in a turn granted by priority. Any mix of protocols whose line
settings match may share a bus; the config check refuses a device whose protocol needs settings
its line does not have.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.bus._base import (
    BusHandle,
    LinkListener,
    Priority,
    link_event,
    priority,
    waiting_time,
)
from agent.bus.ble import BleAdapter
from agent.bus.serial import ReplyReader, ReplyTimeoutError, SerialLine, char_bits, frame_gap_s
from agent.bus.tcp import TcpHost

if TYPE_CHECKING:
    from agent.config.models import Bus

__all__ = [
    "AnyBus",
    "BleAdapter",
    "BusHandle",
    "LinkListener",
    "Priority",
    "ReplyReader",
    "ReplyTimeoutError",
    "SerialLine",
    "TcpHost",
    "char_bits",
    "frame_gap_s",
    "link_event",
    "open_bus",
    "priority",
    "waiting_time",
]


AnyBus = SerialLine | TcpHost | BleAdapter
"""Every kind of bus handle the core makes."""


def open_bus(config: Bus, *, on_link: LinkListener | None = None) -> AnyBus:
    """The handle of a configured bus; nothing is opened until its first transaction."""
    if config.serial is not None:
        return SerialLine(config, on_link=on_link)
    if config.ble is not None:
        return BleAdapter(config, on_link=on_link)
    return TcpHost(config, on_link=on_link)
