"""hardware-tests/ gating: skipped with a reason where no rig is named, run where one is.

pytest runs in a subprocess from the repository root, so the root pyproject.toml applies
(--strict-markers included) as when a technician types ``pytest hardware-tests``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HARDWARE = ROOT / "hardware-tests"


def run_pytest(
    target: Path, tmp_path: Path, env: dict[str, str] | None = None
) -> tuple[int, str, dict[str, ET.Element]]:
    """Exit code, output and each test case of one pytest run, no rig named unless in env."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_HW_")}
    report = tmp_path / f"report-{len(list(tmp_path.glob('report-*')))}.xml"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(target),
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(ROOT),
            "-p",
            "no:cacheprovider",
            # Unused here, and loading it is most of each run's time.
            "-p",
            "no:hypothesispytest",
            f"--junitxml={report}",
            "-rs",
        ],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    cases = {}
    if report.exists():
        tree = ET.parse(report)  # noqa: S314 - pytest's own report, written a moment ago
        cases = {case.get("name", ""): case for case in tree.iter("testcase")}
    return result.returncode, output, cases


def test_without_any_rig_every_hardware_test_skips_naming_its_variables(tmp_path: Path) -> None:
    code, output, cases = run_pytest(HARDWARE, tmp_path)
    assert code == 0, output
    assert cases, output
    for name, case in cases.items():
        skipped = case.find("skipped")
        assert skipped is not None, f"{name} ran without its rig:\n{output}"
        assert "EDGE_HW_" in skipped.get("message", ""), name
    example = cases["test_serial_port_is_a_configurable_terminal"].find("skipped")
    assert example is not None
    assert "set EDGE_HW_SERIAL_PORT" in example.get("message", "")
    assert "test_rig_example.py" in output  # -rs points at the test, not at the conftest


def test_with_a_pty_as_the_serial_rig_the_example_runs_and_passes(tmp_path: Path) -> None:
    controller, port = os.openpty()
    try:
        env = {"EDGE_HW_SERIAL_PORT": os.ttyname(port)}
        code, output, cases = run_pytest(HARDWARE / "test_rig_example.py", tmp_path, env)
    finally:
        os.close(port)
        os.close(controller)
    assert code == 0, output
    case = cases["test_serial_port_is_a_configurable_terminal"]
    assert list(case) == [] or all(child.tag in {"system-out", "system-err"} for child in case), (
        output
    )


def test_a_port_that_is_not_a_terminal_fails(tmp_path: Path) -> None:
    env = {"EDGE_HW_SERIAL_PORT": os.devnull}
    code, output, cases = run_pytest(HARDWARE / "test_rig_example.py", tmp_path, env)
    assert code == 1, output
    assert cases["test_serial_port_is_a_configurable_terminal"].find("failure") is not None
    assert "is not a terminal device" in output


def suite(tmp_path: Path, body: str) -> Path:
    """A throw-away hardware-tests directory: the real conftest and one test file."""
    directory = tmp_path / "hw"
    directory.mkdir()
    shutil.copy(HARDWARE / "conftest.py", directory / "conftest.py")
    (directory / "test_suite.py").write_text(textwrap.dedent(body))
    return directory


def test_requires_adds_variables_and_the_rig_fixture_sees_them(tmp_path: Path) -> None:
    directory = suite(
        tmp_path,
        """
        import pytest

        @pytest.mark.hardware("serial", requires=("EDGE_HW_TEST_OPT_IN",))
        def test_opted_in(rig):
            assert rig == {"EDGE_HW_SERIAL_PORT": "/dev/x", "EDGE_HW_TEST_OPT_IN": "1"}

        @pytest.mark.hardware("modbus")
        def test_optional_variables_are_passed_when_set(rig):
            assert rig["EDGE_HW_MODBUS_BAUD"] == "2400"
        """,
    )
    env = {"EDGE_HW_SERIAL_PORT": "/dev/x", "EDGE_HW_MODBUS_PORT": "/dev/y"}
    code, output, cases = run_pytest(directory, tmp_path, env)
    assert code == 0, output
    opted = cases["test_opted_in"].find("skipped")
    modbus = cases["test_optional_variables_are_passed_when_set"].find("skipped")
    assert opted is not None
    assert modbus is not None
    # Only what is missing is named.
    assert "set EDGE_HW_TEST_OPT_IN (" in opted.get("message", "")
    assert "set EDGE_HW_MODBUS_UNIT, EDGE_HW_MODBUS_PROFILE (" in modbus.get("message", "")

    env |= {"EDGE_HW_TEST_OPT_IN": "1", "EDGE_HW_MODBUS_UNIT": "1"}
    env |= {"EDGE_HW_MODBUS_PROFILE": "chint-ddsu666", "EDGE_HW_MODBUS_BAUD": "2400"}
    code, output, cases = run_pytest(directory, tmp_path, env)
    assert code == 0, output
    assert all(case.find("skipped") is None for case in cases.values()), output


def test_a_missing_or_malformed_marker_stops_the_run(tmp_path: Path) -> None:
    directory = suite(
        tmp_path,
        """
        import pytest

        def test_forgot_the_marker():
            pass

        @pytest.mark.hardware("modbsu")
        def test_typo():
            pass

        @pytest.mark.hardware("serial", requires="EDGE_HW_X")
        def test_requires_a_string():
            pass
        """,
    )
    code, output, _ = run_pytest(directory, tmp_path)
    assert code == 4, output  # pytest's usage error
    assert "test_forgot_the_marker: no @pytest.mark.hardware(<rig>) marker" in output
    assert "test_typo: unknown rig 'modbsu' (known: serial, modbus," in output
    assert "test_requires_a_string: write requires=('EDGE_HW_X',), a tuple" in output
