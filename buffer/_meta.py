"""The buffer's bookkeeping shared by its modules: the ``meta`` counters and the tables."""

from __future__ import annotations

import dataclasses
from typing import Final

from agent.records import PRIORITY_ALARM, PRIORITY_EVENT, PRIORITY_READING

__all__ = ["MAX_SEQ", "ROW_OVERHEAD", "TABLE", "TS", "Counters"]

ROW_OVERHEAD: Final = 32
"""Bytes counted per row on top of its JSON body: key, cell pointer, record header and page slack,
measured at 25-35 bytes per row for typical readings. The bound is on body + this overhead."""

MAX_SEQ: Final = 2**63 - 1
TS: Final = "json_extract(CAST(body AS TEXT), '$.ts')"
"""SQL for a row's ``ts``."""
TABLE: Final = {PRIORITY_ALARM: "alarms", PRIORITY_EVENT: "events", PRIORITY_READING: "readings"}
"""The table of each priority class, in the order ``take`` drains them."""


@dataclasses.dataclass(slots=True)
class Counters:
    """The ``meta`` counters; the copy in memory is only ever replaced after a commit."""

    last_seq: int
    bytes: int
    events: int
    readings: int
    dropped_readings: int
    dropped_events: int
    poisoned: int

    def row(self) -> tuple[int, ...]:
        return (
            self.last_seq,
            self.bytes,
            self.events,
            self.readings,
            self.dropped_readings,
            self.dropped_events,
            self.poisoned,
        )
