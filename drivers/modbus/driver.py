"""The Modbus driver: reads a device's points with a planned set of requests.

Constructed once per device with no I/O; ``start`` joins the bus's shared :class:`ModbusLink`.
Each ``read`` runs the device's plan (:mod:`drivers.modbus.planner`) through the link, decodes
every point (:mod:`drivers.modbus.codec`) and returns one reading per point that is due. A request
that fails makes its points ``bad`` with the reason; only a read where nothing could be read
raises :class:`DeviceError`, so the scheduler's health and backoff see a dead device, not a
device with one unmapped register.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadDiscreteInputsRequest,
    WriteSingleCoilRequest,
)
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadInputRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteSingleRegisterRequest,
)

from agent.driver import BusError, CommandError, CommandSpec, DeviceError, DriverContext
from agent.driver.report import OnChange, point_readings
from agent.records import Record
from drivers.modbus.codec import (
    BIT_TABLES,
    CodecError,
    Decoder,
    Value,
    decoder,
    encode,
    exception_reason,
    function_code,
    reply_length,
)
from drivers.modbus.config import ModbusDevice, Point
from drivers.modbus.link import LinkError, ModbusLink, shared_link
from drivers.modbus.planner import (
    Cost,
    Item,
    Limits,
    LineTiming,
    Request,
    plan_reads,
    wire_time_s,
)

if TYPE_CHECKING:
    from pymodbus.pdu import ModbusPDU

    from agent.config.models import Bus

__all__ = ["ModbusDriver", "line_timing"]

_SILENT_REASONS: Final = frozenset({"timeout", "crc_error", "short_reply", "wrong_unit", "garbage"})
_SPLIT_ON: Final = frozenset({2, 3})
"""Illegal data address / value: the device rejects a read that spans registers it lacks."""
_READS: Final[dict[str, Any]] = {
    "holding": ReadHoldingRegistersRequest,
    "input": ReadInputRegistersRequest,
    "coil": ReadCoilsRequest,
    "discrete": ReadDiscreteInputsRequest,
}


def line_timing(bus: Bus) -> LineTiming:
    """The serial line's timing; RTU-over-TCP gateways and TCP get the 9600 8E1 figures."""
    serial = bus.serial
    if serial is None:
        return LineTiming()
    bits = 1 + serial.data_bits + (serial.parity != "none") + serial.stop_bits
    return LineTiming(serial.baud, bits)


def _implied_decimals(number: float) -> int:
    """Decimals needed to write ``number`` exactly (0.1 -> 1, 0.25 -> 2), at most 9."""
    for decimals in range(10):
        if math.isclose(round(number, decimals), number, rel_tol=1e-12, abs_tol=1e-12):
            return decimals
    return 9


def _finisher(point: Point) -> Callable[[Value], Value]:
    """Raw value -> reported value: scale, offset, rounding."""
    if point.type in ("string", "bit", "bool"):
        return lambda raw: raw
    scale, offset = point.scale, point.offset
    identity = scale == 1 and offset == 0
    if point.decimals is not None:
        decimals = point.decimals
        if decimals == 0:
            return lambda raw: round(raw * scale + offset)  # type: ignore[operator]
        return lambda raw: round(raw * scale + offset, decimals)  # type: ignore[operator]
    if identity:
        return lambda raw: raw
    if point.type == "float32":
        # Keep float32's 7 significant digits through the scaling: 2301.5 · 0.1 = 230.15.
        return lambda raw: float(f"{raw * scale + offset:.7g}")  # type: ignore[operator]
    if point.type == "float64":
        return lambda raw: raw * scale + offset  # type: ignore[operator]
    decimals = max(_implied_decimals(scale), _implied_decimals(offset))
    if decimals == 0:
        return lambda raw: int(raw * scale + offset)  # type: ignore[operator]
    return lambda raw: round(raw * scale + offset, decimals)  # type: ignore[operator]


def _group(table: str, items: Sequence[Item]) -> Request:
    start = items[0].address
    return Request(table, start, max(i.end for i in items) - start, tuple(i.key for i in items))


class ModbusDriver:
    """Polls one Modbus device; accepts ``modbus.write`` for points marked writable."""

    def __init__(self, config: ModbusDevice, ctx: DriverContext) -> None:
        self.config = config
        self.ctx = ctx
        if ctx.bus is None:
            raise ValueError(f"{config.id}: a Modbus device needs a bus")
        bus = self.bus = ctx.bus.config
        self.points: list[Point] = config.resolved_points()
        self._by_name = {p.name: i for i, p in enumerate(self.points)}
        self._decoders: list[Decoder] = [
            decoder(p.type, p.word_order, length=p.length, bit=p.bit) for p in self.points
        ]
        self._finish = [_finisher(p) for p in self.points]
        self.timing = line_timing(bus)
        rtu_line = bus.serial is not None or (bus.tcp is not None and bus.tcp.framer == "rtu")
        self._cost = Cost.serial(self.timing) if rtu_line else Cost.tcp()
        self.limits = Limits(config.register_limit, config.max_bits, config.gap_limit)
        self.plan: list[Request] = plan_reads(
            self._items(range(len(self.points))), self.limits, self._cost
        )
        self.counters: collections.Counter[str] = ctx.counters.get(config.id, collections.Counter())
        """Per-device figures, pushed into the device's state: requests, timeouts, crc_error,
        exception_02, partial_reads..."""
        self._link: ModbusLink | None = None
        self._reported: OnChange[int] = OnChange(config.report_every_s)
        self._bad_points: frozenset[str] = frozenset()

    # ------------------------------------------------------------------ planning

    def _items(self, keys: Sequence[int] | range) -> list[Item]:
        return [
            Item(k, self.points[k].table, self.points[k].address, self.points[k].size) for k in keys
        ]

    @property
    def planned_wire_s(self) -> float:
        """Wire time of one poll cycle, from the plan and the line's speed."""
        return wire_time_s(self.plan, self.timing)

    def _split(self, request: Request) -> list[Request] | None:
        """Two smaller reads for one the device rejected, cut at the widest unread gap (the
        likeliest hole in its map); without gaps, one read per point. None: nothing to split."""
        items = sorted(self._items(request.keys), key=lambda i: (i.address, i.end))
        widest, cut, covered = 0, 0, items[0].end
        for index, item in enumerate(items[1:], 1):
            if item.address - covered > widest:
                widest, cut = item.address - covered, index
            covered = max(covered, item.end)
        if widest:
            return [_group(request.table, items[:cut]), _group(request.table, items[cut:])]
        if len(items) > 1:
            return [Request(i.table, i.address, i.size, (i.key,)) for i in items]
        return None

    # ------------------------------------------------------------------ lifecycle

    async def _ensure_link(self) -> ModbusLink:
        if self._link is None:
            self._link = await shared_link(self.ctx)
        return self._link

    async def start(self) -> None:
        await self._ensure_link()
        self.ctx.log.debug(
            "modbus.plan",
            device=self.config.id,
            points=len(self.points),
            requests=len(self.plan),
            wire_ms=round(self.planned_wire_s * 1000, 1),
        )

    async def stop(self) -> None:
        """The link belongs to the bus; the runtime closes it."""
        self._link = None

    # ------------------------------------------------------------------ reading

    async def _request(self, link: ModbusLink, request: Request) -> ModbusPDU:
        function = function_code(request.table)
        pdu = _READS[request.table](
            dev_id=self.config.unit, address=request.address, count=request.count
        )
        self.counters["requests"] += 1
        return await link.call(
            pdu,
            expected=reply_length(function, request.count),
            timeout_s=self.config.timeout_s,
            retries=self.config.retries,
        )

    @property
    def read_budget_s(self) -> float:
        """The worst case of one read: every planned request timing out on every try, and its
        frames on the wire (waits for a turn on the bus not counted). The scheduler's guard
        scales with it, so a long plan is never cut short."""
        tries = self.config.retries + 1
        return sum(
            tries * (self.config.timeout_s + self.timing.request_s(r.table, r.count))
            for r in self.plan
        )

    async def read(self) -> Sequence[Record]:
        link = await self._ensure_link()
        values: dict[int, Value] = {}
        bad: dict[int, str] = {}
        queue = list(self.plan)
        answered = 0
        silent_run = 0
        first_error: LinkError | None = None
        while queue:
            request = queue.pop(0)
            try:
                reply = await self._request(link, request)
            except LinkError as exc:
                self.counters[exc.reason] += 1
                first_error = first_error or exc
                bad.update(dict.fromkeys(request.keys, exc.reason))
                if isinstance(exc, BusError):
                    raise
                if exc.reason in _SILENT_REASONS:
                    silent_run += 1
                # A device that has not answered at all, or stopped answering, would cost a
                # timeout per remaining request: leave them for the next cycle.
                if (silent_run and not answered) or silent_run >= 2:
                    for r in queue:
                        bad.update(dict.fromkeys(r.keys, exc.reason))
                    break
                continue
            answered += 1
            silent_run = 0
            if reply.isError():
                code = int(getattr(reply, "exception_code", 0))
                reason = exception_reason(code)
                self.counters[reason] += 1
                parts = self._split(request) if code in _SPLIT_ON else None
                if parts is not None:
                    self._replace(request, parts, reason)
                    queue[:0] = parts
                    continue
                first_error = first_error or LinkError(reason, f"Modbus exception {code:02x}")
                bad.update(dict.fromkeys(request.keys, reason))
                continue
            self._decode(request, reply, values, bad)
        ts, synced = self.ctx.stamp()
        if not values:
            error = first_error or LinkError("short_reply", "no value could be decoded")
            raise DeviceError(error.reason, str(error))
        if bad:
            self.counters["partial_reads"] += 1
        self._note_bad(bad)
        return self._records(values, bad, ts, synced)

    def _decode(
        self, request: Request, reply: ModbusPDU, values: dict[int, Value], bad: dict[int, str]
    ) -> None:
        points = self.points
        if request.table in BIT_TABLES:
            bits = reply.bits
            if len(bits) < request.count:
                self.counters["short_reply"] += 1
                bad.update(dict.fromkeys(request.keys, "short_reply"))
                return
            for key in request.keys:
                values[key] = bool(bits[points[key].address - request.address])
            return
        registers = reply.registers
        if len(registers) < request.count:
            # A valid frame with fewer registers than asked: some devices truncate silently.
            self.counters["short_reply"] += 1
            bad.update(dict.fromkeys(request.keys, "short_reply"))
            return
        base = request.address
        decoders, finish = self._decoders, self._finish
        for key in request.keys:
            try:
                values[key] = finish[key](decoders[key](registers, points[key].address - base))
            except (CodecError, ValueError, OverflowError) as exc:
                del exc
                bad[key] = "bad_value"

    def _replace(self, request: Request, parts: list[Request], reason: str) -> None:
        """Remember that the device wants smaller reads, so the next cycles do not ask again."""
        try:
            index = self.plan.index(request)
        except ValueError:
            return  # already replaced (a part of a part)
        self.plan[index : index + 1] = parts
        self.counters["plan_splits"] += 1
        self.ctx.log.info(
            "modbus.plan_split",
            device=self.config.id,
            table=request.table,
            address=request.address,
            count=request.count,
            reason=reason,
            into=len(parts),
        )

    def _note_bad(self, bad: dict[int, str]) -> None:
        names = frozenset(self.points[k].name for k in bad)
        if names != self._bad_points:
            # Logged when the set of failing points changes, not on every poll.
            if names:
                self.ctx.log.warning(
                    "modbus.points_bad",
                    device=self.config.id,
                    points=sorted(names),
                    reasons=sorted(set(bad.values())),
                )
            else:
                self.ctx.log.info("modbus.points_ok", device=self.config.id)
            self._bad_points = names

    def _records(
        self, values: dict[int, Value], bad: dict[int, str], ts: int, synced: bool
    ) -> list[Record]:
        return [
            *point_readings(self.config.id, self.points, values, bad, ts, synced, self._reported)
        ]

    # ------------------------------------------------------------------ commands

    def command_specs(self) -> Sequence[CommandSpec]:
        return (
            CommandSpec(
                "modbus.write",
                "write a point the config marks writable (holding register or coil), "
                "confirmed by reading it back: {point: name, value: number|bool|text}",
                self._validate_write,
            ),
        )

    def _writable(self, name: Any) -> Point:
        if not isinstance(name, str) or name not in self._by_name:
            known = ", ".join(p.name for p in self.points if p.writable) or "none"
            raise CommandError("bad_args", f"unknown point {name!r} (writable: {known})")
        point = self.points[self._by_name[name]]
        if not point.writable:
            raise CommandError("not_writable", f"point {name!r} is not marked writable")
        return point

    def _raw(self, point: Point, value: Any) -> Value:
        """The value to encode: the reading's value with scale and offset taken off."""
        if point.type in ("bool", "bit"):
            if not isinstance(value, bool):
                raise CommandError("bad_args", f"{point.name} takes true or false")
            return value
        if point.type == "string":
            if not isinstance(value, str):
                raise CommandError("bad_args", f"{point.name} takes text")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CommandError("bad_args", f"{point.name} takes a number")
        if isinstance(value, int) and point.scale == 1 and float(point.offset).is_integer():
            # Exact: a 64-bit counter does not survive a trip through float.
            return value - int(point.offset)
        raw = (value - point.offset) / point.scale
        if point.type.startswith(("int", "uint")):
            whole = round(raw)
            if not math.isclose(whole, raw, rel_tol=1e-9, abs_tol=1e-9):
                step = point.scale
                raise CommandError(
                    "bad_args", f"{value} is not a multiple of {point.name}'s step ({step:g})"
                )
            return whole
        return raw

    def _validate_write(self, args: Mapping[str, Any]) -> Mapping[str, Any]:
        unknown = set(args) - {"point", "value"}
        if unknown:
            raise CommandError("bad_args", f"unknown argument(s): {', '.join(sorted(unknown))}")
        if "value" not in args:
            raise CommandError("bad_args", "missing 'value'")
        point = self._writable(args.get("point"))
        raw = self._raw(point, args["value"])
        try:
            encode(raw, point.type, point.word_order, length=point.length, bit=point.bit)
        except CodecError as exc:
            raise CommandError("bad_args", f"{point.name}: {exc}") from None
        return {"point": point.name, "value": args["value"]}

    async def _call(self, link: ModbusLink, what: str, request: ModbusPDU) -> ModbusPDU:
        try:
            reply = await link.call(
                request,
                expected=8,
                timeout_s=self.config.timeout_s,
                retries=self.config.retries,
            )
        except LinkError as exc:
            raise CommandError(exc.reason, f"{what}: {exc}") from None
        if reply.isError():
            code = int(getattr(reply, "exception_code", 0))
            raise CommandError(exception_reason(code), f"{what}: Modbus exception {code:02x}")
        return reply

    async def _read_point(self, link: ModbusLink, point: Point) -> list[int] | bool:
        request = Request(point.table, point.address, point.size, (self._by_name[point.name],))
        try:
            reply = await self._request(link, request)
        except LinkError as exc:
            raise CommandError(exc.reason, f"reading {point.name} back: {exc}") from None
        if reply.isError():
            code = int(getattr(reply, "exception_code", 0))
            raise CommandError(exception_reason(code), f"reading {point.name} back: {code:02x}")
        if point.table in BIT_TABLES:
            return bool(reply.bits[0])
        registers: list[int] = list(reply.registers)
        if len(registers) < point.size:
            raise CommandError("short_reply", f"reading {point.name} back: short reply")
        return registers

    async def execute(self, action: str, args: Mapping[str, Any]) -> Mapping[str, Any]:
        if action != "modbus.write":
            raise CommandError("unknown_action", f"Modbus devices do not know {action!r}")
        point = self._writable(args.get("point"))
        raw = self._raw(point, args.get("value"))
        link = await self._ensure_link()
        unit, address = self.config.unit, point.address
        if point.table == "coil":
            state = bool(raw)
            await self._call(
                link,
                f"writing {point.name}",
                WriteSingleCoilRequest(dev_id=unit, address=address, bits=[state]),
            )
            back = await self._read_point(link, point)
            if back != state:
                raise CommandError("not_confirmed", f"wrote {state}, read back {back}")
            return {"point": point.name, "value": back, "confirmed": True}
        current = 0
        if point.type == "bit":
            before = await self._read_point(link, point)
            assert isinstance(before, list)
            current = before[0]
        try:
            words = encode(
                raw,
                point.type,
                point.word_order,
                length=point.length,
                bit=point.bit,
                current=current,
            )
        except CodecError as exc:
            raise CommandError("bad_args", f"{point.name}: {exc}") from None
        if len(words) == 1:
            word = words[0]
            await self._call(
                link,
                f"writing {point.name}",
                WriteSingleRegisterRequest(dev_id=unit, address=address, registers=[word]),
            )
        else:
            await self._call(
                link,
                f"writing {point.name}",
                WriteMultipleRegistersRequest(dev_id=unit, address=address, registers=words),
            )
        back = await self._read_point(link, point)
        assert isinstance(back, list)
        key = self._by_name[point.name]
        if point.type == "bit":
            confirmed = bool(back[0] >> (point.bit or 0) & 1) == bool(raw)
        else:
            confirmed = back == words
        value = self._finish[key](self._decoders[key](back, 0))
        if not confirmed:
            raise CommandError(
                "not_confirmed", f"wrote {args.get('value')!r} to {point.name}, read back {value!r}"
            )
        return {"point": point.name, "value": value, "confirmed": True}
