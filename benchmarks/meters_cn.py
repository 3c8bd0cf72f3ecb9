"""DL/T 645 and CJ/T 188: codec throughput and the wire time of a building's poll cycle.

Codec: one frame is a reply as a meter sends it, encoded (preamble, offset, checksum), found
and decoded again, with its values decoded: for DL/T 645 the tariff-energy block of a household
meter (five energies in one frame), for CJ/T 188 a water meter's 901F current data. The target
is at least 50,000 frames/s each.

Cycle: the planned requests of one poll of 48 household meters (``dlt645-2007-single-phase``)
at 2400 Bd 8E1 with the FE preamble, as the driver plans them, with block reads and without.
Wire time only: add each meter's turnaround (typically 20-80 ms per frame) for a real line, shown
in the table at 50 ms. The 48 water meters of the same building (one 901F frame each) are shown
alongside.

Prints a table and, as the last line, ``{"dlt645_frames_per_s": …, "cjt188_frames_per_s": …,
"cycle_wire_s_48_meters_2400": …, "cycle_wire_s_48_meters_2400_no_blocks": …,
"frames_per_cycle_48_meters": …, "frames_per_cycle_48_meters_no_blocks": …}``.

    .venv/bin/python benchmarks/meters_cn.py [--meters 48] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.cjt188 import codec as cjt
from drivers.dlt645 import codec as dlt
from drivers.dlt645.config import Dlt645Device
from drivers.dlt645.identifiers import CATALOG
from drivers.dlt645.plan import Timing, member_sizes, plan_reads, wire_time_s

BAUD = 2400
CHAR_S = 11 / BAUD  # 8E1: start, 8 data, parity, stop
TURNAROUND_S = 0.05
TARIFF_BLOCK = 0x0001FF00


def rate(one: Callable[[], object], seconds: float) -> float:
    """Calls of ``one`` per second, over about ``seconds``."""
    count, started = 0, time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(500):
            one()
        count += 500
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - started)


def dlt645_frame() -> Callable[[], object]:
    address = dlt.parse_address("000050010101")
    members = member_sizes(TARIFF_BLOCK, 2007)
    by_di = {ident.di: ident for ident in CATALOG[2007].values()}
    values = [1520.37, 102.5, 480.11, 611.2, 326.56]
    data = dlt.di_bytes(TARIFF_BLOCK, 2007) + b"".join(
        dlt.encode_value(by_di[di].fmt, v) for (di, _), v in zip(members, values, strict=True)
    )
    reply = dlt.Frame(address, dlt.REPLY | dlt.Func.READ, data)

    def one() -> object:
        raw = dlt.encode(reply)
        found = dlt.find_frame(raw)
        assert found is not None
        start, end = found
        frame = dlt.decode(raw[start:end])
        at = 4
        out = []
        for di, size in members:
            out.append(dlt.decode_value(by_di[di].fmt, frame.data[at : at + size]))
            at += size
        return out

    assert one() == values, one()
    return one


def cjt188_frame() -> Callable[[], object]:
    meter_type = 0x10
    address = cjt.parse_address("00000000201234")
    values = {"volume": 1234.56, "settlement_volume": 1200.0}
    payload = cjt.encode_current(meter_type, values)
    reply = cjt.Frame(
        meter_type, address, cjt.REPLY | cjt.Func.READ, cjt.body(cjt.CURRENT, 7, payload)
    )

    def one() -> object:
        raw = cjt.encode(reply)
        found = cjt.find_frame(raw)
        assert found is not None
        start, end = found
        frame = cjt.decode(raw[start:end])
        _, _, body = cjt.split(frame.data)
        return cjt.decode_current(meter_type, body)

    current = one()
    assert isinstance(current, cjt.CurrentData)
    return one


def cycle(meters: int) -> dict[str, float]:
    timing = Timing(char_s=CHAR_S, preamble=4)
    out: dict[str, float] = {}
    for blocks in (True, False):
        frames, wire = 0, 0.0
        for n in range(meters):
            device = Dlt645Device.model_validate(
                {
                    "id": f"em{n}",
                    "driver": "dlt645",
                    "bus": "b",
                    "address": f"0000500101{n % 100:02d}",
                    "profile": "dlt645-2007-single-phase",
                }
            )
            points = device.resolved_points()
            plan = plan_reads(points, 2007, timing, blocks=blocks)
            frames += len(plan)
            wire += wire_time_s(plan, points, 2007, timing)
        key = "" if blocks else "_no_blocks"
        out[f"frames{key}"] = frames
        out[f"wire{key}"] = wire
    # A water meter: request (DI + SER) and a 901F reply (DI + SER + 19 bytes), 13-byte frames.
    head = 4 + 13
    water = (head + 3 + head + 3 + cjt.payload_size(0x10)) * CHAR_S
    out["water"] = water * meters
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=48)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()

    dlt_rate = rate(dlt645_frame(), args.seconds)
    cjt_rate = rate(cjt188_frame(), args.seconds)
    c = cycle(args.meters)

    print("codec (encode + find + decode + values), one core")
    print(f"{'':34s} {'frames/s':>10s} {'target':>8s}")
    print(f"{'DL/T 645 tariff block (5 values)':34s} {dlt_rate:10,.0f} {'50,000':>8s}")
    print(f"{'CJ/T 188 water 901F':34s} {cjt_rate:10,.0f} {'50,000':>8s}")
    print()
    print(f"one poll of {args.meters} household meters, 2400 Bd 8E1, FE preamble")
    print(f"{'':26s} {'frames':>7s} {'wire s':>8s} {'+50 ms/frame s':>15s}")
    for label, key in (("with block reads", ""), ("one identifier per frame", "_no_blocks")):
        frames, wire = c[f"frames{key}"], c[f"wire{key}"]
        print(f"{label:26s} {frames:7.0f} {wire:8.1f} {wire + frames * TURNAROUND_S:15.1f}")
    water = c["water"]
    print(
        f"{'CJ/T 188 water, 901F':26s} {args.meters:7d} {water:8.1f} "
        f"{water + args.meters * TURNAROUND_S:15.1f}"
    )
    print(
        json.dumps(
            {
                "dlt645_frames_per_s": round(dlt_rate),
                "cjt188_frames_per_s": round(cjt_rate),
                "cycle_wire_s_48_meters_2400": round(c["wire"], 2),
                "cycle_wire_s_48_meters_2400_no_blocks": round(c["wire_no_blocks"], 2),
                "frames_per_cycle_48_meters": int(c["frames"]),
                "frames_per_cycle_48_meters_no_blocks": int(c["frames_no_blocks"]),
            }
        )
    )


if __name__ == "__main__":
    main()
