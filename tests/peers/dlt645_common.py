"""What tests/peers/dlt645_meter.py and dlt645_client.py share: address order, identifiers, a
pty's parity and the library's log."""

from __future__ import annotations

import re
import stat
import sys
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


def parse_di(text: str) -> int:
    """``02010100`` (or ``0x02010100``): a data identifier as the standard writes it."""
    if not re.fullmatch(r"(0x)?[0-9A-Fa-f]{8}", text.strip()):
        raise ValueError(f"data identifier must be 8 hex digits, got {text!r}")
    return int(text, 16)


def library_log_to_stderr() -> None:
    """The library keeps its own log off by default (``dlt645.common.base_log``): a plain stderr
    sink for its records only (every RX/TX frame). ``configure_logging()`` is not used because
    it also adds log files inside the installed package directory."""
    from loguru import logger

    logger.add(
        sys.stderr,
        level="DEBUG",
        filter=lambda record: isinstance(record["extra"].get("task"), str),
        format="{time:HH:mm:ss.SSS} {level} {message}",
    )
