"""Import rules that keep the layers apart (DESIGN.md sections 2 and 6), read from the source."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("agent", "drivers", "buffer", "reference_platform")

DRIVER_CONTRACT = (
    "agent.driver",
    "agent.bus",
    "agent.records",
    "agent.config.models",
    "agent.config.errors",
)
"""What a driver may import of the core: the driver contract (with its testing helpers), the
bus handles it is given, records, and the config base models with their error helpers."""


def imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (at any depth: lazy imports count), absolute."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return sorted(found)


def _inside(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def driver_violations(root: Path = ROOT) -> list[str]:
    problems: list[str] = []
    for path in sorted((root / "drivers").rglob("*.py")):
        relative = path.relative_to(root)
        parts = relative.parts
        own = f"drivers.{parts[1].removesuffix('.py')}" if len(parts) > 2 else "drivers"
        for line, module in imports(path):
            if not _inside(module, PROJECT):
                continue  # the standard library and the driver's own protocol libraries
            if own == "drivers" and module == "drivers":
                continue
            if _inside(module, (own, *DRIVER_CONTRACT)):
                continue
            if relative.as_posix() == "drivers/__init__.py" and module == "agent.config.models":
                continue
            problems.append(f"{relative}:{line}: imports {module}")
    return problems


def test_drivers_import_only_the_contract_and_their_own_modules() -> None:
    assert driver_violations() == []


def test_the_rule_catches_a_driver_reaching_into_the_core(tmp_path: Path) -> None:
    bad = tmp_path / "drivers" / "dlt645"
    bad.mkdir(parents=True)
    (bad / "__init__.py").write_text("")
    (bad / "driver.py").write_text(
        "from agent.driver import DriverContext\n"
        "def f():\n    from agent.runtime import Runtime\n"
        "from drivers.modbus.codec import crc16\n"
        "import serial\n"
    )
    assert driver_violations(tmp_path) == [
        "drivers/dlt645/driver.py:3: imports agent.runtime",
        "drivers/dlt645/driver.py:4: imports drivers.modbus.codec",
    ]


def test_the_core_names_no_driver() -> None:
    # The runtime, the CLI and the page find drivers through the registry, never by name.
    problems = [
        f"{path.relative_to(ROOT)}:{line}: imports {module}"
        for path in sorted((ROOT / "agent").rglob("*.py"))
        for line, module in imports(path)
        if module.startswith("drivers.")
    ]
    assert problems == []


def test_the_buffer_stands_alone() -> None:
    # Of the agent, the buffer knows the records only: no config, no pydantic.
    problems = [
        f"{path.relative_to(ROOT)}:{line}: imports {module}"
        for path in sorted((ROOT / "buffer").rglob("*.py"))
        for line, module in imports(path)
        if _inside(module, ("agent", "drivers", "reference_platform")) and module != "agent.records"
    ]
    assert problems == []


def test_importing_the_buffer_loads_no_pydantic() -> None:
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import buffer"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = {
        line.rsplit("|", 1)[-1].strip()
        for line in run.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "buffer" in loaded
    assert "agent.records" in loaded
    heavy = sorted(
        m for m in loaded if m.split(".")[0] in ("pydantic", "pydantic_core", "yaml", "drivers")
    )
    assert heavy == []
    assert not [m for m in loaded if m.startswith("agent.config")]
