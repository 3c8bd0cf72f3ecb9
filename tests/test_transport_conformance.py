"""What every uplink transport must do, run against each one (HTTP today; MQTT must join).

A transport only moves documents and maps answers to outcomes; the pump, the inventory sender
and the command service are shared (:mod:`agent.uplink.client`). These tests hold any transport
to the promises the platform relies on:

- a batch leaves the buffer only after the platform stored it, and a 2xx that does not
  acknowledge the batch (a captive portal, a proxy's page) deletes nothing;
- a record the platform refuses is set aside alone, the rest flows;
- a batch that is too large is split;
- 5xx answers and timeouts are retried until everything arrives, exactly once;
- commands run only when their signature verifies, and once.

A new transport adds a rig to ``RIGS``: the reference platform reachable through it, and an
:class:`UplinkClient` over it. The tests use nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import pytest
import structlog
from test_uplink_support import (
    GW,
    KEY_ID,
    SECRET,
    Platform,
    redeliver,
    running_platform,
    signed_command,
    wait_for,
    wait_for_result,
)

from agent.config.models import Community, Gateway, HttpUplink, SecretRef
from agent.driver import CommandError
from agent.records import Event, Reading, Record, Severity
from agent.state import UplinkState
from agent.uplink.client import UplinkClient
from agent.uplink.http import HttpUplinkClient
from buffer import AsyncBuffer, Batch
from reference_platform import public_pem

INVENTORY = {
    "gateway": {
        "id": GW,
        "name": None,
        "code": None,
        "community": {"code": "350102001001", "name": None},
        "timezone": "Asia/Shanghai",
        "agent_version": "0.1.0-test",
    },
    "devices": [{"id": "door-1", "driver": "simulated", "kind": "access_controller"}],
}


class Executor:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    async def __call__(
        self, device: str, action: str, args: Mapping[str, Any], *, source: str, command_id: str
    ) -> Mapping[str, Any]:
        self.calls.append((device, action, command_id))
        if action == "explode":
            raise CommandError("not_allowed", "not on the allowlist")
        return {"done": action}


@dataclasses.dataclass
class Rig:
    client: UplinkClient
    buffer: AsyncBuffer
    platform: Platform
    executor: Executor


class RigFactory(Protocol):
    def __call__(
        self, tmp_path: Path, *, batch_max_records: int = ...
    ) -> contextlib.AbstractAsyncContextManager[Rig]: ...


@contextlib.asynccontextmanager
async def http_rig(tmp_path: Path, *, batch_max_records: int = 50) -> AsyncIterator[Rig]:
    async with running_platform(tmp_path) as p:
        key_file = tmp_path / "platform-command.pub"
        key_file.write_bytes(public_pem(p.platform.command_key))
        buffer = await AsyncBuffer.open(tmp_path / "buffer.db", durability="normal")
        executor = Executor()
        client = HttpUplinkClient(
            HttpUplink(
                url=p.url,
                key_id=KEY_ID,
                secret=SecretRef(env="UNUSED_IN_TESTS"),
                timeout_s=1,
                backoff_cap_s=0.2,
                first_attempt_jitter_s=0,
                batch_max_records=batch_max_records,
                commands=True,
                command_key_file=key_file,
            ),
            gateway=Gateway(id=GW, community=Community(code="350102001001")),
            secret=SECRET,
            buffer=buffer,
            state=UplinkState(),
            inventory=lambda: INVENTORY,
            commands=executor,
            log=structlog.get_logger(),
            agent_version="0.1.0-test",
            rng=random.Random(3),
            idle_poll_s=0.05,
            long_poll_s=1,
        )
        try:
            yield Rig(client, buffer, p, executor)
        finally:
            await client.close()
            await buffer.close()


RIGS: dict[str, RigFactory] = {"http": http_rig}


@pytest.fixture(params=sorted(RIGS))
def make_rig(request: pytest.FixtureRequest) -> RigFactory:
    return RIGS[request.param]


@contextlib.asynccontextmanager
async def running(rig: Rig) -> AsyncIterator[Rig]:
    async with contextlib.AsyncExitStack() as stack:
        task = asyncio.create_task(rig.client.run())

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

        stack.push_async_callback(stop)
        yield rig


def readings(n: int, start: int = 0) -> list[Record]:
    return [
        Reading(device="meter-1", ts=1_700_000_000_000 + i, point="energy", value=float(i))
        for i in range(start, start + n)
    ]


def alarms(n: int) -> list[Record]:
    return [
        Event(
            device="door-1",
            ts=1_700_000_100_000 + i,
            type="door.forced_open",
            severity=Severity.ALARM,
        )
        for i in range(n)
    ]


async def stored(p: Platform) -> list[dict[str, Any]]:
    return await p.records()


def exactly_once(records: list[dict[str, Any]], n: int) -> None:
    keys = [(r["epoch"], r["seq"]) for r in records]
    assert len(keys) == len(set(keys)) == n


def empty(buffer: AsyncBuffer) -> Callable[[], Any]:
    async def check() -> bool:
        return (await buffer.stats()).records == 0

    return check


def watch_acks(rig: Rig) -> list[str]:
    """Check, at every buffer ack, that the platform already stores that batch; the problems
    seen are returned (a failing assertion inside the pump would only stall it)."""
    problems: list[str] = []
    ack = rig.buffer.ack

    async def checked(batch: Batch) -> int:
        have = {r["seq"] for r in await rig.platform.records() if r["epoch"] == batch.epoch}
        missing = set(batch.seqs()) - have
        if missing:
            problems.append(f"acked {len(missing)} records the platform does not store")
        return await ack(batch)

    rig.buffer.ack = checked  # type: ignore[method-assign]
    return problems


# --------------------------------------------------------------------------- records


async def test_acknowledged_means_stored(tmp_path: Path, make_rig: RigFactory) -> None:
    async with make_rig(tmp_path, batch_max_records=40) as rig:
        problems = watch_acks(rig)
        await rig.buffer.append([*readings(150), *alarms(10)])
        async with running(rig):
            await wait_for(empty(rig.buffer))
        records = await stored(rig.platform)
        exactly_once(records, 160)
        assert [r["record"]["kind"] for r in records[:10]] == ["event"] * 10
        assert problems == []
        assert rig.client.state.records_sent == 160


@pytest.mark.parametrize("mode", ["portal", "bad_ack"])
async def test_a_2xx_that_is_not_an_acknowledgement_deletes_nothing(
    tmp_path: Path, make_rig: RigFactory, mode: str
) -> None:
    async with make_rig(tmp_path) as rig:
        await rig.buffer.append(readings(30))
        await rig.platform.fault(mode=mode)
        async with running(rig):
            state = rig.client.state

            async def refused_twice() -> bool:
                return state.batches_failed >= 2

            await wait_for(refused_twice)
            assert "not an acknowledgement" in (state.last_error or "")
            assert not state.connected
            assert (await rig.buffer.stats()).records == 30, "nothing may be deleted"
            assert state.records_sent == 0
            await rig.platform.fault(mode="none")
            await wait_for(empty(rig.buffer))
        exactly_once(await stored(rig.platform), 30)


async def test_a_refused_record_is_set_aside_alone(tmp_path: Path, make_rig: RigFactory) -> None:
    async with make_rig(tmp_path, batch_max_records=16) as rig:
        bad = Reading(device="meter-1", ts=1, point="energy", value={"not": "scalar"})  # type: ignore[arg-type]
        await rig.buffer.append([*readings(9), bad, *readings(10, 9)])
        async with running(rig):
            await wait_for(empty(rig.buffer))
        values = [
            r["record"]["value"]
            for r in await stored(rig.platform)
            if r["record"]["kind"] == "reading"
        ]
        assert values == [float(i) for i in range(19)]
        assert rig.client.state.batches_poisoned == 1
        assert (await rig.buffer.stats()).poisoned == 1


async def test_a_batch_too_large_is_split(tmp_path: Path, make_rig: RigFactory) -> None:
    async with make_rig(tmp_path, batch_max_records=40) as rig:
        await rig.platform.fault(mode="none", max_records=7)
        await rig.buffer.append(readings(40))
        async with running(rig):
            await wait_for(empty(rig.buffer))
        exactly_once(await stored(rig.platform), 40)
        assert rig.client.state.batches_poisoned == 0


@pytest.mark.parametrize("mode", ["503", "500", "hang"])
async def test_5xx_and_timeouts_are_retried(
    tmp_path: Path, make_rig: RigFactory, mode: str
) -> None:
    async with make_rig(tmp_path) as rig:
        await rig.buffer.append(readings(20))
        await rig.platform.fault(mode=mode)
        async with running(rig):
            state = rig.client.state

            async def retried() -> bool:
                return state.batches_failed >= 2

            await wait_for(retried)
            assert (await rig.buffer.stats()).records == 20
            await rig.buffer.append(alarms(3))
            await rig.platform.fault(mode="none")
            await wait_for(empty(rig.buffer))
        records = await stored(rig.platform)
        exactly_once(records, 23)
        assert [r["record"]["kind"] for r in records[:3]] == ["event"] * 3
        assert state.connected
        assert state.batches_poisoned == 0


# --------------------------------------------------------------------------- commands


async def test_commands_are_verified_and_run_once(tmp_path: Path, make_rig: RigFactory) -> None:
    async with make_rig(tmp_path) as rig, running(rig):
        p = rig.platform
        _, doc = await p.admin(
            "POST", f"/v1/gateways/{GW}/commands", {"device": "door-1", "action": "open"}
        )
        ok = doc["command"]["id"]
        assert (await wait_for_result(p, ok))["status"] == "ok"

        signed = signed_command(p, "c-tampered")
        tampered = {**signed, "action": "unlock_all"}
        await p.admin("POST", "/admin/raw-command", {"gateway": GW, "command": tampered})
        result = await wait_for_result(p, "c-tampered")
        assert (result["status"], result["reason"]) == ("refused", "bad_signature")

        _, doc = await p.admin(
            "POST", f"/v1/gateways/{GW}/commands", {"device": "door-1", "action": "explode"}
        )
        refused = await wait_for_result(p, doc["command"]["id"])
        assert (refused["status"], refused["reason"]) == ("refused", "not_allowed")

        # Delivered again (a lost poll answer, a failover): it does not run a second time.
        await redeliver(p, ok)

        async def delivered_again() -> bool:
            _, doc = await p.admin("GET", f"/v1/gateways/{GW}/commands/{ok}")
            return bool(doc["status"] == "delivered")

        await wait_for(delivered_again)
        # A later command goes through the same poll: once it ran, the redelivery was seen.
        _, doc = await p.admin(
            "POST", f"/v1/gateways/{GW}/commands", {"device": "door-1", "action": "close"}
        )
        await wait_for_result(p, doc["command"]["id"])
        assert [c for c in rig.executor.calls if c[2] == ok] == [("door-1", "open", ok)]
        assert all(c[2] != "c-tampered" for c in rig.executor.calls)


async def test_a_platform_refusing_everything_does_not_turn_the_backlog_into_poison(
    tmp_path: Path, make_rig: RigFactory
) -> None:
    """A misconfigured proxy answering 400 to everything: the batch is halved to find the
    culprit, a few records are set aside, then the uplink stops setting aside and waits."""
    from agent.uplink.pump import POISON_RUN_MAX

    async with make_rig(tmp_path, batch_max_records=50) as rig:
        await rig.buffer.append(readings(200))
        await rig.platform.fault(mode="400")
        async with running(rig):
            state = rig.client.state

            async def refusing() -> bool:
                return "not setting more aside" in (state.last_error or "")

            await wait_for(refusing)
            assert state.batches_poisoned == POISON_RUN_MAX
            stats = await rig.buffer.stats()
            # The rest waits in line, with the buffer's report of each record set aside.
            assert (stats.readings, stats.events) == (200 - POISON_RUN_MAX, POISON_RUN_MAX)
            assert not state.connected
            await rig.platform.fault(mode="none")
            await wait_for(empty(rig.buffer))
            assert await rig.buffer.requeue_poison() == POISON_RUN_MAX
            await wait_for(empty(rig.buffer))
        records = await stored(rig.platform)
        readings_ = sorted(r["seq"] for r in records if r["record"]["kind"] == "reading")
        assert readings_ == list(range(1, 201)), "every reading arrived, once"
