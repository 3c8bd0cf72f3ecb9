"""Memory and time of loading hostile configuration files (agent/config/_yaml.py's bounds).

Each case runs ``edge-agent check-config`` in a fresh process and reads that process's peak RSS
(``ru_maxrss``): a 4,000-point valid file for reference, "billion laughs" alias bombs of 9^7 and
9^9 values, nesting 500 deep, a control character, bad tags, a file over the size bound; then
2,000 mutated configurations in one process (the fuzz of ``tests/test_config_fuzz.py``).
Prints a table and, as the last line, ``{"peak_rss_mb": …, "bomb_rss_mb": …,
"fuzz_peak_rss_mb": …, "valid_4000_points_rss_mb": …}``.

    .venv/bin/python benchmarks/config_bounds.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
GATEWAY = 'gateway: {id: gw-1, community: {code: "350102001001"}}\n'


def bomb(levels: int) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(levels):
        name, prev = chr(98 + i), chr(97 + i)
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    return GATEWAY + "\n".join(lines) + f"\ndevices: *{chr(97 + levels)}\n"


def cases(directory: Path) -> dict[str, Path]:
    import steady

    out = {"valid, 4,000 points": steady.make_config(directory, 200, 20, 10.0)}
    texts = {
        "alias bomb 9^7": bomb(6),
        "alias bomb 9^9": bomb(8),
        "nested 500 deep": GATEWAY + "x: " + "[" * 500 + "]" * 500 + "\n",
        "control character": GATEWAY + "devices:\n  - {id: m\x01, driver: simulated}\n",
        "bad tags": GATEWAY + "buffer: {max_size_mb: !!int abc}\nclock: {synced: !!bool 7}\n",
        "5 MiB file": GATEWAY + "#" + "x" * (5 * 2**20) + "\n",
    }
    for name, text in texts.items():
        path = directory / (name.replace(" ", "_").replace(",", "") + ".yaml")
        path.write_text(text, encoding="utf-8")
        out[name] = path
    return out


_FUZZ = """
import random, sys, resource
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from test_config_fuzz import SEEDS, mutate
from agent.config import ConfigError, load_config
rng = random.Random(1)
seeds = [p.read_text(encoding="utf-8") for p in SEEDS]
path = Path(sys.argv[2])
for _ in range(2000):
    path.write_text(mutate(rng.choice(seeds), rng), encoding="utf-8", errors="surrogatepass")
    try:
        load_config(path)
    except ConfigError:
        pass
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run(args: list[str]) -> tuple[float, float, str]:
    """(peak RSS in MB as the child itself reported it, seconds, its first error line)."""
    started = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    last = (proc.stdout.strip().splitlines() or ["0"])[-1]
    if not last.isdigit():
        raise SystemExit(f"{args}: no figure ({proc.stderr[-500:]})")
    first_error = (proc.stderr.strip().splitlines() or [""])[0]
    return int(last) / 1024, elapsed, first_error


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        rows: list[tuple[str, float, float, str]] = []
        for name, path in cases(directory).items():
            code = (
                "import resource, sys\n"
                "from agent.config.loader import check_config_command\n"
                "check_config_command(sys.argv[1], sys.stdout, sys.stderr)\n"
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
            )
            rss, elapsed, error = run([sys.executable, "-c", code, str(path)])
            rows.append((name, rss, elapsed, error.split(": ", 1)[-1][:70]))
        rss, elapsed, _ = run(
            [sys.executable, "-c", _FUZZ, str(ROOT / "tests"), str(directory / "fuzz.yaml")]
        )
        rows.append(("2,000 mutated configs, one process", rss, elapsed, ""))
    print(f"{'case':38} {'peak RSS (MB)':>14} {'time (s)':>9}  first error")
    for name, rss, elapsed, error in rows:
        print(f"{name:38} {rss:14.1f} {elapsed:9.2f}  {error}")
    figures = {
        "peak_rss_mb": round(max(r[1] for r in rows), 1),
        "bomb_rss_mb": round(max(r[1] for r in rows if "bomb" in r[0]), 1),
        "fuzz_peak_rss_mb": round(rows[-1][1], 1),
        "valid_4000_points_rss_mb": round(rows[0][1], 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main()
