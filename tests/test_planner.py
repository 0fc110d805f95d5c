"""Request planner: merging, caps, even rules, never splitting a point, the naive planners."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ModbusPDU

from drivers.modbus.planner import (
    MAX_READ_REGISTERS,
    DeviceSpec,
    ReadRequest,
    device_ranges,
    plan,
    plan_contiguous,
    plan_per_value,
)
from drivers.modbus.profile import Profile, decode, load_profile
from drivers.modbus.transport import read_pdu
from drivers.modbus.waveshare import WaveshareCoilRequest

COOLMASTER = load_profile("coolmasternet")
SDM630 = load_profile("eastron-sdm630")
DAIKIN = load_profile("daikin-dta116a51")
RELAY = load_profile("waveshare-relay-8ch")
INTESIS = load_profile("intesis-inmbsdai")


def acs(n: int, unit: int = 1, poll_s: float = 2.0) -> list[DeviceSpec]:
    return [DeviceSpec(f"ac{va}", COOLMASTER, unit, va, poll_s=poll_s) for va in range(1, n + 1)]


def covered(requests: list[ReadRequest]) -> set[tuple[str, str]]:
    return {(p.device_id, p.point.field) for r in requests for p in r.parts}


def polled(specs: list[DeviceSpec]) -> set[tuple[str, str]]:
    return {(s.device_id, p.field) for s in specs for p in s.profile.points if p.poll}


def check_sound(requests: list[ReadRequest], profile: Profile) -> None:
    """Every part lies wholly inside its request, and the request obeys the device's limits."""
    lim = profile.limits
    for r in requests:
        bits = r.table in ("coil", "discrete")
        assert 1 <= r.count <= (lim.max_read_bits if bits else min(lim.max_read_registers, MAX_READ_REGISTERS))
        if lim.even_count:
            assert r.count % 2 == 0
        if lim.even_address:
            assert r.address % 2 == 0
        for p in r.parts:
            assert r.address <= p.address, (r, p)
            assert p.end <= r.address + r.count, (r, p)


def test_150_coolmasternet_units_fit_in_the_fewest_requests() -> None:
    specs = acs(150)
    requests = plan(specs)
    # Polled span: VA1 +0 (16) .. VA150 +7 (2407): 2392 registers, so at least ceil(2392/125) = 20
    # requests if read as one contiguous run. Skipping each block's unused tail (+8..+15) lets a
    # 125-register read hold 8 whole blocks (7*16 + 8 = 120), so ceil(150/8) = 19 suffice.
    span = (150 * 16 + 8) - 16
    assert span == 2392
    assert len(requests) <= math.ceil(span / 125) == 20
    assert len(requests) == math.ceil(150 / 8) == 19
    assert covered(requests) == polled(specs)
    assert all(r.unit == 1 and r.table == "holding" and r.poll_s == 2.0 for r in requests)
    check_sound(requests, COOLMASTER)
    # the naive planners, for the benchmark's comparison
    assert len(plan_contiguous(specs)) == 300  # +0..+4 and +6..+7 per unit: swing (+5) is not polled
    assert len(plan_per_value(specs)) == 150 * 7


def test_unpolled_points_are_not_read_but_gaps_are_filled() -> None:
    (request,) = plan(acs(1))
    assert (request.address, request.count) == (16, 8)  # +5 swing is read as gap fill, +8 lock never
    assert "swing" not in {p.point.field for p in request.parts}
    assert "lock" not in {p.point.field for p in request.parts}


def test_sdm630_even_start_even_count_and_80_cap() -> None:
    specs = [DeviceSpec("meter", SDM630, 1)]
    requests = plan(specs)
    check_sound(requests, SDM630)
    assert [(r.address, r.count) for r in requests] == [(0, 74), (84, 4), (342, 2)]
    assert covered(requests) == polled(specs)


def test_float_points_are_never_split_across_requests() -> None:
    # a 7-register cap with odd offsets would cut a float in two if the planner were careless
    tight = SDM630.model_copy(update={"limits": SDM630.limits.model_copy(update={"max_read_registers": 7,
                                                                                 "even_count": False,
                                                                                 "even_address": False})})
    requests = plan([DeviceSpec("meter", tight, 1, offset=1)])
    check_sound(requests, tight)
    for r in requests:
        for p in r.parts:
            assert p.point.words == 2
            assert p.end <= r.address + r.count


def test_gap_fill_obeys_max_gap_and_can_be_switched_off() -> None:
    narrow = COOLMASTER.model_copy(update={"limits": COOLMASTER.limits.model_copy(update={"max_gap": 7})})
    specs = [DeviceSpec(f"ac{va}", narrow, 1, va) for va in (1, 2)]
    # between VA1 +7 (23) and VA2 +0 (32) lie 8 unused registers: more than 7, so two requests
    assert len(plan(specs)) == 2
    no_fill = COOLMASTER.model_copy(update={"limits": COOLMASTER.limits.model_copy(update={"gap_fill": False})})
    requests = plan([DeviceSpec("ac1", no_fill, 1, 1)])
    assert [(r.address, r.count) for r in requests] == [(16, 5), (22, 2)]


def test_different_units_tables_and_periods_are_not_merged() -> None:
    specs = [*acs(2, unit=1), DeviceSpec("ac9", COOLMASTER, 2, 3, poll_s=2.0),
             DeviceSpec("ac10", COOLMASTER, 1, 3, poll_s=5)]
    requests = plan(specs)
    keys = {(r.unit, r.poll_s) for r in requests}
    assert keys == {(1, 2.0), (2, 2.0), (1, 5.0)}
    assert len(requests) == 3


def test_daikin_64_units_status_and_errors() -> None:
    specs = [DeviceSpec(f"d{n}", DAIKIN, 1, n) for n in range(64)]
    requests = plan(specs)
    check_sound(requests, DAIKIN)
    assert covered(requests) == polled(specs)
    status = [r for r in requests if 2000 <= r.address < 3600]
    errors = [r for r in requests if r.address >= 3600]
    # status: 64 * 6 - 1 = 383 registers from 2000 (unit 63's word 5 is not polled) -> 4 requests
    assert len(status) == math.ceil((64 * 6 - 1) / 125) == 4
    assert len(errors) == math.ceil((64 * 2 - 1) / 125) == 2
    # power_on and fan share a register: one part each, one word read
    assert sum(1 for r in requests for p in r.parts if p.address == 2000) == 2


def test_bit_tables_use_max_read_bits() -> None:
    requests = plan([DeviceSpec("relay", RELAY, 2)])
    assert [(r.table, r.address, r.count, r.function_code) for r in requests] == [("coil", 0, 8, 1)]
    two = plan([DeviceSpec("r1", RELAY, 2), DeviceSpec("r2", RELAY, 2, offset=8)])
    assert [(r.address, r.count) for r in two] == [(0, 8), (8, 8)]  # max_read_bits: 8


def test_avoid_keeps_healthy_neighbours_merged() -> None:
    specs = acs(8)
    bad = specs[4]  # VA5
    requests = plan(specs[:4] + specs[5:], avoid=device_ranges(bad))
    assert [(r.address, r.count) for r in requests] == [(16, 56), (96, 40)]
    assert {d for r in requests for d in r.device_ids} == {s.device_id for s in specs} - {"ac5"}


def test_solo_devices_get_their_own_requests() -> None:
    requests = plan(acs(4), solo={"ac2"})
    assert [r.device_ids for r in requests] == [("ac1",), ("ac2",), ("ac3", "ac4")]


def test_fields_restrict_a_plan_to_a_read_back() -> None:
    spec = DeviceSpec("ac1", COOLMASTER, 1, 1)
    (request,) = plan([spec], fields={"setpoint_c", "swing"})
    assert (request.address, request.count) == (18, 4)
    assert {p.point.field for p in request.parts} == {"setpoint_c", "swing"}


@pytest.mark.parametrize("name", ["coolmasternet", "intesis-inmbsdai", "daikin-dta116a51", "eastron-sdm630",
                                  "waveshare-relay-8ch"])
def test_every_profile_plans_soundly(name: str) -> None:
    profile = load_profile(name)
    index = profile.sub_units.min if profile.sub_units else None
    specs = [DeviceSpec("dev", profile, 1, index)]
    requests = plan(specs)
    check_sound(requests, profile)
    assert covered(requests) == polled(specs)
    assert len(requests) <= len(plan_contiguous(specs)) <= len(plan_per_value(specs))


# -- recorded frames (tests/fixtures/*.json, written by tests/record_frames.py) ---------------------

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def rtu_pdu(frame: bytes, server_side: bool) -> ModbusPDU:
    decoder = DecodePDU(server_side)
    if server_side:
        decoder.register(WaveshareCoilRequest)
    used, pdu = FramerRTU(decoder).handleFrame(frame, 0, 0)
    assert pdu is not None, f"undecodable frame {frame.hex(' ')}"  # CRC and length are checked here
    assert used == len(frame)
    return pdu


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.stem)
def test_recorded_frames_decode_to_the_recorded_values(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    profile = load_profile(data["profile"])
    specs = [DeviceSpec(d["device_id"], profile, d["unit"], d["index"]) for d in data["devices"]]
    expected = {d["device_id"]: d["values"] for d in data["devices"]}
    requests = plan(specs)
    reads = [x for x in data["exchanges"] if x["note"].startswith("read ")]
    assert len(reads) == len(requests)  # today's planner still asks for exactly what was recorded
    framer = FramerRTU(DecodePDU(False))
    got: dict[str, dict[str, object]] = {d: {} for d in expected}
    for request, exchange in zip(requests, reads, strict=True):
        sent = bytes.fromhex(exchange["request"])
        assert framer.buildFrame(read_pdu(request.unit, request.table, request.address, request.count)) == sent
        response = rtu_pdu(bytes.fromhex(exchange["response"]), server_side=False)
        assert response.function_code == request.function_code
        words = [int(b) for b in response.bits[:request.count]] if request.table in ("coil", "discrete") \
            else list(response.registers)
        for part in request.parts:
            result = decode(part.point, request.words(part, words))
            assert result.rejected is None
            got[part.device_id][part.point.field] = result.value
    for dev_id, values in expected.items():
        assert got[dev_id].keys() == values.keys()
        for name, value in values.items():  # float32 fields carry float32 precision
            assert got[dev_id][name] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value)
    for exchange in data["exchanges"]:
        if exchange["note"].startswith("flash"):
            request = rtu_pdu(bytes.fromhex(exchange["request"]), server_side=True)
            assert isinstance(request, WaveshareCoilRequest)
            assert exchange["request"] == exchange["response"]  # the board echoes the command


def test_every_shipped_profile_has_recorded_frames() -> None:
    assert {p.stem for p in FIXTURES.glob("*.json")} == {
        "coolmasternet", "intesis-inmbsdai", "daikin-dta116a51", "eastron-sdm630", "waveshare-relay-8ch"}
