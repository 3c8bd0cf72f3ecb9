"""What tests/peers/dlt645_meter.py and dlt645_client.py share: address order and a pty's parity."""

from __future__ import annotations

import re
import stat
from pathlib import Path


def nameplate_to_wire(address: str) -> bytes:
    """'129078563412' -> b'\\x12\\x34\\x56\\x78\\x90\\x12' (the order on the wire)."""
    if not re.fullmatch(r"[0-9]{12}", address):
        raise ValueError(f"address must be 12 decimal digits, got {address!r}")
    return bytes.fromhex(address)[::-1]


def effective_parity(port: str, parity: str) -> str:
    """The parity to open `port` with. A pty (Unix98 slave, major 136-143) carries no parity,
    and pyserial's open with PARENB on one fails with termios.error EINVAL whenever the parity
    bit is the only setting that changes (the kernel drops PARENB and tcsetattr reports that as
    EINVAL), so ptys are always opened 8N1."""
    import os

    try:
        st = Path(port).stat()
    except OSError:
        return parity
    if stat.S_ISCHR(st.st_mode) and 136 <= os.major(st.st_rdev) <= 143:
        return "N"
    return parity
