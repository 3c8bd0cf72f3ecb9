"""The CJ/T 188 driver: reads one water, heat or gas meter's current data (``901F``) per poll.

Constructed once per meter with no I/O. Each ``read`` sends one read-data frame on the core's
serial line and checks the reply against it: a reply from another address or meter type, to
another identifier or serial number (``SER``, one more per request) is refused
(``wrong_address``, ``wrong_reply``) rather than read as this meter's. From the reply:

- one reading per quantity of the meter type (water and gas: ``volume``,
  ``volume_settlement``; heat: ``heat_energy``, ``heat_settlement``, ``heat_power``,
  ``flow_rate``, ``volume``, ``supply_temp``, ``return_temp``, ``working_hours``), in the unit
  the meter sends; an FF-filled or non-BCD value is ``bad`` with its reason (``not_available``,
  ``bad_value``), a unit code the standard does not list makes the value ``uncertain``;
- ``meter_time`` (the meter's clock, ISO text), ``clock_offset_s`` (how far it is from the
  gateway's, when the gateway's is synchronised), ``battery_low``, ``status`` (``ST1ST2`` as
  sent, vendor bits included) and, for a meter with a valve, ``valve``;
- events on transitions only: ``meter.valve_closed``, ``meter.valve_opened``,
  ``meter.valve_abnormal``, ``meter.battery_low``, ``meter.battery_ok``.

A meter that does not answer raises :class:`DeviceError` with what the line carried
(``timeout``, ``checksum_error``, ``truncated``, ``garbage``), so the scheduler's health and
backoff see it. ``valve.open`` and ``valve.close`` write ``A017`` and are confirmed by the
status the meter answers with.
"""

from __future__ import annotations

import collections
import datetime as dt
import zoneinfo
from collections.abc import Mapping, Sequence
from typing import Any, Final

from agent.bus import SerialLine
from agent.driver import BusError, CommandError, CommandSpec, DeviceError, DriverContext
from agent.driver.report import OnChange
from agent.records import Event, Quality, Reading, Record, Severity, Value
from drivers.cjt188.codec import (
    ANY_TYPE,
    CURRENT,
    HEADER,
    READ_ADDRESS,
    TYPE_NAMES,
    VALVE,
    VALVE_CLOSE,
    VALVE_OPEN,
    WILDCARD,
    Cjt188Error,
    CurrentData,
    DiOrder,
    Frame,
    Func,
    Status,
    Valve,
    body,
    decode,
    decode_current,
    decode_status,
    di_matches,
    diagnose,
    encode,
    payload_size,
    reply_length,
    show_address,
    split,
)
from drivers.cjt188.config import Cjt188Device

__all__ = ["Cjt188Driver", "MeterLink", "reaches", "read_address", "type_name"]

PROTOCOL: Final = "CJ/T 188-2004"
_FRAME: Final = HEADER + 2 + 3
"""Header, checksum, end, DI and SER: every frame's bytes besides its payload."""
_ACTIONS: Final = {"valve.open": ("open", VALVE_OPEN), "valve.close": ("closed", VALVE_CLOSE)}


def reaches(to: bytes, address: bytes) -> bool:
    """Whether a frame sent to ``to`` (``AA`` bytes wildcards) reaches ``address``."""
    return all(t in (0xAA, a) for t, a in zip(to, address, strict=True))


class MeterLink:
    """Frames to one address and meter type on a line and back: the meter's identifier order,
    its timeout and retries, the serial number. Also the scan tool's way to talk to a line
    (with the wildcard address and type)."""

    def __init__(
        self,
        line: SerialLine,
        address: bytes,
        meter_type: int,
        *,
        timeout_s: float,
        retries: int = 0,
        preamble: int = 4,
        di_order: DiOrder = "low_first",
    ) -> None:
        self.line = line
        self.address = address
        self.meter_type = meter_type
        self.timeout_s = timeout_s
        self.retries = retries
        self.preamble = preamble
        self.di_order: DiOrder = di_order
        self.ser = 0xFF
        """The last serial number sent; the first request sends 00."""

    async def transact(
        self,
        function: int,
        di: int,
        payload: bytes = b"",
        *,
        address: bytes | None = None,
        meter_type: int | None = None,
        timeout_s: float | None = None,
    ) -> tuple[Frame, bytes]:
        """One request and its reply, checked: a reply to this function, identifier and SER,
        from the address and type asked (any, for wildcards). Returns the reply and its payload
        (after DI and SER). Raises :class:`DeviceError` with a reason word."""
        to = address or self.address
        kind = self.meter_type if meter_type is None else meter_type
        self.ser = (self.ser + 1) & 0xFF
        ser = self.ser
        frame = encode(
            Frame(kind, to, function, body(di, ser, payload, self.di_order)),
            preamble=self.preamble,
        )
        raw = await self.line.request(
            frame,
            reply_length,
            self.timeout_s if timeout_s is None else timeout_s,
            retries=self.retries,
            diagnose=diagnose,
        )
        try:
            reply = decode(raw)
        except Cjt188Error as exc:  # reply_length found a frame: cannot happen, but be exact
            raise DeviceError(exc.reason, str(exc)) from None
        if not reply.is_reply or reply.function != function:
            self.line.note("cjt188_wrong_reply")
            raise DeviceError(
                "wrong_reply", f"a reply with control {reply.control:02X} to {function:02X}"
            )
        if not reaches(to, reply.address):
            self.line.note("cjt188_wrong_address")
            raise DeviceError(
                "wrong_address",
                f"a reply from {show_address(reply.address)}, not {show_address(to)} "
                "(two meters with one address, or a late reply)",
            )
        if kind not in (ANY_TYPE, reply.meter_type):
            self.line.note("cjt188_wrong_reply")
            raise DeviceError(
                "wrong_reply", f"a reply from a type {reply.meter_type:02X} meter, not {kind:02X}"
            )
        if reply.abnormal:
            # SER ST (the standard's), or DI SER ST (some vendors): the status is last.
            status = reply.data[-2:].hex(" ").upper() or "none"
            raise DeviceError("meter_error", f"the meter refused the request (status {status})")
        try:
            di_raw, got_ser, rest = split(reply.data)
        except Cjt188Error as exc:
            raise DeviceError(exc.reason, str(exc)) from None
        if not di_matches(di_raw, di):
            self.line.note("cjt188_wrong_reply")
            raise DeviceError("wrong_reply", f"a reply for DI {di_raw.hex().upper()}, not {di:04X}")
        if got_ser != ser:
            self.line.note("cjt188_wrong_reply")
            raise DeviceError(
                "wrong_reply", f"a reply to SER {got_ser:02X}, not {ser:02X} (a late reply?)"
            )
        return reply, rest

    async def read_current(
        self,
        *,
        address: bytes | None = None,
        meter_type: int | None = None,
        timeout_s: float | None = None,
    ) -> tuple[CurrentData, Frame]:
        """The meter's current data (``901F``), decoded for the type that answered."""
        reply, payload = await self.transact(
            Func.READ, CURRENT, address=address, meter_type=meter_type, timeout_s=timeout_s
        )
        try:
            return decode_current(reply.meter_type, payload), reply
        except Cjt188Error as exc:
            raise DeviceError(exc.reason, str(exc)) from None


async def read_address(link: MeterLink, meter_type: int = ANY_TYPE) -> tuple[str, int]:
    """The address and type of the one meter on a line: read-address (``03``, DI ``810A``) to
    the wildcard address."""
    reply, _ = await link.transact(
        Func.READ_ADDRESS, READ_ADDRESS, address=WILDCARD, meter_type=meter_type
    )
    return show_address(reply.address), reply.meter_type


def _no_args(args: Mapping[str, Any]) -> Mapping[str, Any]:
    unknown = set(args) - {"device"}
    if unknown:
        raise CommandError("bad_args", f"takes no arguments: {', '.join(sorted(unknown))}")
    return {}


class Cjt188Driver:
    """Polls one CJ/T 188 meter; opens and closes its valve."""

    def __init__(self, config: Cjt188Device, ctx: DriverContext) -> None:
        if not isinstance(ctx.bus, SerialLine):
            raise ValueError(f"{config.id}: a CJ/T 188 meter needs a serial bus")
        self.config = config
        self.ctx = ctx
        self.line = ctx.bus
        self.link = MeterLink(
            ctx.bus,
            config.wire_address,
            config.type_code,
            timeout_s=config.timeout_s,
            retries=config.retries,
            preamble=config.preamble,
            di_order=config.di_order,
        )
        self.counters: collections.Counter[str] = ctx.counters.get(config.id, collections.Counter())
        self._reported: OnChange[str] = OnChange(config.report_every_s)
        self._zone = zoneinfo.ZoneInfo(config.meter_timezone)
        self._has_valve = config.valve
        self._valve: Valve | None = None
        self._battery_low: bool | None = None
        self._bad: frozenset[str] = frozenset()
        self._inventory: dict[str, str] = {
            "protocol": PROTOCOL,
            "type": config.meter_type,
            "type_code": f"{config.type_code:02X}",
            "address": config.address,
        }

    @property
    def read_budget_s(self) -> float:
        """Every try timing out, plus the request's and the reply's time on the wire."""
        sent = self.config.preamble + _FRAME
        answer = 4 + _FRAME + payload_size(self.config.type_code)
        wire = self.line.wire_s(sent + answer) + 2 * self.line.gap_s
        return (self.config.retries + 1) * (self.config.timeout_s + wire)

    async def start(self) -> None:
        self.ctx.log.debug(
            "cjt188.meter",
            device=self.config.id,
            address=self.config.address,
            type=self.config.meter_type,
            budget_s=round(self.read_budget_s, 2),
        )

    async def stop(self) -> None:
        """Nothing to close: the line is the core's."""

    # ------------------------------------------------------------------ reading

    async def read(self) -> Sequence[Record]:
        self.counters["requests"] += 1
        try:
            data, _ = await self.link.read_current()
        except BusError:
            raise
        except DeviceError as exc:
            self.counters[exc.reason] += 1
            raise
        ts, synced = self.ctx.stamp()
        return self._records(data, ts, synced)

    def _reading(
        self,
        name: str,
        value: Value | None,
        unit: str | None,
        reason: str | None,
        ts: int,
        synced: bool,
    ) -> Reading | None:
        if value is None:
            quality = Quality.BAD
        elif reason is not None:
            quality = Quality.UNCERTAIN
        else:
            quality = Quality.GOOD
        deadband = self.config.deadbands.get(name)
        if deadband is not None and not self._reported.due(name, deadband, value, quality, ts):
            return None
        return Reading(
            device=self.config.id,
            ts=ts,
            ts_synced=synced,
            point=name,
            value=value,
            unit=unit,
            quality=quality,
            reason=reason,
        )

    def _records(self, data: CurrentData, ts: int, synced: bool) -> list[Record]:
        records: list[Record] = []
        bad: dict[str, str] = {}
        for measured in data.values:
            if measured.value is None and measured.reason is not None:
                bad[measured.name] = measured.reason
                self.counters[measured.reason] += 1
            reading = self._reading(
                measured.name, measured.value, measured.unit, measured.reason, ts, synced
            )
            if reading is not None:
                records.append(reading)
        self._note_bad(bad)
        if synced:
            offset = self._clock_offset(data, ts)
            if offset is not None:
                reading = self._reading("clock_offset_s", offset, "s", None, ts, synced)
                if reading is not None:
                    records.append(reading)
        status = data.status
        for name, value in (("battery_low", status.battery_low), ("status", status.text)):
            records.append(
                Reading(device=self.config.id, ts=ts, ts_synced=synced, point=name, value=value)
            )
        if status.valve != "open" and not self._has_valve:
            # A meter configured without a valve says it has one (closed or abnormal).
            self._has_valve = True
            self.ctx.log.info(
                "cjt188.valve_seen", device=self.config.id, valve=status.valve, status=status.text
            )
        if self._has_valve:
            records.append(
                Reading(
                    device=self.config.id,
                    ts=ts,
                    ts_synced=synced,
                    point="valve",
                    value=status.valve,
                )
            )
        records += self._events(status, ts, synced)
        return records

    def _clock_offset(self, data: CurrentData, ts: int) -> float | None:
        measured = data.get("meter_time")
        if measured is None or not isinstance(measured.value, str):
            return None
        local = dt.datetime.fromisoformat(measured.value).replace(tzinfo=self._zone)
        return round(local.timestamp() - ts / 1000, 1)

    def _note_bad(self, bad: Mapping[str, str]) -> None:
        names = frozenset(bad)
        if names == self._bad:
            return
        if names:
            self.ctx.log.warning(
                "cjt188.values_bad",
                device=self.config.id,
                readings=sorted(names),
                reasons=sorted(set(bad.values())),
            )
        else:
            self.ctx.log.info("cjt188.values_ok", device=self.config.id)
        self._bad = names

    def _event(self, kind: str, severity: Severity, status: Status, ts: int, synced: bool) -> Event:
        return Event(
            device=self.config.id,
            ts=ts,
            ts_synced=synced,
            type=kind,
            severity=severity,
            data={
                "address": self.config.address,
                "valve": status.valve,
                "battery_low": status.battery_low,
                "status": status.text,
            },
        )

    def _events(self, status: Status, ts: int, synced: bool) -> list[Event]:
        """The transitions ``status`` brings, each once."""
        events: list[Event] = []
        if self._has_valve:
            before, now = self._valve, status.valve
            self._valve = now
            if now != before:
                if now == "closed":
                    events.append(
                        self._event("meter.valve_closed", Severity.WARNING, status, ts, synced)
                    )
                elif now == "abnormal":
                    events.append(
                        self._event("meter.valve_abnormal", Severity.WARNING, status, ts, synced)
                    )
                elif before is not None:
                    events.append(
                        self._event("meter.valve_opened", Severity.INFO, status, ts, synced)
                    )
        low, before_low = status.battery_low, self._battery_low
        self._battery_low = low
        if low and before_low is not True:
            events.append(self._event("meter.battery_low", Severity.WARNING, status, ts, synced))
        elif not low and before_low is True:
            events.append(self._event("meter.battery_ok", Severity.INFO, status, ts, synced))
        return events

    # ------------------------------------------------------------------ commands

    def command_specs(self) -> Sequence[CommandSpec]:
        if not self.config.valve:
            return ()
        return (
            CommandSpec(
                "valve.open",
                "open the meter's valve (write A017 = 55), confirmed by the status it answers",
                _no_args,
            ),
            CommandSpec(
                "valve.close",
                "close the meter's valve (write A017 = 99), confirmed by the status it answers",
                _no_args,
            ),
        )

    async def execute(self, action: str, args: Mapping[str, Any]) -> Mapping[str, Any]:
        if action not in _ACTIONS:
            raise CommandError("unknown_action", f"CJ/T 188 meters do not know {action!r}")
        if not self.config.valve:
            raise CommandError("unsupported", f"{self.config.id} has no valve (valve: false)")
        _no_args(args)
        want, code = _ACTIONS[action]
        self.counters["valve_commands"] += 1
        try:
            _, payload = await self.link.transact(Func.WRITE, VALVE, bytes((code,)))
            status = decode_status(payload[:2])
        except Cjt188Error as exc:
            self.counters[exc.reason] += 1
            raise CommandError(exc.reason, f"{action}: {exc}") from None
        except DeviceError as exc:  # BusError included: the command failed either way
            self.counters[exc.reason] += 1
            raise CommandError(exc.reason, f"{action}: {exc}") from None
        ts, synced = self.ctx.stamp()
        events = self._events(status, ts, synced)
        if events:
            await self.ctx.sink(events)
        if status.valve != want:
            self.counters["not_confirmed"] += 1
            raise CommandError(
                "not_confirmed",
                f"{action}: the meter answers that its valve is {status.valve} "
                f"(status {status.text})",
            )
        return {"valve": status.valve, "confirmed": True, "status": status.text}

    def device_inventory(self) -> Mapping[str, Mapping[str, str]]:
        return {self.config.id: dict(self._inventory)}


def type_name(code: int) -> str:
    """A type code as the config names it (``10`` → ``cold_water``), else its hex."""
    return TYPE_NAMES.get(code, f"{code:02X}")
