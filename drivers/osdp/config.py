"""Configuration of the OSDP driver: card readers and door controllers (PDs) on an RS-485 line,
polled by the agent's control panel (CP).

One device per reader, at its OSDP ``address`` on a serial ``bus``. The door it guards is
described under ``door``: which output drives the strike, which inputs are the door contact and
the request-to-exit button. The secure channel is ``required`` by default: the reader's key is
read from ``key_file`` (16 bytes, hex) at start, never logged, never shown, never sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from agent.config.models import DeviceKind, SerialBus, StreamedDeviceConfig, StrictModel

__all__ = ["Door", "OsdpDevice"]


class Door(StrictModel):
    """The door a reader guards, through the reader's own inputs and outputs."""

    output: Annotated[int, Field(ge=0, le=255)] = 0
    """The output that releases the strike (OUT, control code 5: on for a time, then off)."""
    contact_input: Annotated[int, Field(ge=0, le=255)] | None = 0
    """The input of the door contact (1: open); None: no contact, no door state."""
    rex_input: Annotated[int, Field(ge=0, le=255)] | None = None
    """The request-to-exit input (1: pressed): an opening right after it is not forced."""
    held_open_s: Annotated[float, Field(gt=0, le=3600)] = 30
    """Open longer than this: ``door.held_open``."""
    max_open_s: Annotated[int, Field(ge=1, le=600)] = 30
    """The longest ``door.open`` may release the strike."""
    default_open_s: Annotated[int, Field(ge=1, le=600)] = 5


class OsdpDevice(StreamedDeviceConfig):
    """A card reader or door controller on an OSDP line."""

    driver: Literal["osdp"]
    kind: DeviceKind = DeviceKind.ACCESS_CONTROLLER
    address: Annotated[int, Field(ge=0, le=0x7E)]
    """The reader's OSDP address (0-126), set on the reader itself."""
    secure_channel: Literal["required", "off"] = "required"
    """required: only a secure channel with ``key_file``'s key, never plain text; off: plain text
    (a lab bench, or a reader that cannot do better: every card number crosses the wire)."""
    key_file: Path | None = None
    """The reader's secure channel base key (SCBK), 32 hex digits; required unless ``off``."""
    reply_timeout_s: Annotated[float, Field(gt=0, le=2)] = 0.2
    """The spec's 200 ms; a slow bridge may need more."""
    offline_after_s: Annotated[float, Field(gt=0, le=60)] = 8
    """No valid reply for this long: ``reader.offline``."""
    card_format: Literal["decimal", "facility_card", "hex"] = "decimal"
    """How ``card_number`` is written in ``access.card``: the card number alone, ``FFF-CCCCC``,
    or the raw bits as hex. The raw bits are always in the event too."""
    door: Door | None = Door()

    bus_kinds: ClassVar[frozenset[str]] = frozenset({"serial"})
    known_commands: ClassVar[frozenset[str]] = frozenset({"door.open", "reader.install_key"})
    address_key: ClassVar[str | None] = "address"

    @model_validator(mode="after")
    def _key_when_secure(self) -> OsdpDevice:
        if self.secure_channel == "required" and self.key_file is None:
            raise ValueError(
                "secure_channel: required needs key_file (the reader's 16-byte key, 32 hex "
                "digits): set one, or secure_channel: off on a bench"
            )
        if self.door is not None and self.door.default_open_s > self.door.max_open_s:
            raise ValueError("door.default_open_s is longer than door.max_open_s")
        return self

    @classmethod
    def line_problem(cls, serial: SerialBus) -> str | None:
        if serial.data_bits != 8 or serial.parity != "none" or serial.stop_bits != 1:
            return "OSDP runs at 8N1 (8 data bits, no parity, 1 stop bit)"
        return None
