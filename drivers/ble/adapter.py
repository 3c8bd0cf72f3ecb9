"""The adapter itself, for the watchdog's last resort: its address from BlueZ, and a reset by
``bluetooth-auto-recovery`` (Home Assistant's: rfkill unblock, power cycle over the kernel's
management socket, then a USB reset when the adapter had gone silent).

A reset needs ``CAP_NET_ADMIN`` (the management socket) and, for the USB reset, write access to
the adapter's ``/dev/bus/usb`` node. The packaged unit grants neither by default; without them
the attempt fails, is counted and logged, and the watchdog goes on recreating the scanner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Final

__all__ = ["adapter_address", "reset_adapter"]

_BLUEZ_TIMEOUT_S: Final = 5.0
_RESET_TIMEOUT_S: Final = 60.0


async def adapter_address(adapter: str) -> str | None:
    """The MAC of BlueZ's adapter ``adapter`` (``hci0``), or None when BlueZ does not answer or
    has no such adapter. A powered-off adapter still has its address."""
    from dbus_fast import BusType, Message, MessageType  # noqa: PLC0415
    from dbus_fast.aio import MessageBus  # noqa: PLC0415
    from dbus_fast.errors import DBusError  # noqa: PLC0415

    try:
        bus = await asyncio.wait_for(
            MessageBus(bus_type=BusType.SYSTEM).connect(), _BLUEZ_TIMEOUT_S
        )
    except (OSError, EOFError, TimeoutError, DBusError, ValueError):
        return None
    try:
        reply = await asyncio.wait_for(
            bus.call(
                Message(
                    destination="org.bluez",
                    path=f"/org/bluez/{adapter}",
                    interface="org.freedesktop.DBus.Properties",
                    member="Get",
                    signature="ss",
                    body=["org.bluez.Adapter1", "Address"],
                )
            ),
            _BLUEZ_TIMEOUT_S,
        )
    except (OSError, EOFError, TimeoutError, DBusError):
        return None
    finally:
        bus.disconnect()
    if reply is None or reply.message_type is not MessageType.METHOD_RETURN or not reply.body:
        return None
    value = getattr(reply.body[0], "value", None)
    return value.upper() if isinstance(value, str) and value.count(":") == 5 else None


async def reset_adapter(adapter: str, address: str, *, gone_silent: bool) -> tuple[bool, str]:
    """Reset the adapter named ``adapter`` whose MAC is ``address``: (done, why not)."""
    number = adapter.removeprefix("hci")
    if not adapter.startswith("hci") or not number.isdigit():
        return False, f"{adapter!r} is not an hciN adapter name"
    try:
        from bluetooth_auto_recovery import recover_adapter  # noqa: PLC0415
    except ImportError as exc:
        return False, f"bluetooth-auto-recovery is not installed ({exc})"
    # The library logs through the standard logging module at warning level for each step; its
    # outcome is what we report.
    with _quiet("bluetooth_auto_recovery"):
        try:
            done = await asyncio.wait_for(
                recover_adapter(int(number), address, gone_silent), _RESET_TIMEOUT_S
            )
        except TimeoutError:
            return False, f"no outcome within {_RESET_TIMEOUT_S:g} s"
        except Exception as exc:  # sockets, USB and sysfs: any failure means "not done"
            return False, f"{type(exc).__name__}: {exc}"
    if not done:
        return False, "the adapter could not be reset (permission: CAP_NET_ADMIN, or not found)"
    return True, ""


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
