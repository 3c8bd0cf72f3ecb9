"""The OSDP secure channel (SCS 0x11–0x18): session keys, cryptograms, the MAC chain and data
encryption, on AES-128 from ``cryptography``. Pure functions and one small state object.

Handshake: CP → ``CHLNG(RND.A)`` (SCB 0x11); PD → ``CCRYPT(cUID, RND.B, PD cryptogram)`` (0x12);
CP → ``SCRYPT(CP cryptogram)`` (0x13); PD → ``RMAC_I`` (0x14). Then every frame carries a 4-byte
MAC: commands chain on the previous reply's MAC (RMAC_I for the first), replies on the previous
command's; data of SCB 0x17/0x18 is AES-CBC encrypted with S-ENC, IV = NOT(last MAC).

Fail closed: a cryptogram or MAC that does not verify is :class:`SecureChannelError`, never a
reason to carry on in plain text. RND.A comes from :mod:`secrets`; every comparison is
:func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, replace

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from drivers.osdp.codec import Frame, Scb

__all__ = [
    "SCBK_D",
    "SecureChannelError",
    "Session",
    "SessionKeys",
    "cp_cryptogram",
    "derive_keys",
    "mac",
    "new_rnd_a",
    "pd_cryptogram",
    "rmac_i",
]

SCBK_D = bytes(range(0x30, 0x40))
"""The default (install) key, ``30 31 … 3F``: public, so never used for anything but install."""
BLOCK = 16


class SecureChannelError(Exception):
    """The secure channel failed: wrong key, a forged or replayed frame. ``reason`` for counts."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _ecb(key: bytes, block: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - OSDP's KDF
    return encryptor.update(block) + encryptor.finalize()


def _cbc(key: bytes, iv: bytes, data: bytes, *, decrypt: bool = False) -> bytes:
    cipher = Cipher(algorithms.AES(key), modes.CBC(iv))
    worker = cipher.decryptor() if decrypt else cipher.encryptor()
    return worker.update(data) + worker.finalize()


def pad(data: bytes) -> bytes:
    """``80 00…`` to a whole number of blocks (always at least the ``80``)."""
    padded = data + b"\x80"
    return padded + b"\x00" * (-len(padded) % BLOCK)


def unpad(data: bytes) -> bytes:
    end = data.rstrip(b"\x00")
    if not end or end[-1] != 0x80:
        raise SecureChannelError("padding", "encrypted data without its 80 00… padding")
    return end[:-1]


@dataclass(frozen=True, slots=True)
class SessionKeys:
    enc: bytes
    mac1: bytes
    mac2: bytes


def derive_keys(scbk: bytes, rnd_a: bytes) -> SessionKeys:
    """S-ENC, S-MAC1, S-MAC2 from the reader's key and the CP's random number."""
    if len(scbk) != BLOCK or len(rnd_a) != 8:
        raise ValueError("SCBK is 16 bytes and RND.A 8")
    tail = rnd_a[:6] + b"\x00" * 8
    return SessionKeys(
        enc=_ecb(scbk, b"\x01\x82" + tail),
        mac1=_ecb(scbk, b"\x01\x01" + tail),
        mac2=_ecb(scbk, b"\x01\x02" + tail),
    )


def pd_cryptogram(keys: SessionKeys, rnd_a: bytes, rnd_b: bytes) -> bytes:
    return _ecb(keys.enc, rnd_a + rnd_b)


def cp_cryptogram(keys: SessionKeys, rnd_a: bytes, rnd_b: bytes) -> bytes:
    return _ecb(keys.enc, rnd_b + rnd_a)


def rmac_i(keys: SessionKeys, cp_crypt: bytes) -> bytes:
    """The initial reply MAC: the CP cryptogram encrypted with S-MAC1, then with S-MAC2."""
    return _ecb(keys.mac2, _ecb(keys.mac1, cp_crypt))


def mac(keys: SessionKeys, iv: bytes, message: bytes) -> bytes:
    """The 16-byte MAC of ``message`` (SOM..DATA): AES-CBC with S-MAC1 over all blocks but the
    last, S-MAC2 for the last, padded ``80 00…`` only when not a whole number of blocks."""
    data = message if message and len(message) % BLOCK == 0 else pad(message)
    chain = iv
    for start in range(0, len(data) - BLOCK, BLOCK):
        chain = _cbc(keys.mac1, chain, data[start : start + BLOCK])
    return _cbc(keys.mac2, chain, data[-BLOCK:])


def new_rnd_a() -> bytes:
    return secrets.token_bytes(8)


@dataclass(slots=True)
class Session:
    """One secure session, after the handshake verified, seen from one end: the CP (its
    commands are what it sends) or the reader (its replies are). Each frame's MAC chains on the
    last one from the other end; encrypted data uses NOT(that MAC) as its IV."""

    keys: SessionKeys
    sent: bytes
    """The MAC of the last frame this end sent (the reader's starts as RMAC_I)."""
    heard: bytes
    """The MAC of the last frame this end verified (the CP's starts as RMAC_I)."""

    @classmethod
    def for_cp(cls, keys: SessionKeys, initial_rmac: bytes) -> Session:
        return cls(keys=keys, sent=b"", heard=initial_rmac)

    @classmethod
    def for_pd(cls, keys: SessionKeys, initial_rmac: bytes) -> Session:
        return cls(keys=keys, sent=initial_rmac, heard=b"")

    def seal(self, header: bytes) -> bytes:
        """The 4 MAC bytes of a frame to send; ``header`` is SOM..DATA (encrypted data
        included)."""
        full = mac(self.keys, self.heard, header)
        self.sent = full
        return full[:4]

    def check(self, header: bytes, got: bytes) -> None:
        """Verify a received frame's 4 MAC bytes (constant time); the chain moves on only if
        it holds."""
        full = mac(self.keys, self.sent, header)
        if len(got) != 4 or not hmac.compare_digest(full[:4], got):
            raise SecureChannelError("mac", "the MAC of what arrived does not verify")
        self.heard = full

    def seal_frame(self, frame: Frame) -> Frame:
        """``frame`` as it goes out inside the session: its data encrypted (SCB 0x17/0x18) or
        none (0x15/0x16), and its MAC."""
        if frame.reply:
            kind = Scb.SCS_18 if frame.data else Scb.SCS_16
        else:
            kind = Scb.SCS_17 if frame.data else Scb.SCS_15
        data = self.encrypt(frame.data) if frame.data else b""
        draft = replace(frame, data=data, scb=bytes((2, kind)), mac=b"\0" * 4)
        return replace(draft, mac=self.seal(draft.header()))

    def encrypt(self, data: bytes) -> bytes:
        return _cbc(self.keys.enc, _inverted(self.heard), pad(data))

    def decrypt(self, data: bytes) -> bytes:
        if not data or len(data) % BLOCK:
            raise SecureChannelError("length", "encrypted data is not whole AES blocks")
        return unpad(_cbc(self.keys.enc, _inverted(self.sent), data, decrypt=True))


def _inverted(data: bytes) -> bytes:
    return bytes(~b & 0xFF for b in data)


def verify_ccrypt(scbk: bytes, rnd_a: bytes, rnd_b: bytes, got: bytes) -> SessionKeys:
    """The keys of a session whose PD cryptogram verified; else :class:`SecureChannelError`
    (the reader does not have the key we have)."""
    keys = derive_keys(scbk, rnd_a)
    if not hmac.compare_digest(pd_cryptogram(keys, rnd_a, rnd_b), got):
        raise SecureChannelError("cryptogram", "the reader's cryptogram does not verify: wrong key")
    return keys
