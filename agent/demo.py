"""``edge-agent demo``: the whole product in one command, without hardware.

In one process and one event loop: the reference platform on 127.0.0.1, and the agent running
``config/demo.yaml`` (simulated meters, a door sensor with events, a flaky meter), an OSDP
gate reader, a line of household meters, BLE tags and two ONVIF cameras, with a
temporary buffer, uploading to that platform with a freshly made key, and taking commands from
it. It prints where to look and stops cleanly on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import shutil
import sys
import tempfile
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import yaml

EX_UNAVAILABLE = 69
"""sysexits: a port the demo needs is taken."""

__all__ = ["run_demo", "write_demo_config"]

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
GATE = "gate-north"
"""The demo's OSDP gate reader: a simulated reader on a pty pair, a card every 15 s."""
GATE_LINE = "rs485-gate"
METER_LINE = "rs485-meters"
"""The demo's line of household meters, simulated on a pty pair."""
RADIO = "radio"
"""The demo's Bluetooth adapter, simulated (no radio)."""
CAMERAS: dict[str, tuple[str, float]] = {
    "cam-gate-north": ("北门 摄像机 (模拟)", 40.0),
    "cam-b5-garage": ("5号楼 地库入口 摄像机 (模拟)", 75.0),
}
"""The demo's ONVIF cameras (drivers/onvif/simulator.py): name, and seconds between motions."""


def _write_private(path: Path, text: str) -> None:
    """Created 0600 from the start: never readable by others, not even for a moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    path.chmod(0o600)


def _write_keys(state: Path, gateway_id: str) -> Path:
    """A fresh shared secret for the gateway, in the agent's and the platform's files."""
    secret = secrets.token_hex(32)
    _write_private(state / "uplink.key", secret)
    keys = state / "platform-keys.yaml"
    _write_private(keys, yaml.safe_dump({gateway_id: {"gateway": gateway_id, "secret": secret}}))
    return keys


def _meter_line() -> list[dict[str, Any]]:
    """The demo's household meters on one RS-485 line, as one stairwell has them: per flat a
    DL/T 645 electricity meter (one of them an older 1997 meter) and a CJ/T 188 cold-water meter
    (the first with a valve the platform may close), and the stairwell's CJ/T 188 heat meter."""
    meters: list[dict[str, Any]] = []
    water: list[dict[str, Any]] = []
    for floor in range(1, 4):
        for room in (1, 2):
            number = f"{floor}0{room}"
            location = {"building": "5", "unit": "1", "floor": floor, "room": number}
            meters.append(
                {
                    "id": f"em-b5-{number}",
                    "driver": "dlt645",
                    "name": f"5号楼1单元{number} 电表 (DL/T 645, 模拟)",
                    "bus": METER_LINE,
                    "address": f"0000500{number}00",
                    "interval_s": 15,
                    "location": location,
                }
            )
            water.append(
                {
                    "id": f"wm-b5-{number}",
                    "driver": "cjt188",
                    "name": f"5号楼1单元{number} 冷水表 (CJ/T 188, 模拟)",
                    "bus": METER_LINE,
                    "address": f"0000500{number}0001",
                    "meter_type": "cold_water",
                    "interval_s": 60,
                    "location": location,
                }
            )
    meters[-1] |= {"version": 1997, "name": "5号楼1单元302 旧电表 (DL/T 645-1997, 模拟)"}
    water[0] |= {"valve": True, "commands": ["valve.close", "valve.open"]}
    heat = {
        "id": "hm-b5-1",
        "driver": "cjt188",
        "name": "5号楼1单元 热量表 (CJ/T 188, 模拟)",
        "bus": METER_LINE,
        "address": "00000050010099",
        "meter_type": "heat",
        "interval_s": 60,
        "location": {"building": "5", "unit": "1"},
    }
    return [*meters, *water, heat]


def _radio() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The demo's Bluetooth tags on a simulated adapter (drivers/ble/simulated.py): a resident's
    wristband (she leaves for a while every 6 min and comes back), the lobby's SOS button
    (pressed every 90 s; its battery is low), a wheelchair's iBeacon tag (its address rotates)
    and the pump room's thermometer."""
    bus = {"id": RADIO, "ble": {"adapter": "hci0", "simulate": True}}
    tags: list[dict[str, Any]] = [
        {
            "id": "wrist-b5-101",
            "name": "5号楼101 张阿姨 手环 (模拟)",
            "mac": "C0:11:22:33:44:01",
            "class": "wristband",
            "location": {"building": "5", "unit": "1", "floor": 1, "room": "101"},
        },
        {
            "id": "sos-b5-lobby",
            "name": "5号楼大堂 紧急按钮 (模拟)",
            "mac": "E0:00:00:00:00:09",
            "class": "sos_button",
            "vendor": {
                "company_id": 0x0A12,
                "prefix": "01",
                "fields": [
                    {"name": "counter", "offset": 1, "type": "u8"},
                    {"name": "button", "offset": 2, "type": "u8"},
                    {"name": "battery", "offset": 3, "type": "u8", "unit": "%"},
                ],
            },
            "location": {"building": "5", "unit": "1", "floor": 1},
        },
        {
            "id": "wheelchair-07",
            "name": "轮椅 07 (模拟)",
            "ibeacon": {"uuid": "fda50693-a4e2-4fb1-afcf-c6eb07647825", "major": 3, "minor": 7},
            "class": "asset",
        },
        {
            "id": "pump-room-temp",
            "name": "水泵房 温湿度 (模拟)",
            "mac": "A4:C1:38:00:11:22",
            "class": "sensor",
            "location": {"building": "5", "floor": -1, "room": "水泵房"},
        },
    ]
    return bus, [{"driver": "ble", "bus": RADIO, **tag} for tag in tags]


def _cameras(ports: dict[str, int], password_file: Path) -> list[dict[str, Any]]:
    return [
        {
            "id": camera,
            "driver": "onvif",
            "name": CAMERAS[camera][0],
            "host": "127.0.0.1",
            "port": port,
            "username": "admin",
            "password": {"file": str(password_file)},
            "check_every_s": 10,
            "commands": ["camera.snapshot"],
        }
        for camera, port in ports.items()
    ]


def write_demo_config(
    state: Path,
    platform_port: int,
    *,
    web_listen: str,
    password_hash: str,
    lines: dict[str, str] | None = None,
    cameras: dict[str, int] | None = None,
    camera_password: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The demo config with the state folder's buffer, key files, the platform's port and a
    one-time technician login for the diagnostic page. ``lines`` maps the demo's serial lines
    (:data:`GATE_LINE`, :data:`METER_LINE`) to ports (one end of a pty pair each): an OSDP gate
    reader in a secure channel with a fresh key, and a line of household meters. ``cameras``
    maps the demo's cameras (:data:`CAMERAS`) to their simulators' ports on 127.0.0.1, whose
    password is ``camera_password`` (written to a 0600 file)."""
    config: dict[str, Any] = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    lines = lines or {}
    if GATE_LINE in lines:
        key_file = state / "gate-north.key"
        if not key_file.exists():
            _write_private(key_file, secrets.token_hex(16) + "\n")
        config["buses"] = [
            *config.get("buses", []),
            {"id": GATE_LINE, "serial": {"port": lines[GATE_LINE], "baud": 9600}},
        ]
        config["devices"].append(
            {
                "id": GATE,
                "driver": "osdp",
                "name": "北门 门禁读卡器 (模拟)",
                "bus": GATE_LINE,
                "address": 1,
                "key_file": str(key_file),
                "location": {"building": "1", "floor": 1},
                "door": {"output": 0, "contact_input": 0, "held_open_s": 20},
                "commands": ["door.open"],
            }
        )
    if METER_LINE in lines:
        # 2400 Bd as the meters' factory setting; 8N1 because a pty refuses parity (real
        # meters run 8E1: see drivers/dlt645/README.md).
        config["buses"] = [
            *config.get("buses", []),
            {"id": METER_LINE, "serial": {"port": lines[METER_LINE], "baud": 2400}},
        ]
        config["devices"] += _meter_line()
    radio, tags = _radio()
    config["buses"] = [*config.get("buses", []), radio]
    config["devices"] += tags
    if cameras:
        password_file = state / "camera.password"
        _write_private(password_file, (camera_password or "") + "\n")
        config["devices"] += _cameras(cameras, password_file)
    gateway_id = config["gateway"]["id"]
    config["buffer"] = {**config.get("buffer", {}), "path": str(state / "buffer.db")}
    config["control"] = {"socket": str(state / "control.sock")}
    config["uplink"] = {
        "http": {
            "url": f"http://127.0.0.1:{platform_port}",
            "key_id": gateway_id,
            "secret": {"file": str(state / "uplink.key")},
            "command_key_file": str(state / "platform-command.pem.pub"),
            "first_attempt_jitter_s": 0,
            "backoff_cap_s": 10,
        }
    }
    config["web"] = {
        "listen": web_listen,
        "users": [{"name": "demo", "role": "technician", "password_hash": password_hash}],
    }
    path = state / "agent.yaml"
    # It holds the login's password hash: readable by its owner only.
    _write_private(path, yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
    return path, config


async def _demo(state: Path, platform_port: int, web_listen: str, out: TextIO) -> int:
    from agent.app import App  # noqa: PLC0415
    from agent.bus import char_bits  # noqa: PLC0415
    from agent.config.loader import load_config  # noqa: PLC0415
    from agent.driver.simulation import serve_line  # noqa: PLC0415
    from agent.web import hash_password  # noqa: PLC0415
    from drivers import load_peer, load_simulator  # noqa: PLC0415
    from reference_platform import (  # noqa: PLC0415
        build_app,
        load_command_key,
        load_keys,
        start_site,
    )

    gateway_id = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))["gateway"]["id"]
    admin_token = secrets.token_urlsafe(18)
    app = build_app(
        state / "platform.db",
        load_keys(_write_keys(state, gateway_id)),
        command_key=load_command_key(state / "platform-command.pem"),
        admin_token=admin_token,
        durability="normal",
    )
    try:
        runner, port = await start_site(app, "127.0.0.1", platform_port)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        print(
            f"edge-agent demo: port {platform_port} is in use (another demo, or a platform?): "
            "stop it, or pick a free port with --platform-port 0",
            file=sys.stderr,
        )
        return EX_UNAVAILABLE
    # The demo's serial lines: a pty pair each, made here (no socat needed), the simulated
    # devices on one end, the agent's serial bus on the other.
    ptys = {name: os.openpty() for name in (GATE_LINE, METER_LINE)}
    for pair in ptys.values():
        for fd in pair:
            tty.setraw(fd)
    peers: list[asyncio.Task[None]] = []
    camera_password = secrets.token_urlsafe(12)
    simulator = load_simulator("onvif")
    cameras = simulator.from_ids(list(CAMERAS), camera_password)
    try:
        await cameras.start()
        for camera, (_, every) in CAMERAS.items():
            peers.append(
                asyncio.create_task(
                    _motions(cameras.cameras[camera].motion, every), name=f"demo-{camera}"
                )
            )
        # A one-time password: printed once, never stored in clear, gone with the demo.
        password = secrets.token_urlsafe(9)
        config_path, _ = write_demo_config(
            state,
            port,
            web_listen=web_listen,
            password_hash=hash_password(password),
            lines={name: os.ttyname(slave) for name, (_, slave) in ptys.items()},
            cameras=cameras.ports(),
            camera_password=camera_password,
        )
        config = load_config(config_path)
        for bus in config.buses:
            if bus.id not in ptys or bus.serial is None:
                continue
            simulated = []
            for device in config.devices:
                make = load_peer(device.driver) if device.bus == bus.id else None
                if make is not None:
                    simulated.append(make(device))
            char_s = char_bits(bus) / bus.serial.baud
            peers.append(
                asyncio.create_task(
                    serve_line(ptys[bus.id][0], simulated, char_s=char_s), name=f"demo-{bus.id}"
                )
            )
        agent_app = App(config, config_path=config_path, loader=load_config)
        await agent_app.start()
        base = f"http://127.0.0.1:{port}"
        auth = f'-H "Authorization: Bearer {admin_token}"'
        door_command = f"{GATE} door.open seconds=5"
        snapshot_command = f"{next(iter(CAMERAS))} camera.snapshot"
        exe = _edge_agent()
        page = (
            agent_app.web.urls[0]
            if agent_app.web is not None
            else "(not served: is the port taken? --web-listen 127.0.0.1:0 picks a free one)"
        )
        print(
            f"""
edge-agent demo: simulated devices -> durable buffer -> reference platform
  diagnostic page     {page}   (user demo, one-time password {password})
  state folder        {state}
  agent config        {config_path}
  reference platform  {base}   (admin token {admin_token})

  what arrived    curl -s {auth} '{base}/v1/gateways/{gateway_id}/records?limit=5&order=newest'
  gateways        curl -s {auth} {base}/v1/gateways
  inventory       curl -s {auth} {base}/v1/gateways/{gateway_id}/inventory
  a command       curl -s {auth} -X POST {base}/v1/gateways/{gateway_id}/commands \\
                    -d '{{"device":"{GATE}","action":"door.open","args":{{"seconds":5}}}}'
  its result      curl -s {auth} {base}/v1/gateways/{gateway_id}/commands/<"id" from the answer>
  on site         {exe} command --socket {state / "control.sock"} {door_command}
  a snapshot      {exe} command --socket {state / "control.sock"} {snapshot_command}
  the buffer      {exe} buffer stats --path {state / "buffer.db"}

Ctrl-C stops the demo cleanly.
""",
            file=out,
            flush=True,
        )
        return await agent_app.run(started=True)
    finally:
        for task in peers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for pair in ptys.values():
            for fd in pair:
                with contextlib.suppress(OSError):
                    os.close(fd)
        await cameras.stop()
        await runner.cleanup()


async def _motions(motion: Callable[..., None], every_s: float) -> None:
    """Someone walks past the camera every ``every_s``: motion for 2 s."""
    while True:
        await asyncio.sleep(every_s)
        motion(on=True)
        await asyncio.sleep(2.0)
        motion(on=False)


def _edge_agent() -> str:
    """How to call ``edge-agent`` from the user's shell: its full path when it is not on PATH
    (a venv that was not activated)."""
    here = Path(sys.executable).with_name("edge-agent")
    found = shutil.which("edge-agent")
    if found is not None and Path(found).resolve() == here.resolve():
        return "edge-agent"
    return str(here) if here.exists() else "edge-agent"


def run_demo(*, state: Path | None, platform_port: int, web_listen: str, out: TextIO) -> int:
    """Run the demo until Ctrl-C; a temporary state folder is removed afterwards."""
    folder = state or Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(_demo(folder, platform_port, web_listen, out))
    finally:
        if state is None:
            shutil.rmtree(folder, ignore_errors=True)
