"""A camera that answers ONVIF like a real one, from recorded responses: for the tests, the
benchmark and the demo.

Each :class:`SimulatedCamera` is an HTTP server on 127.0.0.1 answering the device, media and
event services with the envelopes in ``recordings/`` (recorded from a Hikvision camera, values
templated). It checks WS-Security UsernameToken digests against its own clock (a wrong password
or a clock too far off gives ``ter:NotAuthorized``, as the camera does), serves a JPEG snapshot
behind HTTP digest (or basic) auth, and keeps PullPoint subscriptions with leases. Its controls
make it misbehave on purpose: motion, tamper and video-loss events, a reboot that drops every
subscription, a clock offset, and one-off failures (a SOAP fault, HTTP 500, a hang, an
entity-expansion attack, an oversized or garbage answer).

``python -m drivers.onvif.simulator --cameras 2 --ports-file F`` runs several, with motion on a
timer, for the benchmark and by hand; :func:`serve_discovery` answers WS-Discovery probes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import datetime as dt
import hashlib
import itertools
import json
import re
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Final, Literal, Self, cast
from xml.sax.saxutils import escape

from aiohttp import web
from lxml import etree

__all__ = [
    "DEFAULT_PASSWORD",
    "CameraSimulator",
    "CameraSpec",
    "FailMode",
    "SimulatedCamera",
    "serve_discovery",
    "specs",
]

RECORDINGS: Final = Path(__file__).with_name("recordings")
DEFAULT_PASSWORD: Final = "Cam-pass-1"  # noqa: S105 - the simulated cameras' own, for tests
FailMode = Literal["fault", "http_500", "hang", "entity_attack", "oversize", "garbage"]

_SOAP: Final = "application/soap+xml; charset=utf-8"
_WSSE: Final = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
_WSU: Final = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
_AUTH_WINDOW_S: Final = 300.0
"""How far a UsernameToken's Created may be from the camera's clock."""
_AUTHLESS: Final = frozenset({"GetSystemDateAndTime"})
_MOTION: Final = "tns1:RuleEngine/CellMotionDetector/Motion"
_TAMPER: Final = "tns1:RuleEngine/TamperDetector/Tamper"
_VIDEO_LOSS: Final = "tns1:VideoSource/SignalLoss"
_RULE_SOURCE: Final = (
    ("VideoSourceConfigurationToken", "VideoSourceToken"),
    ("VideoAnalyticsConfigurationToken", "VideoAnalyticsToken"),
)
_DURATION: Final = re.compile(r"^P(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


_TEMPLATES: Final = {
    p.stem: Template(p.read_text(encoding="utf-8")) for p in sorted(RECORDINGS.glob("*.xml"))
}
SNAPSHOT: Final = RECORDINGS.joinpath("snapshot.jpg").read_bytes()
_HEAD, _, _REST = _TEMPLATES["Fault"].template.partition("<env:Body>")
_TAIL: Final = "</env:Body>" + _REST.partition("</env:Body>")[2]


def _fill(template: str, /, **values: object) -> str:
    return _TEMPLATES[template].substitute({k: escape(str(v)) for k, v in values.items()})


def _envelope(body: str) -> str:
    """The recorded envelope around a body made here (the misbehaviours)."""
    return f"{_HEAD}<env:Body>{body}{_TAIL}"


def _iso(ts: float, *, ms: bool = False) -> str:
    stamp = dt.datetime.fromtimestamp(ts, dt.UTC)
    text = stamp.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{stamp.microsecond // 1000:03d}Z" if ms else f"{text}Z"


def _seconds(duration: str | None, default: float) -> float:
    """An xs:duration such as ``PT60S`` or ``PT1M``, or an absolute time, as seconds from now."""
    if not duration:
        return default
    match = _DURATION.match(duration.strip())
    if match is None:
        with contextlib.suppress(ValueError):
            when = dt.datetime.fromisoformat(duration.strip())
            return max(0.0, when.timestamp() - time.time())
        return default
    hours, minutes, secs = match.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(secs or 0)


def _md5(text: str) -> str:
    """HTTP digest's hash (RFC 7616's MD5, which cameras use)."""
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - the protocol's, not a choice


def _items(items: Sequence[tuple[str, str]]) -> str:
    return "".join(
        f'<tt:SimpleItem Name="{escape(n, {chr(34): "&quot;"})}" '
        f'Value="{escape(v, {chr(34): "&quot;"})}"/>'
        for n, v in items
    )


@dataclass(frozen=True, slots=True)
class CameraSpec:
    """Who a simulated camera is."""

    id: str
    name: str = "Gate"
    manufacturer: str = "HIKVISION"
    model: str = "DS-2CD2143G2-IU"
    firmware: str = "V5.7.3 build 220112"
    serial: str = "DS-2CD2143G2-IU20220101AAWRG12345678"
    mac: str = "44:19:b6:12:34:56"
    hardware_id: str = "88"
    username: str = "admin"
    password: str = DEFAULT_PASSWORD
    clock_offset_s: float = 0.0
    time_mode: Literal["NTP", "Manual"] = "NTP"
    snapshot_auth: Literal["digest", "basic"] = "digest"
    location: str = "community"


@dataclass(slots=True)
class _Subscription:
    until: float
    queue: list[str] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True)
class _Property:
    topic: str
    source: tuple[tuple[str, str], ...]
    data: tuple[tuple[str, str], ...]


class SimulatedCamera:
    """One camera on 127.0.0.1 (``port`` 0: any free port)."""

    def __init__(self, spec: CameraSpec, port: int = 0) -> None:
        self.spec = spec
        self.port = port
        self.password = spec.password
        self.clock_offset_s = spec.clock_offset_s
        self.time_mode: str = spec.time_mode
        self.snapshot_auth: str = spec.snapshot_auth
        self.image = SNAPSHOT
        """What a snapshot returns."""
        self.stats: collections.Counter[str] = collections.Counter()
        """Calls per operation (``snapshot`` for the image), and ``auth_refused``."""
        self.subscriptions: dict[str, _Subscription] = {}
        self.last_set_time: float | None = None
        """The camera time a SetSystemDateAndTime set, if one came."""
        self.boots = 1
        self._properties: dict[tuple[str, str], _Property] = {}
        self._failures: dict[str, tuple[FailMode, int]] = {}
        self._down_until = 0.0
        self._ids = itertools.count(1)
        self._nonces: set[str] = set()
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # -- life --------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=256 * 1024)
        app.router.add_post("/onvif/{service:.*}", self._soap)
        app.router.add_get("/onvif/snapshot/{channel}.jpg", self._snapshot)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def now(self) -> float:
        """The camera's clock (UTC seconds)."""
        return time.time() + self.clock_offset_s

    # -- controls ----------------------------------------------------------------------------

    def motion(self, *, on: bool) -> None:
        self._publish(_MOTION, (*_RULE_SOURCE, ("Rule", "MyMotionDetectorRule")), "IsMotion", on)

    def tamper(self, *, on: bool) -> None:
        self._publish(_TAMPER, (*_RULE_SOURCE, ("Rule", "MyTamperDetectorRule")), "IsTamper", on)

    def video_loss(self, *, on: bool) -> None:
        self._publish(_VIDEO_LOSS, (("VideoSource", "VideoSource_1"),), "State", on)

    def raw_event(self, topic: str, source: Mapping[str, str], data: Mapping[str, str]) -> None:
        self._queue(topic, tuple(source.items()), tuple(data.items()), "Changed")

    def reboot(self, down_s: float = 2.0) -> None:
        """Answer 503 for ``down_s``, forget every subscription, and come back with every alarm
        off (its properties then say ``false`` when Initialized, as a camera's do)."""
        self._down_until = time.monotonic() + down_s
        for sub in self.subscriptions.values():
            sub.ready.set()
        self.subscriptions.clear()
        for prop in self._properties.values():
            prop.data = tuple((name, "false") for name, _ in prop.data)
        self.boots += 1

    def set_clock_offset(self, seconds: float) -> None:
        self.clock_offset_s = seconds

    def fail(self, op: str, mode: FailMode, times: int = 1) -> None:
        """The next ``times`` calls of ``op`` (an operation name, or ``*`` for any) fail so."""
        self._failures[op] = (mode, times)

    # -- events ------------------------------------------------------------------------------

    def _publish(
        self, topic: str, source: tuple[tuple[str, str], ...], name: str, on: bool
    ) -> None:
        data = ((name, "true" if on else "false"),)
        self._properties[(topic, "/".join(v for _, v in source))] = _Property(topic, source, data)
        self._queue(topic, source, data, "Changed")

    def _message(
        self,
        topic: str,
        source: Sequence[tuple[str, str]],
        data: Sequence[tuple[str, str]],
        operation: str,
    ) -> str:
        return (
            _TEMPLATES["NotificationMessage"]
            .substitute(
                topic=escape(topic),
                utc=_iso(self.now(), ms=True),
                operation=operation,
                source=_items(source),
                data=_items(data),
            )
            .split("\n", 1)[1]
        )

    def _queue(
        self,
        topic: str,
        source: Sequence[tuple[str, str]],
        data: Sequence[tuple[str, str]],
        operation: str,
        only: _Subscription | None = None,
    ) -> None:
        message = self._message(topic, source, data, operation)
        for sub in [only] if only is not None else list(self.subscriptions.values()):
            sub.queue.append(message)
            del sub.queue[:-1000]
            sub.ready.set()

    def _initialized(self, sub: _Subscription) -> None:
        for prop in self._properties.values():
            self._queue(prop.topic, prop.source, prop.data, "Initialized", only=sub)

    # -- HTTP --------------------------------------------------------------------------------

    def _answer(self, body: str, status: int = 200) -> web.Response:
        return web.Response(text=body, status=status, content_type="application/soap+xml")

    def _fault(self, code: str, subcode: str, reason: str, status: int = 400) -> web.Response:
        return self._answer(_fill("Fault", code=code, subcode=subcode, reason=reason), status)

    def _authorised(self, root: etree._Element) -> bool:
        token = root.find(f".//{{{_WSSE}}}UsernameToken")
        if token is None:
            return False
        user = token.findtext(f"{{{_WSSE}}}Username")
        digest = token.findtext(f"{{{_WSSE}}}Password")
        nonce = token.findtext(f"{{{_WSSE}}}Nonce")
        created = token.findtext(f"{{{_WSU}}}Created")
        if not (user and digest and nonce and created) or user != self.spec.username:
            return False
        with contextlib.suppress(ValueError):
            when = dt.datetime.fromisoformat(created).timestamp()
            if abs(when - self.now()) > _AUTH_WINDOW_S:
                return False
            expected = base64.b64encode(
                hashlib.sha1(  # noqa: S324 - WS-Security's PasswordDigest is SHA-1 by definition
                    base64.b64decode(nonce) + created.encode() + self.password.encode()
                ).digest()
            ).decode()
            return secrets.compare_digest(expected, digest)
        return False

    async def _failure(self, op: str, request: web.Request) -> web.StreamResponse | None:
        for key in (op, "*"):
            if key not in self._failures:
                continue
            mode, left = self._failures[key]
            if left <= 1:
                del self._failures[key]
            else:
                self._failures[key] = (mode, left - 1)
            self.stats[f"fail_{mode}"] += 1
            return await self._misbehave(mode, request)
        return None

    async def _misbehave(self, mode: FailMode, request: web.Request) -> web.StreamResponse:
        if mode == "fault":
            return self._fault("Receiver", "Action", "simulated internal fault", status=500)
        if mode == "http_500":
            return web.Response(text="Internal Server Error", status=500)
        if mode == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 120)
            return web.Response(status=503)
        if mode == "garbage":
            return web.Response(body=b"\x00\xff<<not xml at all", content_type="text/xml")
        if mode == "entity_attack":
            levels = "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
            body = (
                '<?xml version="1.0"?>\n<!DOCTYPE env:Envelope [<!ENTITY lol0 "lol">'
                f"{levels}]>\n"
                + _envelope(
                    "<tds:GetDeviceInformationResponse><tds:Manufacturer>&lol9;"
                    "</tds:Manufacturer></tds:GetDeviceInformationResponse>"
                ).split("?>", 1)[1]
            )
            return self._answer(body)
        # oversize: a valid answer of 8 MB, streamed without a length.
        response = web.StreamResponse(headers={"Content-Type": _SOAP})
        response.enable_chunked_encoding()
        await response.prepare(request)
        head, tail = _envelope("<tds:GetDeviceInformationResponse><tds:Manufacturer>@@").split("@@")
        chunk = b"A" * 65536
        with contextlib.suppress(ConnectionError):
            await response.write(head.encode())
            for _ in range(128):
                await response.write(chunk)
            end = "</tds:Manufacturer></tds:GetDeviceInformationResponse>" + tail
            await response.write(end.encode())
            await response.write_eof()
        return response

    async def _soap(self, request: web.Request) -> web.StreamResponse:
        if time.monotonic() < self._down_until:
            return web.Response(status=503, text="rebooting")
        raw = await request.read()
        try:
            root = etree.fromstring(raw, etree.XMLParser(resolve_entities=False, no_network=True))
        except etree.XMLSyntaxError:
            return self._fault("Sender", "WellFormed", "not well-formed")
        body = root.find("{http://www.w3.org/2003/05/soap-envelope}Body")
        if body is None or len(body) == 0:
            return self._fault("Sender", "InvalidArgs", "no body")
        operation = body[0]
        op = etree.QName(operation).localname
        self.stats[op] += 1
        failed = await self._failure(op, request)
        if failed is not None:
            return failed
        if op not in _AUTHLESS and not self._authorised(root):
            self.stats["auth_refused"] += 1
            return self._fault("Sender", "NotAuthorized", "Sender not Authorized")
        service = request.match_info["service"]
        return await self._operation(op, operation, service)

    def _text(self, element: etree._Element, name: str) -> str | None:
        found = element.xpath(f".//*[local-name()='{name}']")
        return found[0].text if found else None

    async def _operation(self, op: str, args: etree._Element, service: str) -> web.StreamResponse:
        spec = self.spec
        base = self.base
        if op == "GetSystemDateAndTime":
            now = dt.datetime.fromtimestamp(self.now(), dt.UTC)
            return self._answer(
                _fill(
                    op,
                    mode=self.time_mode,
                    hour=now.hour,
                    minute=now.minute,
                    second=now.second,
                    year=now.year,
                    month=now.month,
                    day=now.day,
                )
            )
        if op == "SetSystemDateAndTime":
            fields = {
                n: int(self._text(args, n) or 0)
                for n in ("Year", "Month", "Day", "Hour", "Minute", "Second")
            }
            when = dt.datetime(
                fields["Year"],
                fields["Month"],
                fields["Day"],
                fields["Hour"],
                fields["Minute"],
                fields["Second"],
                tzinfo=dt.UTC,
            ).timestamp()
            self.clock_offset_s = when - time.time()
            self.last_set_time = when
            self.time_mode = self._text(args, "DateTimeType") or "Manual"
            return self._answer(_fill(op))
        # The answers that are the recording filled with who the camera is, and no state.
        identity: dict[str, dict[str, object]] = {
            "GetServices": {"base": base},
            "GetDeviceInformation": {
                "manufacturer": spec.manufacturer,
                "model": spec.model,
                "firmware": spec.firmware,
                "serial": spec.serial,
                "hardware_id": spec.hardware_id,
            },
            "GetNetworkInterfaces": {"mac": spec.mac, "host": "127.0.0.1"},
            "GetProfiles": {},
        }
        if op in identity:
            return self._answer(_fill(op, **identity[op]))
        if op in ("GetStreamUri", "GetSnapshotUri"):
            profile = self._text(args, "ProfileToken") or "Profile_1"
            channel = "101" if profile == "Profile_1" else "102"
            return self._answer(
                _fill(
                    op,
                    base=base,
                    channel=channel,
                    host="127.0.0.1",
                    username=spec.username,
                    password=self.password,
                )
            )
        if op == "CreatePullPointSubscription":
            lease = _seconds(self._text(args, "InitialTerminationTime"), 60)
            sid = str(next(self._ids))
            sub = _Subscription(until=time.monotonic() + lease)
            self.subscriptions[sid] = sub
            self._initialized(sub)
            return self._answer(
                _fill(op, base=base, sid=sid, now=_iso(self.now()), until=_iso(self.now() + lease))
            )
        sub_id = service.rpartition("PullSubManager_")[2] if "PullSubManager_" in service else ""
        if op in ("PullMessages", "Renew", "Unsubscribe", "SetSynchronizationPoint"):
            found = self.subscriptions.get(sub_id)
            if found is not None and time.monotonic() > found.until:
                del self.subscriptions[sub_id]
                found = None
            if found is None:
                return self._fault("Receiver", "InvalidArgVal", "unknown subscription", status=400)
            return await self._subscription_op(op, args, sub_id, found)
        return self._fault("Receiver", "ActionNotSupported", f"{op} not supported", status=400)

    async def _subscription_op(
        self, op: str, args: etree._Element, sub_id: str, sub: _Subscription
    ) -> web.StreamResponse:
        if op == "Unsubscribe":
            del self.subscriptions[sub_id]
            return self._answer(_fill(op))
        if op == "SetSynchronizationPoint":
            self._initialized(sub)
            return self._answer(_fill(op))
        if op == "Renew":
            lease = _seconds(self._text(args, "TerminationTime"), 60)
            sub.until = time.monotonic() + lease
            return self._answer(_fill(op, now=_iso(self.now()), until=_iso(self.now() + lease)))
        wait = min(_seconds(self._text(args, "Timeout"), 5), 60)
        limit = int(self._text(args, "MessageLimit") or 64)
        if not sub.queue:
            sub.ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sub.ready.wait(), wait)
        if self.subscriptions.get(sub_id) is not sub:  # rebooted during the wait
            return web.Response(status=503, text="rebooting")
        taken, sub.queue[:limit] = sub.queue[:limit], []
        remaining = sub.until - time.monotonic()
        answer = _TEMPLATES[op].substitute(
            now=_iso(self.now()), until=_iso(self.now() + remaining), messages="".join(taken)
        )
        return self._answer(answer)

    # -- snapshot ----------------------------------------------------------------------------

    def _digest_ok(self, header: str, method: str) -> bool:
        if not header.startswith("Digest "):
            return False
        fields = dict(re.findall(r'(\w+)="?([^",]*)"?', header[7:]))
        realm, nonce = fields.get("realm", ""), fields.get("nonce", "")
        if nonce not in self._nonces or fields.get("username") != self.spec.username:
            return False
        ha1 = _md5(f"{self.spec.username}:{realm}:{self.password}")
        ha2 = _md5(f"{method}:{fields.get('uri', '')}")
        if fields.get("qop"):
            expected = _md5(
                f"{ha1}:{nonce}:{fields.get('nc')}:{fields.get('cnonce')}:{fields['qop']}:{ha2}"
            )
        else:
            expected = _md5(f"{ha1}:{nonce}:{ha2}")
        return secrets.compare_digest(expected, fields.get("response", ""))

    async def _snapshot(self, request: web.Request) -> web.StreamResponse:
        if time.monotonic() < self._down_until:
            return web.Response(status=503, text="rebooting")
        header = request.headers.get("Authorization", "")
        if self.snapshot_auth == "basic":
            expected = base64.b64encode(f"{self.spec.username}:{self.password}".encode()).decode()
            if secrets.compare_digest(header, f"Basic {expected}"):
                self.stats["snapshot"] += 1
                return web.Response(body=self.image, content_type="image/jpeg")
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="IP Camera"'})
        if self._digest_ok(header, request.method):
            self.stats["snapshot"] += 1
            return web.Response(body=self.image, content_type="image/jpeg")
        nonce = secrets.token_hex(16)
        self._nonces.add(nonce)
        return web.Response(
            status=401,
            headers={
                "WWW-Authenticate": f'Digest realm="IP Camera({self.spec.serial[-8:]})", '
                f'qop="auth", nonce="{nonce}", algorithm=MD5, stale="FALSE"'
            },
        )


class CameraSimulator:
    """Several simulated cameras, each on its own port."""

    def __init__(self, specs: Sequence[CameraSpec]) -> None:
        self.cameras = {spec.id: SimulatedCamera(spec) for spec in specs}

    @classmethod
    def from_ids(cls, ids: Sequence[str], password: str) -> Self:
        """Distinct cameras (serials, MACs) by id, all with ``password`` (the demo's)."""
        return cls(
            [
                CameraSpec(
                    id=camera,
                    name=camera,
                    serial=f"DS-2CD2143G2-IU2026{i:04d}AAWRG{i:08d}",
                    mac=f"44:19:b6:26:00:{i:02x}",
                    password=password,
                )
                for i, camera in enumerate(ids, start=1)
            ]
        )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        for camera in self.cameras.values():
            await camera.start()

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.cameras.values()))

    def ports(self) -> dict[str, int]:
        return {cid: c.port for cid, c in self.cameras.items()}


class _Discovery(asyncio.DatagramProtocol):
    def __init__(self, cameras: Sequence[SimulatedCamera]) -> None:
        self.cameras = cameras
        self.transport: asyncio.DatagramTransport | None = None
        self.probes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.DatagramTransport", transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if b"Probe" not in data or self.transport is None:
            return
        match = re.search(rb"MessageID[^>]*>\s*([^<\s]+)\s*<", data)
        if match is None:
            return
        self.probes += 1
        for camera in self.cameras:
            spec = camera.spec
            answer = _fill(
                "ProbeMatch",
                message_id=uuid.uuid4(),
                relates_to=match.group(1).decode("ascii", "replace"),
                instance=camera.boots,
                uuid=uuid.uuid5(uuid.NAMESPACE_URL, spec.serial),
                mac_scope=spec.mac.replace(":", "").lower(),
                hardware=spec.model,
                name=spec.name.replace(" ", "%20"),
                location=spec.location,
                base=camera.base,
            )
            self.transport.sendto(answer.encode(), addr)


async def serve_discovery(
    cameras: Sequence[SimulatedCamera], host: str = "127.0.0.1", port: int = 0
) -> tuple[asyncio.DatagramTransport, int]:
    """Answer WS-Discovery probes sent to ``host:port`` (unicast) with one ProbeMatch per
    camera. Returns the transport (close it) and the port."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Discovery(cameras), local_addr=(host, port)
    )
    return transport, transport.get_extra_info("sockname")[1]


def specs(count: int, password: str = DEFAULT_PASSWORD, prefix: str = "cam") -> list[CameraSpec]:
    """``count`` distinct cameras (serials and MACs differ)."""
    return [
        CameraSpec(
            id=f"{prefix}-{i:02d}",
            name=f"Camera {i}",
            serial=f"DS-2CD2143G2-IU2022{i:04d}AAWRG{i:08d}",
            mac=f"44:19:b6:00:{i // 256:02x}:{i % 256:02x}",
            password=password,
        )
        for i in range(1, count + 1)
    ]


async def _main(args: argparse.Namespace, password: str) -> None:
    simulator = CameraSimulator(specs(args.cameras, password))
    await simulator.start()
    transport, discovery_port = await serve_discovery(list(simulator.cameras.values()))
    ports = {"cameras": simulator.ports(), "discovery": discovery_port}
    if args.ports_file:
        await asyncio.to_thread(Path(args.ports_file).write_text, json.dumps(ports), "utf-8")
    else:
        print(json.dumps(ports), flush=True)
    try:
        while True:
            await asyncio.sleep(args.motion_every)
            for camera in simulator.cameras.values():
                camera.motion(on=True)
            await asyncio.sleep(min(1.0, args.motion_every / 2))
            for camera in simulator.cameras.values():
                camera.motion(on=False)
    finally:
        transport.close()
        await simulator.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m drivers.onvif.simulator")
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--ports-file", help="write {id: port} and the discovery port as JSON")
    parser.add_argument("--password-file", help="the cameras' admin password")
    parser.add_argument("--motion-every", type=float, default=10.0, help="seconds between motions")
    args = parser.parse_args(argv)
    password = (
        Path(args.password_file).read_text(encoding="utf-8").strip()
        if args.password_file
        else DEFAULT_PASSWORD
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args, password))


if __name__ == "__main__":
    main()
