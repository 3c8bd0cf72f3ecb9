"""BLE advert handling without a radio: decoding and presence tracking of a synthetic stream.

500 tags in the mix a care home has: BTHome wristbands with a button (a press now and then),
MiBeacon thermometers, Ruuvi sensors, iBeacon asset tags (whose payload never changes) and
Eddystone beacons interleaving UID and TLM frames. Each
advert is decoded by the tag's own decoder (the Home Assistant parsers where they fit) and fed
to its tracker, as the driver does; every 1,000 adverts a sweep looks for tags gone away. CPU
time is the process's (one core); RSS is measured before the parsers are imported, after, and
at the end (500 decoders and trackers).

Prints a table and, as the last line, ``{"adverts_per_s": …, "cpu_us_per_advert": …,
"rss_mb": …, "parsers_rss_mb": …}``. Target: ≤ 30 µs of CPU per advert.

    .venv/bin/python benchmarks/ble.py [--tags 500] [--adverts 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", type=int, default=500)
    parser.add_argument("--adverts", type=int, default=100_000)
    args = parser.parse_args()

    base = rss_mb()
    import bthome_ble  # noqa: F401
    import habluetooth  # noqa: F401
    import ibeacon_ble  # noqa: F401
    import ruuvitag_ble  # noqa: F401
    import xiaomi_ble  # noqa: F401

    from drivers.ble.decode import (
        APPLE,
        BTHOME,
        EDDYSTONE,
        MIBEACON,
        RUUVI,
        Advert,
        TagDecoder,
        load_ibeacon_vendors,
    )
    from drivers.ble.presence import TagTracker

    asyncio.run(load_ibeacon_vendors())
    loaded = rss_mb()

    rng = random.Random(7)
    kinds = ["bthome", "mibeacon", "ruuvi", "ibeacon", "eddystone"]
    tags = []
    for n in range(args.tags):
        kind = kinds[n % len(kinds)]
        mac = ":".join(
            f"{b:02X}" for b in (0xC0, 0x00, 0x00, n >> 16 & 0xFF, n >> 8 & 0xFF, n & 0xFF)
        )
        klass = {"bthome": "wristband", "ibeacon": "asset"}.get(kind, "sensor")
        tags.append((kind, mac, TagDecoder(), TagTracker(tag_class=klass)))

    def payload(kind: str, mac: str, number: int, seq: int) -> Advert:
        rssi = -55 - rng.randrange(35)
        if kind == "bthome":
            press = b"\x3a\x01" if seq % 50 == 0 else b""
            data = b"\x40\x00" + bytes((seq & 0xFF,)) + b"\x01" + bytes((80,)) + press
            return Advert(mac, rssi, 0.0, service_data={BTHOME: data})
        if kind == "mibeacon":
            mac_bytes = bytes.fromhex(mac.replace(":", ""))[::-1]
            temp = 200 + seq % 30
            data = (
                b"\x50\x20\xaa\x01"
                + bytes((seq & 0xFF,))
                + mac_bytes
                + b"\x04\x10\x02"
                + struct.pack("<h", temp)
            )
            return Advert(mac, rssi, 0.0, service_data={MIBEACON: data})
        if kind == "ruuvi":
            data = bytes.fromhex("0512fc5394c37c0004fffc040cac364200cdcbb8334c884f")
            data = data[:15] + struct.pack(">H", seq & 0xFFFF) + data[17:]
            return Advert(mac, rssi, 0.0, manufacturer_data={RUUVI: data})
        if kind == "ibeacon":
            # Its identity is its payload: the same in every advert.
            data = b"\x02\x15" + bytes(range(16)) + struct.pack(">HHb", 1, number, -59)
            return Advert(mac, rssi, 0.0, manufacturer_data={APPLE: data})
        if seq % 2:  # Eddystone beacons interleave their UID frame and their TLM frame
            uid = b"\x00\xeb" + bytes(range(10)) + number.to_bytes(6, "big") + b"\x00\x00"
            return Advert(mac, rssi, 0.0, service_data={EDDYSTONE: uid})
        data = b"\x20\x00\x0b\xb8\x13\x00" + struct.pack(">II", seq, seq * 10)
        return Advert(mac, rssi, 0.0, service_data={EDDYSTONE: data})

    # A few adverts per tag are made first (a radio would hand them over) and replayed with
    # moving counters in a random order: only their handling is measured. Every decoder and
    # tracker has seen its tag once before the RSS of the tags is taken.
    variants = 8
    prepared = [
        [payload(kind, mac, n, v) for v in range(variants)]
        for n, (kind, mac, _, _) in enumerate(tags)
    ]
    for (_, _, decoder, tracker), ads in zip(tags, prepared, strict=True):
        tracker.heard(0.0, ads[0].rssi, decoder.decode(ads[0]))
    with_tags = rss_mb()
    order = [rng.randrange(args.tags) for _ in range(args.adverts)]
    seen = [1] * args.tags
    happenings = 0
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    now = 0.0
    for i, index in enumerate(order):
        now += 0.001
        ad = prepared[index][seen[index] % variants]
        seen[index] += 1
        _, _, decoder, tracker = tags[index]
        decoded = decoder.decode(ad)
        happenings += len(tracker.heard(now, ad.rssi, decoded))
        if i % 1000 == 999:
            for _, _, _, t in tags:
                happenings += len(t.sweep(now, scanner_healthy=True))
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    end = rss_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    per_advert_us = cpu / args.adverts * 1e6
    print(f"{args.tags} tags, {args.adverts} adverts ({', '.join(kinds)} in turn)")
    print(f"{'adverts per second (one core)':34s} {args.adverts / wall:12,.0f}")
    print(f"{'CPU per advert (µs)':34s} {per_advert_us:12.1f}   target <= 30")
    print(f"{'records due (presence, values…)':34s} {happenings:12,d}")
    print(f"{'RSS before the parsers (MB)':34s} {base:12.1f}")
    print(f"{'RSS with the parsers (MB)':34s} {loaded:12.1f}   (+{loaded - base:.1f})")
    print(
        f"{f'RSS with {args.tags} tags (MB)':34s} {with_tags:12.1f}   (+{with_tags - loaded:.1f})"
    )
    print(f"{'RSS at the end (MB)':34s} {end:12.1f}   peak {peak:.1f}")
    print(
        json.dumps(
            {
                "adverts_per_s": round(args.adverts / wall),
                "cpu_us_per_advert": round(per_advert_us, 1),
                "rss_mb": round(end, 1),
                "parsers_rss_mb": round(loaded - base, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
