"""agent.systemd against a real notification socket, and the unit file against systemd's tools.

The receiving end is a real AF_UNIX datagram socket, as systemd's own; nothing is mocked.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import math
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.systemd import Notifier, watchdog_interval, watchdog_loop

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "edge-agent.service"
VERIFY = ROOT / "systemd" / "verify.sh"

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (Debian: apt-get install systemd; CI installs it)",
)


class Receiver:
    """The service manager's end: a bound datagram socket that also learns each sender's pid."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0)

    @property
    def notify_socket(self) -> str:
        """The value systemd would put in $NOTIFY_SOCKET."""
        return "@" + self.address[1:] if self.address.startswith("\0") else self.address

    def drain(self) -> list[str]:
        """Every message queued right now, without waiting."""
        return [text for _pid, text in self.drain_with_pid()]

    def drain_with_pid(self) -> list[tuple[int, str]]:
        messages: list[tuple[int, str]] = []
        creds_size = socket.CMSG_SPACE(struct.calcsize("3i"))
        while True:
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(4096, creds_size)
            except BlockingIOError:
                return messages
            pid = -1
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = array.array("i", payload[:12])[0]
            messages.append((pid, data.decode()))

    async def next(self) -> str:
        data = await asyncio.get_running_loop().sock_recv(self.sock, 4096)
        return data.decode()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    path = tmp_path / "notify"
    short_dir = None
    if len(os.fsencode(path)) > 100:  # sun_path holds 108 bytes; long test names overflow it
        short_dir = Path(tempfile.mkdtemp(prefix="sdnotify-"))
        path = short_dir / "notify"
    rx = Receiver(str(path))
    yield rx
    rx.close()
    if short_dir is not None:
        shutil.rmtree(short_dir, ignore_errors=True)


def run_python(code: str, env: dict[str, str]) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"NOTIFY_SOCKET", "WATCHDOG_USEC"}}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**clean, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


# --- the protocol ----------------------------------------------------------------------------


async def test_ready_watchdog_stopping_arrive_in_order(receiver: Receiver) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": receiver.notify_socket})
    assert notifier.enabled
    assert notifier.ready("3 devices")
    task = asyncio.create_task(watchdog_loop(notifier, 0.01))
    async with asyncio.timeout(30):
        first = await receiver.next()
        pings = [await receiver.next() for _ in range(3)]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert notifier.stopping()
    rest = receiver.drain()

    assert first == "READY=1\nSTATUS=3 devices"
    assert pings == ["WATCHDOG=1"] * 3
    assert rest[-1] == "STOPPING=1"
    assert set(rest[:-1]) <= {"WATCHDOG=1"}


def test_a_real_agent_process_notifies_from_its_main_pid(receiver: Receiver) -> None:
    # As systemd runs it: the variables in the environment, the module imported normally.
    # The child stops after three pings it knows were sent, so no timing is involved.
    code = """
        import asyncio
        from agent.systemd import Notifier, watchdog_interval, watchdog_loop

        class Counting(Notifier):
            def __init__(self):
                super().__init__()
                self.sent = 0
                self.enough = asyncio.Event()

            def watchdog(self):
                ok = super().watchdog()
                self.sent += ok
                if self.sent >= 3:
                    self.enough.set()
                return ok

        async def main():
            notifier = Counting()
            interval = watchdog_interval()
            assert interval == 0.05, interval
            assert notifier.ready("up")
            task = asyncio.create_task(watchdog_loop(notifier, interval))
            await notifier.enough.wait()
            task.cancel()
            assert notifier.stopping()

        asyncio.run(main())
    """
    proc = run_python(code, {"NOTIFY_SOCKET": receiver.notify_socket, "WATCHDOG_USEC": "100000"})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    messages = receiver.drain_with_pid()

    assert {pid for pid, _ in messages} == {proc.pid}  # what NotifyAccess=main accepts
    texts = [text for _, text in messages]
    assert texts[0] == "READY=1\nSTATUS=up"
    assert texts[-1] == "STOPPING=1"
    assert texts[1:-1] == ["WATCHDOG=1"] * 3


def test_edge_agent_run_sends_ready_watchdog_stopping(receiver: Receiver, tmp_path: Path) -> None:
    # The real thing: `edge-agent run` as systemd starts it, stopped as systemd stops it.
    sys.path.insert(0, str(ROOT / "tests"))
    from agent_proc import AgentProcess, sim_device, wait_for, write_config

    config = write_config(tmp_path, [sim_device("m", interval_s=0.2)])
    agent = AgentProcess(
        config, env={"NOTIFY_SOCKET": receiver.notify_socket, "WATCHDOG_USEC": "200000"}
    )
    seen: list[tuple[int, str]] = []
    try:
        wait_for(
            lambda: (
                seen.extend(receiver.drain_with_pid())
                or sum(text == "WATCHDOG=1" for _, text in seen) >= 3
            ),
            what="READY and three watchdog pings from edge-agent run",
        )
    finally:
        assert agent.stop() == 0
    seen.extend(receiver.drain_with_pid())
    assert {pid for pid, _ in seen} == {agent.proc.pid}
    texts = [text for _, text in seen]
    assert texts[0].startswith("READY=1")
    assert texts[-1] == "STOPPING=1"
    assert set(texts[1:-1]) == {"WATCHDOG=1"}


async def test_a_large_buffer_extends_the_start_timeout_while_it_is_checked(
    receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from agent_proc import sim_device, write_config

    from agent import runtime as runtime_module
    from agent.clock import Clock
    from agent.config.loader import load_config

    config = load_config(write_config(tmp_path, [sim_device("m")]))
    (tmp_path / "buffer.db").write_bytes(b"\0" * 4096)  # stands in for a large file
    monkeypatch.setattr(runtime_module, "BUFFER_CHECK_ANNOUNCE_BYTES", 4096)
    notifier = Notifier({"NOTIFY_SOCKET": receiver.notify_socket})
    runtime = runtime_module.Runtime(config, notifier=notifier, clock=Clock("always"))
    runtime._announce_buffer_check()
    status, extend = receiver.drain()
    assert status == "STATUS=checking the buffer (0 MB)"
    usec = int(extend.removeprefix("EXTEND_TIMEOUT_USEC="))
    assert 60_000_000 <= usec < 61_000_000
    # A small file (the usual case) costs no message at all.
    monkeypatch.setattr(runtime_module, "BUFFER_CHECK_ANNOUNCE_BYTES", 4097)
    runtime._announce_buffer_check()
    assert receiver.drain() == []


async def test_abstract_namespace_socket() -> None:
    rx = Receiver(f"\0edge-agent-test-{uuid.uuid4().hex}")
    try:
        assert rx.notify_socket.startswith("@")
        notifier = Notifier({"NOTIFY_SOCKET": rx.notify_socket})
        assert notifier.ready()
        assert notifier.watchdog()
        assert rx.drain() == ["READY=1", "WATCHDOG=1"]
    finally:
        rx.close()


def test_status_and_reloading(receiver: Receiver) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": receiver.notify_socket})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.status("uplink down since 10:02")
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    status, reloading = receiver.drain()
    assert status == "STATUS=uplink down since 10:02"
    first, second = reloading.split("\n")
    assert first == "RELOADING=1"
    key, _, usec = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(usec) <= after


def test_a_status_text_cannot_smuggle_in_another_assignment(receiver: Receiver) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": receiver.notify_socket})
    notifier.status("bad\nREADY=1")
    notifier.ready("two\r\nlines")
    assert receiver.drain() == ["STATUS=bad READY=1", "READY=1\nSTATUS=two lines"]


def test_without_notify_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)

    def no_socket(*_args: object) -> None:
        raise AssertionError("no socket may be created without $NOTIFY_SOCKET")

    monkeypatch.setattr(socket, "socket", no_socket)
    for notifier in (Notifier(), Notifier({}), Notifier({"NOTIFY_SOCKET": ""})):
        assert not notifier.enabled
        assert not notifier.ready("x")
        assert not notifier.watchdog()
        assert not notifier.status("x")
        assert not notifier.reloading()
        assert not notifier.stopping()


def test_notify_socket_is_read_from_the_environment_and_left_there(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.notify_socket)
    notifier = Notifier()
    monkeypatch.delenv("NOTIFY_SOCKET")  # read once, at construction
    assert notifier.ready()
    assert receiver.drain() == ["READY=1"]
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.notify_socket)
    Notifier().ready()
    assert os.environ["NOTIFY_SOCKET"] == receiver.notify_socket


def test_a_relative_notify_socket_is_refused_with_a_warning() -> None:
    with capture_logs() as logs:
        notifier = Notifier({"NOTIFY_SOCKET": "run/notify"})
    assert not notifier.enabled
    assert [entry["event"] for entry in logs] == ["systemd.notify_socket_invalid"]


def test_send_failures_are_logged_once_per_outage_and_never_raised(tmp_path: Path) -> None:
    path = tmp_path / "later"
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    with capture_logs() as logs:
        assert not notifier.ready()
        assert not notifier.watchdog()
        assert not notifier.watchdog()
        rx = Receiver(str(path))
        try:
            assert notifier.watchdog()
            assert rx.drain() == ["WATCHDOG=1"]
        finally:
            rx.close()
        path.unlink()
        assert not notifier.watchdog()
        assert not notifier.stopping()
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("systemd.notify_failed", "warning"),
        ("systemd.notify_recovered", "info"),
        ("systemd.notify_failed", "warning"),
    ]
    assert logs[0]["message"] == "READY=1"
    assert logs[0]["notify_socket"] == str(path)


@pytest.mark.timeout(30)
def test_a_full_socket_queue_drops_instead_of_blocking(receiver: Receiver) -> None:
    # Nobody reads: the kernel queue fills (net.unix.max_dgram_qlen) and a blocking send would
    # stall the event loop; the timeout above fails the test if it does.
    notifier = Notifier({"NOTIFY_SOCKET": receiver.notify_socket})
    with capture_logs() as logs:
        results = [notifier.watchdog() for _ in range(5000)]
    assert results[0]
    assert not results[-1]
    assert [e["event"] for e in logs] == ["systemd.notify_failed"]


# --- the watchdog ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "<self>"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "<parent>"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "30s"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    pids = {"<self>": str(os.getpid()), "<parent>": str(os.getppid())}
    env = {k: pids.get(v, v) for k, v in env.items()}
    assert watchdog_interval(env) == expected


def test_watchdog_interval_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 0.05
    # Inherited from a watched parent: not ours to feed.
    monkeypatch.setenv("WATCHDOG_PID", str(os.getppid()))
    assert watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval() is None


@pytest.mark.parametrize("interval", [0.0, -1.0, math.nan])
async def test_watchdog_loop_refuses_a_non_positive_interval(interval: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        await watchdog_loop(Notifier({}), interval)


async def test_a_blocked_event_loop_sends_no_pings(receiver: Receiver) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": receiver.notify_socket})
    task = asyncio.create_task(watchdog_loop(notifier, 0.05))
    async with asyncio.timeout(30):
        for _ in range(2):
            assert await receiver.next() == "WATCHDOG=1"
    receiver.drain()
    # A blocking call on the loop, 12 intervals long. A ping sent by anything but the loop (a
    # thread, a timer signal) would be queued by the time it returns.
    time.sleep(0.6)
    during = receiver.drain()
    async with asyncio.timeout(30):
        after = await receiver.next()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert during == []
    assert after == "WATCHDOG=1"  # and it resumes once the loop turns again


# --- the unit file ---------------------------------------------------------------------------


def unit_settings(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order; repeated keys are kept."""
    section = ""
    settings: list[tuple[str, str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.append((section, key, value))
    return settings


def test_unit_declares_what_the_agent_relies_on() -> None:
    settings = unit_settings(UNIT.read_text())
    service: dict[str, list[str]] = {}
    for section, key, value in settings:
        if section == "Service":
            service.setdefault(key, []).append(value)

    def one(key: str) -> str:
        (value,) = service[key]
        return value

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"  # agent/systemd.py sends from the main process
    assert one("Restart") == "on-failure"
    assert one("RestartPreventExitStatus") == "78"  # agent.cli.EX_CONFIG
    assert int(one("WatchdogSec")) >= 10
    assert one("StateDirectory") == "edge-agent"
    assert one("ConfigurationDirectory") == "edge-agent"
    assert one("User") == "edge-agent"
    assert "dialout" in one("SupplementaryGroups").split()
    assert one("ExecStart").split()[1:] == ["run", "/etc/edge-agent/agent.yaml"]
    assert one("CapabilityBoundingSet") == ""
    assert one("NoNewPrivileges") == "yes"
    # Each of these would cut the agent off its serial ports (see the comments in the unit).
    assert service.get("PrivateDevices", ["no"]) == ["no"]
    assert service.get("ProtectClock", ["no"]) == ["no"]
    if "DeviceAllow" in service:
        assert "char-ttyUSB rw" in service["DeviceAllow"]
        assert "char-ttyACM rw" in service["DeviceAllow"]


def test_agent_cli_ex_config_matches_the_unit() -> None:
    from agent.cli import EX_CONFIG

    assert f"RestartPreventExitStatus={EX_CONFIG}" in UNIT.read_text().splitlines()


@needs_systemd_analyze
def test_unit_passes_systemd_analyze_verify_without_a_word() -> None:
    result = subprocess.run(
        ["bash", str(VERIFY)], capture_output=True, text=True, timeout=120, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@needs_systemd_analyze
def test_verify_script_fails_on_a_warning_that_systemd_analyze_exits_0_on(tmp_path: Path) -> None:
    broken = tmp_path / "edge-agent.service"
    broken.write_text(UNIT.read_text().replace("\nWatchdogSec=", "\nWatchdogSecs="))
    direct = subprocess.run(
        ["systemd-analyze", "verify", str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    result = subprocess.run(
        ["bash", str(VERIFY), str(broken)], capture_output=True, text=True, timeout=120, check=False
    )
    assert "WatchdogSecs" in direct.stdout + direct.stderr  # the tool itself only warns
    assert result.returncode == 1
    line = next(n for n, text in enumerate(broken.read_text().splitlines(), 1) if "Secs=" in text)
    # The finding points at the file that was given, with its line number.
    assert f"{broken}:{line}: Unknown key 'WatchdogSecs'" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-sysusers --root writes owner root files")
@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd not installed")
def test_sysusers_and_tmpfiles_create_the_user_and_config_directory(tmp_path: Path) -> None:
    for kind, name in (("sysusers.d", "sysusers"), ("tmpfiles.d", "tmpfiles")):
        target = tmp_path / "usr/lib" / kind / "edge-agent.conf"
        target.parent.mkdir(parents=True)
        shutil.copy(ROOT / "systemd" / f"edge-agent.{name}.conf", target)
    (tmp_path / "etc").mkdir()
    for command in (["systemd-sysusers"], ["systemd-tmpfiles", "--create"]):
        result = subprocess.run(
            [*command, f"--root={tmp_path}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr

    def table(name: str) -> dict[str, list[str]]:
        rows = (line.split(":") for line in (tmp_path / "etc" / name).read_text().splitlines())
        return {row[0]: row for row in rows}

    passwd, groups = table("passwd"), table("group")
    user = passwd["edge-agent"]
    assert user[5] == "/var/lib/edge-agent"
    assert user[6].endswith("nologin")
    assert "edge-agent" in groups["dialout"][3].split(",")
    assert "edge-agent" in groups["bluetooth"][3].split(",")
    config_dir = (tmp_path / "etc/edge-agent").stat()
    assert oct(config_dir.st_mode & 0o7777) == "0o750"
    assert (config_dir.st_uid, config_dir.st_gid) == (0, int(groups["edge-agent"][2]))


def test_the_agent_imports_without_writable_executable_memory() -> None:
    # The unit sets MemoryDenyWriteExecute=yes. Linux 6.3+ offers the same rule per process
    # (prctl PR_SET_MDWE); load the agent's stack under it, ctypes' adjtimex probe included.
    code = """
        import ctypes, sys
        if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE
            sys.exit(3)
        import mmap
        try:  # the rule is in force: writable executable memory is refused
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            sys.exit(4)
        except PermissionError:
            pass
        import agent.cli, agent.clock, agent.config.loader, agent.logs, agent.systemd
        import aiohttp, orjson, pydantic, sqlite3, structlog, yaml
        agent.clock.kernel_clock_synced()
        sqlite3.connect(":memory:").execute("select 1")
    """
    proc = run_python(code, {})
    out, _ = proc.communicate(timeout=60)
    if proc.returncode == 3:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert proc.returncode == 0, out


async def test_a_hung_buffer_write_stops_the_pings(receiver: Receiver, tmp_path: Path) -> None:
    """The loop keeps turning while an SD card write hangs in the buffer's thread: the pings
    wait for a round trip through that thread, so systemd restarts the agent."""
    import threading

    from buffer import AsyncBuffer

    buffer = await AsyncBuffer.open(tmp_path / "b.db", durability="normal")
    release = threading.Event()
    notifier = Notifier({"NOTIFY_SOCKET": receiver.notify_socket})
    task = asyncio.create_task(watchdog_loop(notifier, 0.05, buffer.ping))
    try:
        async with asyncio.timeout(30):
            assert await receiver.next() == "WATCHDOG=1"
        # A write that hangs (the card stopped answering), on the buffer's own thread.
        hung = asyncio.ensure_future(buffer._call(lambda _b: release.wait(30)))
        await asyncio.sleep(0.05)
        receiver.drain()
        await asyncio.sleep(0.6)  # the event loop is free all along
        during = receiver.drain()
        release.set()
        await hung
        async with asyncio.timeout(30):
            after = await receiver.next()
    finally:
        release.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await buffer.close()
    assert during == []
    assert after == "WATCHDOG=1"
