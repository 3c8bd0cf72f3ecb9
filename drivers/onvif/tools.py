"""Installer tools for cameras: find them (WS-Discovery) and check one (``read onvif``).

Cameras take no bus, so both run where they are called, never through the agent: they open
their own sockets and do not disturb the agent's links.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from drivers.onvif.camera import CameraFault, CameraLink

__all__ = ["camera_scopes", "discover", "read"]

_NVT: Final = ("http://www.onvif.org/ver10/network/wsdl", "NetworkVideoTransmitter")


def camera_scopes(scopes: Sequence[str]) -> dict[str, str]:
    """What a camera's ``onvif://www.onvif.org/<key>/<value>`` scopes say: name, hardware, MAC,
    location (the last of each)."""
    found: dict[str, str] = {}
    for scope in scopes:
        parts = urlsplit(scope)
        if parts.scheme != "onvif" or parts.netloc != "www.onvif.org":
            continue
        key, _, value = parts.path.strip("/").partition("/")
        value = unquote(value)[:128]
        if key == "name":
            found["name"] = value
        elif key == "hardware":
            found["hardware"] = value
        elif key in {"MAC", "mac"}:
            digits = value.replace(":", "").replace("-", "").upper()
            if len(digits) == 12:
                found["mac"] = ":".join(digits[i : i + 2] for i in range(0, 12, 2))
        elif key == "location":
            found["location"] = value
    return found


def _probe(seconds: float, address: str | None, port: int | None) -> list[dict[str, Any]]:
    import selectors  # noqa: PLC0415
    import socket  # noqa: PLC0415

    from wsdiscovery import QName  # noqa: PLC0415 - the extra's library, only when scanning
    from wsdiscovery.discovery import ThreadedWSDiscovery  # noqa: PLC0415
    from wsdiscovery.threaded import AddressMonitorThread, NetworkingThreadIPv4  # noqa: PLC0415

    class Discovery(ThreadedWSDiscovery):  # type: ignore[misc]
        # WSDiscovery keeps one answer per endpoint id; cheap cameras with cloned firmware
        # share one, and the installer must still see each. One per id and address here.
        def _addRemoteService(self, service: Any) -> None:  # noqa: N802
            key = (service.getEPR(), tuple(str(x) for x in service.getXAddrs()))
            self._remoteServices[key] = service

        def _removeRemoteService(self, epr: Any) -> None:  # noqa: N802
            for key in [k for k in self._remoteServices if k[0] == epr]:
                del self._remoteServices[key]

        def _startThreads(self) -> None:  # noqa: N802 - WSDiscovery's name
            if address is None or ":" in address:
                super()._startThreads()
                return
            # A unicast probe to an IPv4 address. WSDiscovery would also send it from its IPv6
            # thread, which dies on the IPv4 address (a traceback on stderr), and it never reads
            # the socket it sends unicast from, where the camera answers (WS-Discovery 1.1
            # section 5.3: a ProbeMatch goes back to the probe's sender).
            thread = NetworkingThreadIPv4(self)
            thread.start()
            thread._selector.register(thread._uniOutSocket, selectors.EVENT_READ)
            self._networkingThread_v4 = thread
            self._addrsMonitorThread_v4 = AddressMonitorThread(self, socket.AF_INET)
            self._addrsMonitorThread_v4.start()

    wsd = Discovery()
    wsd.start()
    try:
        services = wsd.searchServices(
            types=[QName(*_NVT)], address=address, port=port, timeout=seconds
        )
    finally:
        wsd.stop()
    devices: list[dict[str, Any]] = []
    for service in services:
        xaddrs = [str(x) for x in service.getXAddrs()]
        where = urlsplit(xaddrs[0]) if xaddrs else None
        scopes = camera_scopes([str(s.getValue()) for s in service.getScopes()])
        devices.append(
            {
                "address": where.hostname if where is not None else None,
                "port": where.port or 80 if where is not None else None,
                "xaddrs": xaddrs,
                "endpoint": str(service.getEPR()),
                **scopes,
            }
        )
    devices.sort(key=lambda d: (str(d["address"]), d["port"] or 0))
    return devices


async def discover(
    seconds: float = 3.0, address: str | None = None, port: int | None = None
) -> dict[str, Any]:
    """Probe for ONVIF cameras (multicast, or unicast to ``address:port``) for ``seconds``."""
    devices = await asyncio.to_thread(_probe, seconds, address, port)
    where = f"{address}:{port}" if address else "multicast 239.255.255.250:3702"
    return {"where": where, "seconds": seconds, "devices": devices}


async def read(
    host: str,
    port: int = 80,
    username: str | None = None,
    password: str | None = None,
    *,
    timeout_s: float = 5.0,
) -> Mapping[str, Any]:
    """Log in, read the inventory and the clock, and try an event subscription: what an
    installer checks before adding the camera to the config."""
    link = CameraLink(host, port, username, password, timeout_s=timeout_s)
    result: dict[str, Any] = {"endpoint": f"{host}:{port}"}
    started = time.monotonic()
    try:
        await link.open()
        result["inventory"] = await link.inventory()
        clock = await link.clock()
        result["clock"] = {"offset_s": clock.offset_s, "mode": clock.mode}
        result["events"] = "no event service"
        if link.has_events:
            try:
                pull = await link.subscribe(60)
            except CameraFault as fault:
                result["events"] = f"{fault.reason}: {fault.message}"
            else:
                result["events"] = "ok"
                with contextlib.suppress(CameraFault):
                    await pull.unsubscribe()
    except CameraFault as fault:
        result["error"] = {"reason": fault.reason, "message": fault.message}
    finally:
        await link.close()
    result["took_ms"] = round((time.monotonic() - started) * 1000)
    return result
