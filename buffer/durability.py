"""How hard the buffer holds on to what it accepted: the one choice the config makes of it."""

from __future__ import annotations

import enum

__all__ = ["Durability"]


class Durability(enum.StrEnum):
    FULL = "full"
    """fsync on every commit: survives a power cut (the default)."""
    NORMAL = "normal"
    """WAL without fsync per commit: survives a crash, may lose the last commits on power loss."""
