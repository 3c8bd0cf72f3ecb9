"""One camera's ONVIF link on ``onvif-zeep-async``: hardened XML, bounded answers, classified
failures, and the calls the driver and the installer tools make.

- **XML is untrusted.** zeep parses every answer with ``onvif``'s shared settings;
  :func:`harden_xml` turns DTDs, entities and external references off there and drops lxml's
  huge-tree mode, before any camera is asked anything (it runs when this module is imported).
- **Answers are bounded.** Every service of a camera shares one aiohttp session whose responses
  refuse a body over ``max_response_kb`` before zeep sees it, and every call runs under
  ``asyncio.timeout``.
- **Failures are classified** by :func:`classify` into the reasons the platform sees (timeout,
  unreachable, auth_failed, http_error, soap_fault, bad_xml, xml_forbidden, too_large,
  not_supported) with a short message that never carries a credential or the camera's XML.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import hashlib
import re
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import onvif.settings
import zeep.exceptions
from onvif import ONVIFCamera
from onvif.exceptions import ONVIFAuthError, ONVIFError, ONVIFTimeoutError
from onvif.util import normalize_url

if TYPE_CHECKING:
    from onvif.client import ONVIFService

__all__ = [
    "CameraFault",
    "CameraLink",
    "Clock",
    "PullPoint",
    "ResponseTooLargeError",
    "Snapshot",
    "classify",
    "harden_xml",
    "strip_credentials",
]

T = TypeVar("T")

_PULLPOINT_NS: Final = "http://www.onvif.org/ver10/events/wsdl/PullPointSubscription"
_EVENTS_NS: Final = "http://www.onvif.org/ver10/events/wsdl"
_MAX_PROFILES: Final = 8
_MESSAGE_MAX: Final = 160
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]+")


def harden_xml() -> None:
    """No DTDs, entities or external references in anything zeep parses for ``onvif``, and no
    huge trees (lxml's limits on depth and text size stay on)."""
    settings = onvif.settings.DEFAULT_SETTINGS
    settings.forbid_dtd = True
    settings.forbid_entities = True
    settings.forbid_external = True
    settings.xml_huge_tree = False


harden_xml()


class ResponseTooLargeError(aiohttp.ClientPayloadError):
    """A camera's answer is larger than its bound; it was not parsed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"answer larger than {limit // 1024} KB")
        self.limit = limit


class NotXmlError(aiohttp.ClientPayloadError):
    """A SOAP answer that is not XML at all (a reboot's "503 rebooting", garbage): zeep's
    forgiving parser would make nothing of it and fail obscurely, so it never gets it."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}: not XML")
        self.status = status


def _bounded_response(limit: int, *, soap: bool = False) -> type[aiohttp.ClientResponse]:
    """Responses that refuse a body over ``limit`` bytes (and, for ``soap``, one that is not
    XML)."""

    class Bounded(aiohttp.ClientResponse):
        async def read(self) -> bytes:
            if self._body is None:
                length = self.content_length
                if length is not None and length > limit:
                    self.close()
                    raise ResponseTooLargeError(limit)
                chunks: list[bytes] = []
                size = 0
                async for chunk in self.content.iter_any():
                    size += len(chunk)
                    if size > limit:
                        self.close()
                        raise ResponseTooLargeError(limit)
                    chunks.append(chunk)
                self._body = b"".join(chunks)
                if soap and not self._body.lstrip().startswith(b"<"):
                    raise NotXmlError(self.status)
            return await super().read()

    return Bounded


@dataclass(frozen=True, slots=True)
class CameraFault(Exception):  # noqa: N818 - a fault, as the platform calls it
    """Why a camera call failed: a reason word and a short, safe message."""

    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def _safe(text: object) -> str:
    """A camera's own words (a SOAP fault's reason), without control characters or embedded
    credentials, bounded."""
    cleaned = _CONTROL.sub(" ", str(text)).strip()
    cleaned = re.sub(r"//[^/@\s]*@", "//", cleaned)
    return cleaned[:_MESSAGE_MAX]


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 8:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


_AUTH_WORDS: Final = ("notauthorized", "not authorized", "sender not authorized", "unauthorized")


def _fault(exc: zeep.exceptions.Fault) -> CameraFault:
    words = " ".join(
        str(part) for part in (exc.message, exc.code, *(exc.subcodes or [])) if part is not None
    ).lower()
    if any(w in words for w in _AUTH_WORDS):
        return CameraFault("auth_failed", "the camera refused the username or password")
    if "actionnotsupported" in words or "not supported" in words:
        return CameraFault("not_supported", _safe(exc.message or "operation not supported"))
    return CameraFault("soap_fault", _safe(exc.message or exc.code or "SOAP fault"))


def classify(exc: BaseException, timeout_s: float) -> CameraFault:
    """The reason a camera call failed. Raises ``exc`` again when it is none of the failures a
    camera can cause (a bug must not pass for a camera fault)."""
    for cause in _chain(exc):
        if isinstance(cause, CameraFault):
            return cause
        if isinstance(cause, NotXmlError):
            if cause.status >= 300:
                return CameraFault("http_error", f"HTTP {cause.status}")
            return CameraFault("bad_xml", f"HTTP {cause.status}: the answer is not XML")
        if isinstance(cause, ResponseTooLargeError):
            return CameraFault("too_large", f"the camera's answer is larger than {cause}")
        if isinstance(cause, zeep.exceptions.DTDForbidden | zeep.exceptions.EntitiesForbidden):
            return CameraFault(
                "xml_forbidden", "the camera's answer declares a DTD or entities: refused"
            )
        if isinstance(cause, zeep.exceptions.ExternalReferenceForbidden):
            return CameraFault("xml_forbidden", "the camera's answer refers to external XML")
        if isinstance(cause, zeep.exceptions.Fault):
            return _fault(cause)
        if isinstance(cause, ONVIFAuthError):
            return CameraFault("auth_failed", "the camera refused the username or password")
        if isinstance(cause, zeep.exceptions.TransportError):
            status = cause.status_code
            if status == 401:
                return CameraFault("auth_failed", "HTTP 401: the camera refused the credentials")
            if "invalid XML" in str(cause.message):
                return CameraFault("bad_xml", f"HTTP {status}: the answer is not valid XML")
            return CameraFault("http_error", f"HTTP {status}")
        if isinstance(cause, zeep.exceptions.XMLSyntaxError | zeep.exceptions.XMLParseError):
            return CameraFault("bad_xml", "the answer is not valid SOAP")
        if isinstance(cause, TimeoutError | ONVIFTimeoutError):
            return CameraFault("timeout", f"no answer within {timeout_s:g} s")
        if isinstance(cause, aiohttp.ClientResponseError):
            return CameraFault("http_error", f"HTTP {cause.status}")
        if isinstance(cause, aiohttp.ClientConnectorError):
            return CameraFault("unreachable", _safe(cause.strerror or "connection refused"))
        if isinstance(cause, aiohttp.ClientError | ConnectionError):
            return CameraFault("unreachable", _safe(type(cause).__name__))
        if isinstance(cause, ONVIFError):
            text = str(cause)
            if "support service" in text:
                return CameraFault("not_supported", _safe(text.removeprefix("Unknown error: ")))
    if isinstance(exc, ONVIFError):
        return CameraFault("onvif_error", _safe(str(exc).removeprefix("Unknown error: ")))
    raise exc


def strip_credentials(uri: str) -> str:
    """``uri`` without a ``user:password@`` part (cameras embed them in RTSP URIs)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


@dataclass(frozen=True, slots=True)
class Clock:
    offset_s: float
    """The camera's UTC minus the gateway's (seconds; ONVIF gives whole seconds)."""
    mode: str
    """``NTP`` or ``Manual``."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    content_type: str
    image: bytes
    taken_ms: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.image).hexdigest()


_SETUP_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _setup_lock(name: str) -> asyncio.Lock:
    """One lock per service name and event loop. ``onvif`` parses a service's WSDL the first
    time it is needed and caches it only once parsed: 64 cameras connecting at once would each
    parse (and keep) their own copy, about 4 MB a camera. Behind this lock the first camera
    parses it and the others find it cached."""
    locks = _SETUP_LOCKS.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault(name.lower(), asyncio.Lock())


class _Camera(ONVIFCamera):  # type: ignore[misc]
    """``ONVIFCamera`` whose services all talk through one bounded session, and share their
    parsed WSDL with every other camera's."""

    def __init__(self, session: aiohttp.ClientSession, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bounded = session

    async def create_onvif_service(
        self,
        name: str,
        port_type: str | None = None,
        read_timeout: int | None = None,
        write_timeout: int | None = None,
    ) -> ONVIFService:
        async with _setup_lock(name):  # no network: setting a service up is local
            service: ONVIFService = await super().create_onvif_service(
                name, port_type, read_timeout, write_timeout
            )
        transport = service.transport
        if transport.session is not self._bounded:
            # The service's own session is never used; ONVIFService.close() closes it.
            transport.session = self._bounded
            transport._client_timeout = self._bounded.timeout
        return service


class PullPoint:
    """One PullPoint subscription: pull, renew, synchronise, unsubscribe."""

    def __init__(self, link: CameraLink, pull: ONVIFService, manager: ONVIFService) -> None:
        self._link = link
        self._pull = pull
        self._manager = manager

    async def pull(self, wait_s: float, limit: int = 64) -> list[Any]:
        answer = await self._link.call(
            lambda: self._pull.PullMessages(
                {"Timeout": dt.timedelta(seconds=wait_s), "MessageLimit": limit}
            ),
            extra_s=wait_s,
        )
        messages = getattr(answer, "NotificationMessage", None) or []
        return list(messages)

    async def renew(self, lease_s: float) -> None:
        await self._link.call(
            lambda: self._manager.Renew({"TerminationTime": f"PT{int(lease_s)}S"})
        )

    async def synchronise(self) -> None:
        """SetSynchronizationPoint: the camera sends every property's current state again."""
        await self._link.call(self._pull.SetSynchronizationPoint)

    async def unsubscribe(self) -> None:
        await self._link.call(self._manager.Unsubscribe)


class CameraLink:
    """A connection to one camera. ``open`` first; ``close`` at the end (also after a failed
    ``open``)."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str | None,
        password: str | None,
        *,
        timeout_s: float = 5.0,
        max_response_kb: int = 1024,
        longest_wait_s: float = 60.0,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._username = username
        self._password = password
        self._limit = max_response_kb * 1024
        self._longest_wait_s = longest_wait_s
        self._session: aiohttp.ClientSession | None = None
        self._camera: _Camera | None = None

    @property
    def camera(self) -> _Camera:
        if self._camera is None:
            raise RuntimeError("CameraLink.open() first")
        return self._camera

    async def call(self, make: Callable[[], Awaitable[T]], extra_s: float = 0.0) -> T:
        """``await make()`` within the call bound; failures become :class:`CameraFault`."""
        try:
            async with asyncio.timeout(self.timeout_s + extra_s):
                return await make()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise classify(exc, self.timeout_s + extra_s) from None

    async def open(self) -> None:
        """Connect: the camera's clock (for WS-Security timestamps), then its service
        addresses (the first authenticated call)."""
        self._session = aiohttp.ClientSession(
            response_class=_bounded_response(self._limit, soap=True),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s + self._longest_wait_s + 5),
            connector=aiohttp.TCPConnector(limit=4, ssl=False),
        )
        self._camera = _Camera(
            self._session,
            self.host,
            self.port,
            self._username,
            self._password,
            no_cache=True,
            adjust_time=True,
        )
        await self.call(self.camera.update_xaddrs, extra_s=self.timeout_s)

    async def close(self) -> None:
        camera, session = self._camera, self._session
        self._camera = self._session = None
        if camera is not None:
            await camera.close()
        if session is not None:
            await session.close()

    @property
    def has_events(self) -> bool:
        return _EVENTS_NS in self.camera.xaddrs

    async def _device(self) -> ONVIFService:
        service: ONVIFService = await self.call(self.camera.create_devicemgmt_service)
        return service

    async def clock(self) -> Clock:
        """GetSystemDateAndTime (the liveness call): the offset and the time mode."""
        device = await self._device()
        before = time.time()
        answer = await self.call(device.authless_GetSystemDateAndTime)
        after = time.time()
        utc = getattr(answer, "UTCDateTime", None)
        if utc is None:
            raise CameraFault("bad_xml", "GetSystemDateAndTime gave no UTC time")
        stamp = dt.datetime(
            utc.Date.Year,
            utc.Date.Month,
            utc.Date.Day,
            utc.Time.Hour,
            utc.Time.Minute,
            utc.Time.Second,
            tzinfo=dt.UTC,
        ).timestamp()
        # Whole seconds: the camera's second began somewhere in the last one.
        offset = stamp + 0.5 - (before + after) / 2
        return Clock(offset_s=round(offset, 1), mode=str(getattr(answer, "DateTimeType", "")))

    async def set_clock(self, now: dt.datetime) -> None:
        """SetSystemDateAndTime to ``now`` (UTC), manual mode."""
        device = await self._device()
        await self.call(
            lambda: device.SetSystemDateAndTime(
                {
                    "DateTimeType": "Manual",
                    "DaylightSavings": False,
                    "UTCDateTime": {
                        "Date": {"Year": now.year, "Month": now.month, "Day": now.day},
                        "Time": {"Hour": now.hour, "Minute": now.minute, "Second": now.second},
                    },
                }
            )
        )

    async def inventory(self) -> dict[str, str]:
        """Identity, MAC, profiles with their stream and snapshot URIs (no credentials)."""
        device = await self._device()
        info = await self.call(device.GetDeviceInformation)
        found: dict[str, str] = {}
        for key, attr in (
            ("manufacturer", "Manufacturer"),
            ("model", "Model"),
            ("firmware", "FirmwareVersion"),
            ("serial", "SerialNumber"),
            ("hardware_id", "HardwareId"),
        ):
            value = getattr(info, attr, None)
            if value:
                found[key] = _safe(value)
        try:
            interfaces = await self.call(device.GetNetworkInterfaces)
        except CameraFault as fault:
            if fault.reason not in ("soap_fault", "not_supported"):
                raise
            interfaces = []
        for interface in interfaces or []:
            mac = getattr(getattr(interface, "Info", None), "HwAddress", None)
            if mac:
                found["mac"] = _safe(mac).upper().replace("-", ":")
                break
        media = await self.call(self.camera.create_media_service)
        profiles = (await self.call(media.GetProfiles) or [])[:_MAX_PROFILES]
        tokens: list[str] = []
        for profile in profiles:
            token = _safe(getattr(profile, "token", "") or "")
            if not token:
                continue
            tokens.append(token)
            encoder = getattr(profile, "VideoEncoderConfiguration", None)
            if encoder is not None:
                res = getattr(encoder, "Resolution", None)
                size = f" {res.Width}x{res.Height}" if res is not None else ""
                found[f"profile.{token}"] = _safe(f"{encoder.Encoding}{size}")
            setup = {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}}
            stream = await self.call(
                functools.partial(media.GetStreamUri, {"StreamSetup": setup, "ProfileToken": token})
            )
            if getattr(stream, "Uri", None):
                found[f"stream_uri.{token}"] = strip_credentials(_safe(stream.Uri))
            try:
                snap = await self.call(
                    functools.partial(media.GetSnapshotUri, {"ProfileToken": token})
                )
            except CameraFault as fault:
                if fault.reason not in ("soap_fault", "not_supported"):
                    raise
                continue
            if getattr(snap, "Uri", None):
                uri = normalize_url(snap.Uri) or snap.Uri
                found[f"snapshot_uri.{token}"] = strip_credentials(_safe(uri))
        found["profiles"] = " ".join(tokens)
        return found

    async def subscribe(self, lease_s: float) -> PullPoint:
        """CreatePullPointSubscription, then its pull and manager services."""
        events = await self.call(self.camera.create_events_service)
        answer = await self.call(
            lambda: events.CreatePullPointSubscription(
                {"InitialTerminationTime": f"PT{int(lease_s)}S"}
            )
        )
        address = getattr(getattr(answer, "SubscriptionReference", None), "Address", None)
        url = normalize_url(getattr(address, "_value_1", None))
        if not url:
            raise CameraFault("bad_xml", "CreatePullPointSubscription gave no address")
        self.camera.xaddrs[_PULLPOINT_NS] = url
        pull = await self.call(self.camera.create_pullpoint_service)
        manager = await self.call(
            lambda: self.camera.create_subscription_service("PullPointSubscription")
        )
        return PullPoint(self, pull, manager)

    async def snapshot(
        self, uri: str, auth: Literal["auto", "digest", "basic"], max_bytes: int
    ) -> Snapshot:
        """GET the snapshot URI with digest (or basic) auth, at most ``max_bytes``."""
        user, password = self._username, self._password
        attempts: list[Literal["digest", "basic"]] = (
            ["digest", "basic"] if auth == "auto" else [auth]
        )
        status = 0
        for mode in attempts:
            kwargs: dict[str, Any] = {}
            if user is not None and password is not None:
                if mode == "digest":
                    kwargs["middlewares"] = (aiohttp.DigestAuthMiddleware(user, password),)
                else:
                    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
                    kwargs["headers"] = {"Authorization": f"Basic {token}"}
            try:
                status, content_type, image = await self._get(uri, kwargs, max_bytes)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # classify() re-raises what is not a camera's
                raise classify(exc, self.timeout_s * 2) from None
            if status == 401:
                continue
            if status >= 300:
                raise CameraFault("http_error", f"snapshot: HTTP {status}")
            if not content_type.startswith("image/"):
                raise CameraFault("bad_snapshot", f"snapshot: {_safe(content_type)}, not an image")
            return Snapshot(content_type, image, int(time.time() * 1000))
        raise CameraFault("auth_failed", f"snapshot: HTTP {status}: the camera refused the login")

    async def _get(
        self, uri: str, kwargs: dict[str, Any], max_bytes: int
    ) -> tuple[int, str, bytes]:
        """One GET of a snapshot: status, content type and (on success) the body."""
        async with (
            asyncio.timeout(self.timeout_s * 2),
            aiohttp.ClientSession(
                response_class=_bounded_response(max_bytes),
                connector=aiohttp.TCPConnector(ssl=False, force_close=True),
            ) as session,
            session.get(strip_credentials(uri), **kwargs) as response,
        ):
            if response.status >= 300:
                return response.status, "", b""
            image = await response.read()
            return response.status, response.content_type or "", image
