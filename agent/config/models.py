"""Typed configuration models (DESIGN.md section 7).

Every model rejects unknown keys. Driver-specific device models live in each driver's
``config.py`` and subclass :class:`DeviceConfig`; the loader assembles them into one
discriminated union on ``driver`` (see :mod:`agent.config.loader`).
"""

from __future__ import annotations

import difflib
import enum
import re
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from buffer.durability import Durability

__all__ = [
    "EVENT_TYPE",
    "IDENT",
    "PASSWORD_HASH",
    "AgentConfig",
    "BleBus",
    "BufferConfig",
    "Bus",
    "ClockConfig",
    "Community",
    "ControlConfig",
    "DeviceConfig",
    "DeviceKind",
    "Durability",
    "EventType",
    "Gateway",
    "HttpUplink",
    "Ident",
    "Location",
    "LoggingConfig",
    "PolledDeviceConfig",
    "SecretRef",
    "SerialBus",
    "StreamedDeviceConfig",
    "StrictModel",
    "TcpBus",
    "UplinkConfig",
    "WebConfig",
    "WebTls",
    "WebUser",
]

IDENT = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Ident = Annotated[str, Field(pattern=IDENT)]

EVENT_TYPE = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$"
EventType = Annotated[str, Field(pattern=EVENT_TYPE)]
"""A dotted lowercase event type such as ``door.forced_open`` (DESIGN.md section 3)."""


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Community(StrictModel):
    code: Annotated[str, Field(pattern=r"^\d{12}$")]
    """12-digit statistical division code: 6-digit county + 3-digit street + 3-digit community."""
    name: str | None = None

    @field_validator("code", mode="before")
    @classmethod
    def _code_is_text(cls, value: Any) -> Any:
        if isinstance(value, int):
            raise ValueError(
                'must be quoted: write the 12-digit code as a string, e.g. "350102001001"'
            )
        return value


_CHINESE_CITIES: Final = frozenset(
    {
        "beijing",
        "peking",
        "chongqing",
        "guangzhou",
        "shenzhen",
        "chengdu",
        "wuhan",
        "nanjing",
        "hangzhou",
        "xian",
        "tianjin",
        "fuzhou",
        "xiamen",
        "shenyang",
        "harbin",
        "china",
        "prc",
        "beijing time",
        "cst",
    }
)
"""Names installers try for China's one time zone, which the IANA database calls Shanghai."""


class Gateway(StrictModel):
    id: Ident
    name: str | None = None
    community: Community
    timezone: str = "Asia/Shanghai"
    code: Annotated[str, Field(pattern=r"^\d{20}$")] | None = None
    """The gateway's own 20-digit code; derived like a device's when absent."""

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            # China has one time zone, named after Shanghai: "Asia/Beijing" would otherwise
            # suggest Asia/Brunei, the closest spelling.
            city = value.rsplit("/", 1)[-1].lower().replace("_", " ")
            china = city in _CHINESE_CITIES
            close = (
                ["Asia/Shanghai"]
                if china
                else difflib.get_close_matches(value, zoneinfo.available_timezones(), n=1)
            )
            hint = f"did you mean {close[0]!r}?" if close else "an IANA name such as Asia/Shanghai"
            raise ValueError(f"unknown timezone {value!r} ({hint})") from None
        return value


class BufferConfig(StrictModel):
    path: Path = Path("/var/lib/edge-agent/buffer.db")
    max_size_mb: Annotated[float, Field(gt=0)] = 1024
    max_age_days: Annotated[float, Field(gt=0)] | None = None
    durability: Durability = Durability.FULL
    commit_interval_ms: Annotated[int, Field(ge=0, le=5000)] = 50
    """Group commit window: appends arriving within it share one transaction."""


class SecretRef(StrictModel):
    """Where a secret comes from. Its value is read at start, never logged, never validated here."""

    file: Path | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of 'file' or 'env'")
        return self


class HttpUplink(StrictModel):
    url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$")]
    key_id: Annotated[str, Field(min_length=1)]
    secret: SecretRef
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 30
    stalled_after_s: Annotated[float, Field(gt=0, le=300)] = 10
    """The page shows the uplink as stalled when a batch has waited this long for its answer
    (a platform that accepts the connection and hangs); the request itself runs on to
    ``timeout_s``."""
    batch_max_records: Annotated[int, Field(ge=1, le=50_000)] = 2000
    batch_max_kb: Annotated[int, Field(ge=1, le=65_536)] = 1024
    backoff_cap_s: Annotated[float, Field(gt=0, le=3600)] = 300
    first_attempt_jitter_s: Annotated[float, Field(ge=0, le=3600)] = 10
    """A district power cut brings hundreds of gateways back at once: spread the first upload."""
    commands: bool = True
    """Long-poll the platform for commands."""
    command_key_file: Path | None = None
    """The platform's Ed25519 public key (PEM) that signs commands; needed when commands is on."""
    command_max_lifetime_s: Annotated[float, Field(gt=0, le=86_400)] = 600
    """Commands valid for longer than this (``expires_ms - issued_ms``) are refused: a
    captured command must not stay usable for hours."""

    @model_validator(mode="after")
    def _cert_pair(self) -> HttpUplink:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class UplinkConfig(StrictModel):
    http: HttpUplink | None = None


class SerialBus(StrictModel):
    port: Annotated[str, Field(min_length=1)]
    baud: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["none", "even", "odd"] = "none"
    data_bits: Literal[7, 8] = 8
    stop_bits: Literal[1, 2] = 1
    inter_frame_ms: Annotated[float, Field(ge=0, le=1000)] | None = None
    """Extra silence between frames; default is the protocol's own (3.5 characters for Modbus)."""


class TcpBus(StrictModel):
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    framer: Literal["socket", "rtu"] = "socket"
    max_in_flight: Annotated[int, Field(ge=1, le=16)] = 1


class BleBus(StrictModel):
    """A Bluetooth adapter the gateway listens with (BlueZ's name for it)."""

    adapter: Annotated[str, Field(pattern=r"^hci[0-9]{1,2}$")] = "hci0"
    mode: Literal["active", "passive"] = "active"
    """active: ask for scan responses (names, more data; more radio traffic)."""
    silent_s: Annotated[float, Field(ge=2, le=3600)] = 120.0
    """A scanner that hears no advert at all for this long is restarted (then less often while
    the air stays quiet)."""
    reset: bool = True
    """As a last resort, reset an adapter that failed to start 3 times in a row or stayed silent
    through 3 scanner restarts (rfkill unblock, power cycle, USB reset), at most every 10 min.
    Needs CAP_NET_ADMIN (see drivers/ble/README.md); without it the attempt is only counted."""
    simulate: bool = False
    """No radio: the enrolled tags are played from a script (drivers/ble/simulated.py), for the
    demo and trials. A gateway in service leaves it off."""


class Bus(StrictModel):
    id: Ident
    serial: SerialBus | None = None
    tcp: TcpBus | None = None
    ble: BleBus | None = None

    @model_validator(mode="after")
    def _one_transport(self) -> Bus:
        given = [k for k in ("serial", "tcp", "ble") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(
                f"give only one of {' or '.join(repr(k) for k in given)}: a bus is one line, "
                "one host or one adapter"
            )
        if not given:
            raise ValueError("missing 'serial', 'tcp' or 'ble': say how the bus is reached")
        return self

    @property
    def kind(self) -> Literal["serial", "tcp", "ble"]:
        if self.serial is not None:
            return "serial"
        return "tcp" if self.tcp is not None else "ble"

    @property
    def max_in_flight(self) -> int:
        """Requests allowed at once: one on a serial line, configurable on TCP."""
        return self.tcp.max_in_flight if self.tcp is not None else 1


class Location(StrictModel):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    building: str | None = None
    unit: str | None = None
    floor: int | None = None
    room: str | None = None


class DeviceKind(enum.StrEnum):
    """What a device is; selects the 3-digit type of its GB/T 28181 code."""

    ELECTRICITY_METER = "electricity_meter"
    WATER_METER = "water_meter"
    HEAT_METER = "heat_meter"
    GAS_METER = "gas_meter"
    ACCESS_CONTROLLER = "access_controller"
    CAMERA = "camera"
    ALARM_INPUT = "alarm_input"
    TAG = "tag"
    SENSOR = "sensor"
    OTHER = "other"


class DeviceConfig(StrictModel):
    """A device's identity, whatever its driver: what it is, where, and what it may be told.

    Drivers subclass :class:`PolledDeviceConfig` (the scheduler reads them) or
    :class:`StreamedDeviceConfig` (they push), not this class directly.
    """

    id: Ident
    driver: str
    name: str | None = None
    kind: DeviceKind = DeviceKind.OTHER
    bus: Ident | None = None
    code: Annotated[str, Field(pattern=r"^\d{20}$")] | None = None
    """Stable 20-digit GB/T 28181-layout code; derived from community, kind, serial_no if absent."""
    serial_no: Annotated[int, Field(ge=0, le=999_999)] | None = None
    manufacturer: str | None = None
    model: str | None = None
    firmware: str | None = None
    location: Location | None = None
    enabled: bool = True
    commands: list[str] = Field(default_factory=list)
    """Command actions the platform or a technician may run on this device (allowlist)."""

    bus_kinds: ClassVar[frozenset[str]] = frozenset()
    """Which bus transports the driver can use (``serial``, ``tcp``); empty: it takes no bus."""
    bus_optional: ClassVar[bool] = False
    """True: the device may run without a bus. With empty ``bus_kinds`` it may also name a bus of
    any kind (the simulated driver does, so scheduler tests can share a bus between devices)."""
    known_commands: ClassVar[frozenset[str]] = frozenset()
    """Command actions the driver implements; ``commands:`` may only list these."""
    address_key: ClassVar[str | None] = None
    """The key that addresses the device on its bus (Modbus ``unit``, a DL/T 645 ``address``, a
    BLE ``mac``): two devices of the driver with the same value on one bus are a config error."""

    @classmethod
    def line_problem(cls, line: SerialBus) -> str | None:
        """Why this protocol cannot run on a serial line with these settings (Modbus RTU needs 8
        data bits, say), or None."""
        del line
        return None

    @property
    def bus_address(self) -> object:
        """The value of :attr:`address_key`, or None."""
        return getattr(self, self.address_key) if self.address_key else None

    @field_validator("code", mode="before")
    @classmethod
    def _code_is_text(cls, value: Any) -> Any:
        if isinstance(value, int):
            raise ValueError("must be quoted: write the 20-digit code as a string")
        return value


class PolledDeviceConfig(DeviceConfig):
    """A device the scheduler reads on its interval."""

    interval_s: Annotated[float, Field(ge=0.05, le=86_400)] = 60
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    offline_after: Annotated[int, Field(ge=1, le=100)] = 3
    """Consecutive failed reads before the device is reported offline."""
    backoff_max_s: Annotated[float, Field(gt=0, le=86_400)] = 300
    """Longest wait between probes of an offline device."""


class StreamedDeviceConfig(DeviceConfig):
    """A device that pushes (a BLE tag's adverts, a camera's events, a reader on a panel)."""

    stale_after_s: Annotated[float, Field(gt=0, le=7 * 86_400)] | None = None
    """Offline (reason ``stale``) when nothing arrived for this long; None: never."""


class LoggingConfig(StrictModel):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    """auto: readable on a terminal, JSON lines otherwise (journald)."""


class ClockConfig(StrictModel):
    synced: Literal["auto", "always", "never"] = "auto"
    """auto: ask the kernel (adjtimex) and systemd-timesyncd whether the clock is synchronised."""


class ControlConfig(StrictModel):
    socket: Path | None = None
    """Local control socket for ``edge-agent command``; defaults beside the buffer file."""


# A pattern for hashes, not a password (hence the noqa).
PASSWORD_HASH = r"^scrypt\$\d{1,8}\$\d{1,3}\$\d{1,3}\$[A-Za-z0-9+/]+=*\$[A-Za-z0-9+/]+=*$"  # noqa: S105
"""``scrypt$N$r$p$salt$key`` (base64), as printed by ``edge-agent hash-password``."""


class WebUser(StrictModel):
    """One login of the diagnostic page."""

    name: Ident
    role: Literal["viewer", "technician"] = "viewer"
    """viewer: sees everything (secrets redacted); technician: may also run test reads and the
    commands the config allows."""
    password_hash: str
    """From ``edge-agent hash-password``; never the password itself."""

    @field_validator("password_hash")
    @classmethod
    def _is_hash(cls, value: str) -> str:
        if not re.fullmatch(PASSWORD_HASH, value):
            raise ValueError(
                "must be a hash printed by 'edge-agent hash-password' (scrypt$...), "
                "never the password itself"
            )
        return value


class WebTls(StrictModel):
    """Serve the page over HTTPS; session cookies are then marked Secure."""

    cert_file: Path
    key_file: Path


class WebConfig(StrictModel):
    """The technician's diagnostic page, its JSON API and /metrics."""

    enabled: bool = True
    listen: str = "0.0.0.0:8080"
    """host:port (``[::]:8080`` for IPv6); port 0 picks a free port (tests, demo)."""
    users: list[WebUser] = Field(default_factory=list)
    """No user, no page: there is no default password."""
    language: Literal["zh-CN", "en"] = "zh-CN"
    """Language of the page until a user switches."""
    metrics: Literal["login", "open"] = "login"
    """login: /metrics needs a page session or ``Authorization: Bearer <metrics_token>``;
    open: anyone on the LAN."""
    metrics_token: SecretRef | None = None
    """The scraper's own token (Prometheus ``authorization.credentials_file``): never a user's
    password, which would cost a 16 MiB scrypt per scrape and lock the user out when wrong."""
    tls: WebTls | None = None
    session_idle_min: Annotated[float, Field(gt=0, le=1440)] = 30
    """Logged out after this long without a user action (the page's own refreshes do not count)."""
    session_max_h: Annotated[float, Field(gt=0, le=168)] = 12
    sessions_per_user: Annotated[int, Field(ge=1, le=64)] = 4
    """A user's oldest session ends at their next login past this; no login evicts another user."""
    login_max_failures: Annotated[int, Field(ge=1, le=100)] = 5
    """Failed logins from one address before that address is refused for a while. Failures for
    one name from many addresses slow those addresses down, never an address that has not failed."""
    login_lockout_s: Annotated[float, Field(gt=0, le=86_400)] = 60
    """First lockout; each further one doubles, up to an hour."""
    max_connections: Annotated[int, Field(ge=8, le=4096)] = 256
    """Open connections in all; more are closed at once (the unit allows 8,192 open files)."""
    max_connections_per_source: Annotated[int, Field(ge=2, le=1024)] = 32
    """Open connections from one address (a phone's browser uses about six)."""
    idle_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 15
    """A connection with no request in progress is closed after this long."""
    header_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10
    """A request's header must be complete this long after its first byte."""
    body_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10
    """A request's body must have arrived this long after its header."""
    refresh_s: Annotated[float, Field(ge=0.5, le=60)] = 2
    """How often open pages fetch fresh figures."""

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError("must be host:port, e.g. 0.0.0.0:8080 or [::]:8080")
        return value

    @field_validator("users")
    @classmethod
    def _unique_names(cls, users: list[WebUser]) -> list[WebUser]:
        seen: set[str] = set()
        for user in users:
            if user.name in seen:
                raise ValueError(f"user name {user.name!r} appears twice")
            seen.add(user.name)
        return users

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def user(self, name: str) -> WebUser | None:
        return next((u for u in self.users if u.name == name), None)


class AgentConfig(StrictModel):
    gateway: Gateway
    buffer: BufferConfig = BufferConfig()
    uplink: UplinkConfig = UplinkConfig()
    buses: list[Bus] = Field(default_factory=list)
    devices: list[DeviceConfig] = Field(default_factory=list)
    logging: LoggingConfig = LoggingConfig()
    clock: ClockConfig = ClockConfig()
    control: ControlConfig = ControlConfig()
    web: WebConfig = WebConfig()

    def bus(self, bus_id: str) -> Bus | None:
        return next((b for b in self.buses if b.id == bus_id), None)
