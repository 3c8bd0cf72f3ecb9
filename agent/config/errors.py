"""Configuration errors an installer can act on: ``file:line:col: path.to.key: message``."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Sequence

__all__ = ["ConfigError", "ConfigIssue", "Mark", "did_you_mean", "format_path", "known_hint"]

PathKey = str | int
"""One step of a path into the configuration: a mapping key or a list index."""


@dataclasses.dataclass(frozen=True, slots=True)
class Mark:
    """Where a value sits in a YAML file; line and col are 1-based."""

    file: str
    line: int
    col: int


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class ConfigIssue:
    """One thing wrong with a configuration. Field order is the sort order."""

    file: str
    line: int
    col: int
    path: str
    """Dotted keys with list indices in brackets, ``devices[2].points[5].data_type``; empty for
    the file as a whole."""
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    @classmethod
    def at(cls, mark: Mark, path: Sequence[PathKey], message: str) -> ConfigIssue:
        return cls(mark.file, mark.line, mark.col, format_path(path), message)


class ConfigError(Exception):
    """The configuration is not usable. ``issues`` holds every problem found, sorted."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: list[ConfigIssue] = sorted(set(issues))
        super().__init__("\n".join(str(issue) for issue in self.issues))


def format_path(path: Sequence[PathKey]) -> str:
    text = ""
    for key in path:
        if isinstance(key, int):
            text += f"[{key}]"
        else:
            text += f".{key}" if text else str(key)
    return text


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest choice to a mistyped word, if one is close enough to be a likely typo."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def known_hint(word: str, choices: Iterable[str], label: str = "known") -> str:
    """``(known: a, b; did you mean 'a'?)``, the suggestion only when one is close."""
    listed = list(choices)
    close = did_you_mean(word, listed)
    suggestion = f"; did you mean {close!r}?" if close is not None else ""
    return f"({label}: {', '.join(listed)}{suggestion})"
