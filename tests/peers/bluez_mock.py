"""A BlueZ without a radio for the BLE tests: a private D-Bus bus (``dbus-daemon``) with
``python-dbusmock``'s ``bluez5`` template on it (Debian's ``python3-dbusmock``, run by Debian's
python, which has ``python3-dbus``), driven from the test over D-Bus with ``dbus-fast``.

bleak's real BlueZ backend talks to it through ``DBUS_SYSTEM_BUS_ADDRESS``. The stock template
lacks what an advert needs (its ``ManufacturerData`` and ``ServiceData`` have the wrong D-Bus
type for bleak, and dbusmock 0.28 cannot update dict properties), so each device gets an
``Advertise(rssi, manufacturer_data, service_data)`` method that sets them typed as BlueZ does
and emits ``PropertiesChanged``; and the adapter's ``StartDiscovery`` answers
``org.bluez.Error.NotReady`` while the adapter is powered off, as BlueZ does, and
``org.bluez.Error.InProgress`` as often as the test asks (:meth:`BluezMock.busy`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from peers.modbus_peers import missing_peer

SYSTEM_PYTHON = "/usr/bin/python3"

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""

_ADVERTISE = (
    "import dbus\n"
    "props = {'RSSI': dbus.Int16(args[0], variant_level=1),"
    " 'ManufacturerData': dbus.Dictionary(args[1], signature='qv', variant_level=1),"
    " 'ServiceData': dbus.Dictionary(args[2], signature='sv', variant_level=1)}\n"
    "self.props['org.bluez.Device1'].update(props)\n"
    "self.EmitSignal('org.freedesktop.DBus.Properties', 'PropertiesChanged', 'sa{sv}as',"
    " ['org.bluez.Device1', props, []])\n"
)
_START_DISCOVERY = (
    "import dbus\n"
    "busy = getattr(self, 'busy_starts', 0)\n"
    "if busy:\n"
    "    self.busy_starts = busy - 1\n"
    "    raise dbus.exceptions.DBusException("
    "'Operation already in progress', name='org.bluez.Error.InProgress')\n"
    "if not self.props['org.bluez.Adapter1']['Powered']:\n"
    "    raise dbus.exceptions.DBusException("
    "'Resource Not Ready', name='org.bluez.Error.NotReady')\n"
    "self.props['org.bluez.Adapter1']['Discovering'] = dbus.Boolean(True, variant_level=1)\n"
    "self.EmitSignal('org.freedesktop.DBus.Properties', 'PropertiesChanged', 'sa{sv}as',"
    " ['org.bluez.Adapter1', {'Discovering': dbus.Boolean(True, variant_level=1)}, []])\n"
)


def device_path(adapter: str, mac: str) -> str:
    return f"/org/bluez/{adapter}/dev_{mac.upper().replace(':', '_')}"


class BluezMock:
    """``with BluezMock(tmp_path) as bluez:`` a private bus and a mock bluetoothd on it;
    ``bluez.address`` for ``DBUS_SYSTEM_BUS_ADDRESS``. ``restart()`` replaces the mock (a
    bluetoothd restart: every object gone, then a new daemon)."""

    def __init__(self, directory: Path) -> None:
        for need, package in (("dbus-daemon", "dbus-daemon"), (SYSTEM_PYTHON, "python3")):
            if shutil.which(need) is None:
                missing_peer(f"{need} is not installed (apt-get install {package})")
        probe = subprocess.run(
            [SYSTEM_PYTHON, "-c", "import dbusmock"], capture_output=True, check=False
        )
        if probe.returncode != 0:
            missing_peer("python-dbusmock is not installed (apt-get install python3-dbusmock)")
        self.socket = directory / "system_bus"
        self.address = f"unix:path={self.socket}"
        self._config = directory / "bus.conf"
        self._config.write_text(_BUS_CONFIG.format(socket=self.socket))
        self._daemon: subprocess.Popen[bytes] | None = None
        self._mock: subprocess.Popen[bytes] | None = None
        self._log = directory / "dbusmock.log"
        self._bus: Any = None
        self._methods: set[str] = set()

    def __enter__(self) -> Self:
        self._daemon = subprocess.Popen(
            ["dbus-daemon", f"--config-file={self._config}", "--nofork"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if time.monotonic() > deadline or self._daemon.poll() is not None:
                raise RuntimeError("dbus-daemon did not start")
            time.sleep(0.05)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_mock()
        if self._daemon is not None:
            self._daemon.terminate()
            self._daemon.wait(10)

    # ------------------------------------------------------------------ the mock daemon

    async def start_mock(self) -> None:
        """A fresh bluetoothd (no adapters yet)."""
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.address}
        with self._log.open("ab") as log:
            self._mock = subprocess.Popen(
                [SYSTEM_PYTHON, "-m", "dbusmock", "--template", "bluez5"],
                env=env,
                stdout=log,
                stderr=log,
            )
        self._methods.clear()
        from dbus_fast import BusType
        from dbus_fast.aio import MessageBus

        if self._bus is None:
            self._bus = await MessageBus(
                bus_address=self.address, bus_type=BusType.SYSTEM
            ).connect()
        deadline = time.monotonic() + 30
        while True:
            reply = await self._call("/", "org.freedesktop.DBus.ObjectManager", "GetManagedObjects")
            if reply is not None:
                return
            if time.monotonic() > deadline or (self._mock and self._mock.poll() is not None):
                raise RuntimeError(f"the BlueZ mock did not start: {self._log.read_text()}")
            await _sleep(0.1)

    def stop_mock(self) -> None:
        if self._mock is not None and self._mock.poll() is None:
            self._mock.send_signal(signal.SIGTERM)
            try:
                self._mock.wait(10)
            except subprocess.TimeoutExpired:
                self._mock.kill()
                self._mock.wait(10)
        self._mock = None

    async def restart(self) -> None:
        """bluetoothd goes away and comes back: the caller adds its adapters and devices
        again, as a real daemon rediscovers them."""
        self.stop_mock()
        await self.start_mock()

    async def close(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    # ------------------------------------------------------------------ objects

    async def add_adapter(self, adapter: str = "hci0") -> None:
        await self._checked("/", "org.bluez.Mock", "AddAdapter", "ss", [adapter, "gateway"])
        path = f"/org/bluez/{adapter}"
        await self._checked(
            path,
            "org.freedesktop.DBus.Mock",
            "AddMethod",
            "sssss",
            ["org.bluez.Adapter1", "StartDiscovery", "", "", _START_DISCOVERY],
        )
        await self._checked(
            path,
            "org.freedesktop.DBus.Mock",
            "AddMethod",
            "sssss",
            ["org.bluez.Mock", "SetBusyStarts", "i", "", "self.busy_starts = args[0]"],
        )

    async def busy(self, starts: int, adapter: str = "hci0") -> None:
        """The next ``starts`` StartDiscovery calls answer ``InProgress``."""
        await self._checked(
            f"/org/bluez/{adapter}", "org.bluez.Mock", "SetBusyStarts", "i", [starts]
        )

    async def power(self, on: bool, adapter: str = "hci0") -> None:
        """Power the adapter on or off (off also ends discovery, as BlueZ does)."""
        from dbus_fast import Variant

        props: dict[str, Any] = {"Powered": Variant("b", on)}
        if not on:
            props["Discovering"] = Variant("b", False)  # noqa: FBT003 - a D-Bus boolean
        await self._checked(
            f"/org/bluez/{adapter}",
            "org.freedesktop.DBus.Mock",
            "UpdateProperties",
            "sa{sv}",
            ["org.bluez.Adapter1", props],
        )

    async def add_device(self, mac: str, name: str = "tag", adapter: str = "hci0") -> None:
        await self._checked("/", "org.bluez.Mock", "AddDevice", "sss", [adapter, mac, name])
        await self._checked(
            device_path(adapter, mac),
            "org.freedesktop.DBus.Mock",
            "AddMethod",
            "sssss",
            ["org.bluez.Device1", "Advertise", "na{qv}a{sv}", "", _ADVERTISE],
        )

    async def advertise(
        self,
        mac: str,
        rssi: int = -60,
        manufacturer_data: Mapping[int, bytes] | None = None,
        service_data: Mapping[str, bytes] | None = None,
        adapter: str = "hci0",
    ) -> None:
        """One advert of the device, as BlueZ reports it (PropertiesChanged)."""
        from dbus_fast import Variant

        maker = {k: Variant("ay", v) for k, v in (manufacturer_data or {}).items()}
        service = {k: Variant("ay", v) for k, v in (service_data or {}).items()}
        await self._checked(
            device_path(adapter, mac),
            "org.bluez.Device1",
            "Advertise",
            "na{qv}a{sv}",
            [rssi, maker, service],
        )

    # ------------------------------------------------------------------ D-Bus

    async def _call(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
        *,
        check: bool = False,
    ) -> Any:
        """The reply's body; on an error None, or raise with ``check``."""
        from dbus_fast import Message, MessageType

        reply = await self._bus.call(
            Message(
                destination="org.bluez",
                path=path,
                interface=interface,
                member=member,
                signature=signature,
                body=body or [],
            )
        )
        if reply.message_type == MessageType.ERROR:
            if check:
                raise RuntimeError(f"{member} on {path}: {reply.error_name} {reply.body}")
            return None
        return reply.body

    async def _checked(
        self, path: str, interface: str, member: str, signature: str, body: list[Any]
    ) -> Any:
        return await self._call(path, interface, member, signature, body, check=True)


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


@contextlib.contextmanager
def system_bus(address: str) -> Any:
    """``DBUS_SYSTEM_BUS_ADDRESS`` set for this process while inside (bleak reads it on
    connect)."""
    before = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = address
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
        else:
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = before
