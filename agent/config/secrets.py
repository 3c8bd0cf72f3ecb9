"""Secrets: read when the agent starts, never at validation, never logged.

A configuration holds only a :class:`~agent.config.models.SecretRef` (a file or an environment
variable). :func:`redact` gives the configuration as plain data safe to show on the diagnostic
page.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agent.config.models import SecretRef
from agent.secrecy import REDACTED, hide_url_password, secret_key

__all__ = ["REDACTED", "SecretError", "read_secret", "redact"]


class SecretError(Exception):
    """A secret cannot be read. The message names where it was looked for, never a value."""


def read_secret(ref: SecretRef) -> str:
    """The secret ``ref`` points to, without surrounding whitespace (files end with a newline)."""
    if ref.file is not None:
        try:
            value = Path(ref.file).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise SecretError(f"secret file {ref.file} does not exist") from None
        except PermissionError:
            raise SecretError(
                f"secret file {ref.file} cannot be read by this user (check its owner and mode)"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            raise SecretError(f"secret file {ref.file} cannot be read: {reason}") from None
        if not value:
            raise SecretError(f"secret file {ref.file} is empty")
        return value
    if ref.env is not None:
        env_value = os.environ.get(ref.env)
        if env_value is None:
            raise SecretError(f"environment variable {ref.env} is not set")
        if not env_value.strip():
            raise SecretError(f"environment variable {ref.env} is empty")
        return env_value.strip()
    raise SecretError("the secret names neither a file nor an environment variable")


def _plain(value: Any, key: str | None) -> Any:
    if isinstance(value, SecretRef) or (key is not None and secret_key(key) and value is not None):
        return REDACTED
    if isinstance(value, BaseModel):
        return {name: _plain(getattr(value, name), name) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {str(k): _plain(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(item, None) for item in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):
        return hide_url_password(value)
    return value


def redact(config: BaseModel) -> dict[str, Any]:
    """The configuration as plain data with every secret and password-like value as ``***``."""
    plain: dict[str, Any] = _plain(config, None)
    return plain
