"""Key files of the driver families (an OSDP reader's secure-channel key, a BLE tag's bind key):
``size`` bytes written as hex digits, read at start, never logged, never shown, never sent."""

from __future__ import annotations

from pathlib import Path

__all__ = ["KeyFileError", "read_key"]


class KeyFileError(ValueError):
    """Why a key file cannot be used; the message names the file, never its content."""


def read_key(path: Path, size: int = 16) -> bytes:
    try:
        key = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror}") from None
    except (UnicodeDecodeError, ValueError):
        raise KeyFileError(f"{path}: not {size * 2} hex digits") from None
    if len(key) != size:
        raise KeyFileError(f"{path}: not {size} bytes")
    return key
