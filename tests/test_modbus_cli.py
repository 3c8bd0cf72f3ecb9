"""``edge-agent scan modbus`` and ``edge-agent read modbus`` against a modbus-serial line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import structlog
from peers.modbus_peers import NodeLine, PtyPair, free_port, registers_of

from drivers.modbus.cli import add_commands, parse_units

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _restore_logging() -> Any:
    # The tools quieten the agent's logging for their own output; put it back for other tests.
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edge-agent")
    sub = parser.add_subparsers(dest="command", required=True)
    add_commands(sub)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def floats(values: dict[int, float]) -> dict[int, int]:
    registers: dict[int, int] = {}
    for address, value in values.items():
        registers[address], registers[address + 1] = registers_of(value, "float32")
    return registers


def line() -> dict[int, dict[str, dict[int, Any]]]:
    ddsu = floats({0x2000: 230.2, 0x2002: 1.25, 0x200E: 50.01, 0x4000: 1234.5})
    sdm = floats({0x0000: 229.5, 0x0046: 49.98})
    return {1: {"holding": ddsu}, 3: {"holding": ddsu}, 7: {"input": sdm}}


def test_unit_lists() -> None:
    assert parse_units("1-3,7,2") == [1, 2, 3, 7]
    assert parse_units("0x10") == [16]
    for bad in ("3-1", "x", "1-300"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_units(bad)


def test_the_commands_join_an_existing_scan_command() -> None:
    parser = argparse.ArgumentParser(prog="edge-agent")
    sub = parser.add_subparsers(dest="command", required=True)
    scan = sub.add_parser("scan").add_subparsers(dest="scan_protocol", required=True)
    scan.add_parser("dlt645")
    add_commands(sub)
    assert parser.parse_args(["scan", "modbus", "--port", "/dev/null"]).scan_protocol == "modbus"
    assert parser.parse_args(["scan", "dlt645"]).scan_protocol == "dlt645"


def test_scan_finds_the_units_and_suggests_profiles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    with NodeLine(tmp_path, line(), tcp_port=port):
        code = run(
            [
                "scan",
                "modbus",
                "--host",
                "127.0.0.1",
                "--tcp-port",
                str(port),
                "--units",
                "1-8",
                "--timeout",
                "0.1",
                "--json",
            ]
        )
    out = capsys.readouterr()
    assert code == 0
    result = json.loads(out.out)
    found = {u["unit"]: u["profiles"] for u in result["units"]}
    assert found == {
        1: ["chint-ddsu666"],
        3: ["chint-ddsu666"],
        7: ["eastron-sdm120", "eastron-sdm630"],
    }
    # Progress went to stderr, one line per unit found when not on a terminal.
    assert "unit 7 answers" in out.err


def test_scan_on_a_serial_line_and_an_empty_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with PtyPair(tmp_path) as pty, NodeLine(tmp_path, line(), serial_path=pty.peer):
        code = run(
            ["scan", "modbus", "--port", str(pty.agent), "--units", "1-4", "--timeout", "0.1"]
        )
        out = capsys.readouterr().out
        assert code == 0
        assert "unit 1: answers" in out
        assert "looks like profile chint-ddsu666 (frequency 50.01 Hz)" in out
        assert "unit 3: answers" in out
        assert "unit 2" not in out
        code = run(
            ["scan", "modbus", "--port", str(pty.agent), "--units", "10-12", "--timeout", "0.05"]
        )
        assert code == 1
        assert "no unit answered (3 tried)" in capsys.readouterr().out
    code = run(["scan", "modbus", "--port", str(tmp_path / "ttyUSB9"), "--units", "1"])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_read_prints_typed_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    where = ["--host", "127.0.0.1", "--tcp-port", str(port)]
    with NodeLine(tmp_path, line(), tcp_port=port):
        assert run(["read", "modbus", *where, "--unit", "7", "--profile", "eastron-sdm120"]) == 0
        out = capsys.readouterr().out
        assert "voltage" in out
        assert "229.5 V" in out
        assert "exception_02" in out  # registers this peer does not have
        code = run(
            [
                "read",
                "modbus",
                *where,
                "--unit",
                "1",
                "--address",
                "0x2000",
                "--type",
                "float32",
                "--json",
            ]
        )
        assert code == 0
        assert json.loads(capsys.readouterr().out) == {
            "point": "value",
            "value": 230.2,
            "unit": None,
            "quality": "good",
            "reason": None,
        }
        code = run(["read", "modbus", *where, "--unit", "2", "--address", "0", "--timeout", "0.2"])
        assert code == 1
        assert "unit 2: timeout" in capsys.readouterr().err


def test_scan_goes_through_the_agent_that_runs_on_the_port(tmp_path: Path) -> None:
    import subprocess
    import sys

    from agent_proc import ROOT, AgentProcess, write_config

    with PtyPair(tmp_path) as pty, NodeLine(tmp_path, line(), serial_path=pty.peer):
        device = {
            "id": "m1",
            "driver": "modbus",
            "bus": "line",
            "unit": 1,
            "profile": "chint-ddsu666",
            "interval_s": 0.2,
        }
        config = write_config(
            tmp_path, [device], buses=[{"id": "line", "serial": {"port": str(pty.agent)}}]
        )
        agent = AgentProcess(config)
        try:
            agent.wait_event("device.up")
            scan = subprocess.run(
                [
                    *(sys.executable, "-m", "agent.cli", "scan", "modbus"),
                    *("--port", str(pty.agent), "--units", "1-4", "--timeout", "0.1"),
                    *("--config", str(config)),
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            # The agent ran the scan on its own line, between its polls, and kept polling.
            tool = agent.wait_event("tool.run")
            reads_after = len(agent.events("device.up"))
        finally:
            assert agent.stop() == 0
    assert scan.returncode == 0, scan.stderr
    assert "through the running agent" in scan.stderr
    assert "unit 1: answers" in scan.stdout
    assert "unit 3: answers" in scan.stdout
    assert "looks like profile chint-ddsu666" in scan.stdout
    assert (tool["driver"], tool["tool"], tool["bus"]) == ("modbus", "scan", "line")
    assert reads_after == 1  # never went down during the scan
    assert not agent.events("bus.link_down")
