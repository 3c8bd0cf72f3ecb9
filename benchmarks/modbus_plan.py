"""Read planning on a mixed bus of 100 meters using the built-in profiles.

Plans one poll cycle of every meter three ways: one request per point (a naive master),
contiguous-only grouping (what most gateways do: merge points that touch), and the driver's
planner (gap filling within each device's limits, chosen by wire time). Wire time is the
reference's formula at 9600 Bd, 11-bit characters (8E1). Prints a table and, as the last line,
``{"requests_per_cycle": …, "naive_requests_per_cycle": …, "wire_ms_per_cycle_9600": …,
"naive_wire_ms_per_cycle_9600": …}``. The target: at least 5× fewer requests and 3× less wire
time than one request per point.

    .venv/bin/python benchmarks/modbus_plan.py [--meters 100]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.modbus.config import ModbusDevice, profile_names
from drivers.modbus.planner import (
    Cost,
    Item,
    Limits,
    LineTiming,
    plan_contiguous,
    plan_per_point,
    plan_reads,
    wire_time_s,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=100)
    args = parser.parse_args()

    timing = LineTiming(9600, 11)
    cost = Cost.serial(timing)
    profiles = profile_names()
    totals: Counter[str] = Counter()
    wire: Counter[str] = Counter()
    per_profile: dict[str, tuple[int, int, int, int]] = {}
    planning_s = 0.0
    for n in range(args.meters):
        name = profiles[n % len(profiles)]
        device = ModbusDevice.model_validate(
            {"id": f"m{n}", "driver": "modbus", "bus": "b", "unit": n % 247 + 1, "profile": name}
        )
        points = device.resolved_points()
        items = [Item(i, p.table, p.address, p.size) for i, p in enumerate(points)]
        limits = Limits(device.register_limit, device.max_bits, device.gap_limit)
        started = time.perf_counter()
        planned = plan_reads(items, limits, cost)
        planning_s += time.perf_counter() - started
        plans = {
            "naive": plan_per_point(items),
            "contiguous": plan_contiguous(items, limits),
            "planned": planned,
        }
        for kind, plan in plans.items():
            totals[kind] += len(plan)
            wire[kind] += wire_time_s(plan, timing)
        totals["points"] += len(items)
        per_profile[name] = (
            len(items),
            len(plans["naive"]),
            len(plans["contiguous"]),
            len(planned),
        )

    print(f"{args.meters} meters ({', '.join(profiles)} in turn), {totals['points']} points")
    print(f"{'profile':18s} {'points':>6s} {'naive':>6s} {'contig':>6s} {'planned':>7s}")
    for name, (points, naive, contiguous, planned_count) in per_profile.items():
        print(f"{name:18s} {points:6d} {naive:6d} {contiguous:6d} {planned_count:7d}")
    print(f"{'grouping':18s} {'requests/cycle':>15s} {'wire ms/cycle @9600':>20s}")
    for kind in ("naive", "contiguous", "planned"):
        print(f"{kind:18s} {totals[kind]:15d} {wire[kind] * 1000:20.1f}")
    request_gain = totals["naive"] / totals["planned"]
    wire_gain = wire["naive"] / wire["planned"]
    print(
        f"planned vs one request per point: {request_gain:.1f}x fewer requests "
        f"(target 5x), {wire_gain:.1f}x less wire time (target 3x); "
        f"vs contiguous-only: {totals['contiguous'] / totals['planned']:.1f}x, "
        f"{wire['contiguous'] / wire['planned']:.1f}x; planning took "
        f"{planning_s * 1000 / args.meters:.2f} ms per meter"
    )
    print(
        json.dumps(
            {
                "requests_per_cycle": totals["planned"],
                "naive_requests_per_cycle": totals["naive"],
                "wire_ms_per_cycle_9600": round(wire["planned"] * 1000, 1),
                "naive_wire_ms_per_cycle_9600": round(wire["naive"] * 1000, 1),
                "contiguous_requests_per_cycle": totals["contiguous"],
                "contiguous_wire_ms_per_cycle_9600": round(wire["contiguous"] * 1000, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
