"""Message catalogs: every string the page shows lives in ``i18n/<language>.json``.

Chinese (zh-CN) is the default, English the alternative. The server renders pages with
:meth:`Catalog.t`; the page's script gets the same catalog embedded as JSON, so server and
browser never disagree. A key missing from a catalog falls back to English, then to the key
itself (the tests keep the catalogs complete).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any, Literal

__all__ = ["DEFAULT_LANGUAGE", "LANGUAGES", "Catalog", "catalog", "negotiate", "script_json"]

Language = Literal["zh-CN", "en"]
LANGUAGES: tuple[Language, ...] = ("zh-CN", "en")
DEFAULT_LANGUAGE: Language = "zh-CN"


class Catalog:
    def __init__(self, language: str, messages: dict[str, str], fallback: dict[str, str]) -> None:
        self.language = language
        self.messages = messages
        self._fallback = fallback

    def t(self, key: str, **params: Any) -> str:
        text = self.messages.get(key) or self._fallback.get(key) or key
        return text.format(**params) if params else text

    def json(self) -> str:
        """The catalog for the page's script; safe inside ``<script type=application/json>``."""
        return script_json(self.messages)


def script_json(data: Any) -> str:
    # "<" escaped so no string can close the script element or open a comment.
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


@functools.cache
def _load(language: str) -> dict[str, str]:
    text = resources.files("agent.web").joinpath("i18n", f"{language}.json").read_text("utf-8")
    messages: dict[str, str] = json.loads(text)
    return messages


@functools.cache
def catalog(language: str) -> Catalog:
    if language not in LANGUAGES:
        language = DEFAULT_LANGUAGE
    return Catalog(language, _load(language), _load("en"))


def negotiate(requested: str | None, default: str) -> Language:
    """The language to use: the user's choice if it is one we have, else the configured one."""
    for language in LANGUAGES:
        if requested == language:
            return language
    for language in LANGUAGES:
        if default == language:
            return language
    return DEFAULT_LANGUAGE
