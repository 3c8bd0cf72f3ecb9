"""2,000 mutated configurations: each loads or gives file:line:col errors, never a traceback.

Seeds are the shipped samples and the valid fixtures. Mutations are what installers' editors and
copy-paste do (a character lost, a tab, a stray control character, a line duplicated or
re-indented) and what a hostile file does (aliases, explicit tags, deep nesting).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import psutil
import pytest

from agent.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
SEEDS = [
    ROOT / "config" / "sample.yaml",
    ROOT / "config" / "modbus-sample.yaml",
    ROOT / "config" / "demo.yaml",
    ROOT / "tests" / "configs" / "valid" / "site.yaml",
]
CASES = 2000
ISSUE = re.compile(r"^.+:\d+:\d+: .+$", re.DOTALL)
CHARACTERS = [
    ":",
    "-",
    "[",
    "]",
    "{",
    "}",
    ",",
    "&a ",
    "*a",
    "!",
    "!!",
    "#",
    '"',
    "'",
    "|",
    ">",
    "?",
    "\t",
    "\n",
    " ",
    "  ",
    "\x00",
    "\x01",
    "\x1b",
    "\x7f",
    "\ufeff",
    "é",
    "号",
    "0",
    "9",
    "e",
    "null",
    "~",
    "<<: *a",
    "%",
    "@",
    "`",
]
TAGS = [
    "!!int ",
    "!!float ",
    "!!bool ",
    "!!timestamp ",
    "!!binary ",
    "!!str ",
    "!!set ",
    "!!omap ",
    "!!python/object:os.system ",
    "!foo ",
    "!!null ",
    "!!map ",
    "!!seq ",
]


def mutate(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(8)
        if choice == 0 and text:  # a character lost
            i = rng.randrange(len(text))
            text = text[:i] + text[i + 1 :]
        elif choice == 1:  # a character (or token) inserted
            i = rng.randrange(len(text) + 1)
            text = text[:i] + rng.choice(CHARACTERS) + text[i:]
        elif choice == 2 and lines:  # a line duplicated
            i = rng.randrange(len(lines))
            lines.insert(i, lines[i])
            text = "\n".join(lines)
        elif choice == 3 and lines:  # a line re-indented
            i = rng.randrange(len(lines))
            lines[i] = " " * rng.choice([0, 1, 3, 5, 8]) + lines[i].lstrip()
            text = "\n".join(lines)
        elif choice == 4 and lines:  # a line lost
            del lines[rng.randrange(len(lines))]
            text = "\n".join(lines)
        elif choice == 5:  # an explicit tag before a value
            spots = [m.end() for m in re.finditer(r": ", text)]
            if spots:
                i = rng.choice(spots)
                text = text[:i] + rng.choice(TAGS) + text[i:]
        elif choice == 6:  # an anchor and aliases of it
            spots = [m.end() for m in re.finditer(r": ", text)]
            if len(spots) >= 2:
                a, b = sorted(rng.sample(spots, 2))
                text = text[:a] + "&x " + text[a:b] + "*x " + text[b:]
        else:  # deep nesting
            depth = rng.choice([10, 70, 300, 1200])
            i = rng.randrange(len(text) + 1)
            text = text[:i] + "[" * depth + "]" * depth + text[i:]
        lines = text.split("\n")
    return text


@pytest.mark.parametrize("chunk", range(4))
def test_mutated_configs_never_raise_anything_but_config_errors(tmp_path: Path, chunk: int) -> None:
    rng = random.Random(20261202 + chunk)
    seeds = [(p, p.read_text(encoding="utf-8")) for p in SEEDS]
    rss_before = psutil.Process().memory_info().rss
    outcomes = {"loaded": 0, "rejected": 0}
    for case in range(CASES // 4):
        seed, text = rng.choice(seeds)
        mutated = mutate(text, rng)
        path = tmp_path / f"case-{chunk}-{case}.yaml"
        path.write_text(mutated, encoding="utf-8", errors="surrogatepass")
        issues: list[str] | None = None
        try:
            load_config(path)
        except ConfigError as exc:
            issues = [str(issue) for issue in exc.issues]
        if issues is None:
            outcomes["loaded"] += 1
        else:
            outcomes["rejected"] += 1
            assert issues, f"{seed.name} case {case}: an error without issues"
            bad = [i for i in issues if not ISSUE.match(i)]
            assert bad == [], f"{seed.name} case {case}"
        path.unlink()
    # Both kinds happen: the mutations are neither all harmless nor all fatal.
    assert outcomes["loaded"] > 0
    assert outcomes["rejected"] > CASES // 20
    grew_mb = (psutil.Process().memory_info().rss - rss_before) / 2**20
    assert grew_mb < 300, f"memory grew by {grew_mb:.0f} MB"
