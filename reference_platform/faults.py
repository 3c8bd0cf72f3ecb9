"""What ``POST /admin/fault`` can make the platform do: refuse, 503, 500, 429, hang, slow, 413,
and answer 200 without storing anything (``portal``: a captive portal's page; ``bad_ack``: a
JSON document that is not an acknowledgement)."""

from __future__ import annotations

import dataclasses
from typing import Any, Final

FAULT_MODES: Final = (
    "none",
    "refuse",
    "400",
    "503",
    "500",
    "429",
    "hang",
    "slow",
    "portal",
    "bad_ack",
)


@dataclasses.dataclass(slots=True)
class Fault:
    mode: str = "none"
    retry_after_s: float | None = None
    delay_s: float = 0.0
    count: int | None = None
    """Agent requests still to affect; None: until changed."""
    max_records: int | None = None
    """Batches with more records than this get 413 (independent of ``mode``)."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
