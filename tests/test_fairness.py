"""Fair shares of a saturated line (the core's scheduler, for every protocol): when the meters
on a line need more time than their interval allows, each still gets the same number of polls,
whatever the length of its plan."""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path
from typing import Any

import pytest
from agent_proc import buffer_records, write_config
from test_bus import reads, run_until, stop

from agent.clock import Clock
from agent.config.loader import load_config
from agent.runtime import Runtime

pytestmark = pytest.mark.slow


def meter(device_id: str, latency_ms: float, interval_s: float) -> dict[str, Any]:
    """A simulated meter that holds the line for ``latency_ms`` per read: its plan's length."""
    return {
        "id": device_id,
        "driver": "simulated",
        "bus": "line",
        "interval_s": interval_s,
        "latency_ms": latency_ms,
        "points": [{"name": "energy", "kind": "counter", "start": 1, "step": 1}],
    }


@pytest.mark.parametrize("interval_s", [0.5, 0.7])
async def test_a_saturated_line_gives_every_meter_the_same_share(
    tmp_path: Path, interval_s: float
) -> None:
    # Three short plans (30 ms) and three long ones (250 ms): 840 ms of line per round, more
    # than the interval asks for. A scheduler that lets meters wait for their next slot when
    # they fall behind hands the short plans more polls; a fair one, the same to each.
    devices = [meter(f"short-{n}", 30, interval_s) for n in range(3)]
    devices += [meter(f"long-{n}", 250, interval_s) for n in range(3)]
    devices[0]["interval_s"] = devices[3]["interval_s"] = interval_s * 0.9
    path = write_config(
        tmp_path, devices, buses=[{"id": "line", "serial": {"port": str(tmp_path / "tty")}}]
    )
    runtime = Runtime(load_config(path), clock=Clock("always"))
    ids = [d["id"] for d in devices]
    task = await run_until(
        runtime, lambda: all(reads(runtime, i) >= 16 for i in ids), what="16 polls of each"
    )
    await stop(runtime, task)
    achieved = achieved_intervals(buffer_records(tmp_path / "buffer.db"), ids, skip=2)
    slowest, fastest = max(achieved.values()), min(achieved.values())
    # The line is saturated: nobody gets its interval...
    assert fastest > interval_s, achieved
    # ...and everybody gets the same share, within 10 %.
    assert slowest <= fastest * 1.10, achieved


def achieved_intervals(
    records: list[dict[str, Any]], devices: list[str], *, skip: int = 1
) -> dict[str, float]:
    """Each device's mean time between readings (its first ``skip`` reads, spread by the start
    jitter, left out)."""
    out: dict[str, float] = {}
    for device in devices:
        times = sorted(
            {r["ts"] for r in records if r["kind"] == "reading" and r["device"] == device}
        )
        times = times[skip:]
        assert len(times) >= 3, (device, times)
        out[device] = statistics.mean(b - a for a, b in itertools.pairwise(times)) / 1000
    return out
