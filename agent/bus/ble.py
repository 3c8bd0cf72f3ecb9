"""A Bluetooth adapter as a bus: what the core knows of the radio a BLE driver listens with.

Nothing is framed or exchanged on it: the scanner driver owns the listening and tells the handle
how the adapter is (:meth:`BusHandle.link_up`, :meth:`BusHandle.link_down`), so that an adapter
that is off or a scanner that went silent makes its tags ``unknown`` (the bus is the cause, one
``bus.link_down`` event) instead of every tag "away".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.bus._base import BusHandle, LinkListener

if TYPE_CHECKING:
    from agent.config.models import Bus

__all__ = ["BleAdapter"]


class BleAdapter(BusHandle):
    kind = "ble"

    def __init__(self, config: Bus, *, on_link: LinkListener | None = None) -> None:
        assert config.ble is not None
        self.adapter = config.ble.adapter
        self.mode = config.ble.mode
        self.silent_s = config.ble.silent_s
        self.simulate = config.ble.simulate
        self.reset = config.ble.reset and not config.ble.simulate
        super().__init__(config, slots=1, on_link=on_link)

    @property
    def where(self) -> str:
        return f"bluetooth {self.adapter}" + (" (simulated)" if self.simulate else "")
