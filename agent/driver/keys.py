"""Key files of the driver families (an OSDP reader's secure-channel key, a BLE tag's bind key):
``size`` bytes written as hex digits, read at start, never logged, never shown, never sent.

A driver's password (a camera's) is a :class:`~agent.config.models.SecretRef`: ``read_secret``
is re-exported here, so drivers read secrets through their contract, as the uplink does."""

from __future__ import annotations

from pathlib import Path

from agent.config.secrets import SecretError, read_secret

__all__ = ["KeyFileError", "SecretError", "read_key", "read_secret"]


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
