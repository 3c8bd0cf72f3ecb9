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
    "agent.backoff",
)
"""What a driver may import of the core: the driver contract (with its testing helpers), the
bus handles it is given, records, the config base models with their error helpers, and the one
backoff formula."""


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


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def top_level_imports(path: Path) -> list[str]:
    """Imports that run when the module is imported: not inside a function, not only for the
    type checker."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[str] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.append(node.module)
                found.extend(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If):
                test = node.test
                if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
                    visit(node.orelse)
                else:
                    visit(node.body)
                    visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(tree.body)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = {
        module_name(p, root): p
        for package in PROJECT
        if (root / package).is_dir()
        for p in (root / package).rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for imported in top_level_imports(path):
            # "from agent.bus import SerialLine" names a module only if agent.bus.SerialLine is one.
            target = imported
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def connect(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_no_cycle_between_modules() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_check_finds_one(tmp_path: Path) -> None:
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "__init__.py").write_text("")
    (tmp_path / "agent" / "a.py").write_text("from agent.b import x\n")
    (tmp_path / "agent" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nimport agent.c\nif TYPE_CHECKING:\n    import agent.a\n"
    )
    (tmp_path / "agent" / "c.py").write_text("def f():\n    import agent.a\nimport agent.a\n")
    assert cycles(import_graph(tmp_path)) == [["agent.a", "agent.b", "agent.c"]]


def test_the_runtime_never_imports_the_page_or_the_platform() -> None:
    core = ["runtime", "devices", "scheduler", "availability", "ingest", "supervisor", "sink"]
    problems = [
        f"agent/{name}.py:{line}: imports {module}"
        for name in core
        if (ROOT / "agent" / f"{name}.py").exists()
        for line, module in imports(ROOT / "agent" / f"{name}.py")
        if _inside(module, ("agent.web", "reference_platform"))
    ]
    assert problems == []


def test_the_reference_platform_imports_only_the_wire_contract() -> None:
    problems = [
        f"{path.relative_to(ROOT)}:{line}: imports {module}"
        for path in sorted((ROOT / "reference_platform").rglob("*.py"))
        for line, module in imports(path)
        if _inside(module, ("agent", "drivers", "buffer")) and module != "agent.uplink.wire"
    ]
    assert problems == []


_RUN_AND_LIST_MODULES = """
import asyncio, json, sys
from agent.config.loader import load_config
from agent.app import App
from agent.logs import configure_logging

config = load_config(sys.argv[1])
configure_logging(config.logging)

async def main() -> None:
    app = App(config, config_path=sys.argv[1])
    await app.start()
    print("MODULES " + json.dumps(sorted(sys.modules)), flush=True)
    app.runtime.request_stop()
    await app.run(install_signals=False, started=True)

asyncio.run(main())
"""


def test_what_a_configuration_does_not_use_is_not_imported(tmp_path: Path) -> None:
    """A simulated meter, no page, no uplink: no Modbus, no web, no platform, no HTTP client."""
    import json
    import subprocess
    import sys

    config = tmp_path / "agent.yaml"
    config.write_text(
        "gateway: {id: gw-1, community: {code: '350102001001'}}\n"
        f"buffer: {{path: {tmp_path / 'buffer.db'}}}\n"
        f"control: {{socket: {tmp_path / 'control.sock'}}}\n"
        "logging: {level: warning}\n"
        "web: {enabled: false}\n"
        "devices:\n"
        "  - {id: m1, driver: simulated, points: [{name: a, kind: constant, value: 1}]}\n",
        encoding="utf-8",
    )
    run = subprocess.run(
        [sys.executable, "-c", _RUN_AND_LIST_MODULES, str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    (line,) = [x for x in run.stdout.splitlines() if x.startswith("MODULES ")]
    loaded = json.loads(line.removeprefix("MODULES "))
    assert "drivers.simulated.driver" in loaded, "the check must see a running agent"
    unused = [
        m
        for m in loaded
        if _inside(m, ("drivers.modbus", "pymodbus", "agent.web", "reference_platform"))
        or _inside(m, ("agent.uplink.http", "aiohttp.web"))
    ]
    assert unused == []


def test_the_agent_command_loads_no_driver_tools() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from agent.cli import main\n"
        "try:\n    main(['check-config', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('drivers.')))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert run.stdout.strip().splitlines()[-1] == "[]"
