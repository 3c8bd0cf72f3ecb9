"""An independent DL/T 645-2007 master (client) for cross-checking our meter-side code, built on
the PyPI package `dlt645` (3.2.x, Apache-2.0): its own RTU client builds the requests and
decodes the replies.

    python tests/peers/dlt645_client.py --port /dev/pts/N --address 129078563412 \
        [--baud 2400] [--parity E] [--timeout 1.0] DI [DI ...]
    python tests/peers/dlt645_client.py --port /dev/pts/N --read-address [DI ...]

DIs are hexadecimal data identifiers (00000000, 02010100, ...). --address is the nameplate
address (12 digits); the script reverses it into the wire byte order the library wants.

--read-address sends the library's read-address request (C=13H to AA AA AA AA AA AA) first and
reports the address as a nameplate string under "address"; any DIs given are then read from
the address that came back (no --address needed).

stdout: one JSON object, e.g.
    {"00000000": 12345.67, "02010100": 220.1, "02ABCDEF": null,
     "errors": {"02ABCDEF": "abnormal reply C=D1 error=0x02 (no requested data)"}}
Energies and variables are numbers; demand is {"value": ..., "time": "..."}; parameters and
event records are the library's digit strings (lists for multi-field items). Each error
message names its cause: no reply (timeout), an abnormal reply with its error byte, or a
normal reply the library could not decode (with its raw bytes). Exit 0 whenever the port
could be opened (even if every read failed), 1 if it could not, 2 on bad arguments.
stderr: nothing unless --verbose (then the library's own log).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from dlt645_common import effective_parity, library_log_to_stderr, nameplate_to_wire, parse_di

ERROR_BITS = {
    0x01: "other error",
    0x02: "no requested data",
    0x04: "password error / unauthorised",
    0x08: "baud rate cannot be changed",
    0x10: "year time zones exceeded",
    0x20: "daily time slots exceeded",
    0x40: "tariffs exceeded",
}


def wire_to_nameplate(wire: bytes) -> str:
    return bytes(wire)[::-1].hex().upper()


def plain(value: Any) -> Any:
    """A DataItem's value (or list of DataItems) as JSON-friendly data."""
    from dlt645 import DataItem, Demand

    if isinstance(value, list):
        return [plain(item.value if isinstance(item, DataItem) else item) for item in value]
    if isinstance(value, Demand):
        return {"value": value.value, "time": value.time.isoformat(timespec="minutes")}
    if hasattr(value, "event"):  # EventRecord
        event = value.event
        return list(event) if isinstance(event, tuple) else event
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def explain_failure(service: Any) -> str:
    """Why the last request gave no DataItem, from the library's message capture."""
    from dlt645 import DLT645Protocol

    rx = service.get_captured_rx_messages()
    if not rx:
        return "no reply (timeout)"
    raw = bytes(rx[-1].data)
    try:
        frame = DLT645Protocol.deserialize(raw)
    except ValueError:
        return f"unparseable reply {raw.hex(' ').upper()}"
    if frame.ctrl_code & 0x40:
        code = frame.data[0] if frame.data else None
        if code is None:
            return f"abnormal reply C={frame.ctrl_code:02X} without error byte"
        names = ", ".join(text for bit, text in ERROR_BITS.items() if code & bit) or "unknown"
        return f"abnormal reply C={frame.ctrl_code:02X} error=0x{code:02X} ({names})"
    return f"reply the library could not decode: {raw.hex(' ').upper()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", required=True)
    parser.add_argument("--address", help="nameplate address, 12 digits")
    parser.add_argument(
        "--read-address", action="store_true", help="read the address (AA..AA) first"
    )
    parser.add_argument("--baud", type=int, default=2400)
    parser.add_argument("--parity", default="E", choices=["N", "E", "O"])
    parser.add_argument(
        "--timeout", type=float, default=1.0, help="per attempt; the library retries once"
    )
    parser.add_argument("--verbose", action="store_true", help="library log to stderr")
    parser.add_argument("dis", nargs="*", metavar="DI")
    args = parser.parse_args(argv)

    if not args.read_address and not args.address:
        parser.error("--address is required unless --read-address is given")
    if not args.read_address and not args.dis:
        parser.error("give at least one DI (or --read-address)")
    try:
        wire_address = nameplate_to_wire(args.address).hex() if args.address else None
        dis = [parse_di(text) for text in args.dis]
    except ValueError as exc:
        parser.error(str(exc))

    from dlt645 import MeterClientService

    if args.verbose:
        library_log_to_stderr()

    service = MeterClientService.new_rtu_client(
        port=args.port,
        baudrate=args.baud,
        databits=8,
        stopbits=1,
        parity=effective_parity(args.port, args.parity),
        timeout=args.timeout,
    )
    if not service.connect():
        print(f"dlt645_client: cannot open {args.port}", file=sys.stderr)
        return 1
    service.enable_message_capture(queue_size=8)

    out: dict[str, Any] = {}
    errors: dict[str, str] = {}
    try:
        if wire_address is not None:
            service.set_address(wire_address)
        if args.read_address:
            service.clear_captured_messages()
            item = service.read_address()
            if item is None:
                out["address"] = None
                errors["address"] = explain_failure(service)
            else:
                # The library stores the 6 reply bytes (wire order) as its address and gives
                # their digits in wire order as the value.
                out["address"] = wire_to_nameplate(bytes.fromhex(item.value))
        readers = {
            0: service.read_00,
            1: service.read_01,
            2: service.read_02,
            3: service.read_03,
            4: service.read_04,
        }
        for di in dis:
            key = f"{di:08X}"
            # All read_0x methods send the same C=11H request; the library can only decode
            # replies for classes 00-04 (and only DIs in its own table).
            reader = readers.get(di >> 24, service.read_00)
            service.clear_captured_messages()
            item = reader(di)
            if item is None:
                out[key] = None
                errors[key] = explain_failure(service)
            else:
                out[key] = plain(item if isinstance(item, list) else item.value)
    finally:
        service.disconnect()

    out["errors"] = errors
    sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
