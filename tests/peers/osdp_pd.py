"""An independent OSDP peripheral device (PD) for the integration tests, built on libosdp.

Run as a separate process, on one end of a serial line (a pty pair from socat in the tests):

    python tests/peers/osdp_pd.py --port /dev/pts/N --address 101 [--scbk HEX32] [--no-sc]

libosdp (the PyPI package `libosdp`, import name `osdp`) does the protocol; this script only
gives it a serial channel, feeds it events from stdin and reports what it does on stdout.

stdin: one JSON object per line, e.g. {"card": "a1b2c3d4", "bits": 26}, {"keypad": "1234#"},
{"input": 0, "state": 1}, {"tamper": 1}, {"power": 1}, {"quit": true}.
stdout: one JSON object per line, flushed: {"ready": true, ...} once, then {"command": ...}
for every command libosdp hands to the PD, {"sc_active": ...} and {"online": ...} on change.
libosdp logs (and anything else that writes to fd 1) go to stderr.

See README_osdp.md next to this file for the whole protocol and libosdp's limits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import sys
import threading
import time
from typing import IO, Any

import osdp  # type: ignore[import-untyped]
import serial  # pyserial

# -- OSDP wire constants used by the --no-sc shim (see _NoScShim) ------------------------------
SOM = 0x53
MARK = 0xFF
CTRL_SQN = 0x03
CTRL_CRC = 0x04
CTRL_SCB = 0x08
REPLY_NAK = 0x41
REPLY_PDCAP = 0x46
REPLY_CCRYPT = 0x76
REPLY_RMAC_I = 0x78
NAK_SC_UNSUP = 0x05
CAP_COMMUNICATION_SECURITY = 9

COMMAND_NAMES: dict[int, str] = {
    osdp.Command.Output: "output",
    osdp.Command.LED: "led",
    osdp.Command.Buzzer: "buzzer",
    osdp.Command.Text: "text",
    osdp.Command.Keyset: "keyset",
    osdp.Command.Comset: "comset",
    osdp.Command.ComsetDone: "comset_done",
    osdp.Command.Manufacturer: "mfg",
    osdp.Command.FileTransfer: "file_tx",
    osdp.Command.Status: "status",
}
STATUS_TYPE_NAMES: dict[int, str] = {
    osdp.StatusReportType.Input: "input",
    osdp.StatusReportType.Output: "output",
    osdp.StatusReportType.Local: "local",
    osdp.StatusReportType.Remote: "remote",
}
EVENT_NAMES: dict[int, str] = {
    osdp.Event.CardRead: "card",
    osdp.Event.KeyPress: "keypad",
    osdp.Event.ManufacturerReply: "mfgrep",
    osdp.Event.Status: "status",
    osdp.Event.Notification: "notification",
}
COMPLETION_NAMES: dict[int, str] = {
    osdp.CompletionStatus.Ok: "ok",
    osdp.CompletionStatus.Failed: "failed",
    osdp.CompletionStatus.Flushed: "flushed",
    osdp.CompletionStatus.Aborted: "aborted",
}
CARD_FORMATS: dict[str, int] = {
    "wiegand": osdp.CardFormat.Wiegand,
    "raw": osdp.CardFormat.Unspecified,
    "unspecified": osdp.CardFormat.Unspecified,
}
VALID_BAUDS = (9600, 19200, 38400, 57600, 115200, 230400)


def log(msg: str) -> None:
    sys.stderr.write(f"osdp_pd: {msg}\n")
    sys.stderr.flush()


class JsonOut:
    """Line-buffered JSON writer on the original stdout, safe from any thread."""

    def __init__(self, fd: int) -> None:
        self._file: IO[str] = os.fdopen(fd, "w", buffering=1, encoding="utf-8")
        self._lock = threading.Lock()

    def emit(self, obj: dict[str, Any]) -> None:
        line = json.dumps(obj, separators=(", ", ": "))
        with self._lock:
            try:
                self._file.write(line + "\n")
                self._file.flush()
            except (OSError, ValueError):
                pass  # the reader went away; nothing useful left to do


def crc16_osdp(data: bytes) -> int:
    """CRC-16/AUG-CCITT (poly 0x1021, seed 0x1D0F), as libosdp's osdp_compute_crc16."""
    crc = 0x1D0F
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


class _NoScShim:
    """Makes the PD look secure-channel incapable, which libosdp 3.2.9 cannot do by itself.

    libosdp always adds an implicit capability "communication security, AES-128" to the PD
    (osdp_pd.c, `osdp_pd_cap[]`, applied after the application's list) and always answers
    osdp_CHLNG. With --no-sc this shim, at the channel, (1) drops function code 9 from the
    plain-text osdp_PDCAP reply and (2) turns the osdp_CCRYPT / osdp_RMAC_I replies into a
    plain osdp_NAK(5) "secure channel not supported", keeping the sequence number.
    """

    def rewrite(self, buf: bytes) -> bytes:
        mark = buf[:1] == bytes([MARK])
        pkt = buf[1:] if mark else buf
        if len(pkt) < 8 or pkt[0] != SOM:
            return buf
        length = pkt[2] | (pkt[3] << 8)
        ctrl = pkt[4]
        if length != len(pkt) or not ctrl & CTRL_CRC:
            return buf  # libosdp's PD always replies with a CRC; anything else: leave it
        if crc16_osdp(pkt[:-2]) != (pkt[-2] | (pkt[-1] << 8)):
            log("no-sc shim: unexpected CRC on an outgoing packet; sent unchanged")
            return buf
        addr = pkt[1]
        if ctrl & CTRL_SCB:
            code = pkt[5 + pkt[5]]
            if code not in (REPLY_CCRYPT, REPLY_RMAC_I):
                return buf
            new = self._packet(addr, ctrl & CTRL_SQN, bytes([REPLY_NAK, NAK_SC_UNSUP]))
            log(f"no-sc shim: reply {code:#04x} replaced by NAK({NAK_SC_UNSUP})")
        else:
            if pkt[5] != REPLY_PDCAP:
                return buf
            caps = pkt[6:-2]
            kept = b"".join(
                caps[i : i + 3]
                for i in range(0, len(caps) - len(caps) % 3, 3)
                if caps[i] != CAP_COMMUNICATION_SECURITY
            )
            new = self._packet(addr, ctrl & CTRL_SQN, bytes([REPLY_PDCAP]) + kept)
        return (bytes([MARK]) + new) if mark else new

    @staticmethod
    def _packet(addr: int, sqn: int, data: bytes) -> bytes:
        length = 5 + len(data) + 2
        head = bytes([SOM, addr, length & 0xFF, length >> 8, sqn | CTRL_CRC])
        body = head + data
        crc = crc16_osdp(body)
        return body + bytes([crc & 0xFF, crc >> 8])


class SerialChannel(osdp.Channel):  # type: ignore[misc]
    """libosdp channel over a non-blocking pyserial port; reopens the port if it goes away."""

    def __init__(self, port: str, baud: int, shim: _NoScShim | None) -> None:
        super().__init__()
        self.port = port
        self.baud = baud
        self.shim = shim
        self.ser: serial.Serial | None = None
        self._next_open = 0.0
        self._last_error = ""
        self._open()

    def _open(self) -> None:
        try:
            self.ser = serial.Serial(self.port, self.baud, timeout=0, write_timeout=1.0)
            log(f"opened {self.port} at {self.baud} baud")
        except (OSError, serial.SerialException) as exc:
            self.ser = None
            self._next_open = time.monotonic() + 1.0
            if str(exc) != self._last_error:  # once per outage, not every second
                log(f"cannot open {self.port}: {exc}; retrying every second")
            self._last_error = str(exc)
        else:
            self._last_error = ""

    def _broken(self, exc: Exception) -> None:
        log(f"serial port error: {exc}; reopening")
        if self.ser is not None:
            with contextlib.suppress(OSError, serial.SerialException):
                self.ser.close()
        self.ser = None
        self._next_open = time.monotonic() + 1.0

    def _usable(self) -> serial.Serial | None:
        if self.ser is None and time.monotonic() >= self._next_open:
            self._open()
        return self.ser

    def read(self, max_bytes: int) -> bytes:
        ser = self._usable()
        if ser is None:
            return b""
        try:
            data: bytes = ser.read(max_bytes)
        except (OSError, serial.SerialException) as exc:
            self._broken(exc)
            return b""
        return data

    def write(self, buf: bytes) -> int:
        ser = self._usable()
        if ser is None:
            return 0
        out = self.shim.rewrite(bytes(buf)) if self.shim else bytes(buf)
        try:
            ser.write(out)
        except (OSError, serial.SerialException) as exc:
            self._broken(exc)
            return 0
        return len(buf)  # libosdp checks this against what it asked to send

    def flush(self) -> None:
        # libosdp calls flush() just before it sends a reply: drop stale input.
        ser = self.ser
        if ser is None:
            return
        try:
            ser.reset_input_buffer()
        except (OSError, serial.SerialException) as exc:
            self._broken(exc)

    def set_baud(self, baud: int) -> None:
        self.baud = baud
        if self.ser is not None:
            try:
                self.ser.baudrate = baud
            except (OSError, ValueError, serial.SerialException) as exc:
                log(f"cannot switch to {baud} baud: {exc}")

    def close(self) -> None:
        if self.ser is not None:
            with contextlib.suppress(OSError, serial.SerialException):
                self.ser.close()
            self.ser = None


def jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


class Peer:
    """The PD, its refresh thread and the stdin/stdout protocol."""

    def __init__(self, args: argparse.Namespace, out: JsonOut) -> None:
        self.args = args
        self.out = out
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.inputs = [0] * args.inputs
        self.tamper = 0
        self.power = 0
        self.channel = SerialChannel(args.port, args.baud, _NoScShim() if args.no_sc else None)

        pd_id = osdp.PdId(
            version=args.version,
            model=args.model,
            vendor_code=args.vendor_code,
            serial_number=args.serial,
            firmware_version=args.firmware,
        )
        # With --no-sc, a random key keeps libosdp out of install mode (no SCBK-D); the shim
        # answers osdp_CHLNG with NAK(5) anyway, so no secure channel can come up.
        scbk = os.urandom(16) if args.no_sc else args.scbk
        flags = [osdp.LibFlag.EnforceSecure] if args.enforce_sc else []
        info = osdp.PDInfo(args.address, self.channel, scbk=scbk, flags=flags, id=pd_id)
        caps = [
            (osdp.Capability.ContactStatusMonitoring, 1, args.inputs),
            (osdp.Capability.OutputControl, 2, args.outputs),
            (osdp.Capability.CardDataFormat, 1, 0),
            (osdp.Capability.LEDControl, 2, args.leds),
            (osdp.Capability.AudibleControl, 2, 1),
            (osdp.Capability.TextOutput, 1, 1),
            (osdp.Capability.Readers, 0, 1),
        ]
        if not args.no_sc:
            caps.append((osdp.Capability.CommunicationSecurity, 1, 0))
        self.pd = osdp.PeripheralDevice(
            info,
            osdp.PDCapabilities(caps),
            log_level=args.log_level,
            command_handler=self._on_command,
            event_completion_handler=self._on_event_done,
        )
        self.thread = threading.Thread(target=self._refresh_loop, name="osdp-pd", daemon=True)

    # -- libosdp callbacks (run inside refresh(), with self.lock held) -------------------------

    def _on_command(self, command: dict[str, Any]) -> tuple[int, None]:
        try:
            cmd_id = int(command.get("command", -1))
            report: dict[str, Any] = {"command": COMMAND_NAMES.get(cmd_id, f"unknown_{cmd_id}")}
            report["cmd_id"] = cmd_id
            report.update({k: jsonable(v) for k, v in command.items() if k != "command"})
            if cmd_id == osdp.Command.Status:
                report["type_name"] = STATUS_TYPE_NAMES.get(int(command.get("type", -1)), "?")
            self.out.emit(report)
            if cmd_id == osdp.Command.ComsetDone:
                baud = int(command.get("baud_rate", 0))
                if baud in VALID_BAUDS:
                    self.channel.set_baud(baud)
        except Exception as exc:
            log(f"command handler error: {exc!r}")
        return 0, None  # 0: libosdp ACKs (or sends the command's normal reply)

    def _on_event_done(self, event: dict[str, Any], status: int) -> None:
        try:
            name = EVENT_NAMES.get(int(event.get("event", -1)), "?")
            self.out.emit({"event_done": name, "status": COMPLETION_NAMES.get(status, status)})
        except Exception as exc:
            log(f"event completion handler error: {exc!r}")

    # -- refresh thread ------------------------------------------------------------------------

    def _refresh_loop(self) -> None:
        interval = self.args.refresh_ms / 1000.0
        sc_active: bool | None = None
        online: bool | None = None
        while not self.stop.is_set():
            try:
                with self.lock:
                    self.pd.ctx.refresh()
                    now_sc = bool(self.pd.is_sc_active())
                    now_online = bool(self.pd.is_online())
            except Exception as exc:  # keep the PD alive whatever a callback did
                log(f"refresh error: {exc!r}")
                time.sleep(interval)
                continue
            # drain the wrapper's copy of every command (we report them from the callback)
            while not self.pd.command_queue.empty():
                self.pd.command_queue.get_nowait()
            if now_online != online:
                online = now_online
                self.out.emit({"online": online})
            if now_sc != sc_active:
                sc_active = now_sc
                self.out.emit({"sc_active": sc_active})
            time.sleep(interval)

    def submit(self, event: dict[str, Any], name: str) -> None:
        with self.lock:
            ok = bool(self.pd.ctx.submit_event(event))
        self.out.emit({"queued": name, "ok": ok})

    # -- stdin protocol ------------------------------------------------------------------------

    def handle_line(self, line: str) -> bool:
        """Handle one stdin line; False means quit."""
        line = line.strip()
        if not line:
            return True
        try:
            msg = json.loads(line)
        except ValueError as exc:
            self.out.emit({"error": f"not JSON: {exc}", "line": line})
            return True
        if not isinstance(msg, dict):
            self.out.emit({"error": "expected a JSON object", "line": line})
            return True
        try:
            return self._handle(msg)
        except Exception as exc:
            self.out.emit({"error": f"{type(exc).__name__}: {exc}", "line": line})
            return True

    def _handle(self, msg: dict[str, Any]) -> bool:
        if msg.get("quit"):
            return False
        if "card" in msg:
            self._card(msg)
        elif "keypad" in msg or "keypad_hex" in msg:
            if "keypad_hex" in msg:
                data = bytes.fromhex(str(msg["keypad_hex"]))
            else:
                data = str(msg["keypad"]).encode("ascii")
            if not 0 < len(data) <= 64:
                raise ValueError("keypad data must be 1..64 bytes")
            event = {
                "event": osdp.Event.KeyPress,
                "reader_no": int(msg.get("reader", 0)),
                "data": data,
            }
            self.submit(event, "keypad")
        elif "input" in msg:
            index = int(msg["input"])
            if not 0 <= index < len(self.inputs):
                raise ValueError(f"input must be 0..{len(self.inputs) - 1}")
            self.inputs[index] = 1 if int(msg.get("state", 1)) else 0
            self._status(osdp.StatusReportType.Input, bytes(self.inputs), "input_status")
        elif "tamper" in msg or "power" in msg:
            if "tamper" in msg:
                self.tamper = 1 if int(msg["tamper"]) else 0
            if "power" in msg:
                self.power = 1 if int(msg["power"]) else 0
            self._status(
                osdp.StatusReportType.Local, bytes([self.tamper, self.power]), "local_status"
            )
        elif "output_status" in msg:
            states = [1 if int(s) else 0 for s in msg["output_status"]]
            if len(states) != self.args.outputs:
                raise ValueError(f"output_status needs exactly {self.args.outputs} entries")
            self._status(osdp.StatusReportType.Output, bytes(states), "output_status")
        elif "flush_events" in msg:
            with self.lock:
                count = int(self.pd.ctx.flush_events())
            self.out.emit({"flushed": count})
        else:
            self.out.emit({"unsupported": json.dumps(msg)})
        return True

    def _card(self, msg: dict[str, Any]) -> None:
        fmt_name = str(msg.get("format", "wiegand")).lower()
        if fmt_name not in CARD_FORMATS:
            self.out.emit(
                {
                    "unsupported": f"card format {fmt_name!r} (libosdp 3.2.9 drops "
                    "osdp_FMT/ASCII; use wiegand or raw)"
                }
            )
            return
        data = bytes.fromhex(str(msg["card"]))
        bits = int(msg.get("bits", len(data) * 8))
        if bits <= 0 or (bits + 7) // 8 > len(data):
            raise ValueError(f"{bits} bits need {(bits + 7) // 8} data bytes, got {len(data)}")
        if (bits + 7) // 8 > 64:
            raise ValueError("card data is limited to 64 bytes")
        event = {
            "event": osdp.Event.CardRead,
            "reader_no": int(msg.get("reader", 0)),
            "format": CARD_FORMATS[fmt_name],
            "direction": int(msg.get("direction", 0)),
            "length": bits,
            "data": data[: (bits + 7) // 8],
        }
        self.submit(event, "card")

    def _status(self, report_type: int, report: bytes, name: str) -> None:
        event = {"event": osdp.Event.Status, "type": report_type, "report": report}
        self.submit(event, name)

    # -- main loop -----------------------------------------------------------------------------

    def run(self) -> int:
        self.out.emit(
            {
                "ready": True,
                "address": self.args.address,
                "sc": not self.args.no_sc,
                "install_mode": self.args.scbk is None and not self.args.no_sc,
                "enforce_sc": self.args.enforce_sc,
                "port": self.args.port,
                "libosdp": self.pd.ctx.get_version(),
            }
        )
        self.thread.start()
        buf = b""
        stdin_fd = sys.stdin.fileno()
        try:
            while not self.stop.is_set():
                ready, _, _ = select.select([stdin_fd], [], [], 0.1)
                if not ready:
                    continue
                chunk = os.read(stdin_fd, 4096)
                if not chunk:
                    if buf and not self.handle_line(buf.decode("utf-8", "replace")):
                        break
                    break  # stdin closed
                buf += chunk
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    if not self.handle_line(raw.decode("utf-8", "replace")):
                        return 0
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(2.0)
        self.channel.close()


def hex_key(text: str) -> bytes:
    key = bytes.fromhex(text)
    if len(key) != 16:
        raise argparse.ArgumentTypeError("SCBK must be 16 bytes (32 hex digits)")
    return key


def int_auto(text: str) -> int:
    return int(text, 0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="OSDP PD peer on libosdp (see README_osdp.md)")
    parser.add_argument("--port", required=True, help="serial device path, e.g. /dev/pts/5")
    parser.add_argument("--address", type=int_auto, required=True, help="PD address 0..126")
    sc = parser.add_mutually_exclusive_group()
    sc.add_argument("--scbk", type=hex_key, default=None, help="SCBK, 32 hex digits")
    sc.add_argument("--no-sc", action="store_true", help="declare no secure channel capability")
    parser.add_argument(
        "--enforce-sc",
        action="store_true",
        help="libosdp ENFORCE_SECURE: NAK(6) every plain command but ID/CAP/CHLNG/SCRYPT",
    )
    parser.add_argument("--baud", type=int, default=9600, choices=VALID_BAUDS)
    parser.add_argument("--vendor-code", type=int_auto, default=0xA1B2C3)
    parser.add_argument("--serial", type=int_auto, default=0x01020304)
    parser.add_argument("--model", type=int_auto, default=1)
    parser.add_argument("--version", type=int_auto, default=2)
    parser.add_argument("--firmware", type=int_auto, default=0x010203)
    parser.add_argument("--inputs", type=int, default=4, help="contact inputs (>= 1)")
    parser.add_argument("--outputs", type=int, default=4, help="outputs (>= 1)")
    parser.add_argument("--leds", type=int, default=2, help="reader LEDs (>= 1)")
    parser.add_argument("--refresh-ms", type=float, default=10.0, help="refresh period, ms")
    parser.add_argument(
        "--log-level",
        type=int,
        default=osdp.LogLevel.Info,
        help="libosdp log level 0..7 (7 = debug), to stderr",
    )
    args = parser.parse_args(argv)
    checks = [
        (0 <= args.address <= 126, "--address must be 0..126 (127 is broadcast)"),
        (0 <= args.vendor_code <= 0xFFFFFF, "--vendor-code is 3 bytes"),
        (0 <= args.serial <= 0xFFFFFFFF, "--serial is 4 bytes"),
        (0 <= args.model <= 0xFF, "--model is 1 byte"),
        (0 <= args.version <= 0xFF, "--version is 1 byte"),
        (0 <= args.firmware <= 0xFFFFFF, "--firmware is 3 bytes (major, minor, build)"),
        (1 <= args.inputs <= 64, "--inputs must be 1..64"),
        (1 <= args.outputs <= 64, "--outputs must be 1..64"),
        (1 <= args.leds <= 255, "--leds must be 1..255"),
        (1.0 <= args.refresh_ms <= 40.0, "--refresh-ms must be 1..40 (libosdp wants <= 50)"),
        (0 <= args.log_level <= 7, "--log-level must be 0..7"),
    ]
    if args.enforce_sc and args.scbk is None:
        parser.error("--enforce-sc needs --scbk (libosdp refuses install mode with it)")
    for ok, message in checks:
        if not ok:
            parser.error(message)
    return args


def take_stdout() -> int:
    """Keep the real stdout for the JSON protocol; send everything else on fd 1 to stderr.

    libosdp's C code and print() in the osdp wrapper would otherwise mix into the protocol.
    """
    json_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return json_fd


def main(argv: list[str] | None = None) -> int:
    out = JsonOut(take_stdout())
    args = parse_args(argv)
    peer = Peer(args, out)

    def on_term(_signum: int, _frame: Any) -> None:
        peer.stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    return peer.run()


if __name__ == "__main__":
    sys.exit(main())
