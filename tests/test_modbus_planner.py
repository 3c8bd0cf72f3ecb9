"""The read planner: a pure function, checked by properties (hypothesis) and by figures."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.config import ModbusDevice, load_profile, profile_names
from drivers.modbus.planner import (
    Cost,
    Item,
    Limits,
    LineTiming,
    Request,
    plan_contiguous,
    plan_per_point,
    plan_reads,
    wire_time_s,
)

# --- the wire-time formula against the reference's table ------------------------------------------


@pytest.mark.parametrize(
    ("count", "baud", "frames_ms", "with_gaps_ms"),
    [
        (1, 9600, 17.2, 25.2),
        (10, 9600, 37.8, 45.8),
        (60, 9600, 152.4, 160.4),
        (125, 9600, 301.4, 309.4),
        (1, 115200, 1.4, 4.9),
        (10, 115200, 3.2, 6.7),
        (60, 115200, 12.7, 16.2),
        (125, 115200, 25.1, 28.6),
    ],
)
def test_wire_time_matches_the_reference_table(
    count: int, baud: int, frames_ms: float, with_gaps_ms: float
) -> None:
    timing = LineTiming(baud, 11)
    total = timing.request_s("holding", count) * 1000
    assert total == pytest.approx(with_gaps_ms, abs=0.06)
    assert total - 2 * timing.t35_s * 1000 == pytest.approx(frames_ms, abs=0.06)


def test_125_single_reads_cost_ten_times_one_block() -> None:
    timing = LineTiming()
    singles = plan_per_point([Item(i, "holding", i) for i in range(125)])
    block = plan_reads([Item(i, "holding", i) for i in range(125)], Limits())
    assert len(block) == 1
    assert wire_time_s(singles, timing) == pytest.approx(3.15, abs=0.01)
    assert wire_time_s(block, timing) == pytest.approx(0.309, abs=0.001)


# --- behaviour on examples ------------------------------------------------------------------------


def test_small_gaps_are_filled_large_ones_are_not() -> None:
    items = [Item(0, "input", 0, 2), Item(1, "input", 6, 2), Item(2, "input", 300, 2)]
    plan = plan_reads(items, Limits(max_gap=40))
    assert plan == [Request("input", 0, 8, (0, 1)), Request("input", 300, 2, (2,))]
    # A gap the device does not allow is never filled, however cheap.
    assert len(plan_reads(items[:2], Limits(max_gap=3))) == 2


def test_tables_are_never_mixed_and_the_register_limit_holds() -> None:
    items = [Item(i, "input" if i % 2 else "holding", i * 2, 2) for i in range(100)]
    plan = plan_reads(items, Limits(max_registers=60, max_gap=2))
    for request in plan:
        assert {items[k].table for k in request.keys} == {request.table}
        assert request.count <= 60


def test_overlapping_points_share_a_request() -> None:
    # A status word and bits of it; a uint32 and its low half.
    items = [
        Item(0, "holding", 10, 1),
        Item(1, "holding", 10, 1),
        Item(2, "holding", 20, 2),
        Item(3, "holding", 21, 1),
    ]
    plan = plan_reads(items, Limits(max_gap=10))
    assert plan == [Request("holding", 10, 12, (0, 1, 2, 3))]


def test_coils_are_planned_in_bits() -> None:
    items = [Item(i, "coil", i * 20) for i in range(10)]
    plan = plan_reads(items, Limits(max_bits=2000, max_gap=2))
    assert len(plan) == 1
    assert plan[0].count == 181


def test_tcp_cost_prefers_fewest_requests() -> None:
    items = [Item(0, "holding", 0, 1), Item(1, "holding", 100, 1)]
    assert len(plan_reads(items, Limits(max_gap=120), Cost.tcp())) == 1
    # On a 9600 Bd line the 99-register gap costs more than a second request.
    assert len(plan_reads(items, Limits(max_gap=120), Cost.serial(LineTiming()))) == 2


def test_points_larger_than_a_request_are_refused() -> None:
    with pytest.raises(ValueError, match="do not fit one request"):
        plan_reads([Item(0, "holding", 0, 61)], Limits(max_registers=60))


@pytest.mark.parametrize("name", profile_names())
def test_every_profile_plans_within_its_limits_and_beats_one_request_per_point(name: str) -> None:
    device = ModbusDevice.model_validate(
        {"id": "m", "driver": "modbus", "bus": "b", "unit": 1, "profile": name}
    )
    points = device.resolved_points()
    items = [Item(i, p.table, p.address, p.size) for i, p in enumerate(points)]
    limits = Limits(device.register_limit, device.max_bits, device.gap_limit)
    plan = plan_reads(items, limits)
    assert all(r.count <= load_profile(name).max_registers for r in plan)
    timing = LineTiming()
    assert wire_time_s(plan, timing) <= wire_time_s(plan_contiguous(items, limits), timing)
    if len(items) > 1:
        assert len(plan) < len(items)


# --- properties -----------------------------------------------------------------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Item], Limits]:
    limits = Limits(
        max_registers=draw(st.integers(4, 125)),
        max_bits=draw(st.integers(8, 2000)),
        max_gap=draw(st.integers(0, 30)),
    )
    count = draw(st.integers(1, 40))
    items = []
    for key in range(count):
        table = draw(st.sampled_from(["holding", "input", "coil", "discrete"]))
        bits = table in ("coil", "discrete")
        size = 1 if bits else draw(st.sampled_from([1, 1, 2, 2, 4, draw(st.integers(1, 4))]))
        address = draw(st.integers(0, 400))
        items.append(Item(key, table, address, size))
    return items, limits


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.sampled_from([LineTiming(9600, 11), LineTiming(115200, 10)]))
def test_plans_cover_every_point_once_within_the_limits(
    scenario: tuple[list[Item], Limits], timing: LineTiming
) -> None:
    items, limits = scenario
    for plan in (
        plan_reads(items, limits, Cost.serial(timing)),
        plan_reads(items, limits, Cost.tcp()),
    ):
        served = [k for r in plan for k in r.keys]
        assert sorted(served) == [i.key for i in items], "every point exactly once"
        assert len(plan) <= len(items), "never more requests than one per point"
        for request in plan:
            members = [items[k] for k in request.keys]
            assert all(m.table == request.table for m in members), "never across tables"
            assert request.count <= limits.size_limit(request.table), "within the size limit"
            assert request.address == min(m.address for m in members)
            assert request.address + request.count == max(m.end for m in members)
            covered = request.address
            for member in sorted(members, key=lambda m: m.address):
                assert member.address - covered <= limits.gap_limit(request.table), "gap limit"
                covered = max(covered, member.end)


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_the_plan_is_never_worse_than_the_naive_ones(scenario: tuple[list[Item], Limits]) -> None:
    items, limits = scenario
    timing = LineTiming()
    cost = Cost.serial(timing)
    planned = plan_reads(items, limits, cost)
    contiguous = plan_contiguous(items, limits)
    naive = plan_per_point(items)

    def total(plan: list[Request]) -> float:
        return sum(cost.of(r.table, r.count) for r in plan)

    assert total(planned) <= total(contiguous) + 1e-12
    assert total(contiguous) <= total(naive) + 1e-12
    assert wire_time_s(planned, timing) <= wire_time_s(naive, timing) + 1e-12


def test_bit_reads_are_priced_by_whole_reply_bytes() -> None:
    # A coil read's reply carries ceil(N/8) data bytes: 9 coils cost a second byte, 8 do not.
    timing = LineTiming(9600, 11)
    cost = Cost.serial(timing)
    for count in range(1, 2001):
        assert cost.of("coil", count) == pytest.approx(timing.request_s("coil", count))
        assert cost.of("discrete", count) == pytest.approx(timing.request_s("discrete", count))
    assert cost.of("coil", 1) == cost.of("coil", 8) < cost.of("coil", 9) == cost.of("coil", 16)
