"""Planner rules no test pinned: mutants of drivers/modbus/planner.py that survived the suite (docs/mutation.md).

The shipped profiles hide several rules: the SDM630's points are all two words at even addresses, so
its reads come out even whether or not the even rules are applied; no shipped coil board has more than
125 coils; Daikin's write offsets equal its read offsets. These tests use small variations of the
shipped profiles where the rule makes a difference.
"""

from __future__ import annotations

from typing import Any

import pytest

from drivers.modbus.planner import DeviceSpec, device_ranges, plan, plan_contiguous, plan_per_value
from drivers.modbus.profile import Profile, load_profile

COOLMASTER = load_profile("coolmasternet")
RELAY = load_profile("waveshare-relay-8ch")


def va(n: int, profile: Profile = COOLMASTER, unit: int = 1) -> DeviceSpec:
    return DeviceSpec(f"ac{n}", profile, unit, n)


def with_limits(profile: Profile, **changes: Any) -> Profile:
    return profile.model_copy(update={"limits": profile.limits.model_copy(update=changes)})


def spans(requests: list[Any]) -> list[tuple[int, int]]:
    return [(r.address, r.count) for r in requests]


# --- avoid: a failing device's registers are barriers ------------------------------------------------


def test_a_barrier_in_a_fillable_gap_splits_the_request() -> None:
    # VA1 polls 16..24 and VA2 32..40: the 8 unused registers between them are read as gap fill...
    assert spans(plan([va(1), va(2)])) == [(16, 24)]
    # ...unless a failing device's registers lie there
    assert spans(plan([va(1), va(2)], avoid=[(1, "holding", 26, 28)])) == [(16, 8), (32, 8)]
    # another unit's or another table's failure is no barrier
    assert spans(plan([va(1), va(2)], avoid=[(2, "holding", 26, 28)])) == [(16, 24)]
    assert spans(plan([va(1), va(2)], avoid=[(1, "input", 26, 28)])) == [(16, 24)]


def test_barriers_are_half_open_ranges() -> None:
    # [10, 16) ends where VA1 starts and [24, 30) starts where it ends: neither overlaps it
    assert spans(plan([va(1)], avoid=[(1, "holding", 10, 16), (1, "holding", 24, 30)])) == [(16, 8)]
    assert spans(plan([va(1)], avoid=[(1, "holding", 23, 24)])) == [(16, 7), (23, 1)]


def test_device_ranges_are_unit_table_start_end() -> None:
    assert device_ranges(DeviceSpec("ac1", COOLMASTER, 3, 1)) == [
        (3, "holding", 16, 17), (3, "holding", 17, 18), (3, "holding", 18, 19), (3, "holding", 19, 20),
        (3, "holding", 20, 21), (3, "holding", 22, 23), (3, "holding", 23, 24),
    ]
    bad = DeviceSpec("bad", COOLMASTER, 1, 1, offset=9)  # polls 25..33: between VA1 and VA3 below
    healthy = [va(1), DeviceSpec("ac3", COOLMASTER, 1, 1, offset=18)]  # 16..24 and 34..42
    assert spans(plan(healthy)) == [(16, 26)]
    assert spans(plan(healthy, avoid=device_ranges(bad))) == [(16, 8), (34, 8)]


# --- even start and even count (SDM630 style) ----------------------------------------------------------


@pytest.mark.parametrize(("field", "even_count", "even_address", "expected"), [
    ("setpoint_c", False, False, (18, 1)),
    ("setpoint_c", True, False, (18, 2)),  # one register, padded to two
    ("fan", False, True, (16, 2)),  # 17 is odd: start one lower
    ("fan", True, True, (16, 2)),
    ("fault_code", False, True, (22, 2)),
    ("fault_code", True, False, (23, 2)),
])
def test_even_rules_on_odd_addresses_and_counts(field: str, even_count: bool, even_address: bool,
                                                expected: tuple[int, int]) -> None:
    prof = with_limits(COOLMASTER, even_count=even_count, even_address=even_address)
    assert spans(plan([va(1, prof)], fields={field})) == [expected]


def test_an_odd_cap_is_rounded_down_under_even_count() -> None:
    # at most 5 registers, counts even: 4 is the largest read, never 6
    prof = with_limits(COOLMASTER, max_read_registers=5, even_count=True)
    assert spans(plan([va(1, prof)])) == [(16, 4), (20, 4)]
    prof = with_limits(COOLMASTER, max_read_registers=125, even_count=True, max_gap=16)
    requests = plan([va(n, prof) for n in range(1, 20)])
    assert max(r.count for r in requests) <= 124
    assert all(r.count % 2 == 0 for r in requests)


# --- bit tables ---------------------------------------------------------------------------------------


def coil_board(coils: int, **limits: Any) -> Profile:
    return Profile.model_validate({
        "name": "big-board", "kind": "relay", "vendor": "Acme", "model": "R", "sources": ["test"],
        "limits": limits, "blocks": {"coils": {"table": "coil", "size": coils}},
        "points": [{"field": f"c{i}", "block": "coils", "offset": i, "datatype": "bool", "access": "rw",
                    "source": "test"} for i in range(coils)],
    })


def test_bit_reads_are_capped_by_bits_not_registers() -> None:
    board = coil_board(300)  # FC01 reads up to 2000 bits: 300 coils are one read, not 125-bit pieces
    assert [(r.table, r.address, r.count) for r in plan([DeviceSpec("b", board, 1)])] == [("coil", 0, 300)]
    assert spans(plan_contiguous([DeviceSpec("b", board, 1)])) == [(0, 300)]
    assert spans(plan([DeviceSpec("b", coil_board(300, max_read_bits=100), 1)])) == [(0, 100), (100, 100),
                                                                                     (200, 100)]


def test_contiguous_plan_keeps_the_boards_bit_cap() -> None:
    two = [DeviceSpec("r1", RELAY, 1), DeviceSpec("r2", RELAY, 1, offset=8)]  # coils 0..7 and 8..15
    assert spans(plan_contiguous(two)) == [(0, 8), (8, 8)]  # max_read_bits 8


def test_per_value_plan_is_one_request_per_point() -> None:
    requests = plan_per_value([DeviceSpec("relay", RELAY, 4, poll_s=3.0)])
    assert [(r.unit, r.table, r.address, r.count, r.poll_s) for r in requests] == [
        (4, "coil", k, 1, 3.0) for k in range(8)]
    assert [[(p.device_id, p.point.field, p.address) for p in r.parts] for r in requests] == [
        [("relay", f"ch{k}", k)] for k in range(8)]


# --- writes -------------------------------------------------------------------------------------------


def test_write_target_uses_the_write_block_and_offset() -> None:
    prof = Profile.model_validate({
        "name": "split", "kind": "ac", "vendor": "Acme", "model": "S", "sources": ["test"],
        "blocks": {"status": {"table": "input", "base": 100, "stride": 4, "size": 4},
                   "control": {"table": "holding", "base": 10, "stride": 2, "size": 2}},
        "points": [{"field": "mode", "block": "status", "offset": 3, "access": "rw", "write_block": "control",
                    "write_offset": 1, "source": "test"}],
    })
    spec = DeviceSpec("d", prof, 1, 2)
    mode = prof.point("mode")
    assert spec.read_address(mode) == 111  # 100 + 4*2 + 3
    assert spec.write_target(mode) == ("holding", 15)  # 10 + 2*2 + 1
