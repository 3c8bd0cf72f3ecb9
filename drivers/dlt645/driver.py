"""The DL/T 645 driver: reads one electricity meter's points with a planned set of frames.

Constructed once per meter with no I/O. Each ``read`` runs the meter's plan
(:mod:`drivers.dlt645.plan`) on the core's serial line, one frame at a time inside the poll's
session, follows follow-on frames, and returns one reading per point that is due:

- a point the meter does not have ("no such data") or fills with FF is ``bad`` with its reason
  (``no_such_data``, ``not_available``), and the poll goes on;
- a block the meter refuses is replaced by its members' single reads, in this poll and from then
  on (logged once, counted as ``plan_splits``);
- a meter that does not answer its first frame, or stops answering, is not asked the rest of
  its plan: only a read where nothing could be read raises :class:`DeviceError`, so the
  scheduler's health and backoff see a dead meter, not one odd identifier;
- with ``meter_date`` and ``meter_time`` read in one poll, ``clock_offset_s`` says how far the
  meter's clock is from the gateway's (when the gateway's is synchronised).
"""

from __future__ import annotations

import collections
import datetime as dt
import zoneinfo
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

from agent.bus import SerialLine
from agent.driver import BusError, DeviceError, DriverContext
from agent.driver.report import OnChange, point_readings
from agent.records import Reading, Record, Value
from drivers.dlt645.codec import (
    WILDCARD,
    Dlt645Error,
    Frame,
    Func,
    Version,
    decode,
    decode_value,
    di_bytes,
    di_of,
    diagnose,
    encode,
    error_reason,
    reply_length,
    show_address,
)
from drivers.dlt645.config import Dlt645Device
from drivers.dlt645.plan import Point, Request, Timing, member_sizes, plan_reads, wire_time_s

if TYPE_CHECKING:
    from agent.config.models import Bus

__all__ = ["Dlt645Driver", "MeterLink", "line_timing"]

_SILENT: Final = frozenset(
    {"timeout", "checksum_error", "truncated", "garbage", "wrong_address", "wrong_reply"}
)
"""Failures that say nothing came back from the meter itself."""
_MAX_FOLLOW_ON: Final = 16
"""Follow-on frames of one identifier before the reply is called garbage (a meter in a loop)."""


def line_timing(bus: Bus, preamble: int = 4) -> Timing:
    """The line's timing for wire-time figures (2400 Bd 8E1 for a line without serial
    settings)."""
    serial = bus.serial
    if serial is None:
        return Timing(preamble=preamble)
    bits = 1 + serial.data_bits + (serial.parity != "none") + serial.stop_bits
    gap = serial.inter_frame_ms / 1000 if serial.inter_frame_ms is not None else 0.0
    return Timing(char_s=bits / serial.baud, gap_s=gap, preamble=preamble)


class MeterLink:
    """Frames to one address on a line and back: the meter's protocol version, its timeout and
    retries. Also the scan tool's way to talk to a line (with the wildcard address)."""

    def __init__(
        self,
        line: SerialLine,
        address: bytes,
        version: Version,
        *,
        timeout_s: float,
        retries: int = 0,
        preamble: int = 4,
    ) -> None:
        self.line = line
        self.address = address
        self.version: Version = version
        self.timeout_s = timeout_s
        self.retries = retries
        self.preamble = preamble

    async def transact(self, control: int, data: bytes, *, address: bytes | None = None) -> Frame:
        """One request and its reply, checked: a reply to this function from the address asked
        (any address for a wildcard). Raises :class:`DeviceError` with a reason word."""
        to = address or self.address
        frame = encode(Frame(to, control, data), preamble=self.preamble)
        raw = await self.line.request(
            frame, reply_length, self.timeout_s, retries=self.retries, diagnose=diagnose
        )
        try:
            reply = decode(raw)
        except Dlt645Error as exc:  # reply_length found a frame: cannot happen, but be exact
            raise DeviceError(exc.reason, str(exc)) from None
        if not reply.is_reply or reply.function != control:
            self.line.note("dlt645_wrong_reply")
            raise DeviceError(
                "wrong_reply", f"a reply with control {reply.control:02X} to {control:02X}"
            )
        if 0xAA not in to and reply.address != to:
            self.line.note("dlt645_wrong_address")
            raise DeviceError(
                "wrong_address",
                f"a reply from {show_address(reply.address)}, not {show_address(to)} "
                "(two meters with one address, or a late reply)",
            )
        return reply

    async def read(self, di: int, *, address: bytes | None = None) -> tuple[bytes, bytes]:
        """The value bytes of ``di`` (follow-on frames joined) and the address that answered.
        An abnormal reply raises :class:`DeviceError` with the meter's reason."""
        version = self.version
        ident = di_bytes(di, version)
        read_code = Func.READ if version == 2007 else Func.READ_1997
        reply = await self.transact(read_code, ident, address=address)
        self._check(reply, di)
        values = bytearray(reply.data[len(ident) :])
        follow = 0
        while reply.follows:
            follow += 1
            if follow > _MAX_FOLLOW_ON:
                raise DeviceError("garbage", f"more than {_MAX_FOLLOW_ON} follow-on frames")
            if version == 2007:
                values = values[:-1] if follow > 1 else values  # the previous frame's SEQ
                reply = await self.transact(
                    Func.READ_NEXT, ident + bytes([follow]), address=address
                )
            else:
                reply = await self.transact(Func.READ_NEXT_1997, ident, address=address)
            self._check(reply, di)
            values += reply.data[len(ident) :]
        if follow and version == 2007:
            values = values[:-1]  # the last frame's SEQ
        return bytes(values), reply.address

    def _check(self, reply: Frame, di: int) -> None:
        version = self.version
        if reply.abnormal:
            code = reply.data[0] if reply.data else 0
            raise DeviceError(error_reason(code, version), f"the meter answered error {code:02X}")
        try:
            got = di_of(reply.data, version)
        except Dlt645Error as exc:
            raise DeviceError(exc.reason, str(exc)) from None
        if got != di:
            self.line.note("dlt645_wrong_reply")
            raise DeviceError("wrong_reply", f"a reply for DI {got:08X}, not {di:08X}")


class Dlt645Driver:
    """Polls one DL/T 645 meter."""

    def __init__(self, config: Dlt645Device, ctx: DriverContext) -> None:
        if not isinstance(ctx.bus, SerialLine):
            raise ValueError(f"{config.id}: a DL/T 645 meter needs a serial bus")
        self.config = config
        self.ctx = ctx
        self.version = config.protocol
        self.points: list[Point] = config.resolved_points()
        self.timing = line_timing(ctx.bus.config, config.preamble)
        self.refused: frozenset[int] = frozenset()
        self.plan: list[Request] = self._plan()
        self.link = MeterLink(
            ctx.bus,
            config.wire_address,
            self.version,
            timeout_s=config.timeout_s,
            retries=config.retries,
            preamble=config.preamble,
        )
        self.counters: collections.Counter[str] = ctx.counters.get(config.id, collections.Counter())
        self._reported: OnChange[int] = OnChange(config.report_every_s)
        self._zone = zoneinfo.ZoneInfo(config.meter_timezone)
        self._bad_points: frozenset[str] = frozenset()
        self._inventory: dict[str, str] = {
            "protocol": f"DL/T 645-{self.version}",
            "address": config.address,
        }

    def _plan(self) -> list[Request]:
        return plan_reads(
            self.points,
            self.version,
            self.timing,
            blocks=self.config.blocks,
            refused=self.refused,
        )

    @property
    def planned_wire_s(self) -> float:
        """Wire time of one poll, from the plan and the line's speed."""
        return wire_time_s(self.plan, self.points, self.version, self.timing)

    @property
    def read_budget_s(self) -> float:
        """Every frame timing out on every try, plus the frames' own wire time."""
        tries = self.config.retries + 1
        return len(self.plan) * tries * self.config.timeout_s + self.planned_wire_s * tries

    async def start(self) -> None:
        self.ctx.log.debug(
            "dlt645.plan",
            device=self.config.id,
            points=len(self.points),
            frames=len(self.plan),
            wire_ms=round(self.planned_wire_s * 1000, 1),
        )

    async def stop(self) -> None:
        """Nothing to close: the line is the core's."""

    # ------------------------------------------------------------------ reading

    async def read(self) -> Sequence[Record]:
        values: dict[int, Value | None] = {}
        bad: dict[int, str] = {}
        queue = list(self.plan)
        answered = silent_run = 0
        first_error: DeviceError | None = None
        while queue:
            request = queue.pop(0)
            self.counters["requests"] += 1
            try:
                data, _ = await self.link.read(request.di)
            except BusError:
                raise
            except DeviceError as exc:
                self.counters[exc.reason] += 1
                if exc.reason in _SILENT:
                    first_error = first_error or exc
                    silent_run += 1
                    bad.update(dict.fromkeys(request.keys, exc.reason))
                    if not answered or silent_run >= 2:
                        # A meter that is silent would cost a timeout per remaining frame.
                        for rest in queue:
                            bad.update(dict.fromkeys(rest.keys, exc.reason))
                        break
                    continue
                answered += 1
                silent_run = 0
                if request.block and exc.reason == "no_such_data":
                    queue[:0] = self._refuse(request)
                    continue
                bad.update(dict.fromkeys(request.keys, exc.reason))
                first_error = first_error or exc
                continue
            answered += 1
            silent_run = 0
            self._decode(request, data, values, bad)
        if not answered:
            assert first_error is not None
            raise DeviceError(first_error.reason, str(first_error))
        if bad:
            self.counters["partial_reads"] += 1
        self._note_bad(bad)
        ts, synced = self.ctx.stamp()
        return self._records(values, bad, ts, synced)

    def _refuse(self, request: Request) -> list[Request]:
        """The meter has no such block: read its members one by one, now and from now on."""
        self.refused |= {request.di}
        self.plan = self._plan()
        self.counters["plan_splits"] += 1
        self.ctx.log.info(
            "dlt645.block_refused",
            device=self.config.id,
            block=f"{request.di:08X}" if self.version == 2007 else f"{request.di:04X}",
            points=[self.points[k].name for k in request.keys],
        )
        return [Request(self.points[k].di, (k,)) for k in request.keys]

    def _decode(
        self,
        request: Request,
        data: bytes,
        values: dict[int, Value | None],
        bad: dict[int, str],
    ) -> None:
        if request.block:
            offsets: dict[int, tuple[int, int]] = {}
            at = 0
            for di, size in member_sizes(request.di, self.version):
                offsets[di] = (at, size)
                at += size
            pieces = {}
            for key in request.keys:
                start, size = offsets[self.points[key].di]
                if start + size > len(data):
                    # Fewer members than the block can hold (a meter with two tariffs).
                    bad[key] = "no_such_data"
                    continue
                pieces[key] = data[start : start + size]
        else:
            pieces = {request.keys[0]: data}
        for key, raw in pieces.items():
            point = self.points[key]
            try:
                value = decode_value(point.fmt, raw)
            except Dlt645Error as exc:
                self.counters[exc.reason] += 1
                bad[key] = exc.reason
                continue
            if value is None:
                bad[key] = "not_available"
            else:
                values[key] = value

    def _note_bad(self, bad: Mapping[int, str]) -> None:
        names = frozenset(self.points[k].name for k in bad)
        if names == self._bad_points:
            return
        if names:
            self.ctx.log.warning(
                "dlt645.points_bad",
                device=self.config.id,
                points=sorted(names),
                reasons=sorted(set(bad.values())),
            )
        else:
            self.ctx.log.info("dlt645.points_ok", device=self.config.id)
        self._bad_points = names

    def _clock_offset(self, values: Mapping[int, Value | None], ts: int) -> float | None:
        by_name = {self.points[k].name: v for k, v in values.items()}
        day, time = by_name.get("meter_date"), by_name.get("meter_time")
        if not isinstance(day, str) or not isinstance(time, str):
            return None
        try:
            local = dt.datetime.fromisoformat(f"{day}T{time}").replace(tzinfo=self._zone)
        except ValueError:
            return None
        return round(local.timestamp() - ts / 1000, 1)

    def _records(
        self, values: Mapping[int, Value | None], bad: Mapping[int, str], ts: int, synced: bool
    ) -> list[Record]:
        device = self.config.id
        records: list[Record] = [
            *point_readings(device, self.points, values, bad, ts, synced, self._reported)
        ]
        offset = self._clock_offset(values, ts) if synced else None
        if offset is not None:
            records.append(
                Reading(device=device, ts=ts, point="clock_offset_s", value=offset, unit="s")
            )
        return records

    def device_inventory(self) -> Mapping[str, Mapping[str, str]]:
        return {self.config.id: dict(self._inventory)}


async def read_address(link: MeterLink) -> str:
    """The address of the one meter on a line (the wildcard address): ``13`` read-address in
    2007, a read of ``C032``'s frame address in 1997."""
    if link.version == 2007:
        reply = await link.transact(Func.READ_ADDRESS, b"", address=WILDCARD)
        return show_address(reply.address)
    _, address = await link.read(0xC032, address=WILDCARD)
    return show_address(address)
