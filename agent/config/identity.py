"""Stable 20-digit device codes in the GB/T 28181 layout (DESIGN.md section 3).

A code is five fields, left to right::

    CCCCCCCC II TTT N SSSSSS
    centre   |  |   | serial (6 digits)
             |  |   network (1 digit)
             |  type (3 digits)
             industry (2 digits)

GB/T 28181-2016 Appendix D ("编码规则 A") defines the centre code as the division code of the
monitoring centre the device belongs to. We take the first 8 digits of the community's 12-digit
statistical division code (统计用区划代码: 6-digit county + 3-digit street + 3-digit community),
as DESIGN.md section 3 asks, so every device of a community shares its county-level prefix.

Industry ``00`` is the standard's 社会治安路面接入 and ``01`` its 社会治安社区接入 (community
access); the default is ``00`` until the platform tells us otherwise. Network ``7`` is "Internet
and other public networks" (``0``-``4`` are the police's own video networks, ``5`` the police
information network, ``6`` the e-government extranet).

Type codes. Sources: GB/T 28181-2016 Table D.1 as reproduced by public implementations (the wvp
GB28181 platform's ``ChannelIdType``, and reference tables that list 111-130 front-end main
devices, 131-199 front-end peripherals, 200-299 platform devices); 124 and 139 also follow the
2022 edition's table.

============================  =====  ==========================================================
kind                          type   meaning in the standard
============================  =====  ==========================================================
camera                        132    网络摄像机 (IPC, network camera)
alarm_input                   134    报警输入设备 (infrared, smoke, door-contact alarm inputs)
access_controller             124    人员出入口控制设备 (2022 edition); in 2016 it lies in the
                                     119-130 block reserved for further front-end main devices
other                         139    其他外围设备 (other peripheral device)
electricity_meter             190    -- project extension, see below
water_meter                   191    -- project extension
heat_meter                    192    -- project extension
gas_meter                     193    -- project extension
sensor                        194    -- project extension
tag                           195    -- project extension
gateway (the agent itself)    209    接入网关 (access gateway, a platform device)
============================  =====  ==========================================================

Meters, environmental sensors and BLE tags have no type of their own in either edition. We give
them 190-195, the unused tail of the front-end peripheral block (131-199), so that platforms which
classify by range still see them as field devices rather than platform servers. A platform with
its own assignments should be given explicit ``code:`` values in the configuration.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from types import MappingProxyType

from agent.config.models import AgentConfig, DeviceConfig, DeviceKind, Gateway

__all__ = [
    "GATEWAY_TYPE",
    "TYPE_CODES",
    "derived_serial",
    "device_code",
    "gateway_code",
    "resolved_code",
]

TYPE_CODES: Mapping[DeviceKind, str] = MappingProxyType(
    {
        DeviceKind.CAMERA: "132",
        DeviceKind.ALARM_INPUT: "134",
        DeviceKind.ACCESS_CONTROLLER: "124",
        DeviceKind.OTHER: "139",
        DeviceKind.ELECTRICITY_METER: "190",
        DeviceKind.WATER_METER: "191",
        DeviceKind.HEAT_METER: "192",
        DeviceKind.GAS_METER: "193",
        DeviceKind.SENSOR: "194",
        DeviceKind.TAG: "195",
    }
)

GATEWAY_TYPE = "209"

SERIAL_RANGE = 1_000_000

_COMMUNITY = re.compile(r"^\d{12}$")


def _compose(
    community_code: str, type_code: str, serial: int, *, industry: str, network: str
) -> str:
    if not _COMMUNITY.fullmatch(community_code):
        raise ValueError(f"community code must be 12 digits, got {community_code!r}")
    if not re.fullmatch(r"\d{2}", industry):
        raise ValueError(f"industry must be 2 digits, got {industry!r}")
    if not re.fullmatch(r"\d", network):
        raise ValueError(f"network must be 1 digit, got {network!r}")
    if not 0 <= serial < SERIAL_RANGE:
        raise ValueError(f"serial must be 0 to 999999, got {serial}")
    return f"{community_code[:8]}{industry}{type_code}{network}{serial:06d}"


def device_code(
    community_code: str,
    kind: DeviceKind,
    serial: int,
    *,
    industry: str = "00",
    network: str = "7",
) -> str:
    """The 20-digit code of a device of ``kind`` with the 6-digit ``serial`` in a community."""
    return _compose(community_code, TYPE_CODES[kind], serial, industry=industry, network=network)


def derived_serial(community_code: str, name: str) -> int:
    """A stable 6-digit serial from the community and a device or gateway id.

    SHA-256 rather than ``hash()``: Python salts ``hash()`` per process, and the code must be the
    same on every start and on every gateway.
    """
    digest = hashlib.sha256(f"{community_code}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % SERIAL_RANGE


def resolved_code(config: AgentConfig, device: DeviceConfig) -> str:
    """The device's configured code, or the one derived from community, kind and serial."""
    if device.code is not None:
        return device.code
    community = config.gateway.community.code
    serial = (
        device.serial_no if device.serial_no is not None else derived_serial(community, device.id)
    )
    return device_code(community, device.kind, serial)


def gateway_code(gateway: Gateway) -> str:
    """The gateway's configured code, or one derived from its community and id (type 209)."""
    if gateway.code is not None:
        return gateway.code
    community = gateway.community.code
    return _compose(
        community, GATEWAY_TYPE, derived_serial(community, gateway.id), industry="00", network="7"
    )
