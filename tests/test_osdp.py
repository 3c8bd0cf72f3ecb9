"""Our OSDP control panel against an independent reader: libosdp's PD (PyPI ``libosdp``) on the
other end of a socat pty pair (tests/peers/osdp_pd.py), in plain mode and with secure channel."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_proc import write_config
from peers.modbus_peers import PtyPair, async_wait_until
from peers.rs485_hub import Rs485Hub

from agent.config.loader import load_config
from agent.driver import CommandError
from agent.driver.testing import Standalone
from agent.records import Event
from drivers.osdp.driver import OsdpDriver

PEER = Path(__file__).resolve().parent / "peers" / "osdp_pd.py"
KEY = "000102030405060708090a0b0c0d0e0f"
OTHER_KEY = "f0e0d0c0b0a090807060504030201000"

pytestmark = pytest.mark.slow


class Pd:
    """libosdp's PD in a child process, driven by JSON lines (tests/peers/README_osdp.md)."""

    def __init__(self, port: Path, address: int, *extra: str) -> None:
        self.args = [
            sys.executable,
            str(PEER),
            "--port",
            str(port),
            "--address",
            str(address),
            *extra,
        ]
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        stdout = self.proc.stdout
        assert stdout is not None

        def pump() -> None:
            for line in stdout:
                with contextlib.suppress(ValueError):
                    self.lines.put(json.loads(line))

        self._reader = threading.Thread(target=pump, daemon=True)
        self._reader.start()
        self.wait(lambda m: m.get("ready"), what="the PD to start")

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def wait(self, match: Any, *, timeout_s: float = 20, what: str = "a message") -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        for message in self.seen:
            if match(message):
                return message
        while time.monotonic() < deadline:
            try:
                message = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            self.seen.append(message)
            if match(message):
                return message
        raise AssertionError(f"timed out waiting for {what}; seen {self.seen[-5:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None:
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        self.proc = None


@contextlib.contextmanager
def pd(port: Path, address: int, *extra: str) -> Iterator[Pd]:
    peer = Pd(port, address, *extra)
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


def reader(device_id: str, address: int, key_file: Path | None, **extra: Any) -> dict[str, Any]:
    device: dict[str, Any] = {
        "id": device_id,
        "driver": "osdp",
        "bus": "rs485-door",
        "address": address,
        "commands": ["door.open"],
    }
    if key_file is None:
        device["secure_channel"] = "off"
    else:
        device["key_file"] = str(key_file)
    device.update(extra)
    return device


def line_bus(line: PtyPair) -> list[dict[str, Any]]:
    """The config's bus on the agent's end of the pty pair."""
    return [{"id": "rs485-door", "serial": {"port": str(line.agent), "baud": 115200}}]


@contextlib.asynccontextmanager
async def agent_on(
    directory: Path, line: PtyPair, devices: list[dict[str, Any]]
) -> AsyncIterator[Any]:
    """The real agent (runtime, page, control socket) with ``devices`` on the line."""
    from test_web_support import running_agent

    async with running_agent(directory, devices, buses=line_bus(line), ready=lambda rt: True) as rt:
        yield rt


def recent(runtime: Any, type_: str) -> list[Any]:
    """The agent's recent events of ``type_`` (what the page shows)."""
    return [e for e in runtime.state.recent_events if getattr(e, "type", "") == type_]


class Panel:
    def __init__(self, directory: Path, line: PtyPair, devices: list[dict[str, Any]]) -> None:
        config = load_config(write_config(directory, devices, buses=line_bus(line)))
        self.bench = Standalone(config.buses, gateway_id=config.gateway.id)
        self.driver = OsdpDriver(self.bench.context(*config.devices))
        self.task: Any = None

    def events(self, type_: str, device: str | None = None) -> list[Event]:
        return [e for e in self.bench.events(type_) if device is None or e.device == device]


@contextlib.asynccontextmanager
async def panel(
    directory: Path, line: PtyPair, devices: list[dict[str, Any]]
) -> AsyncIterator[Panel]:

    p = Panel(directory, line, devices)
    p.task = asyncio.create_task(p.driver.run())
    try:
        yield p
    finally:
        await p.driver.stop()
        p.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await p.task
        await p.bench.aclose()


@pytest.fixture
def line(tmp_path: Path) -> Iterator[PtyPair]:
    with PtyPair(tmp_path, "osdp") as pair:
        yield pair


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "reader.key"
    path.write_text(KEY + "\n")
    path.chmod(0o600)
    return path


async def test_plain_card_read_and_door_open(tmp_path: Path, line: PtyPair) -> None:
    with pd(line.peer, 101, "--no-sc", "--baud", "115200") as peer:
        async with panel(tmp_path, line, [reader("door-1", 101, None)]) as cp:
            await async_wait_until(lambda: cp.events("reader.online"), what="reader.online")
            [online] = cp.events("reader.online")
            assert online.data["secure_channel"] is False
            peer.send({"card": "7b11d780", "bits": 26, "format": "wiegand"})
            await async_wait_until(lambda: cp.events("access.card"), what="access.card")
            [card] = cp.events("access.card")
            assert card.data["bits"] == 26
            assert card.data["raw"] == "01111011000100011101011110"
            result = await cp.driver.execute("door.open", {"device": "door-1", "seconds": 5})
            assert result["reply"] == "ack"
            out = peer.wait(lambda m: m.get("command") == "output", what="OUT at the PD")
            assert (out["output_no"], out["control_code"], out["timer_count"]) == (0, 5, 50)
            assert cp.driver.device_inventory()["door-1"]["vendor"]


async def test_secure_channel_card_and_door_open(
    tmp_path: Path, line: PtyPair, key_file: Path
) -> None:
    with pd(line.peer, 101, "--scbk", KEY, "--baud", "115200") as peer:
        async with panel(tmp_path, line, [reader("door-1", 101, key_file)]) as cp:
            await async_wait_until(lambda: cp.events("reader.online"), what="reader.online")
            assert cp.events("reader.online")[0].data["secure_channel"] is True
            peer.send({"card": "7b11d780", "bits": 26, "format": "wiegand"})
            await async_wait_until(lambda: cp.events("access.card"), what="access.card")
            result = await cp.driver.execute("door.open", {"device": "door-1", "seconds": 3})
            assert result["secure_channel"] is True
            out = peer.wait(lambda m: m.get("command") == "output", what="OUT at the PD")
            assert out["timer_count"] == 30
            # Feedback at the reader: green for the open time, one beep.
            assert result["feedback"] is True
            led = peer.wait(lambda m: m.get("command") == "led", what="LED at the PD")
            assert (led["temporary"], led["on_color"], led["timer_count"]) == (True, 2, 30)
            peer.wait(lambda m: m.get("command") == "buzzer", what="BUZ at the PD")
            assert not cp.events("security.mac_failure")


async def test_a_wrong_key_is_a_security_event_and_no_plain_text_follows(
    tmp_path: Path, line: PtyPair, key_file: Path
) -> None:
    with pd(line.peer, 101, "--scbk", OTHER_KEY, "--baud", "115200"):
        async with panel(tmp_path, line, [reader("door-1", 101, key_file)]) as cp:
            await async_wait_until(
                lambda: cp.events("security.wrong_key") or cp.events("security.nak_sc_conditions"),
                what="a security event",
            )
            requests = cp.driver.bus.counters["requests"]

            await asyncio.sleep(1.0)
            # Fail closed: no POLL in plain text after the failed handshake (the retry waits).
            assert cp.driver.bus.counters["requests"] == requests
            assert not cp.events("reader.online")
            assert not cp.events("access.card")


async def test_a_reader_that_claims_no_secure_channel_is_an_alarm_not_a_downgrade(
    tmp_path: Path, line: PtyPair, key_file: Path
) -> None:
    with pd(line.peer, 101, "--no-sc", "--baud", "115200"):
        async with panel(tmp_path, line, [reader("door-1", 101, key_file)]) as cp:
            await async_wait_until(lambda: cp.events("security.sc_unsupported"), what="the alarm")
            assert not cp.events("reader.online")


async def test_a_pd_restart_is_offline_then_online_with_the_secure_channel_again(
    tmp_path: Path, line: PtyPair, key_file: Path
) -> None:
    device = reader("door-1", 101, key_file, offline_after_s=1)
    async with panel(tmp_path, line, [device]) as cp:
        with pd(line.peer, 101, "--scbk", KEY, "--baud", "115200"):
            await async_wait_until(lambda: cp.events("reader.online"), what="reader.online")
        await async_wait_until(lambda: cp.events("reader.offline"), what="reader.offline")
        with pd(line.peer, 101, "--scbk", KEY, "--baud", "115200") as peer:
            await async_wait_until(
                lambda: len(cp.events("reader.online")) == 2, what="online again"
            )
            assert cp.events("reader.online")[1].data["secure_channel"] is True
            peer.send({"card": "7b11d780", "bits": 26, "format": "wiegand"})
            await async_wait_until(lambda: cp.events("access.card"), what="a card after restart")


async def test_two_readers_share_one_line(tmp_path: Path, line: PtyPair, key_file: Path) -> None:
    # A multi-drop line: every reader hears every frame, the addressed one answers.
    hub = Rs485Hub(line.peer, devices=2)
    hub.start()
    devices = [reader("door-1", 101, key_file), reader("door-2", 102, None)]
    try:
        with (
            pd(hub.ports[0], 101, "--scbk", KEY, "--baud", "115200") as first,
            pd(hub.ports[1], 102, "--no-sc", "--baud", "115200") as second,
        ):
            async with panel(tmp_path, line, devices) as cp:
                await async_wait_until(
                    lambda: len(cp.events("reader.online")) == 2, what="both readers online"
                )
                first.send({"card": "7b11d780", "bits": 26, "format": "wiegand"})
                second.send({"card": "7b11d780", "bits": 26, "format": "wiegand"})
                await async_wait_until(
                    lambda: {e.device for e in cp.events("access.card")} == {"door-1", "door-2"},
                    what="a card from each",
                )
    finally:
        hub.stop()


class Faults:
    """Rewrites the next ``count`` replies one way, then lets them through."""

    def __init__(self) -> None:
        self.mode = ""
        self.count = 0
        self.previous = b""

    def __call__(self, data: bytes) -> bytes:
        previous, self.previous = self.previous, data
        if not self.count or len(data) < 8:
            return data
        self.count -= 1
        if self.mode == "garbage":
            return b"\x00\x13\x37noise" + data
        if self.mode == "crc":
            return data[:-1] + bytes([data[-1] ^ 0xFF])
        if self.mode == "truncated":
            return data[:5]
        if self.mode == "replay":
            return previous or data
        return data


async def test_garbage_bad_crc_truncated_and_replayed_replies_are_counted_and_survived(
    tmp_path: Path, line: PtyPair
) -> None:
    hub = Rs485Hub(line.peer, devices=1)
    faults = Faults()
    hub.mangle = faults
    hub.start()
    try:
        with pd(hub.ports[0], 101, "--no-sc", "--baud", "115200") as peer:
            async with panel(tmp_path, line, [reader("door-1", 101, None)]) as cp:
                await async_wait_until(lambda: cp.events("reader.online"), what="reader.online")
                counters = cp.driver.readers["door-1"].counters
                for mode, counted in (
                    ("garbage", "garbage"),
                    ("crc", "crc"),
                    ("truncated", "timeouts"),
                    ("replay", "sequence"),
                ):
                    faults.mode, faults.count = mode, 3
                    await async_wait_until(
                        lambda c=counted: counters[c] >= 1, what=f"{mode} to be counted"
                    )
                    await async_wait_until(lambda: faults.count == 0, what=f"{mode} to pass")
                faults.count = 0
                # Recovered: still online, and a card still arrives.
                peer.send({"card": "7b11d780", "bits": 26, "format": "wiegand"})
                await async_wait_until(lambda: cp.events("access.card"), what="a card after faults")
                assert not cp.events("reader.offline")
                bus = cp.driver.bus.counters
                assert bus["osdp_crc"] >= 1
                assert bus["osdp_garbage"] >= 1
    finally:
        hub.stop()


async def test_door_contact_and_tamper_from_the_reader(
    tmp_path: Path, line: PtyPair, key_file: Path
) -> None:
    device = reader("door-1", 101, key_file, door={"contact_input": 0, "rex_input": 1})
    with pd(line.peer, 101, "--scbk", KEY, "--baud", "115200", "--inputs", "2") as peer:
        async with panel(tmp_path, line, [device]) as cp:
            await async_wait_until(lambda: cp.events("reader.online"), what="reader.online")
            peer.send({"input": 0, "state": 0})
            peer.send({"input": 0, "state": 1})  # opened: no grant, no exit button
            await async_wait_until(lambda: cp.events("door.forced_open"), what="forced open")
            peer.send({"input": 0, "state": 0})
            await async_wait_until(lambda: cp.events("door.closed"), what="closed")
            await cp.driver.execute("door.open", {"device": "door-1", "seconds": 2})
            peer.send({"input": 0, "state": 1})  # opened within the grant
            await async_wait_until(lambda: cp.events("door.opened"), what="opened")
            assert len(cp.events("door.forced_open")) == 1
            door_open = [
                r.value
                for r in cp.bench.records
                if getattr(r, "point", None) == "door_open" and r.device == "door-1"
            ]
            assert door_open == [False, True, False, True]
            peer.send({"tamper": 1})
            await async_wait_until(lambda: cp.events("reader.tamper"), what="tamper")
            assert cp.events("reader.tamper")[0].data["active"] is True


def forge_mac(data: bytes) -> bytes:
    """A secure reply whose MAC is changed and whose CRC is made right again: only the MAC
    check can catch it."""
    from drivers.osdp.codec import crc16

    start = data.find(0x53)
    if start < 0 or len(data) < start + 12 or not data[start + 4] & 0x08:
        return data
    frame = bytearray(data[start:])
    frame[-3] ^= 0x01  # the MAC's last byte
    crc = crc16(bytes(frame[:-2]))
    frame[-2:] = bytes((crc & 0xFF, crc >> 8))
    return data[:start] + bytes(frame)


async def test_a_forged_mac_is_a_security_event_and_the_session_ends(
    tmp_path: Path, line: PtyPair, key_file: Path
) -> None:
    hub = Rs485Hub(line.peer, devices=1)
    hub.start()
    try:
        with pd(hub.ports[0], 101, "--scbk", KEY, "--baud", "115200"):
            async with panel(tmp_path, line, [reader("door-1", 101, key_file)]) as cp:
                await async_wait_until(lambda: cp.events("reader.online"), what="reader.online")
                hub.mangle = forge_mac
                await async_wait_until(lambda: cp.events("security.mac_failure"), what="the alarm")
                hub.mangle = None
                state = cp.driver.readers["door-1"]
                assert state.session is None
                assert not state.online
                with pytest.raises(CommandError, match="offline"):
                    await cp.driver.execute("door.open", {"device": "door-1", "seconds": 2})
    finally:
        hub.stop()


async def test_through_the_agent_a_card_is_buffered_and_door_open_is_audited(
    tmp_path: Path, line: PtyPair, key_file: Path
) -> None:
    devices = [reader("door-1", 101, key_file)]
    with pd(line.peer, 101, "--scbk", KEY, "--baud", "115200") as peer:
        async with agent_on(tmp_path / "agent", line, devices) as runtime:

            def events(type_: str) -> list[Any]:
                return recent(runtime, type_)

            await async_wait_until(lambda: events("reader.online"), what="reader.online")
            peer.send({"card": "7b11d780", "bits": 26, "format": "wiegand"})
            await async_wait_until(lambda: events("access.card"), what="access.card")
            # The page saw it on its way; in the buffer it is once its group has committed.
            buffered: list[bytes] = []

            async def card_buffered() -> bool:
                assert runtime.buffer is not None
                batch = await runtime.buffer.take(10_000, 2**22)
                buffered.extend(batch.records if batch is not None else [])
                return any(b'"type":"access.card"' in r for r in buffered)

            deadline = time.monotonic() + 20
            while not await card_buffered():
                assert time.monotonic() < deadline, "no access.card in the buffer"
                await asyncio.sleep(0.05)
            # The key is nowhere in what goes to the platform, nor in the inventory.
            assert all(KEY.encode() not in r for r in buffered)
            assert KEY not in json.dumps(runtime.inventory())
            result = await runtime.execute_command(
                "door-1", "door.open", {"seconds": 4}, source="test", command_id="c-1"
            )
            assert result["reply"] == "ack", result
            out = peer.wait(lambda m: m.get("command") == "output", what="OUT at the PD")
            assert out["timer_count"] == 40
            [audit] = [e for e in events("agent.command") if e.data["id"] == "c-1"]
            assert (audit.data["status"], audit.data["source"]) == ("ok", "test")
            with pytest.raises(CommandError, match="max_open_s"):
                await runtime.execute_command(
                    "door-1", "door.open", {"seconds": 600}, source="test", command_id="c-2"
                )
            [refused] = [e for e in events("agent.command") if e.data["id"] == "c-2"]
            assert refused.data["status"] == "failed"


async def test_installing_a_key_is_explicit_and_then_the_secure_channel_uses_it(
    tmp_path: Path, line: PtyPair, key_file: Path
) -> None:
    # A new reader still has the public install key (libosdp's PD without --scbk).
    with pd(line.peer, 101, "--baud", "115200") as peer:
        async with panel(tmp_path, line, [reader("door-1", 101, key_file)]) as cp:
            # Never automatic: the configured key does not work, and nothing falls back.
            await async_wait_until(lambda: cp.events("security.wrong_key"), what="the alarm")
            assert not cp.events("reader.online")
            assert not [m for m in peer.seen if m.get("command") == "keyset"]
            result = await cp.driver.execute(
                "reader.install_key", {"device": "door-1", "install_mode": True}
            )
            assert result == {"installed": True, "install_mode": True}
            keyset = peer.wait(lambda m: m.get("command") == "keyset", what="KEYSET at the PD")
            assert KEY in json.dumps(keyset).lower()
            await async_wait_until(lambda: cp.events("reader.online"), what="online with the key")
            assert cp.events("reader.online")[0].data["secure_channel"] is True
            assert cp.events("security.key_installed")
            # Re-keying without install mode needs a session: it has one now.
            assert (await cp.driver.execute("reader.install_key", {"device": "door-1"}))[
                "installed"
            ]


async def test_a_reader_that_never_answers_is_down_once(tmp_path: Path, line: PtyPair) -> None:
    device = reader("door-1", 101, None, offline_after_s=0.5)
    async with panel(tmp_path, line, [device]) as cp:
        await async_wait_until(
            lambda: cp.bench.health.get("door-1", ("",))[0] == "down", what="down"
        )
        assert not cp.events("reader.offline"), "it was never online"


async def test_a_vanished_port_is_the_bus_s_failure_not_the_reader_s(
    tmp_path: Path, line: PtyPair, key_file: Path
) -> None:
    device = reader("door-1", 101, key_file, offline_after_s=0.5)
    async with panel(tmp_path, line, [device]) as cp:
        with pd(line.peer, 101, "--scbk", KEY, "--baud", "115200"):
            await async_wait_until(lambda: cp.events("reader.online"), what="reader.online")
            line.kill()  # the USB adapter is pulled
            await async_wait_until(lambda: cp.bench.events("bus.link_down"), what="link down")
            await asyncio.sleep(1.0)
            assert not cp.events("reader.offline"), "the bus is the cause, not the reader"
        line.start()  # plugged back in
        with pd(line.peer, 101, "--scbk", KEY, "--baud", "115200"):
            await async_wait_until(
                lambda: len(cp.events("reader.online")) == 2, timeout_s=20, what="online again"
            )


async def test_keypad_and_a_swapped_reader(tmp_path: Path, line: PtyPair, key_file: Path) -> None:
    device = reader("door-1", 101, key_file, offline_after_s=0.5, card_format="facility_card")
    async with panel(tmp_path, line, [device]) as cp:
        with pd(
            line.peer, 101, "--scbk", KEY, "--baud", "115200", "--serial", "0x01020304"
        ) as peer:
            await async_wait_until(lambda: cp.events("reader.online"), what="reader.online")
            peer.send({"keypad": "1234"})
            await async_wait_until(lambda: cp.events("access.keypad"), what="keys")
            assert cp.events("access.keypad")[0].data["keys"] == "1234"
            peer.send({"card": "7b11d780", "bits": 26, "format": "wiegand"})
            await async_wait_until(lambda: cp.events("access.card"), what="a card")
            assert cp.events("access.card")[0].data["card_number"] == "246-09135"
        await async_wait_until(lambda: cp.events("reader.offline"), what="offline")
        # Another reader at the same address, with the same key but another serial number.
        with pd(line.peer, 101, "--scbk", KEY, "--baud", "115200", "--serial", "0x0A0B0C0D"):
            await async_wait_until(
                lambda: cp.events("security.identity_changed"), what="the swap noticed"
            )
            [swap] = [
                e for e in cp.events("security.identity_changed") if e.data["what"] == "serial"
            ]
            assert (swap.data["was"], swap.data["now"]) == ("01020304", "0A0B0C0D")


async def test_edge_agent_osdp_install_key_goes_through_the_agent_and_is_audited(
    tmp_path: Path, line: PtyPair, key_file: Path
) -> None:
    from agent_proc import ROOT

    devices = [reader("door-1", 101, key_file, commands=["door.open", "reader.install_key"])]
    with pd(line.peer, 101, "--baud", "115200"):  # a new reader: the install key only
        async with agent_on(tmp_path / "agent", line, devices) as runtime:

            def events(type_: str) -> list[Any]:
                return recent(runtime, type_)

            await async_wait_until(lambda: events("security.wrong_key"), what="refused at first")
            socket_path = runtime.control_path(runtime.config)
            cli = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "agent.cli", "osdp", "install-key", "door-1"),
                *("--install-mode", "--socket", str(socket_path)),
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(cli.communicate(), 60)
            assert cli.returncode == 0, (out, err)
            assert json.loads(out)["result"]["installed"] is True
            await async_wait_until(lambda: events("reader.online"), what="online with its key")
            [audit] = [
                e for e in events("agent.command") if e.data["action"] == "reader.install_key"
            ]
            assert (audit.data["status"], audit.data["source"]) == ("ok", "local")


def session_lost(data: bytes) -> bytes:
    """What a reader that rebooted answers inside our session: a plain NAK 6, same sequence."""
    from drivers.osdp.codec import Frame, Nak, OsdpError, Reply, build_frame, parse_frame

    start = data.find(0x53)
    try:
        frame = parse_frame(data[max(start, 0) :])
    except OsdpError:
        return data  # a partial chunk passes unchanged
    nak = Frame(
        frame.address, reply=True, seq=frame.seq, code=Reply.NAK, data=bytes((Nak.SC_CONDITIONS,))
    )
    return build_frame(nak, mark=False)


async def test_a_lost_session_nak_6_is_reported_and_a_new_session_follows(
    tmp_path: Path, line: PtyPair, key_file: Path
) -> None:
    hub = Rs485Hub(line.peer, devices=1)
    hub.start()
    try:
        with pd(hub.ports[0], 101, "--scbk", KEY, "--baud", "115200", "--outputs", "2") as peer:
            async with panel(tmp_path, line, [reader("door-1", 101, key_file)]) as cp:
                await async_wait_until(lambda: cp.events("reader.online"), what="reader.online")
                hub.mangle = session_lost
                await async_wait_until(
                    lambda: cp.events("security.nak_sc_conditions"), what="the NAK 6 event"
                )
                hub.mangle = None
                await async_wait_until(
                    lambda: len(cp.events("reader.online")) == 2, what="a new session at once"
                )
                assert cp.events("reader.online")[1].data["secure_channel"] is True
                # Output status from the reader: the strike's state as a point.
                peer.send({"output_status": [1, 0]})
                await async_wait_until(
                    lambda: [
                        r for r in cp.bench.records if getattr(r, "point", "") == "strike_released"
                    ],
                    what="the strike's state",
                )
    finally:
        hub.stop()
