"""``edge-agent scan onvif`` and ``edge-agent read onvif``, run as an installer runs them (a
process of their own) against the camera simulator's WS-Discovery responder and cameras on
127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from agent_proc import ROOT

from drivers.onvif.simulator import (
    DEFAULT_PASSWORD,
    CameraSimulator,
    CameraSpec,
    SimulatedCamera,
    serve_discovery,
)

pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True, slots=True)
class Run:
    code: int
    stdout: str
    stderr: str


async def edge_agent(*argv: str, env: dict[str, str] | None = None) -> Run:
    """``edge-agent ARGV…`` as a child process, without blocking the simulator's loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent.cli",
        *argv,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


SPECS = [
    CameraSpec(
        id="cam-gate", name="Gate", mac="44:19:b6:00:00:01", location="north", serial="GATE0001"
    ),
    CameraSpec(
        id="cam-garage", name="Garage", mac="44:19:b6:00:00:02", location="b5", serial="B50002"
    ),
]


@pytest.fixture
async def simulator() -> AsyncIterator[CameraSimulator]:
    async with CameraSimulator(SPECS) as running:
        yield running


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "camera.password"
    path.write_text(DEFAULT_PASSWORD + "\n")
    path.chmod(0o600)
    return path


def _login(camera: SimulatedCamera) -> tuple[str, ...]:
    """``read onvif``'s address and user for ``camera`` (the password is given per test)."""
    return ("127.0.0.1", "--port", str(camera.port), "--user", "admin")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ----------------------------------------------------------------------------- scan onvif


async def test_scan_onvif_to_an_address_lists_every_camera_with_its_mac(
    simulator: CameraSimulator,
) -> None:
    transport, port = await serve_discovery(list(simulator.cameras.values()))
    try:
        answer = await edge_agent("scan", "onvif", "--to", f"127.0.0.1:{port}", "--json")
        table = await edge_agent("scan", "onvif", "--to", f"127.0.0.1:{port}")
    finally:
        transport.close()
    assert answer.code == 0, answer.stderr
    devices = json.loads(answer.stdout)["devices"]
    found = {d["mac"]: d for d in devices}
    assert set(found) == {"44:19:B6:00:00:01", "44:19:B6:00:00:02"}
    for spec in SPECS:
        device = found[spec.mac.upper()]
        camera = simulator.cameras[spec.id]
        assert (device["address"], device["port"]) == ("127.0.0.1", camera.port)
        assert (device["name"], device["location"]) == (spec.name, f"city/{spec.location}")
    # The table an installer reads: one line per camera, its address and MAC.
    assert table.code == 0, table.stderr
    for camera in simulator.cameras.values():
        [line] = [x for x in table.stdout.splitlines() if f"127.0.0.1:{camera.port} " in x]
        assert camera.spec.mac.upper() in line
        assert camera.spec.name in line


async def test_scan_onvif_lists_cameras_with_cloned_endpoint_ids_apart() -> None:
    """Cheap cameras with cloned firmware answer with one endpoint id (here: one serial, from
    which the simulator makes it). WSDiscovery alone kept only the last answer."""
    clones = [CameraSpec(id=f"clone-{i}", mac=f"44:19:b6:00:00:1{i}") for i in range(3)]
    async with CameraSimulator(clones) as simulator:
        transport, port = await serve_discovery(list(simulator.cameras.values()))
        try:
            answer = await edge_agent("scan", "onvif", "--to", f"127.0.0.1:{port}", "--json")
            table = await edge_agent("scan", "onvif", "--to", f"127.0.0.1:{port}")
        finally:
            transport.close()
        ports = sorted(camera.port for camera in simulator.cameras.values())
    devices = json.loads(answer.stdout)["devices"]
    assert sorted(d["port"] for d in devices) == ports
    assert len({d["endpoint"] for d in devices}) == 1
    assert "note: 3 cameras answer with an endpoint id another camera also uses" in table.stderr
    assert len([line for line in table.stdout.splitlines() if "44:19:B6:00:00:1" in line]) == 3


async def test_scan_onvif_with_no_answer_says_so_and_exits_1() -> None:
    port = _free_udp_port()
    result = await edge_agent("scan", "onvif", "--to", f"127.0.0.1:{port}", "--seconds", "1")
    assert result.code == 1, result.stderr
    assert f"127.0.0.1:{port}: no ONVIF camera answered in 1 s" in result.stdout
    assert "Traceback" not in result.stderr


async def test_scan_onvif_refuses_a_malformed_address() -> None:
    result = await edge_agent("scan", "onvif", "--to", "camera.local")
    assert result.code == 2
    assert "give HOST:PORT" in result.stderr


# ----------------------------------------------------------------------------- read onvif


async def test_read_onvif_prints_the_inventory_clock_and_events(
    simulator: CameraSimulator, password_file: Path
) -> None:
    camera = simulator.cameras["cam-gate"]
    camera.set_clock_offset(-42)
    common = _login(camera)
    answer = await edge_agent(
        "read", "onvif", *common, "--password-file", str(password_file), "--json"
    )
    assert answer.code == 0, answer.stderr
    result = json.loads(answer.stdout)
    inventory = result["inventory"]
    assert inventory["mac"] == "44:19:B6:00:00:01"
    assert (inventory["manufacturer"], inventory["serial"]) == ("HIKVISION", camera.spec.serial)
    assert any(key.startswith("stream_uri.") for key in inventory)
    assert abs(result["clock"]["offset_s"] + 42) <= 2
    assert result["events"] == "ok"
    # Its test subscription is not left behind on the camera.
    assert camera.stats["Unsubscribe"] == 1
    table = await edge_agent(
        "read", "onvif", *common, "--password-env", "CAM_PASSWORD", env=_env(DEFAULT_PASSWORD)
    )
    assert table.code == 0, table.stderr
    assert f"127.0.0.1:{camera.port}: answered in" in table.stdout
    assert "44:19:B6:00:00:01" in table.stdout
    for run in (answer, table):
        assert DEFAULT_PASSWORD not in run.stdout + run.stderr


def _env(password: str) -> dict[str, str]:
    return {**os.environ, "CAM_PASSWORD": password}


async def test_read_onvif_with_a_wrong_password_is_auth_failed(
    simulator: CameraSimulator, tmp_path: Path
) -> None:
    camera = simulator.cameras["cam-gate"]
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    common = _login(camera)
    answer = await edge_agent("read", "onvif", *common, "--password-file", str(wrong), "--json")
    table = await edge_agent("read", "onvif", *common, "--password-file", str(wrong))
    assert answer.code == 2, answer.stderr
    assert json.loads(answer.stdout)["error"]["reason"] == "auth_failed"
    assert table.code == 2
    assert f"127.0.0.1:{camera.port}: auth_failed:" in table.stdout
    assert "not-the-password" not in answer.stdout + table.stdout + table.stderr


async def test_read_onvif_with_a_password_file_that_cannot_be_read(
    simulator: CameraSimulator, tmp_path: Path
) -> None:
    camera = simulator.cameras["cam-gate"]
    empty = tmp_path / "empty.password"
    empty.write_text("\n")
    common = _login(camera)
    for path in (tmp_path / "missing.password", empty):
        result = await edge_agent("read", "onvif", *common, "--password-file", str(path))
        assert result.code == 2
        assert result.stderr.startswith("the password cannot be read:"), result.stderr
        assert str(path) in result.stderr
        assert "Traceback" not in result.stderr
    # Nothing was asked of the camera.
    assert camera.stats["GetDeviceInformation"] == 0


async def test_read_onvif_needs_a_user_and_a_password_together(
    simulator: CameraSimulator, password_file: Path
) -> None:
    camera = simulator.cameras["cam-gate"]
    result = await edge_agent(
        "read", "onvif", "127.0.0.1", "--port", str(camera.port), "--password-file",
        str(password_file),
    )  # fmt: skip
    assert result.code == 2
    assert "give --user with --password-file or --password-env" in result.stderr


async def test_read_onvif_of_a_camera_that_is_not_there_is_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: refused
        result = await edge_agent("read", "onvif", "127.0.0.1", "--port", str(port), "--json")
    assert result.code == 2
    assert json.loads(result.stdout)["error"]["reason"] == "unreachable"
