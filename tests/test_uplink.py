"""The HTTP uplink client end to end: a real buffer, real HTTP on 127.0.0.1, the reference
platform. Timing is never asserted tightly; conditions are polled with generous deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs
from test_uplink_support import (
    GW,
    KEY_ID,
    SECRET,
    Platform,
    command_status,
    redeliver,
    running_platform,
    signed_command,
    wait_for,
    wait_for_result,
)

from agent.config.models import Community, Gateway, HttpUplink, SecretRef
from agent.driver import CommandError
from agent.records import Event, Reading, Record, Severity, Status, StatusState
from agent.state import UplinkState
from agent.uplink import Uplink
from agent.uplink.http import HttpTransport, HttpUplinkClient, UplinkConfigError
from agent.uplink.wire import sign_command
from buffer import AsyncBuffer
from reference_platform import public_pem

GATEWAY = Gateway(id=GW, community=Community(code="350102001001", name="东街社区"))


GATEWAY_DOC = {
    "id": GW,
    "name": None,
    "code": "35010200120000000001",
    "community": {"code": "350102001001", "name": "东街社区"},
    "timezone": "Asia/Shanghai",
    "agent_version": "0.1.0-test",
}
"""The gateway block as :func:`agent.inventory.build_inventory` writes it."""


def inventory() -> dict[str, Any]:
    return {
        "gateway": GATEWAY_DOC,
        "devices": [
            {"id": "meter-1", "driver": "simulated", "kind": "electricity_meter"},
            {"id": "door-1", "driver": "simulated", "kind": "access_controller"},
        ],
    }


@dataclasses.dataclass
class Agent:
    client: HttpUplinkClient
    buffer: AsyncBuffer
    state: UplinkState
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.client.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.client.close()


@contextlib.asynccontextmanager
async def running_agent(
    platform: Platform | str,
    tmp_path: Path,
    *,
    secret: str = SECRET,
    clock: Callable[[], float] = time.time,
    executor: Any = None,
    inventory_fn: Callable[[], dict[str, Any]] = inventory,
    inventory_check_s: float = 0.1,
    start: bool = True,
    clock_synced: Callable[[], bool] | None = None,
    **config: Any,
) -> AsyncIterator[Agent]:
    url = platform if isinstance(platform, str) else platform.url
    settings: dict[str, Any] = {
        "url": url,
        "key_id": KEY_ID,
        "secret": SecretRef(env="UNUSED_IN_TESTS"),
        "timeout_s": 2,
        "backoff_cap_s": 0.2,
        "first_attempt_jitter_s": 0,
        "commands": executor is not None,
        **config,
    }
    buffer = await AsyncBuffer.open(tmp_path / "buffer.db", durability="normal")
    state = UplinkState()
    client = HttpUplinkClient(
        HttpUplink(**settings),
        gateway=GATEWAY,
        secret=secret,
        buffer=buffer,
        state=state,
        inventory=inventory_fn,
        commands=executor,
        log=structlog.get_logger(),
        agent_version="0.1.0-test",
        clock=clock,
        rng=random.Random(7),
        idle_poll_s=0.05,
        inventory_check_s=inventory_check_s,
        long_poll_s=2,
        clock_synced=clock_synced,
    )
    agent = Agent(client, buffer, state)
    if start:
        agent.start()
    try:
        yield agent
    finally:
        await agent.stop()
        await buffer.close()


def readings(n: int, start: int = 0, device: str = "meter-1") -> list[Record]:
    return [
        Reading(device=device, ts=1_700_000_000_000 + i, point="energy", value=float(i), unit="kWh")
        for i in range(start, start + n)
    ]


def alarm(i: int) -> Record:
    return Event(
        device="door-1", ts=1_700_000_100_000 + i, type="door.forced_open", severity=Severity.ALARM
    )


async def stored_count(p: Platform) -> int:
    _, doc = await p.admin("GET", "/v1/gateways")
    return int(next(g["records"] for g in doc["gateways"] if g["id"] == GW))


def assert_exactly_once_in_priority_order(stored: list[dict[str, Any]]) -> None:
    keys = [(r["epoch"], r["seq"]) for r in stored]
    assert len(keys) == len(set(keys)), "a record arrived twice"
    # Per priority class, seq order; and an event never waits behind readings taken later.
    for kinds in (("event", "status"), ("reading",)):
        seqs = [r["seq"] for r in stored if r["record"]["kind"] in kinds]
        assert seqs == sorted(seqs), kinds


# --------------------------------------------------------------------------- happy path


async def test_drains_buffer_in_priority_order_and_sends_inventory(tmp_path: Path) -> None:
    async with (
        running_platform(tmp_path) as p,
        running_agent(p, tmp_path, start=False, batch_max_records=50) as agent,
    ):
        await agent.buffer.append(readings(300))
        await agent.buffer.append([alarm(i) for i in range(5)])
        await agent.buffer.append(
            [Status(device="meter-1", ts=1_700_000_200_000, state=StatusState.OFFLINE)]
        )
        agent.start()
        await wait_for(lambda: _has(p, 306))
        stored = await p.records()
        # Everything that was waiting: events and status first, then readings.
        assert [r["record"]["kind"] for r in stored[:6]] == ["event"] * 5 + ["status"]
        assert_exactly_once_in_priority_order(stored)
        assert stored[6]["record"] == {
            "seq": stored[6]["seq"],
            "kind": "reading",
            "device": "meter-1",
            "ts": 1_700_000_000_000,
            "ts_synced": True,
            "point": "energy",
            "value": 0.0,
            "unit": "kWh",
            "quality": "good",
            "reason": None,
        }
        await wait_for(lambda: _buffer_empty(agent))
        state = agent.state
        assert state.transport == "http"
        assert state.connected
        assert state.records_sent == 306
        assert state.batches_sent >= 7
        assert 0 < state.bytes_sent < sum(len(r["record"]) for r in stored) * 200
        assert state.last_success_ms is not None
        assert state.last_latency_ms is not None
        assert (state.batches_failed, state.batches_poisoned) == (0, 0)
        _, inv = await p.admin("GET", f"/v1/gateways/{GW}/inventory")
        gw = inv["inventory"]["gateway"]
        assert gw["agent_version"] == "0.1.0-test"
        assert gw["code"] == "35010200120000000001"
        assert gw["community"] == {"code": "350102001001", "name": "东街社区"}
        assert [d["id"] for d in inv["inventory"]["devices"]] == ["meter-1", "door-1"]


async def test_inventory_is_sent_again_when_it_changes(tmp_path: Path) -> None:
    devices = [{"id": "meter-1", "driver": "simulated", "kind": "other"}]

    def current() -> dict[str, Any]:
        return {"gateway": GATEWAY_DOC, "devices": list(devices)}

    async with running_platform(tmp_path) as p, running_agent(p, tmp_path, inventory_fn=current):

        async def revision(n: int) -> bool:
            status, doc = await p.admin("GET", f"/v1/gateways/{GW}/inventory")
            return status == 200 and doc["revision"] == n

        await wait_for(lambda: revision(1))
        devices.append({"id": "meter-2", "driver": "simulated", "kind": "other"})
        await wait_for(lambda: revision(2))
        await asyncio.sleep(0.5)
        assert await revision(2), "an unchanged inventory is not sent again"


async def test_a_driver_saying_its_inventory_changed_gets_it_sent_at_once(
    tmp_path: Path,
) -> None:
    devices = [{"id": "meter-1", "driver": "simulated", "kind": "other"}]

    def current() -> dict[str, Any]:
        return {"gateway": GATEWAY_DOC, "devices": [dict(d) for d in devices]}

    async with (
        running_platform(tmp_path) as p,
        running_agent(p, tmp_path, inventory_fn=current, inventory_check_s=3600) as agent,
    ):

        async def revision(n: int) -> bool:
            status, doc = await p.admin("GET", f"/v1/gateways/{GW}/inventory")
            return status == 200 and doc["revision"] == n

        await wait_for(lambda: revision(1))
        devices[0]["reported"] = {"firmware": "2.1"}
        await asyncio.sleep(0.5)
        assert await revision(1), "an hour between routine checks"
        agent.client.inventory_changed()  # what ctx.inventory_changed() does in the runtime
        await wait_for(lambda: revision(2))
        _, doc = await p.admin("GET", f"/v1/gateways/{GW}/inventory")
        assert doc["inventory"]["devices"][0]["reported"] == {"firmware": "2.1"}


async def _has(p: Platform, n: int) -> bool:
    return await stored_count(p) >= n


async def _buffer_empty(agent: Agent) -> bool:
    return (await agent.buffer.stats()).records == 0


async def test_client_satisfies_the_uplink_protocol(tmp_path: Path) -> None:
    async with running_agent("http://127.0.0.1:9", tmp_path, start=False) as agent:
        uplink: Uplink = agent.client  # checked by mypy
        assert isinstance(uplink, Uplink)
        assert uplink.state is agent.state


# --------------------------------------------------------------------------- clock skew


async def test_clock_an_hour_off_is_corrected_from_date(tmp_path: Path) -> None:
    def wrong_clock() -> float:
        return time.time() + 3600

    async with running_platform(tmp_path) as p:
        with capture_logs() as logs:
            async with running_agent(p, tmp_path, clock=wrong_clock) as agent:
                await agent.buffer.append(readings(10))
                await wait_for(lambda: _has(p, 10))
                assert abs(agent.state.clock_skew_ms + 3_600_000) < 5_000
                assert abs(agent.client.now_ms() - time.time() * 1000) < 5_000
        skews = [e for e in logs if e["event"] == "uplink.clock_skew"]
        assert len(skews) == 1
        # The stale-timestamp answer was corrected at once: no failure was counted for it.
        assert not [e for e in logs if e["event"] == "uplink.auth_failed"]


# --------------------------------------------------------------------------- dedup


async def test_resend_after_lost_ack_is_stored_once(tmp_path: Path) -> None:
    """The platform stores a batch but its answer is lost: the agent resends, the platform
    counts duplicates, and each record exists once."""
    async with (
        running_platform(tmp_path) as p,
        running_agent(p, tmp_path, start=False, batch_max_records=20) as agent,
    ):
        await agent.buffer.append(readings(20))
        batch = await agent.buffer.take(20, 1 << 20)
        assert batch is not None
        # Deliver it "behind the agent's back", as if the 200 had been lost on the way.
        from test_uplink_support import signed

        body = b'{"epoch":"' + batch.epoch.encode() + b'","records":' + batch.body() + b"}"
        import gzip

        _status, doc, _ = await signed(
            p.session,
            p.url,
            "POST",
            f"/v1/gateways/{GW}/records",
            gzip.compress(body),
            headers={"Content-Encoding": "gzip"},
        )
        assert doc["accepted"] == 20
        with capture_logs() as logs:
            agent.start()
            await wait_for(lambda: _buffer_empty(agent))
        assert await stored_count(p) == 20
        dup = [e for e in logs if e["event"] == "uplink.duplicates"]
        assert dup
        assert dup[0]["duplicates"] == 20


# --------------------------------------------------------------------------- outage


async def test_outage_refuse_503_hang_then_recovery(tmp_path: Path) -> None:
    async with running_platform(tmp_path) as p:
        with capture_logs() as logs:
            async with running_agent(
                p, tmp_path, batch_max_records=25, timeout_s=0.5, backoff_cap_s=0.3
            ) as agent:
                await agent.buffer.append(readings(50, 0))
                await wait_for(lambda: _has(p, 50))

                # 1. The platform is down: connections refused.
                await p.go_down()
                await agent.buffer.append(readings(30, 50))
                await wait_for(lambda: _failed_at_least(agent, 3))
                assert not agent.state.connected
                assert agent.state.last_error
                await agent.buffer.append([alarm(1)])

                # 2. It is back but overloaded: 503 with Retry-After.
                p.fault_in_process(mode="503", retry_after_s=1)
                await p.come_up()
                since = int(time.time() * 1000)
                await wait_for(lambda: _requests_with(p, 503, since, 2))
                times = [
                    r["ms"]
                    for r in (await p.admin("GET", f"/admin/requests?since_ms={since}"))[1][
                        "requests"
                    ]
                    if r["status"] == 503
                ]
                # Retry-After: 1 is honoured (loosely: at least most of a second between them).
                assert times[1] - times[0] >= 800

                # 3. It accepts and never answers: the client times out and keeps trying.
                await p.fault(mode="hang")
                failed = agent.state.batches_failed
                await wait_for(lambda: _failed_at_least(agent, failed + 2))
                assert "timed out" in (agent.state.last_error or "")
                await agent.buffer.append([*readings(20, 80), alarm(2)])

                # 4. Recovery: everything arrives, events first, nothing twice.
                await p.fault(mode="none")
                await wait_for(lambda: _has(p, 102))
                await wait_for(lambda: _buffer_empty(agent))
                assert agent.state.connected
                assert agent.state.next_attempt_ms is None
                stored = await p.records()
                assert len(stored) == 102
                assert_exactly_once_in_priority_order(stored)
                # The alarms raised during the outage left first when it ended.
                assert [r["record"]["kind"] for r in stored[50:52]] == ["event", "event"]
                assert agent.state.batches_poisoned == 0
        failing = [e for e in logs if e["event"] == "uplink.failing"]
        recovered = [e for e in logs if e["event"] == "uplink.recovered"]
        # Logged on changes of state (down, 503, timeouts), not once per retry.
        assert 1 <= len(failing) <= 6, [e["error"] for e in failing]
        assert len(recovered) == 1
        assert agent.state.batches_failed > len(failing)


async def _failed_at_least(agent: Agent, n: int) -> bool:
    return agent.state.batches_failed >= n


async def _requests_with(p: Platform, status: int, since: int, n: int) -> bool:
    _, doc = await p.admin("GET", f"/admin/requests?since_ms={since}")
    return sum(r["status"] == status for r in doc["requests"]) >= n  # type: ignore[no-any-return]


async def test_first_attempt_is_jittered_after_start(tmp_path: Path) -> None:
    async with (
        running_platform(tmp_path) as p,
        running_agent(p, tmp_path, first_attempt_jitter_s=20) as agent,
    ):
        await agent.buffer.append(readings(1))

        async def scheduled() -> bool:
            return agent.state.next_attempt_ms is not None

        await wait_for(scheduled)
        wait_ms = agent.state.next_attempt_ms - time.time() * 1000  # type: ignore[operator]
        # random.Random(7) draws 0.32 of the window: somewhere in it, not at once.
        assert 1_000 < wait_ms <= 20_000
        _, doc = await p.admin("GET", "/admin/requests?path_contains=/v1/gateways/gw-0001/")
        assert doc["requests"] == [], "nothing is sent before the jittered first attempt"


async def test_next_attempt_is_reported_while_backing_off(tmp_path: Path) -> None:
    async with running_platform(tmp_path) as p:
        await p.fault(mode="503", retry_after_s=30)
        async with running_agent(p, tmp_path) as agent:
            await agent.buffer.append(readings(1))

            async def scheduled() -> bool:
                return agent.state.next_attempt_ms is not None

            await wait_for(scheduled)
            wait_ms = agent.state.next_attempt_ms - time.time() * 1000  # type: ignore[operator]
            assert 20_000 < wait_ms <= 31_000


# --------------------------------------------------------------------------- poison & 413


async def test_invalid_record_is_set_aside_and_the_rest_flows(tmp_path: Path) -> None:
    async with (
        running_platform(tmp_path) as p,
        running_agent(p, tmp_path, start=False, batch_max_records=16) as agent,
    ):
        bad = Reading(device="meter-1", ts=1, point="energy", value={"not": "scalar"})  # type: ignore[arg-type]
        await agent.buffer.append([*readings(7, 0), bad, *readings(12, 7)])
        with capture_logs() as logs:
            agent.start()
            await wait_for(lambda: _has(p, 20))
            await wait_for(lambda: _buffer_empty(agent))
        stored = await p.records()
        assert_exactly_once_in_priority_order(stored)
        values = [r["record"]["value"] for r in stored if r["record"]["kind"] == "reading"]
        assert values == [float(i) for i in range(19)]
        # The buffer reports what it set aside with an event, which reaches the platform too.
        (report,) = [r["record"] for r in stored if r["record"]["kind"] == "event"]
        assert report["type"] == "agent.uplink_poison"
        assert agent.state.batches_poisoned == 1
        poisoned = await poison_of(agent.buffer)
        assert len(poisoned) == 1
        assert b"not" in poisoned[0][0]
        assert "invalid_record" in poisoned[0][1]
        assert [e for e in logs if e["event"] == "uplink.batch_poisoned"]


async def test_413_splits_batches(tmp_path: Path) -> None:
    async with running_platform(tmp_path) as p:
        await p.fault(mode="none", max_records=10)
        async with running_agent(p, tmp_path, start=False, batch_max_records=40) as agent:
            await agent.buffer.append(readings(40))
            agent.start()
            await wait_for(lambda: _has(p, 40))
            assert_exactly_once_in_priority_order(await p.records())
            assert agent.state.batches_poisoned == 0


async def test_auth_failure_is_reported_and_nothing_is_discarded(tmp_path: Path) -> None:
    async with running_platform(tmp_path) as p:
        with capture_logs() as logs:
            async with running_agent(p, tmp_path, secret="not the secret") as agent:
                await agent.buffer.append(readings(5))
                await wait_for(lambda: _failed_at_least(agent, 4))
                assert "authentication failed" in (agent.state.last_error or "")
                assert "bad_signature" in (agent.state.last_error or "")
                assert agent.state.batches_poisoned == 0
                assert (await agent.buffer.stats()).records == 5
        auth = [e for e in logs if e["event"] == "uplink.auth_failed"]
        assert len(auth) == 1, "logged once, not once per retry"
        assert SECRET not in str(logs)
        assert "not the secret" not in str(logs)
        assert "Signature=" not in str(logs)


# --------------------------------------------------------------------------- commands


class FakeExecutor:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any], str, str]] = []

    async def __call__(
        self,
        device: str,
        action: str,
        args: Mapping[str, Any],
        *,
        source: str,
        command_id: str,
    ) -> Mapping[str, Any]:
        self.calls.append((device, action, dict(args), source, command_id))
        if action == "explode":
            raise CommandError("not_allowed", f"{action!r} is not allowed for {device!r}")
        return {"done": action, "args": dict(args)}


def command_key_file(p: Platform, tmp_path: Path) -> Path:
    path = tmp_path / "platform-command.pub"
    path.write_bytes(public_pem(p.platform.command_key))
    return path


async def test_command_is_executed_and_its_result_stored(tmp_path: Path) -> None:
    executor = FakeExecutor()
    async with running_platform(tmp_path) as p:
        key = command_key_file(p, tmp_path)
        async with running_agent(p, tmp_path, executor=executor, command_key_file=key):
            _, doc = await p.admin(
                "POST",
                f"/v1/gateways/{GW}/commands",
                {"device": "door-1", "action": "open", "args": {"seconds": 5}},
            )
            cid = doc["command"]["id"]
            status = await wait_for_result(p, cid)
            assert status["status"] == "ok"
            assert status["result"] == {"done": "open", "args": {"seconds": 5}}
            assert executor.calls == [("door-1", "open", {"seconds": 5}, "platform", cid)]
            _, doc = await p.admin(
                "POST", f"/v1/gateways/{GW}/commands", {"device": "door-1", "action": "explode"}
            )
            status = await wait_for_result(p, doc["command"]["id"])
            assert (status["status"], status["reason"]) == ("refused", "not_allowed")


async def test_unsigned_tampered_expired_and_foreign_commands_are_refused(
    tmp_path: Path,
) -> None:
    executor = FakeExecutor()
    async with running_platform(tmp_path) as p:
        key = command_key_file(p, tmp_path)
        async with running_agent(p, tmp_path, executor=executor, command_key_file=key):
            now = int(time.time() * 1000)
            base = {
                "gateway": GW,
                "device": "door-1",
                "action": "open",
                "args": {"seconds": 5},
                "issued_ms": now,
                "expires_ms": now + 60_000,
            }
            signer = p.platform.command_key
            commands = {
                "unsigned": {**base, "id": "c-unsigned"},
                "tampered": {
                    **base,
                    "id": "c-tampered",
                    "signature": sign_command(signer, {**base, "id": "c-tampered"}),
                    "args": {"seconds": 3600},
                },
                "expired": {
                    **base,
                    "id": "c-expired",
                    "expires_ms": now - 1000,
                },
                "foreign": {**base, "id": "c-foreign", "gateway": "gw-9999"},
            }
            for name in ("expired", "foreign"):
                cmd = commands[name]
                cmd["signature"] = sign_command(signer, cmd)
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            other = Ed25519PrivateKey.generate()
            impostor = {**base, "id": "c-impostor"}
            commands["impostor"] = {**impostor, "signature": sign_command(other, impostor)}
            for cmd in commands.values():
                status, doc = await p.admin(
                    "POST", "/admin/raw-command", {"gateway": GW, "command": cmd}
                )
                assert status == 201, doc
            results = {
                name: await wait_for_result(p, str(cmd["id"])) for name, cmd in commands.items()
            }
            assert {n: (r["status"], r["reason"]) for n, r in results.items()} == {
                "unsigned": ("refused", "unsigned"),
                "tampered": ("refused", "bad_signature"),
                "expired": ("expired", "expired"),
                "foreign": ("refused", "wrong_gateway"),
                "impostor": ("refused", "bad_signature"),
            }
            assert executor.calls == []


async def test_a_forged_command_does_not_use_up_the_id_of_a_real_one(tmp_path: Path) -> None:
    executor = FakeExecutor()
    async with running_platform(tmp_path) as p:
        key = command_key_file(p, tmp_path)
        async with running_agent(p, tmp_path, executor=executor, command_key_file=key):
            real = signed_command(p, "c-real")
            forged = {**real, "id": "c-real", "signature": real["signature"][::-1]}
            # The forgery arrives first (a replayed or injected poll answer).
            await p.admin("POST", "/admin/raw-command", {"gateway": GW, "command": forged})
            assert (await wait_for_result(p, "c-real"))["reason"] == "bad_signature"
            await redeliver(p, "c-real", body=real)

            async def ran() -> bool:
                return any(c[4] == "c-real" for c in executor.calls)

            await wait_for(ran)
            assert (await wait_for_result(p, "c-real"))["status"] == "ok"


async def test_a_command_valid_for_too_long_is_refused(tmp_path: Path) -> None:
    executor = FakeExecutor()
    async with running_platform(tmp_path) as p:
        key = command_key_file(p, tmp_path)
        async with running_agent(
            p, tmp_path, executor=executor, command_key_file=key, command_max_lifetime_s=120
        ):
            now = int(time.time() * 1000)
            cmd = signed_command(p, "c-long", issued_ms=now, expires_ms=now + 3_600_000)
            await p.admin("POST", "/admin/raw-command", {"gateway": GW, "command": cmd})
            result = await wait_for_result(p, "c-long")
            assert (result["status"], result["reason"]) == ("refused", "lifetime_too_long")
            assert "at most 120 s" in result["error"]
            assert executor.calls == []


async def test_expiry_is_judged_by_the_synchronised_local_clock(tmp_path: Path) -> None:
    """The skew estimate comes from an unsigned Date header: a platform (or a man in the
    middle) an hour behind must not make an expired command look valid."""
    executor = FakeExecutor()
    behind = lambda: time.time() - 3600  # noqa: E731
    async with running_platform(tmp_path, clock=behind) as p:
        key = command_key_file(p, tmp_path)
        async with running_agent(
            p, tmp_path, executor=executor, command_key_file=key, clock_synced=lambda: True
        ) as agent:
            await wait_for(lambda: _skew_seen(agent))
            now = int(time.time() * 1000)
            cmd = signed_command(p, "c-old", issued_ms=now - 120_000, expires_ms=now - 60_000)
            await p.admin("POST", "/admin/raw-command", {"gateway": GW, "command": cmd})
            result = await wait_for_result(p, "c-old")
            assert result["status"] == "expired"
            assert executor.calls == []


async def _skew_seen(agent: Agent) -> bool:
    return agent.state.clock_skew_ms < -3_000_000


async def test_a_redelivered_command_runs_once(tmp_path: Path) -> None:
    executor = FakeExecutor()
    async with running_platform(tmp_path) as p:
        key = command_key_file(p, tmp_path)
        async with running_agent(p, tmp_path, executor=executor, command_key_file=key):
            cmd = signed_command(p, "c-twice")
            await p.admin("POST", "/admin/raw-command", {"gateway": GW, "command": cmd})
            await wait_for_result(p, "c-twice")
            # The platform delivers it again (e.g. after a failover).
            await redeliver(p, "c-twice")

            async def delivered_again() -> bool:
                status = await command_status(p, "c-twice")
                return bool(status["status"] == "delivered")

            await wait_for(delivered_again)
            await asyncio.sleep(0.3)
            assert len(executor.calls) == 1


def test_commands_without_a_key_is_a_clear_error(tmp_path: Path) -> None:
    config = HttpUplink(
        url="http://127.0.0.1:9", key_id=KEY_ID, secret=SecretRef(env="X"), commands=True
    )

    async def make() -> None:
        buffer = await AsyncBuffer.open(tmp_path / "b.db", durability="normal")
        try:
            with pytest.raises(UplinkConfigError, match="command_key_file"):
                HttpUplinkClient(
                    config,
                    gateway=GATEWAY,
                    secret=SECRET,
                    buffer=buffer,
                    state=UplinkState(),
                    inventory=inventory,
                    commands=FakeExecutor(),
                    log=structlog.get_logger(),
                    agent_version="0",
                )
        finally:
            await buffer.close()

    asyncio.run(make())


# --------------------------------------------------------------------------- pieces


async def test_retry_after_forms_and_backoff_bounds(tmp_path: Path) -> None:
    async with running_agent("http://127.0.0.1:9", tmp_path, start=False) as agent:
        transport, link = agent.client.transport, agent.client.link
        assert isinstance(transport, HttpTransport)
        assert transport.retry_after("7") == 7
        assert transport.retry_after("garbage") is None
        assert transport.retry_after("nan") is None
        later = email.utils.formatdate(time.time() + 120, usegmt=True)
        assert 110 < (transport.retry_after(later) or 0) <= 121
        assert transport.retry_after("999999") == 3600
        for failures in range(1, 12):
            for _ in range(50):
                delay = link.delay(failures, None)
                assert 0 <= delay <= min(0.2, 2 ** (failures - 1))
        assert link.delay(1, 5.0) >= 5.0


async def poison_of(buffer: AsyncBuffer) -> list[tuple[bytes, str]]:
    """(record JSON, reason) of each record in the buffer's poison table, read from the file."""

    def read() -> list[tuple[bytes, str]]:
        with contextlib.closing(sqlite3.connect(buffer.path)) as conn:
            return [(bytes(b), str(r)) for b, r in conn.execute("SELECT body, reason FROM poison")]

    return await asyncio.to_thread(read)


def test_slices_keep_order_limits_and_exact_ranges(tmp_path: Path) -> None:
    from buffer import Buffer

    with contextlib.closing(Buffer.open(tmp_path / "b.db", durability="normal")) as buf:
        buf.append([*readings(13), *[alarm(i) for i in range(9)], *readings(20, 13)])
        chunk = buf.take(1000, 1 << 20)
        assert chunk is not None
        max_bytes = max(len(r) for r in chunk.records) * 3 + 1
        parts = chunk.cut(7, max_bytes)
        assert [r for part in parts for r in part.records] == chunk.records
        assert all(len(p.records) <= 7 and p.size <= max_bytes for p in parts)
        assert all(p.size == sum(map(len, p.records)) for p in parts)
        assert sum(buf.ack(part) for part in parts) == 42
        assert buf.take(1000, 1 << 20) is None
