"""Which names hold secrets: one rule for the page's view of the config and for every log line.

A key is secret-like when its name says password, secret, token, key (``key``, ``api_key``,
``private_key``, ``master_key``…), PSK, credential, signature or authorization, unless it names
where a secret lives rather than the secret (``key_file``, ``key_id``, ``secret_env``,
``token_path``). A password in a URL (``rtsp://admin:…@camera``) is hidden too. Imports nothing,
so logging can use it before anything else is loaded.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["REDACTED", "hide_url_password", "secret_key"]

REDACTED: Final = "***"

_SECRET_KEY: Final = re.compile(
    r"password|passwd|secret|token|api_?key|private_?key|psk|credential|signature"
    r"|authorization|(?:^|_)key$|^scbk",
    re.IGNORECASE,
)
_NOT_SECRET_SUFFIXES: Final = ("_file", "_id", "_env", "_path")
_URL_PASSWORD: Final = re.compile(
    r"(?P<head>[a-z][a-z0-9+.-]*://[^/:@\s]*:)[^/@\s]*@", re.IGNORECASE
)


def secret_key(name: str) -> bool:
    """True when a value under ``name`` must never be shown or logged."""
    return bool(_SECRET_KEY.search(name)) and not name.lower().endswith(_NOT_SECRET_SUFFIXES)


def hide_url_password(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@`` replaced."""
    if "://" not in text:
        return text
    return _URL_PASSWORD.sub(rf"\g<head>{REDACTED}@", text)
