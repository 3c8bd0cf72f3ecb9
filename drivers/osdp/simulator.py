"""A simulated OSDP reader (PD) with a door: for the demo and for trying a line without hardware.

It answers ID, CAP, POLL, ISTAT, LSTAT, OUT, LED, BUZ, CHLNG, SCRYPT and KEYSET at its address,
in plain text or in a secure channel with its key; it presents a card every ``card_every_s``
(or on :meth:`present`), and its door opens when OUT releases the strike and closes again after
the timer, reported as input status. It runs on a file descriptor (one end of a pty pair: the
demo's ``os.openpty``, or ``edge-agent simulate osdp --port``).

It is our own codec on the other side, so it proves nothing about interoperability: that is
what the tests against libosdp's reader do.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.driver.keys import read_key
from agent.driver.simulation import serve_line
from drivers.osdp.codec import Cmd, Frame, FrameReader, Nak, Reply, Scb, build_frame
from drivers.osdp.config import OsdpDevice
from drivers.osdp.secure import (
    SCBK_D,
    SecureChannelError,
    Session,
    cp_cryptogram,
    derive_keys,
    pd_cryptogram,
    rmac_i,
)

if TYPE_CHECKING:
    from agent.config.models import DeviceConfig

__all__ = ["SimulatedReader", "line_device"]

# Function codes of PDCAP: contact status, output control, card format, LED, audible,
# communication security (AES-128), check character (CRC-16).
_CAPS = bytes((1, 1, 2, 2, 1, 1, 3, 1, 0, 4, 1, 1, 5, 1, 1, 9, 1, 1, 8, 1, 0))
_CARD = bytes.fromhex("7b11d780")


@dataclass(slots=True)
class SimulatedReader:
    address: int
    key: bytes | None = None
    """None: plain text only (no secure channel capability)."""
    card_every_s: float | None = None
    seq: int | None = None
    session: Session | None = None
    pending: deque[tuple[int, bytes]] = field(default_factory=deque)
    inputs: list[int] = field(default_factory=lambda: [0, 0])
    outputs_on: int = 0
    handshake: tuple[bytes, bytes, bytes] | None = None
    """RND.A, RND.B and the key of a handshake under way."""
    cards_presented: int = 0
    answer_delay_s: float = 0.0
    _door_task: asyncio.Task[None] | None = None
    _reader: FrameReader = field(default_factory=FrameReader)
    _card_at: float | None = None

    # ------------------------------------------------------------------ what happens at the door

    def present(self, card: bytes = _CARD, bits: int = 26) -> None:
        """A card at the reader: reported in the reply to the next POLL."""
        self.cards_presented += 1
        self.pending.append((Reply.RAW, bytes((0, 1, bits & 0xFF, bits >> 8)) + card))

    def _set_input(self, number: int, value: int) -> None:
        self.inputs[number] = value
        self.pending.append((Reply.ISTATR, bytes(self.inputs)))

    async def _door_cycle(self, seconds: float) -> None:
        await asyncio.sleep(0.5)  # someone pushes the released door open...
        self._set_input(0, 1)
        await asyncio.sleep(max(0.5, seconds))  # ...and it swings shut after them
        self._set_input(0, 0)

    # ------------------------------------------------------------------ one command

    def answer(self, command: Frame) -> Frame | None:
        """The reply to a command for us (None: not for us, or nothing to say)."""
        if command.reply or command.address not in (self.address, 0x7F):
            return None
        if command.seq == 0:
            self.session = None
        elif self.seq is not None and command.seq not in (self.seq % 3 + 1, self.seq):
            return self._reply(command, Reply.NAK, bytes((Nak.SEQUENCE,)), plain=True)
        self.seq = command.seq
        data = command.data
        if self.session is not None and command.scb_type in (Scb.SCS_15, Scb.SCS_17):
            try:
                self.session.check(command.header(), command.mac)
                if command.scb_type == Scb.SCS_17:
                    data = self.session.decrypt(data)
            except SecureChannelError:
                self.session = None
                return self._reply(command, Reply.NAK, bytes((Nak.SC_CONDITIONS,)), plain=True)
        elif self.session is not None and command.code not in (Cmd.CHLNG, Cmd.SCRYPT):
            # A plain command inside a session: refused, and the session ends.
            self.session = None
            return self._reply(command, Reply.NAK, bytes((Nak.SC_CONDITIONS,)), plain=True)
        return self._dispatch(command, data)

    def _dispatch(self, command: Frame, data: bytes) -> Frame:
        code = command.code
        if code == Cmd.ID:
            ident = bytes.fromhex("c3b2a1") + bytes((1, 2)) + (0x5EED).to_bytes(4, "little")
            return self._reply(command, Reply.PDID, ident + bytes((1, 0, 0)))
        if code == Cmd.CAP:
            caps = _CAPS if self.key is not None else _CAPS[:15] + _CAPS[18:]
            return self._reply(command, Reply.PDCAP, caps)
        if code == Cmd.CHLNG:
            return self._challenge(command, data)
        if code == Cmd.SCRYPT:
            return self._scrypt(command, data)
        if code == Cmd.ISTAT:
            return self._reply(command, Reply.ISTATR, bytes(self.inputs))
        if code == Cmd.LSTAT:
            return self._reply(command, Reply.LSTATR, b"\x00\x00")
        if code == Cmd.OUT and len(data) >= 4:
            timer = (data[2] | (data[3] << 8)) / 10
            if data[1] == 5 and timer > 0:
                self.outputs_on += 1
                self._door_task = asyncio.get_running_loop().create_task(self._door_cycle(timer))
            return self._reply(command, Reply.ACK, b"")
        if code == Cmd.KEYSET and self.session is not None and len(data) >= 18:
            self.key = data[2 : 2 + data[1]]
            return self._reply(command, Reply.ACK, b"")
        if code in (Cmd.LED, Cmd.BUZ):
            return self._reply(command, Reply.ACK, b"")
        if code == Cmd.POLL:
            if self.pending:
                reply_code, payload = self.pending.popleft()
                return self._reply(command, reply_code, payload)
            return self._reply(command, Reply.ACK, b"")
        return self._reply(command, Reply.NAK, bytes((Nak.UNKNOWN_COMMAND,)))

    def _challenge(self, command: Frame, rnd_a: bytes) -> Frame:
        if self.key is None:
            return self._reply(command, Reply.NAK, bytes((Nak.SC_UNSUPPORTED,)), plain=True)
        use_default = len(command.scb) >= 3 and command.scb[2] == 0x00
        key = SCBK_D if use_default else self.key
        rnd_b = secrets.token_bytes(8)
        self.handshake = (rnd_a[:8], rnd_b, key)
        keys = derive_keys(key, rnd_a[:8])
        cuid = (0x5EED).to_bytes(8, "big")
        body = cuid + rnd_b + pd_cryptogram(keys, rnd_a[:8], rnd_b)
        scb = bytes((3, Scb.SCS_12, 0x00 if use_default else 0x01))
        return Frame(
            self.address, reply=True, seq=command.seq, code=Reply.CCRYPT, data=body, scb=scb
        )

    def _scrypt(self, command: Frame, cryptogram: bytes) -> Frame:
        if self.handshake is None:
            return self._reply(command, Reply.NAK, bytes((Nak.SC_CONDITIONS,)), plain=True)
        rnd_a, rnd_b, key = self.handshake
        self.handshake = None
        keys = derive_keys(key, rnd_a)
        expected = cp_cryptogram(keys, rnd_a, rnd_b)
        if not secrets.compare_digest(expected, cryptogram[:16]):
            return self._reply(command, Reply.NAK, bytes((Nak.SC_CONDITIONS,)), plain=True)
        initial = rmac_i(keys, expected)
        self.session = Session.for_pd(keys, initial)
        scb = bytes((3, Scb.SCS_14, 0x01))
        return Frame(
            self.address, reply=True, seq=command.seq, code=Reply.RMAC_I, data=initial, scb=scb
        )

    def _reply(self, command: Frame, code: int, data: bytes, *, plain: bool = False) -> Frame:
        reply = Frame(self.address, reply=True, seq=command.seq, code=code, data=data)
        session = None if plain else self.session
        return reply if session is None else session.seal_frame(reply)

    # ------------------------------------------------------------------ the line

    def hear(self, data: bytes, /) -> bytes | None:
        """What came over the line; the replies to the commands for this reader (the line
        peer's side: :class:`agent.driver.simulation.LineDevice`). A card is due every
        ``card_every_s``, reported in the reply to the next POLL."""
        now = time.monotonic()
        if self.card_every_s:
            if self._card_at is None:
                # The first card soon, so whoever just started the demo sees one.
                self._card_at = now + min(3.0, self.card_every_s)
            elif now >= self._card_at:
                self.present()
                self._card_at = now + self.card_every_s
        out = bytearray()
        for frame in self._reader.feed(data):
            reply = self.answer(frame)
            if reply is not None:
                out += build_frame(reply, mark=False)
        return bytes(out) or None

    async def serve(self, fd: int) -> None:
        """Answer on ``fd`` (a pty end, raw mode) until cancelled."""
        try:
            await serve_line(fd, [self])
        finally:
            if self._door_task is not None:
                self._door_task.cancel()


def line_device(device: DeviceConfig) -> SimulatedReader:
    """The registry's peer (:attr:`drivers.DriverSpec.peer`): a reader for ``device``, with its
    key file's key (the demo's), a card every 15 s."""
    assert isinstance(device, OsdpDevice)
    key = None
    if device.secure_channel == "required" and device.key_file is not None:
        key = read_key(device.key_file)
    return SimulatedReader(address=device.address, key=key, card_every_s=15)
