"""The README's first command: `edge-agent demo` shows the whole product and stops cleanly."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_proc import ROOT, wait_for
from test_web_support import WebClient

pytestmark = pytest.mark.slow


@dataclasses.dataclass
class Demo:
    banner: str
    lines: list[str]
    code: int | None = None


@contextlib.contextmanager
def running_demo(tmp_path: Path) -> Iterator[Demo]:
    """``edge-agent demo`` on free ports until its banner is out; stopped with Ctrl-C."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "demo",
            "--platform-port",
            "0",
            "--web-listen",
            "127.0.0.1:0",
            "--state",
            str(tmp_path),
            "--log-format",
            "json",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    demo = Demo("", lines)
    try:
        demo.banner = wait_for(
            lambda: "Ctrl-C stops the demo" in "".join(lines) and "".join(lines),
            timeout_s=60,
            what="the demo's banner",
        )
        yield demo
    finally:
        proc.send_signal(signal.SIGINT)
        demo.code = proc.wait(60)
        reader.join(10)
        proc.stdout.close()


async def test_demo_delivers_to_the_platform_serves_the_page_and_stops(tmp_path: Path) -> None:
    with running_demo(tmp_path) as demo:
        banner, lines = demo.banner, demo.lines
        page, password = re.search(
            r"diagnostic page\s+(\S+)\s+\(user demo, one-time password (\S+)\)", banner
        ).groups()  # type: ignore[union-attr]
        platform, token = re.search(
            r"reference platform\s+(\S+)\s+\(admin token (\S+)\)", banner
        ).groups()  # type: ignore[union-attr]

        def stored() -> list[dict[str, object]]:
            request = urllib.request.Request(  # noqa: S310 - loopback
                f"{platform}/v1/gateways/gw-demo/records?limit=1000",
                headers={"Authorization": f"Bearer {token}"},
            )
            with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
                return [r["record"] for r in json.loads(answer.read())["records"]]

        records = wait_for(
            lambda: (
                (r := stored())
                and {x["device"] for x in r if x["kind"] == "reading"}
                >= {"meter-b3-101", "temp-plant-room", "em-b5-101", "wm-b5-101", "hm-b5-1"}
                and r
            ),
            timeout_s=90,
            what="simulated readings at the reference platform",
        )
        assert all(r["kind"] in ("reading", "event", "status") for r in records)
        # The OSDP gate reader (a simulated reader on the demo's own pty pair, secure channel):
        # its card swipes arrive, and the banner's on-site door command opens its door.
        gate = wait_for(
            lambda: (
                {x.get("type") for x in stored() if x["device"] == "gate-north"}
                >= {"reader.online", "access.card"}
            ),
            timeout_s=60,
            what="the gate's swipes at the platform",
        )
        assert gate
        on_site = re.search(r"on site\s+(.+)$", banner, re.MULTILINE)
        assert on_site is not None
        command = on_site.group(1).split()
        assert command[-3:] == ["gate-north", "door.open", "seconds=5"]
        run = subprocess.run(
            [sys.executable, "-m", "agent.cli", *command[1:]],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert json.loads(run.stdout)["result"]["secure_channel"] is True
        wait_for(
            lambda: any(
                x.get("type") == "door.opened" and x["device"] == "gate-north" for x in stored()
            ),
            timeout_s=60,
            what="the gate's door to open",
        )

        # The simulated Bluetooth adapter's tags: every one in range, the lobby button's low
        # battery, its first SOS press (20 s in) as one alarm.
        def tags_arrived() -> list[dict[str, object]]:
            r = stored()
            heard = {
                x["device"]
                for x in r
                if x.get("type") in ("tag.present", "tag.sos", "tag.battery_low")
            }
            wanted = {"wrist-b5-101", "sos-b5-lobby", "wheelchair-07", "pump-room-temp"}
            done = heard >= wanted and any(x.get("type") == "tag.sos" for x in r)
            return r if done else []

        tags = wait_for(tags_arrived, timeout_s=90, what="the demo's tags at the platform")
        sos = [x for x in tags if x.get("type") == "tag.sos"]
        assert [(x["device"], x["severity"]) for x in sos] == [("sos-b5-lobby", "alarm")]
        assert any(x.get("type") == "tag.battery_low" for x in tags)

        # The two simulated ONVIF cameras: both online, a motion start from the first one
        # (40 s in), and the banner's snapshot command returns a JPEG.
        def cameras_seen() -> list[dict[str, object]]:
            r = stored()
            online = {
                x["device"] for x in r if x["kind"] == "status" and x.get("state") == "online"
            }
            motion = any(
                x.get("type") == "camera.motion" and x["data"]["state"] == "start" for x in r
            )
            return r if motion and online >= {"cam-gate-north", "cam-b5-garage"} else []

        wait_for(cameras_seen, timeout_s=120, what="the demo's cameras at the platform")
        shot_line = re.search(r"a snapshot\s+(.+)$", banner, re.MULTILINE)
        assert shot_line is not None
        shot = subprocess.run(
            [sys.executable, "-m", "agent.cli", *shot_line.group(1).split()[1:]],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert shot.returncode == 0, shot.stdout + shot.stderr
        result = json.loads(shot.stdout)["result"]
        assert result["content_type"] == "image/jpeg"
        assert base64.b64decode(result["image_base64"])[:2] == b"\xff\xd8"

        async with WebClient(page.rstrip("/")) as client:
            assert (await client.try_login("demo", "wrong password")).status != 303
            await client.login("demo", password)
            status = await client.api("/api/status")
            assert status["gateway"]["id"] == "gw-demo"
            assert status["tags"]["total"] == 4
    assert demo.code == 0, "".join(lines[-20:])
    assert any('"agent.stopped"' in line for line in lines)


def test_a_busy_platform_port_says_which_flag_picks_another(tmp_path: Path) -> None:
    """It was a 33-line traceback."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "agent.cli",
                "demo",
                "--platform-port",
                str(port),
                "--web-listen",
                "127.0.0.1:0",
                "--state",
                str(tmp_path),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert run.returncode == 69, run.stderr
    assert f"port {port} is in use" in run.stderr
    assert "--platform-port 0" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout


def test_the_banner_shows_how_to_see_a_command_s_result_and_the_newest_records(
    tmp_path: Path,
) -> None:
    with running_demo(tmp_path) as demo:
        banner = demo.banner
    assert demo.code == 0
    assert "order=newest" in banner
    assert re.search(r"its result\s+curl .*/commands/", banner)
    # edge-agent is called so that it works from the user's shell (this venv is not active).
    exe = re.search(r"on site\s+(\S+) command", banner)
    assert exe is not None
    assert exe.group(1) == "edge-agent" or Path(exe.group(1)).is_file()


def test_the_demo_s_files_with_secrets_or_hashes_are_private(tmp_path: Path) -> None:
    from agent.demo import _write_keys, write_demo_config

    _write_keys(tmp_path, "gw-demo")
    config, _ = write_demo_config(
        tmp_path,
        8700,
        web_listen="127.0.0.1:0",
        password_hash="x",
        cameras={"cam-gate-north": 8080},
        camera_password="secret",
    )
    camera = tmp_path / "camera.password"
    for path in (config, tmp_path / "uplink.key", tmp_path / "platform-keys.yaml", camera):
        assert path.stat().st_mode & 0o777 == 0o600, path
