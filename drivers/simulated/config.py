"""Configuration of the simulated driver: devices that need no hardware.

Used by the demo, by installers trying the agent on a laptop, and by tests of the scheduler,
buffer and uplink. Everything is deterministic for a given ``seed``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from agent.config.models import DeviceKind, EventType, Ident, PolledDeviceConfig, StrictModel

__all__ = ["SimEvent", "SimFailure", "SimPoint", "SimulatedDevice"]

Probability = Annotated[float, Field(ge=0, le=1)]


class SimPoint(StrictModel):
    """One simulated reading."""

    name: Ident
    kind: Literal["counter", "sine", "random_walk", "constant"]
    unit: str | None = None
    start: float = 0
    """First value (counter, random walk)."""
    step: float = 1
    """Counter: increment per read. Random walk: largest change per read."""
    amplitude: float = 1
    """Sine: half the peak-to-peak swing."""
    period_s: Annotated[float, Field(gt=0)] = 60
    """Sine: seconds per full cycle."""
    offset: float = 0
    """Sine: the centre value."""
    min: float | None = None
    """Random walk: lower bound."""
    max: float | None = None
    """Random walk: upper bound."""
    value: bool | float | str | None = None
    """Constant: the value every read returns."""
    decimals: Annotated[int, Field(ge=0, le=9)] | None = None
    """Round readings to this many decimals."""

    @field_validator("value", mode="before")
    @classmethod
    def _scalar(cls, value: Any) -> Any:
        # Without this a list or mapping gets one error per union member (number, bool, text).
        if value is not None and not isinstance(value, bool | int | float | str):
            raise ValueError("must be a number, true/false or text")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SimPoint:
        if self.kind == "constant" and self.value is None:
            raise ValueError("a constant point needs 'value'")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"'min' ({self.min:g}) is above 'max' ({self.max:g})")
        return self


class SimEvent(StrictModel):
    """An event the device raises now and then."""

    type: EventType
    severity: Literal["info", "warning", "alarm", "critical"] = "info"
    every_polls: Annotated[int, Field(ge=1)] | None = None
    """Raise it on every N-th read."""
    probability: Probability | None = None
    """Raise it on each read with this probability."""
    data: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_trigger(self) -> SimEvent:
        if (self.every_polls is None) == (self.probability is None):
            raise ValueError("give exactly one of 'every_polls' or 'probability'")
        return self


class SimFailure(StrictModel):
    """How the device misbehaves, for testing health tracking and backoff."""

    mode: Literal["none", "timeout", "bad_value", "silent", "crash"]
    """timeout: the read times out; bad_value: readings come back with quality bad; silent: the
    read returns nothing; crash: the read raises an unexpected exception (a driver bug)."""
    probability: Probability = 1.0
    """Chance that a read fails once failures have started."""
    after_polls: Annotated[int, Field(ge=0)] = 0
    """Reads that succeed before failures start."""


class SimulatedDevice(PolledDeviceConfig):
    """A device whose readings are computed, not read from a wire."""

    driver: Literal["simulated"]
    kind: DeviceKind = DeviceKind.SENSOR
    points: Annotated[list[SimPoint], Field(min_length=1)]
    seed: int = 0
    """Seed of the device's random generator: the same seed gives the same readings."""
    latency_ms: Annotated[float, Field(ge=0)] = 5
    """How long a read takes."""
    events: list[SimEvent] = Field(default_factory=list)
    failure: SimFailure | None = None

    # A simulated device needs no bus, but may name one of any kind so that scheduler tests can
    # put several devices on one shared bus and watch them being serialised.
    bus_kinds: ClassVar[frozenset[str]] = frozenset()
    bus_optional: ClassVar[bool] = True
    known_commands: ClassVar[frozenset[str]] = frozenset({"output.set", "simulate.fault"})

    @field_validator("points")
    @classmethod
    def _unique_names(cls, points: list[SimPoint]) -> list[SimPoint]:
        first: dict[str, int] = {}
        errors: list[InitErrorDetails] = []
        for index, point in enumerate(points):
            if point.name in first:
                # Raised as a ValidationError so the error points at the duplicate's own line.
                message = (
                    f"point name {point.name!r} is already used by points[{first[point.name]}]"
                )
                errors.append(
                    InitErrorDetails(
                        type=PydanticCustomError("duplicate_name", message),
                        loc=(index, "name"),
                        input=point.name,
                    )
                )
            else:
                first[point.name] = index
        if errors:
            raise ValidationError.from_exception_data("points", errors)
        return points
