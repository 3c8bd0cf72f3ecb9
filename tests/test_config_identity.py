"""GB/T 28181-layout device codes: layout, stability, and derivation from the configuration."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import DeviceKind, device_code, gateway_code, resolved_code
from agent.config.identity import GATEWAY_TYPE, TYPE_CODES, derived_serial
from agent.config.models import AgentConfig, Community, Gateway
from drivers.simulated.config import SimulatedDevice

COMMUNITY = "350102001001"


def gateway(code: str | None = None) -> Gateway:
    return Gateway(id="gw-1", community=Community(code=COMMUNITY), code=code)


def device(**fields: object) -> SimulatedDevice:
    data = {"id": "meter-1", "driver": "simulated", "points": [{"name": "p", "kind": "counter"}]}
    return SimulatedDevice.model_validate(data | fields)


@given(
    community=st.from_regex(r"\d{12}", fullmatch=True),
    kind=st.sampled_from(DeviceKind),
    serial=st.integers(0, 999_999),
    industry=st.from_regex(r"\d{2}", fullmatch=True),
    network=st.from_regex(r"\d", fullmatch=True),
)
def test_layout(community: str, kind: DeviceKind, serial: int, industry: str, network: str) -> None:
    code = device_code(community, kind, serial, industry=industry, network=network)
    assert re.fullmatch(r"\d{20}", code)
    assert code[:8] == community[:8]
    assert code[8:10] == industry
    assert code[10:13] == TYPE_CODES[kind]
    assert code[13] == network
    assert int(code[14:]) == serial


@given(community=st.from_regex(r"\d{12}", fullmatch=True), name=st.text(min_size=1))
def test_derived_serial_is_stable_and_in_range(community: str, name: str) -> None:
    serial = derived_serial(community, name)
    assert 0 <= serial < 1_000_000
    assert derived_serial(community, name) == serial


def test_pinned_values() -> None:
    # Codes identify devices on the platform for years: a change here re-keys every device.
    assert device_code(COMMUNITY, DeviceKind.ELECTRICITY_METER, 101) == "35010200001907000101"
    assert device_code(COMMUNITY, DeviceKind.CAMERA, 1, industry="01") == "35010200011327000001"
    assert derived_serial(COMMUNITY, "meter-234") == 574399
    assert derived_serial(COMMUNITY, "meter-1348") == 574399


def test_defaults_are_documented() -> None:
    code = device_code(COMMUNITY, DeviceKind.SENSOR, 5)
    assert (code[8:10], code[13]) == ("00", "7")


def test_every_kind_has_a_type_in_the_front_end_range() -> None:
    assert set(TYPE_CODES) == set(DeviceKind)
    for kind, code in TYPE_CODES.items():
        assert re.fullmatch(r"\d{3}", code), kind
        assert 111 <= int(code) <= 199, kind
    assert TYPE_CODES[DeviceKind.CAMERA] == "132"
    assert TYPE_CODES[DeviceKind.ALARM_INPUT] == "134"
    assert GATEWAY_TYPE == "209"


@pytest.mark.parametrize(
    ("community", "serial", "industry", "network", "match"),
    [
        ("35010200100", 1, "00", "7", "community code must be 12 digits"),
        ("35010200100A", 1, "00", "7", "community code must be 12 digits"),
        (COMMUNITY, 1_000_000, "00", "7", "serial must be 0 to 999999"),
        (COMMUNITY, -1, "00", "7", "serial must be 0 to 999999"),
        (COMMUNITY, 1, "0", "7", "industry must be 2 digits"),
        (COMMUNITY, 1, "00", "77", "network must be 1 digit"),
    ],
)
def test_bad_arguments(
    community: str, serial: int, industry: str, network: str, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        device_code(community, DeviceKind.SENSOR, serial, industry=industry, network=network)


def test_resolved_code() -> None:
    config = AgentConfig(gateway=gateway())
    assert resolved_code(config, device(code="11111111111111111111")) == "11111111111111111111"
    assert resolved_code(config, device(serial_no=42)) == "35010200001947000042"
    hashed = resolved_code(config, device())
    assert hashed == device_code(COMMUNITY, DeviceKind.SENSOR, derived_serial(COMMUNITY, "meter-1"))
    assert resolved_code(config, device()) == hashed


def test_gateway_code() -> None:
    assert gateway_code(gateway("12345678901234567890")) == "12345678901234567890"
    code = gateway_code(gateway())
    assert code == f"3501020000{GATEWAY_TYPE}7{derived_serial(COMMUNITY, 'gw-1'):06d}"
