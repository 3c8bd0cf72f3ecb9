"""The OSDP control panel (CP): one per RS-485 line, polling every reader (PD) on it in turn.

For each reader: ID and CAP at connect (into the inventory), then the secure channel handshake
(unless ``secure_channel: off``), then POLL at the line's cadence. Replies become events: a
card read (RAW) ``access.card``, a keypad entry ``access.keypad``, local status (LSTATR)
``reader.tamper``/``reader.power``, input status (ISTATR) the door's state (``door.opened``,
``door.closed``, ``door.held_open``, ``door.forced_open``). ``door.open`` sends OUT (control
code 5: on for the time, then off) and answers with the reader's reply.

Sequence numbers follow the spec: 0 at connect, then 1→2→3→1, advanced only after a valid
reply, the same number again after a timeout. A reader without a valid reply for
``offline_after_s`` is ``reader.offline`` and starts again from 0.

Fail closed: with ``secure_channel: required`` nothing but ID and CAP is ever sent in plain
text. A wrong key, a reader that claims no secure channel, a MAC that does not verify, NAK 6, a
changed cUID or serial: each is a ``security.*`` event (alarm), and the reader gets no plain
POLL; the handshake is tried again after ``_SECURE_RETRY_S``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

from agent.bus import Priority, ReplyTimeoutError, SerialLine, priority
from agent.driver import BusError, CommandError, CommandSpec, DeviceError, DriverContext
from agent.driver.keys import KeyFileError, read_key
from agent.records import Event, Reading, Severity
from drivers.osdp.codec import (
    MAX_FRAME,
    MIN_FRAME,
    SOM,
    Cmd,
    Frame,
    FrameReader,
    Nak,
    OsdpError,
    Reply,
    Scb,
    build_frame,
    decode_wiegand,
)
from drivers.osdp.config import OsdpDevice
from drivers.osdp.secure import (
    SCBK_D,
    SecureChannelError,
    Session,
    cp_cryptogram,
    new_rnd_a,
    rmac_i,
    verify_ccrypt,
)

__all__ = ["OsdpDriver", "reply_length"]

_GAP_S = 0.02
"""Pause after a round of polls: other traffic on the line takes its turn here."""
_SECURE_RETRY_S = 30.0
"""After a secure channel failure, how long before the handshake is tried again."""
_SESSION_LOST_RETRY_S = 1.0
"""After NAK 6 (the reader lost the session: a reboot), how soon a new handshake starts."""
_REX_GRACE_S = 10.0
"""An opening this soon after request-to-exit (or within a grant) is not forced."""
_KEY_SCBK = 0x01


def reply_length(received: bytes) -> int:
    """For :meth:`SerialLine.exchange`: the length of the first complete frame in ``received``
    (leading garbage included), 0 while none is complete."""
    start = received.find(SOM)
    while start >= 0:
        if len(received) < start + 4:
            return 0
        length = received[start + 2] | (received[start + 3] << 8)
        if MIN_FRAME <= length <= MAX_FRAME:
            return start + length if len(received) >= start + length else 0
        start = received.find(SOM, start + 1)
    return 0


class _RefusedError(DeviceError):
    """The reader answered NAK (other than a secure channel refusal)."""


class _SecurityError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(slots=True)
class _Door:
    open: bool | None = None
    opened_at: float = 0.0
    held_reported: bool = False
    granted_until: float = 0.0
    rex_at: float = -1e9


@dataclass(slots=True)
class _Reader:
    device: OsdpDevice
    key: bytes | None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    seq: int = 0
    online: bool = False
    session: Session | None = None
    last_valid: float = field(default_factory=time.monotonic)
    retry_at: float = 0.0
    identity: dict[str, str] = field(default_factory=dict)
    cuid: bytes = b""
    inputs: dict[int, int] = field(default_factory=dict)
    tamper: int | None = None
    strike: bool | None = None
    power: int | None = None
    door: _Door = field(default_factory=_Door)
    counters: collections.Counter[str] = field(default_factory=collections.Counter)


class OsdpDriver:
    """The control panel of one line (bus scope)."""

    def __init__(self, ctx: DriverContext) -> None:
        self.ctx = ctx
        if not isinstance(ctx.bus, SerialLine):
            raise DeviceError("no_bus", "OSDP readers need a serial bus")
        self.bus: SerialLine = ctx.bus
        self.readers: dict[str, _Reader] = {}
        for device in ctx.devices:
            config = cast("OsdpDevice", device)
            reader = _Reader(config, key=None)
            # The core's counters: they are on the page and in /metrics per device.
            reader.counters = ctx.counters.get(config.id, reader.counters)
            self.readers[config.id] = reader
        self._stopping = False

    # ------------------------------------------------------------------ keys

    def _load_key(self, reader: _Reader) -> bool:
        """Read the reader's key file; False (reader down, nothing sent) when it cannot."""
        config = reader.device
        if config.secure_channel == "off" or reader.key is not None:
            return True
        assert config.key_file is not None
        try:
            reader.key = read_key(config.key_file)
        except KeyFileError as exc:
            self.ctx.health.down(config.id, "key_unreadable", str(exc))
            return False
        return True

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        with priority(Priority.CADENCE):
            while not self._stopping:
                for reader in self.readers.values():
                    await self._turn(reader)
                await asyncio.sleep(_GAP_S)

    async def stop(self) -> None:
        self._stopping = True

    async def _turn(self, reader: _Reader) -> None:
        now = time.monotonic()
        if not reader.online and now < reader.retry_at:
            return
        try:
            if not reader.online:
                await self._connect(reader)
            else:
                await self._poll(reader)
        except _SecurityError as exc:
            await self._security(reader, exc.kind, str(exc))
        except BusError:
            # The line itself failed: the core reports the bus (its readers are unknown, one
            # bus.link_down), not each reader. Connect again from 0 once it is back.
            reader.online = False
            reader.session = None
            reader.seq = 0
            reader.last_valid = time.monotonic()
            reader.retry_at = time.monotonic() + 1.0
        except DeviceError as exc:
            if time.monotonic() - reader.last_valid >= reader.device.offline_after_s:
                await self._offline(reader, exc.reason, str(exc))
            elif not reader.online:
                reader.retry_at = time.monotonic() + 1.0
        await self._door_timers(reader)

    async def _connect(self, reader: _Reader) -> None:
        config = reader.device
        if not self._load_key(reader):
            reader.retry_at = time.monotonic() + _SECURE_RETRY_S
            return
        reader.seq = 0
        reader.session = None
        pdid = await self._transact(reader, Cmd.ID, b"\x00", expect=(Reply.PDID,))
        await self._identity(reader, pdid.data)
        pdcap = await self._transact(reader, Cmd.CAP, b"\x00", expect=(Reply.PDCAP,))
        secure_capable = _has_secure_channel(pdcap.data)
        if config.secure_channel == "required":
            if not secure_capable:
                raise _SecurityError(
                    "sc_unsupported",
                    "the reader says it has no secure channel, which the config requires",
                )
            await self._handshake(reader)
        # The door contact's state now, not at its next change; a reader without inputs NAKs.
        first: Frame | None = None
        with contextlib.suppress(_RefusedError):
            first = await self._transact(reader, Cmd.ISTAT, b"", expect=(Reply.ISTATR, Reply.ACK))
        reader.online = True
        reader.counters["connects"] += 1
        self.ctx.health.ok(config.id)
        await self._emit(
            reader,
            "reader.online",
            Severity.INFO,
            secure_channel=reader.session is not None,
            **reader.identity,
        )
        await self._state(reader, "secure_channel", reader.session is not None)
        if first is not None:
            await self._handle(reader, first)

    async def _poll(self, reader: _Reader) -> None:
        # One try per round: after a timeout the next round resends with the same sequence
        # number, and the other readers on the line get their turn in between.
        reply = await self._transact(reader, Cmd.POLL, b"", tries=1)
        await self._handle(reader, reply)

    async def _offline(self, reader: _Reader, reason: str, message: str) -> None:
        was_online = reader.online
        reader.online = False
        reader.session = None
        reader.seq = 0
        reader.retry_at = time.monotonic() + 1.0
        reader.last_valid = time.monotonic()  # the next offline report after another period
        # Down also when it never answered since the start: the platform hears it once.
        self.ctx.health.down(reader.device.id, reason, message)
        if was_online:
            reader.counters["offline"] += 1
            await self._emit(reader, "reader.offline", Severity.WARNING, reason=reason)

    async def _security(self, reader: _Reader, kind: str, message: str) -> None:
        """A security failure: an alarm, the session dropped, no plain text, a later retry.
        A lost session (NAK 6) is tried again at once: the handshake itself is the check."""
        reader.counters[f"security_{kind}"] += 1
        reader.session = None
        reader.seq = 0
        was_online, reader.online = reader.online, False
        retry_s = _SESSION_LOST_RETRY_S if kind == "nak_sc_conditions" else _SECURE_RETRY_S
        reader.retry_at = time.monotonic() + retry_s
        self.ctx.health.down(reader.device.id, f"security_{kind}", message)
        self.ctx.log.warning("osdp.security", device=reader.device.id, kind=kind, error=message)
        await self._emit(
            reader, f"security.{kind}", Severity.ALARM, message=message, was_online=was_online
        )

    # ------------------------------------------------------------------ one transaction

    async def _transact(
        self,
        reader: _Reader,
        code: int,
        data: bytes,
        *,
        expect: Sequence[int] | None = None,
        scb: bytes = b"",
        tries: int = 3,
    ) -> Frame:
        """Send one command and return the reader's reply (MAC checked, data decrypted)."""
        config = reader.device
        # The bus first, then the reader: a command holds the bus (the core's hold) before it
        # comes here, so the poll loop must not sit on the reader while it waits for the bus.
        async with self.bus.hold(), reader.lock:
            for _ in range(tries):
                request = self._seal(reader, code, data, scb)
                try:
                    raw = await self.bus.exchange(
                        build_frame(request), reply_length, config.reply_timeout_s
                    )
                except ReplyTimeoutError as exc:
                    reader.counters["timeouts"] += 1
                    if exc.received:
                        self._count_stream(reader, exc.received, complete=False)
                    continue  # the same sequence number again
                reply = self._reply_of(reader, raw, request)
                if reply is None:
                    continue
                reader.last_valid = time.monotonic()
                reader.seq = reader.seq % 3 + 1
                if reply.code == Reply.NAK:
                    await self._nak(reader, reply, code)
                if reply.code == Reply.BUSY:
                    await asyncio.sleep(0.05)
                    continue
                if expect is not None and reply.code not in expect:
                    raise DeviceError(
                        "unexpected_reply", f"{_name(code)} answered with {reply.code:#04x}"
                    )
                return reply
        raise DeviceError("timeout", f"no valid reply from address {config.address}")

    def _seal(self, reader: _Reader, code: int, data: bytes, scb: bytes) -> Frame:
        frame = Frame(reader.device.address, reply=False, seq=reader.seq, code=code, data=data)
        if reader.session is None or scb:  # plain, or a handshake step with its own SCB
            return replace(frame, scb=scb)
        return reader.session.seal_frame(frame)

    def _count_stream(self, reader: _Reader, raw: bytes, *, complete: bool) -> list[Frame]:
        stream = FrameReader()
        frames = stream.feed(raw)
        if not complete:
            stream.discard()
        for reason, count in stream.errors.items():
            reader.counters[reason] += count
            self.bus.note(f"osdp_{reason}", count)
        return frames

    def _reply_of(self, reader: _Reader, raw: bytes, request: Frame) -> Frame | None:
        frames = self._count_stream(reader, raw, complete=True)
        address = reader.device.address
        replies = [f for f in frames if f.reply and f.address == address]
        if not replies:
            reader.counters["no_reply_frame"] += 1
            return None
        reply = replies[0]
        if reply.seq != request.seq:
            reader.counters["sequence"] += 1
            self.bus.note("osdp_sequence")
            return None
        session = reader.session
        if session is None or reply.scb_type in (Scb.SCS_12, Scb.SCS_14):
            return reply
        if reply.scb_type not in (Scb.SCS_16, Scb.SCS_18):
            if reply.code == Reply.NAK and reply.data[:1] == bytes((Nak.SC_CONDITIONS,)):
                # A reader that lost its session (rebooted, or 8 s without a valid command)
                # answers so, in plain text: the NAK handling below starts a new one.
                return reply
            raise _SecurityError("plaintext_reply", "a reply without MAC inside the session")
        try:
            session.check(reply.header(), reply.mac)
            data = session.decrypt(reply.data) if reply.scb_type == Scb.SCS_18 else reply.data
        except SecureChannelError as exc:
            raise _SecurityError("mac_failure", str(exc)) from None
        return Frame(reply.address, reply=True, seq=reply.seq, code=reply.code, data=data)

    async def _nak(self, reader: _Reader, reply: Frame, code: int) -> None:
        nak = reply.data[0] if reply.data else 0
        reader.counters[f"nak_{nak}"] += 1
        if nak == Nak.SC_CONDITIONS:
            raise _SecurityError(
                "nak_sc_conditions", "the reader refused the secure channel (NAK 6)"
            )
        if nak == Nak.SC_UNSUPPORTED and reader.device.secure_channel == "required":
            raise _SecurityError("sc_unsupported", "the reader has no secure channel (NAK 5)")
        if nak == Nak.SEQUENCE:
            reader.seq = 0
        raise _RefusedError(f"nak_{nak}", f"{_name(code)}: NAK {nak}")

    # ------------------------------------------------------------------ secure channel

    async def _handshake(
        self, reader: _Reader, key: bytes | None = None, key_type: int = _KEY_SCBK
    ) -> None:
        """CHLNG, CCRYPT, SCRYPT, RMAC_I with ``key`` (the reader's own by default; SCBK-D,
        key type 0, only for an explicit key installation)."""
        key = reader.key if key is None else key
        assert key is not None
        rnd_a = new_rnd_a()
        ccrypt = await self._transact(
            reader,
            Cmd.CHLNG,
            rnd_a,
            scb=bytes((3, Scb.SCS_11, key_type)),
            expect=(Reply.CCRYPT,),
        )
        if len(ccrypt.data) != 32:
            raise _SecurityError("handshake", "CCRYPT of the wrong length")
        cuid, rnd_b, cryptogram = ccrypt.data[:8], ccrypt.data[8:16], ccrypt.data[16:32]
        try:
            keys = verify_ccrypt(key, rnd_a, rnd_b, cryptogram)
        except SecureChannelError as exc:
            raise _SecurityError("wrong_key", str(exc)) from None
        if reader.cuid and cuid != reader.cuid:
            await self._emit(
                reader,
                "security.identity_changed",
                Severity.ALARM,
                what="cuid",
                was=reader.cuid.hex(),
                now=cuid.hex(),
            )
        reader.cuid = cuid
        cp_crypt = cp_cryptogram(keys, rnd_a, rnd_b)
        rmac = await self._transact(
            reader,
            Cmd.SCRYPT,
            cp_crypt,
            scb=bytes((3, Scb.SCS_13, key_type)),
            expect=(Reply.RMAC_I,),
        )
        expected = rmac_i(keys, cp_crypt)
        if not hmac.compare_digest(rmac.data[:16], expected):
            raise _SecurityError("handshake", "RMAC_I does not verify")
        reader.session = Session.for_cp(keys, expected)

    # ------------------------------------------------------------------ replies

    async def _identity(self, reader: _Reader, data: bytes) -> None:
        if len(data) < 12:
            return
        identity = {
            "vendor": f"{int.from_bytes(data[0:3], 'little'):06X}",
            "model": str(data[3]),
            "version": str(data[4]),
            "serial": f"{int.from_bytes(data[5:9], 'little'):08X}",
            "firmware": f"{data[9]}.{data[10]}.{data[11]}",
        }
        old = reader.identity
        if old and (old["serial"], old["vendor"]) != (identity["serial"], identity["vendor"]):
            await self._emit(
                reader,
                "security.identity_changed",
                Severity.ALARM,
                what="serial",
                was=old["serial"],
                now=identity["serial"],
            )
        if identity != old:
            reader.identity = identity
            self.ctx.inventory_changed()

    async def _handle(self, reader: _Reader, reply: Frame) -> None:
        code, data = reply.code, reply.data
        if code == Reply.RAW and len(data) >= 4:
            bits = data[2] | (data[3] << 8)
            try:
                card = decode_wiegand(data[4:], bits)
            except OsdpError:
                reader.counters["bad_card"] += 1
                return
            await self._emit(
                reader,
                "access.card",
                Severity.INFO,
                reader=data[0],
                format="wiegand" if data[1] == 1 else f"raw_{data[1]}",
                bits=bits,
                raw=card.raw,
                facility=card.facility,
                card=card.card,
                parity_ok=card.parity_ok,
                card_number=_card_number(reader.device, card.raw, card.facility, card.card),
            )
        elif code == Reply.KEYPAD and len(data) >= 2:
            keys = data[2 : 2 + data[1]]
            text = "".join(chr(k) if 32 <= k < 127 else ("*" if k == 0x7F else "#") for k in keys)
            await self._emit(reader, "access.keypad", Severity.INFO, reader=data[0], keys=text)
        elif code == Reply.LSTATR and len(data) >= 2:
            for name, value in (("tamper", data[0]), ("power", data[1])):
                before = getattr(reader, name)
                setattr(reader, name, value)
                if (before is not None and before != value) or (before is None and value):
                    await self._emit(
                        reader,
                        f"reader.{name}",
                        Severity.ALARM if value else Severity.INFO,
                        active=bool(value),
                    )
        elif code == Reply.ISTATR:
            await self._inputs(reader, data)
        elif code == Reply.OSTATR:
            door = reader.device.door
            if door is not None and door.output < len(data):
                released = data[door.output] == 1
                if reader.strike != released:
                    reader.strike = released
                    await self._state(reader, "strike_released", released)

    async def _inputs(self, reader: _Reader, data: bytes) -> None:
        door = reader.device.door
        changed = {n: v for n, v in enumerate(data) if reader.inputs.get(n) != v}
        reader.inputs.update(enumerate(data))
        if door is None:
            return
        now = time.monotonic()
        if door.rex_input is not None and changed.get(door.rex_input) == 1:
            reader.door.rex_at = now
        if door.contact_input is None or door.contact_input not in changed:
            return
        is_open = changed[door.contact_input] == 1
        state = reader.door
        first = state.open is None
        state.open = is_open
        # The door's state as a point too: the page shows its last value, the platform its log.
        await self._state(reader, "door_open", is_open)
        if first and not is_open:
            return
        if is_open:
            state.opened_at = now
            state.held_reported = False
            allowed = now <= state.granted_until or now - state.rex_at <= _REX_GRACE_S
            if allowed or first:
                await self._emit(reader, "door.opened", Severity.INFO)
            else:
                await self._emit(reader, "door.forced_open", Severity.ALARM)
        else:
            await self._emit(
                reader, "door.closed", Severity.INFO, open_s=round(now - state.opened_at, 1)
            )

    async def _door_timers(self, reader: _Reader) -> None:
        door, state = reader.device.door, reader.door
        if door is None or not state.open or state.held_reported:
            return
        if time.monotonic() - state.opened_at >= door.held_open_s:
            state.held_reported = True
            await self._emit(reader, "door.held_open", Severity.WARNING, after_s=door.held_open_s)

    async def _state(self, reader: _Reader, point: str, value: bool) -> None:
        ts, synced = self.ctx.stamp()
        await self.ctx.sink(
            [Reading(device=reader.device.id, ts=ts, ts_synced=synced, point=point, value=value)]
        )

    async def _emit(self, reader: _Reader, type_: str, severity: Severity, /, **data: Any) -> None:
        ts, synced = self.ctx.stamp()
        await self.ctx.sink(
            [
                Event(
                    device=reader.device.id,
                    ts=ts,
                    ts_synced=synced,
                    type=type_,
                    severity=severity,
                    data=data,
                )
            ]
        )

    # ------------------------------------------------------------------ commands

    def command_specs(self) -> Sequence[CommandSpec]:
        return (
            CommandSpec(
                "door.open",
                "release the door's strike for `seconds` (bounded by door.max_open_s)",
                _validate_open,
            ),
            CommandSpec(
                "reader.install_key",
                "give the reader key_file's key (KEYSET inside a secure channel); "
                "install_mode=true: a new reader that still has the public install key",
                _validate_install,
            ),
        )

    async def execute(self, action: str, args: Mapping[str, Any]) -> Mapping[str, Any]:
        reader = self.readers.get(str(args.get("device")))
        if reader is None:
            raise CommandError("unknown_device", f"no reader {args.get('device')!r} on this line")
        if action == "reader.install_key":
            return await self._install_key(reader, install_mode=bool(args.get("install_mode")))
        if action != "door.open":
            raise CommandError("unknown_action", f"OSDP readers do not know {action!r}")
        door = reader.device.door
        if door is None:
            raise CommandError("no_door", f"{reader.device.id} has no door configured")
        if not reader.online:
            raise CommandError("offline", f"{reader.device.id} is offline")
        seconds = int(args.get("seconds") or door.default_open_s)
        if not 1 <= seconds <= door.max_open_s:
            raise CommandError("bad_args", f"seconds must be 1-{door.max_open_s} (door.max_open_s)")
        timer = seconds * 10
        data = bytes((door.output, 5, timer & 0xFF, timer >> 8))
        reader.door.granted_until = time.monotonic() + seconds + _REX_GRACE_S
        try:
            reply = await self._transact(reader, Cmd.OUT, data, expect=(Reply.ACK, Reply.OSTATR))
        except _SecurityError as exc:
            await self._security(reader, exc.kind, str(exc))
            raise CommandError(f"security_{exc.kind}", str(exc)) from None
        except DeviceError as exc:
            raise CommandError(exc.reason, str(exc)) from None
        feedback = await self._feedback(reader, seconds)
        return {
            "output": door.output,
            "seconds": seconds,
            "reply": "ack" if reply.code == Reply.ACK else "ostatr",
            "secure_channel": reader.session is not None,
            "feedback": feedback,
        }

    async def _feedback(self, reader: _Reader, seconds: int) -> bool:
        """Green LED for the open time and one short beep at the reader; best effort (the door
        is already released): False when the reader refused either."""
        timer = seconds * 10
        # LED record: reader, LED; temporary: set-and-start (2), on/off 100 ms units, green on,
        # black off, timer; permanent: no change (0).
        led = bytes((0, 0, 2, 5, 0, 2, 0, timer & 0xFF, timer >> 8, 0, 0, 0, 0, 0))
        beep = bytes((0, 2, 1, 1, 1))  # reader, default tone, 100 ms on, 100 ms off, once
        try:
            await self._transact(reader, Cmd.LED, led, expect=(Reply.ACK,), tries=1)
            await self._transact(reader, Cmd.BUZ, beep, expect=(Reply.ACK,), tries=1)
        except DeviceError as exc:
            reader.counters[f"feedback_{exc.reason}"] += 1
            return False
        return True

    async def _install_key(self, reader: _Reader, *, install_mode: bool) -> Mapping[str, Any]:
        """KEYSET with the configured key_file's key, inside a secure channel: the reader's
        current session, or (``install_mode``, asked for explicitly each time) one opened now
        with the public install key SCBK-D. Never automatic; the core audits who asked."""
        config = reader.device
        if config.secure_channel == "off" or config.key_file is None:
            raise CommandError("no_key", f"{config.id} has secure_channel: off")
        reader.key = None
        if not self._load_key(reader):
            raise CommandError("key_unreadable", f"cannot read {config.key_file}")
        assert reader.key is not None
        new_key = reader.key
        # The poll loop leaves an offline reader alone meanwhile (it would reconnect it).
        reader.retry_at = time.monotonic() + 60
        try:
            if install_mode:
                reader.seq = 0
                reader.session = None
                await self._handshake(reader, SCBK_D, key_type=0x00)
            elif reader.session is None:
                raise CommandError(
                    "no_session",
                    f"{config.id} has no secure channel to send the key in: "
                    "install_mode=true for a reader that still has the install key",
                )
            await self._transact(
                reader, Cmd.KEYSET, bytes((0x01, len(new_key))) + new_key, expect=(Reply.ACK,)
            )
        except _SecurityError as exc:
            await self._security(reader, exc.kind, str(exc))
            raise CommandError(f"security_{exc.kind}", str(exc)) from None
        except DeviceError as exc:
            reader.retry_at = 0.0
            raise CommandError(exc.reason, str(exc)) from None
        # Connect again, now with the new key.
        reader.session = None
        reader.online = False
        reader.seq = 0
        reader.retry_at = 0.0
        self.ctx.log.warning("osdp.key_installed", device=config.id, install_mode=install_mode)
        await self._emit(
            reader, "security.key_installed", Severity.WARNING, install_mode=install_mode
        )
        return {"installed": True, "install_mode": install_mode}

    # ------------------------------------------------------------------ inventory, counters

    def device_inventory(self) -> Mapping[str, Mapping[str, str]]:
        return {rid: dict(r.identity) for rid, r in self.readers.items() if r.identity}

    def counters(self) -> dict[str, dict[str, int]]:
        return {rid: dict(r.counters) for rid, r in self.readers.items()}


def _name(code: int) -> str:
    try:
        return Cmd(code).name
    except ValueError:
        return f"{code:#04x}"


def _validate_open(args: Mapping[str, Any]) -> Mapping[str, Any]:
    seconds = args.get("seconds")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int)):
        raise CommandError("bad_args", "seconds must be a whole number")
    unknown = set(args) - {"seconds", "device", "door"}
    if unknown:
        raise CommandError("bad_args", f"unknown arguments: {', '.join(sorted(unknown))}")
    return {k: v for k, v in args.items() if k != "door"}


def _validate_install(args: Mapping[str, Any]) -> Mapping[str, Any]:
    unknown = set(args) - {"install_mode", "device"}
    if unknown:
        raise CommandError("bad_args", f"unknown arguments: {', '.join(sorted(unknown))}")
    if not isinstance(args.get("install_mode", False), bool):
        raise CommandError("bad_args", "install_mode is true or false")
    return args


def _has_secure_channel(pdcap: bytes) -> bool:
    """PDCAP is 3-byte records (function, compliance, count); function 9 is communication
    security, compliance bit 0: AES-128 supported."""
    return any(pdcap[pos] == 9 and pdcap[pos + 1] & 0x01 for pos in range(0, len(pdcap) - 2, 3))


def _card_number(device: OsdpDevice, raw: str, facility: int | None, card: int | None) -> str:
    if device.card_format == "hex":
        return f"{int(raw, 2):X}"
    if device.card_format == "facility_card" and facility is not None and card is not None:
        return f"{facility:03d}-{card:05d}"
    return str(card if card is not None else int(raw, 2))
