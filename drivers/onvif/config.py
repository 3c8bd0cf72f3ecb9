"""Configuration of an ONVIF camera (``driver: onvif``): where it answers, who logs in, how often
it is checked, and how its events and snapshots are handled.

The camera takes no bus: each camera is its own HTTP peer, so one camera's slowness never
delays another's events. The password is a :class:`~agent.config.models.SecretRef` (a file or
an environment variable), read when the driver starts, never logged, never shown.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from agent.config.models import DeviceKind, SecretRef, StreamedDeviceConfig, StrictModel

__all__ = ["ClockPolicy", "OnvifCamera", "SnapshotPolicy"]

_HOST = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,252}))$"
"""A host name, an IPv4 address or a bracketed IPv6 address; no scheme, no port, no path."""


class ClockPolicy(StrictModel):
    max_offset_s: Annotated[float, Field(gt=0, le=86_400)] = 10.0
    """A camera clock further off than this is reported (``camera.clock_drift``): its event
    times and its WS-Security timestamps are wrong."""
    set_manual: bool = False
    """Set the camera's clock from the gateway's when the camera is on manual time (not NTP),
    drifts past ``max_offset_s`` and the gateway's own clock is synchronised; at most once an
    hour."""


class SnapshotPolicy(StrictModel):
    profile: str | None = None
    """The media profile token whose snapshot is taken; None: the first profile."""
    auth: Literal["auto", "digest", "basic"] = "auto"
    """auto: HTTP digest, then basic if the camera refuses digest (401 twice)."""
    max_kb: Annotated[int, Field(ge=16, le=16_384)] = 1024


class OnvifCamera(StreamedDeviceConfig):
    """One camera, reached over ONVIF (SOAP over HTTP) at ``host:port``."""

    driver: Literal["onvif"]
    kind: DeviceKind = DeviceKind.CAMERA
    host: Annotated[str, Field(pattern=_HOST)]
    port: Annotated[int, Field(ge=1, le=65535)] = 80
    username: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    password: SecretRef | None = None
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    """Each SOAP call's bound (a pull waits ``pull_wait_s`` longer)."""
    max_response_kb: Annotated[int, Field(ge=16, le=16_384)] = 1024
    """A SOAP answer larger than this is refused (``too_large``) before it is parsed."""
    check_every_s: Annotated[float, Field(ge=5, le=3600)] = 30.0
    """Liveness check (GetSystemDateAndTime) and clock reading."""
    inventory_every_s: Annotated[float, Field(ge=60, le=86_400)] = 3600.0
    """How often identity, profiles and URIs are read again (and after every reconnect)."""
    lease_s: Annotated[float, Field(ge=10, le=3600)] = 60.0
    """The PullPoint subscription's termination time; renewed at 80 % of it."""
    pull_wait_s: Annotated[float, Field(ge=0.5, le=60)] = 5.0
    """How long one PullMessages waits on the camera for an event (the camera answers at once
    when one is there)."""
    motion_hold_s: Annotated[float, Field(ge=0, le=600)] = 3.0
    """A motion end is reported only after motion stayed off this long, so a flapping detector
    sends one start and one end, not one pair per frame. Tamper and video loss are not held."""
    raw_events: bool = True
    """Send topics that map to none of motion, tamper or video loss as ``camera.event``."""
    clock: ClockPolicy = Field(default_factory=ClockPolicy)
    snapshot: SnapshotPolicy = Field(default_factory=SnapshotPolicy)

    known_commands: ClassVar[frozenset[str]] = frozenset({"camera.snapshot"})

    @model_validator(mode="after")
    def _consistent(self) -> OnvifCamera:
        if (self.username is None) != (self.password is None):
            raise ValueError("give both 'username' and 'password', or neither")
        if self.pull_wait_s > self.lease_s / 2:
            raise ValueError(
                f"pull_wait_s ({self.pull_wait_s:g}) must be at most half of lease_s "
                f"({self.lease_s:g}), or the subscription can lapse during a pull"
            )
        return self

    @property
    def endpoint(self) -> str:
        """``host:port``, as logs and the page show it."""
        return f"{self.host}:{self.port}"
