"""An independent DL/T 645-2007 meter (slave) for cross-checking our codec, built on the
PyPI package `dlt645` (3.2.x, Apache-2.0): its own RTU server does the framing and encoding.

Run as a separate process on one end of a serial line (a socat pty pair in the tests):

    python tests/peers/dlt645_meter.py --port /dev/pts/N --address 129078563412 \
        [--baud 2400] [--parity E] [--value DI=VALUE ...] [--verbose]

--address is the nameplate address (12 digits, as printed on the meter); on the wire it is
sent low byte first (129078563412 -> 12 34 56 78 90 12), and that byte order is what the
library wants, so the script reverses it.

--value takes hexadecimal data identifiers, e.g. --value 00000000=12345.67 02020100=-1.5.
Energy (00xxxxxx) and variables (02xxxxxx) take a number (negative allowed, the library sets
the sign bit), demand (01xxxxxx) takes VALUE or VALUE@YYYY-MM-DDTHH:MM, parameters
(04xxxxxx) take the digit string the library expects. Defaults (also the ones our tests use):

    00000000 total active energy       12345.67 kWh  (XXXXXX.XX, 4 bytes)
    00010000 forward active energy     12000.25 kWh  (XXXXXX.XX, 4 bytes)
    02010100 phase A voltage              220.1 V    (XXX.X,     2 bytes)
    02020100 phase A current              5.123 A    (XXX.XXX,   3 bytes)
    02030000 total active power          1.1275 kW   (XX.XXXX,   3 bytes)
    02800002 grid frequency               50.00 Hz   (XX.XX,     2 bytes)

Every other identifier the library knows reads as 0. The library knows all six above.

stdout: exactly one line, `ready`, once the serial port is open and the server is serving.
stderr: nothing unless --verbose (then the library's own log, every RX/TX frame included).
Exit: 0 on SIGTERM/SIGINT, 1 if the server stops by itself (port gone), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from datetime import datetime

from dlt645_common import effective_parity, library_log_to_stderr, nameplate_to_wire, parse_di

DEFAULT_VALUES: dict[int, float] = {
    0x00000000: 12345.67,
    0x00010000: 12000.25,
    0x02010100: 220.1,
    0x02020100: 5.123,
    0x02030000: 1.1275,
    0x02800002: 50.00,
}


def parse_value(spec: str) -> tuple[int, object]:
    if "=" not in spec:
        raise ValueError(f"--value wants DI=VALUE, got {spec!r}")
    di_text, value_text = spec.split("=", 1)
    di = parse_di(di_text)
    category = di >> 24
    value_text = value_text.strip()
    if category in (0x00, 0x02):
        return di, float(value_text)
    if category == 0x01:
        from dlt645 import Demand

        number, _, when = value_text.partition("@")
        at = (
            datetime.fromisoformat(when)
            if when
            else datetime.now().replace(second=0, microsecond=0)
        )
        return di, Demand(float(number), at)
    if category == 0x04:
        return di, value_text
    raise ValueError(f"{di:08X}: only 00/01/02/04 identifiers can be set from the command line")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", required=True, help="serial device, e.g. /dev/pts/3")
    parser.add_argument("--address", required=True, help="nameplate address, 12 digits")
    parser.add_argument("--baud", type=int, default=2400)
    parser.add_argument("--parity", default="E", choices=["N", "E", "O"])
    parser.add_argument("--value", action="extend", nargs="+", default=[], metavar="DI=VALUE")
    parser.add_argument("--verbose", action="store_true", help="library log to stderr")
    args = parser.parse_args(argv)

    try:
        wire_address = nameplate_to_wire(args.address)
        values: dict[int, object] = dict(DEFAULT_VALUES)
        values.update(parse_value(spec) for spec in args.value)
    except ValueError as exc:
        parser.error(str(exc))

    from dlt645 import MeterServerService

    if args.verbose:
        library_log_to_stderr()

    service = MeterServerService.new_rtu_server(
        port=args.port,
        data_bits=8,
        stop_bits=1,
        baud_rate=args.baud,
        parity=effective_parity(args.port, args.parity),
        timeout=1.0,  # an incomplete frame is dropped after 1 s of silence
    )
    service.set_address(wire_address)
    setters = {
        0x00: service.set_00,
        0x01: service.set_01,
        0x02: service.set_02,
        0x04: service.set_04,
    }
    for di, value in values.items():
        if not setters[di >> 24](di, value):
            print(f"dlt645_meter: the library refused {di:08X}={value!r}", file=sys.stderr)
            return 2

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if not service.start():
        print(f"dlt645_meter: cannot open {args.port}", file=sys.stderr)
        return 1
    sys.stdout.write("ready\n")
    sys.stdout.flush()

    while not stop.wait(0.2):
        if not service.server.is_running():
            print("dlt645_meter: server stopped (serial port closed?)", file=sys.stderr)
            return 1
    service.stop()  # its read loop polls every 0.1 s, so this returns within ~0.1 s
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's teardown: freeing the library's ~20,000-entry data map takes
    # longer than everything else the meter does on SIGTERM.
    os._exit(code)
