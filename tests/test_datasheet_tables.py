"""Datasheet tables typed by hand from ../shared/DOMAIN.md section 7, checked against the shipped profiles.

tests/fixtures/*.json are frames our own codec produced against our own simulator: they stay green
when a profile's enum has heat and cool swapped, because the same wrong table wrote and read them.
The tables below are the independent check. They were typed from the device maps (register table and
address, code -> name, raw word(s) -> value, sign, scale, float word order, bit positions) and share
nothing with the profiles' enum/scale/offset data. Every test decodes hand-typed raw words through the
shipped profile and compares with the hand-typed value, and encodes the value and compares with the
hand-typed raw words. Where DOMAIN.md marks a fact *unconfirmed*, or says nothing, a comment says so.

Raw words are written in hex where the bit pattern matters: 0xFFE7 is int16 -25, i.e. -2.5 at x10.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ModbusPDU

from drivers.modbus import profile as profile_module
from drivers.modbus import transport
from drivers.modbus.planner import DeviceSpec, plan
from drivers.modbus.profile import (
    Point,
    ProfileError,
    Rejected,
    decode,
    encode,
    load_profile,
    load_profile_file,
)
from drivers.modbus.pulse import CoilWord, pulse_words
from drivers.modbus.waveshare import FlashRequest, flash_steps

COOLMASTER = "coolmasternet"
INTESIS = "intesis-inmbsdai"
DAIKIN = "daikin-dta116a51"
SDM630 = "eastron-sdm630"
RELAY = "waveshare-relay-8ch"


def spec(profile: str, index: int | None = None, device_offset: int = 0) -> DeviceSpec:
    return DeviceSpec("dev", load_profile(profile), 1, index, offset=device_offset)


def point(profile: str, field: str) -> Point:
    return load_profile(profile).point(field)


def read_at(s: DeviceSpec, field: str) -> tuple[str, int]:
    p = s.profile.point(field)
    return s.profile.blocks[p.block].table, s.read_address(p)


def check_decode(p: Point, words: list[int], expected: Any) -> None:
    got = decode(p, words)
    assert got.rejected is None, (p.field, [hex(w) for w in words], got)
    if isinstance(expected, float):
        assert got.value == pytest.approx(expected, abs=1e-9), (p.field, [hex(w) for w in words])
    else:
        assert type(got.value) is type(expected), (p.field, got.value)
        assert got.value == expected, (p.field, [hex(w) for w in words])


# =====================================================================================================
# CoolAutomation CoolMasterNet: holding registers, block at PDU 16*VA (+ per-device offset)
# =====================================================================================================

# (VA, field, 0-based PDU address) typed from "base = VA*16; +0 mode ... +8 lock bits"
COOLMASTER_ADDRESSES = [
    (1, "mode", 16), (1, "fan", 17), (1, "setpoint_c", 18), (1, "power_on", 19), (1, "filter_sign", 20),
    (1, "swing", 21), (1, "room_temp_c", 22), (1, "fault_code", 23), (1, "lock", 24),
    (2, "mode", 32), (3, "setpoint_c", 50), (7, "power_on", 115), (12, "fan", 193),
    (255, "mode", 4080), (255, "room_temp_c", 4086), (255, "lock", 4088),
]

# (code, datasheet name, name the gateway reports). Our state vocabulary has no "haux" (auxiliary
# heat) nor "top"/"very low": they read as the nearest state. The datasheet name column is for the reader.
COOLMASTER_MODE = [
    (0, "cool", "cool"), (1, "heat", "heat"), (2, "auto", "auto"), (3, "dry", "dry"),
    (4, "haux", "heat"), (5, "fan", "fan"),
]
COOLMASTER_MODE_WRITE = {"cool": 0, "heat": 1, "auto": 2, "dry": 3, "fan": 5}  # haux (4) is never written
COOLMASTER_FAN = [
    (0, "low", "low"), (1, "medium", "medium"), (2, "high", "high"), (3, "auto", "auto"),
    (4, "top", "high"), (5, "very low", "low"),
]
COOLMASTER_FAN_WRITE = {"low": 0, "medium": 1, "high": 2, "auto": 3}  # never top (4) or very low (5)

# (field, raw words, value): setpoint and room temperature are x10 degC. DOMAIN.md does not say whether
# the room temperature is signed; the profile reads it as int16 (two's complement), which is what the
# -2.5 degC row pins (an unheated classroom in a cold snap). Sign is our reading, not the datasheet's.
COOLMASTER_NUMBERS = [
    ("setpoint_c", [260], 26.0), ("setpoint_c", [225], 22.5), ("setpoint_c", [100], 10.0),
    ("setpoint_c", [350], 35.0),
    ("room_temp_c", [293], 29.3), ("room_temp_c", [0], 0.0), ("room_temp_c", [0xFFE7], -2.5),
    ("room_temp_c", [0xFF9C], -10.0),
    ("power_on", [1], True), ("power_on", [0], False),
    ("filter_sign", [1], True), ("filter_sign", [0], False),
    ("fault_code", [0], 0), ("fault_code", [1234], 1234),
]


@pytest.mark.parametrize(("va", "field", "address"), COOLMASTER_ADDRESSES)
def test_coolmasternet_addresses(va: int, field: str, address: int) -> None:
    assert read_at(spec(COOLMASTER, va), field) == ("holding", address)
    if point(COOLMASTER, field).writable:
        assert spec(COOLMASTER, va).write_target(point(COOLMASTER, field)) == ("holding", address)


def test_coolmasternet_per_device_offset() -> None:
    # *unconfirmed*: whether some firmware puts the block at 16*VA + 1 ("VA*16 + 1" in 1-based numbering
    # is 16*VA 0-based). The default is 16*VA; a device's `offset` moves the whole block.
    assert read_at(spec(COOLMASTER, 3, device_offset=1), "setpoint_c") == ("holding", 51)
    assert read_at(spec(COOLMASTER, 1, device_offset=1), "mode") == ("holding", 17)


def test_coolmasternet_read_only_and_writable_points() -> None:
    for field in ("room_temp_c", "fault_code"):  # "(read-only)" in the map
        assert not point(COOLMASTER, field).writable, field
    for field in ("mode", "fan", "setpoint_c", "power_on"):  # what the gateway controls
        assert point(COOLMASTER, field).writable, field


@pytest.mark.parametrize(("code", "datasheet", "state"), COOLMASTER_MODE)
def test_coolmasternet_mode_codes(code: int, datasheet: str, state: str) -> None:
    del datasheet
    check_decode(point(COOLMASTER, "mode"), [code], state)


@pytest.mark.parametrize(("code", "datasheet", "state"), COOLMASTER_FAN)
def test_coolmasternet_fan_codes(code: int, datasheet: str, state: str) -> None:
    del datasheet
    check_decode(point(COOLMASTER, "fan"), [code], state)


# =====================================================================================================
# Intesis INMBSDAI001I000: one interface per indoor unit, holding registers at fixed addresses
# =====================================================================================================

INTESIS_ADDRESSES = [
    ("power_on", 0), ("mode", 1), ("fan", 2), ("vane", 3), ("setpoint_c", 4), ("room_temp_c", 5),
    ("alarm", 10), ("fault_code", 11), ("real_setpoint_c", 23),
]
INTESIS_MODE = [(0, "auto", "auto"), (1, "heat", "heat"), (2, "dry", "dry"), (3, "fan", "fan"), (4, "cool", "cool")]
INTESIS_MODE_WRITE = {"auto": 0, "heat": 1, "dry": 2, "fan": 3, "cool": 4}
INTESIS_FAN = [
    (0, "auto", "auto"), (1, "low", "low"), (2, "mid", "medium"), (3, "mid", "medium"), (4, "mid", "medium"),
    (5, "high", "high"),
]
INTESIS_FAN_WRITE = {"auto": 0, "low": 1, "medium": 2, "high": 5}  # medium writes the first mid step
# Setpoint and room temperature x10 degC. DOMAIN.md does not say the room temperature is signed; the
# profile reads int16 (our reading, not the datasheet's). Error 65535 means "no communication with
# the AC": it must come through as 65535, not as -1 (unsigned).
INTESIS_NUMBERS = [
    ("setpoint_c", [265], 26.5), ("setpoint_c", [180], 18.0),
    ("room_temp_c", [302], 30.2), ("room_temp_c", [0xFFFB], -0.5),
    ("real_setpoint_c", [240], 24.0),
    ("power_on", [1], True), ("power_on", [0], False),
    ("alarm", [1], True), ("alarm", [0], False),
    ("fault_code", [0], 0), ("fault_code", [65535], 65535),
]


@pytest.mark.parametrize(("field", "address"), INTESIS_ADDRESSES)
def test_intesis_addresses(field: str, address: int) -> None:
    assert read_at(spec(INTESIS), field) == ("holding", address)
    if point(INTESIS, field).writable:
        assert spec(INTESIS).write_target(point(INTESIS, field)) == ("holding", address)


@pytest.mark.parametrize(("code", "datasheet", "state"), INTESIS_MODE)
def test_intesis_mode_codes(code: int, datasheet: str, state: str) -> None:
    del datasheet
    check_decode(point(INTESIS, "mode"), [code], state)


@pytest.mark.parametrize(("code", "datasheet", "state"), INTESIS_FAN)
def test_intesis_fan_codes(code: int, datasheet: str, state: str) -> None:
    del datasheet
    check_decode(point(INTESIS, "fan"), [code], state)


# =====================================================================================================
# Daikin DTA116A51: status in input registers 2000+6n, errors 3600+2n, control holding 2000+3n
# =====================================================================================================

# (n, field, status/error input address, control holding address or None)
DAIKIN_ADDRESSES = [
    (0, "power_on", 2000, 2000), (0, "fan", 2000, None), (0, "mode", 2001, 2001), (0, "setpoint_c", 2002, 2002),
    (0, "room_temp_c", 2004, None), (0, "fault_code", 3600, None),
    (5, "power_on", 2030, 2015), (5, "mode", 2031, 2016), (5, "setpoint_c", 2032, 2017),
    (5, "room_temp_c", 2034, None), (5, "fault_code", 3610, None),
    (63, "power_on", 2378, 2189), (63, "mode", 2379, 2190), (63, "setpoint_c", 2380, 2191),
    (63, "room_temp_c", 2382, None), (63, "fault_code", 3726, None),
]
DAIKIN_MODE = [(0, "fan"), (1, "heat"), (2, "cool"), (3, "auto"), (7, "dry")]  # w1 bits 0-3
DAIKIN_MODE_UNUSED = [4, 5, 6, *range(8, 16)]
# w0 bits 12-14 fan speed. *unconfirmed*: DOMAIN.md gives only the bit position, not the codes. These
# names are the profile's provisional reading ("code meanings unconfirmed"), pinned so a change is
# deliberate; the bit position is what the datasheet does say.
DAIKIN_FAN_PROVISIONAL = [(0, "low"), (1, "medium"), (2, "high"), (3, "auto")]
# (field, words, value): setpoint w2 x10; room temperature w4 x10, int16 (signed per the map)
DAIKIN_NUMBERS = [
    ("setpoint_c", [260], 26.0), ("setpoint_c", [275], 27.5),
    ("room_temp_c", [287], 28.7), ("room_temp_c", [0xFFF4], -1.2), ("room_temp_c", [0xFF9C], -10.0),
    ("room_temp_c", [0], 0.0),
    ("fault_code", [0], 0), ("fault_code", [0x4A33], 0x4A33),
]


@pytest.mark.parametrize(("n", "field", "status", "control"), DAIKIN_ADDRESSES)
def test_daikin_addresses(n: int, field: str, status: int, control: int | None) -> None:
    s = spec(DAIKIN, n)
    p = point(DAIKIN, field)
    assert read_at(s, field) == ("input", status)
    if control is None:
        assert not p.writable
    else:
        assert p.writable
        assert s.write_target(p) == ("holding", control)


def test_daikin_control_block_is_written_whole() -> None:
    # "Holding (FC03/FC16, write all 3 words) at 2000+3n"
    prof = load_profile(DAIKIN)
    blocks = {prof.point(f).write_block for f in ("power_on", "mode", "setpoint_c")}
    assert len(blocks) == 1
    (block,) = blocks
    assert block is not None
    assert prof.blocks[block].write_whole
    assert prof.blocks[block].size == 3


@pytest.mark.parametrize(("code", "state"), DAIKIN_MODE)
def test_daikin_mode_codes(code: int, state: str) -> None:
    p = point(DAIKIN, "mode")
    check_decode(p, [code], state)
    check_decode(p, [0xABC0 | code], state)  # bits 4-15 are not the mode
    assert encode(p, state) == [code]
    assert encode(p, state, 0xABC0) == [0xABC0 | code]  # the other bits of w1 are kept
    assert encode(p, state, 0xABCF) == [0xABC0 | code]


@pytest.mark.parametrize("code", DAIKIN_MODE_UNUSED)
def test_daikin_unused_mode_codes_are_rejected(code: int) -> None:
    assert decode(point(DAIKIN, "mode"), [0x1230 | code]).rejected is Rejected.UNKNOWN_ENUM


@pytest.mark.parametrize(("code", "state"), DAIKIN_FAN_PROVISIONAL)
def test_daikin_fan_bits_12_to_14(code: int, state: str) -> None:
    p = point(DAIKIN, "fan")
    check_decode(p, [code << 12], state)
    check_decode(p, [(code << 12) | 0x0FFF], state)  # bits 0-11 (power bit among them) are not the fan
    check_decode(p, [(code << 12) | 0x8000], state)  # nor bit 15


def test_daikin_fan_field_is_three_bits_wide() -> None:
    # bits 12-14 hold codes 0..7: codes the profile does not name are rejected, not misread
    p = point(DAIKIN, "fan")
    for code in range(4, 8):
        assert decode(p, [code << 12]).rejected is Rejected.UNKNOWN_ENUM, code


def test_daikin_power_is_bit_0() -> None:
    p = point(DAIKIN, "power_on")
    check_decode(p, [0x0001], True)
    check_decode(p, [0x7001], True)  # fan bits set
    check_decode(p, [0xFFFE], False)  # every bit but bit 0
    check_decode(p, [0x0000], False)
    assert encode(p, True, 0x0000) == [0x0001]
    assert encode(p, True, 0x1230) == [0x1231]
    assert encode(p, False, 0xFFFF) == [0xFFFE]


# =====================================================================================================
# Eastron SDM630: input registers, IEEE-754 float32, most significant word first
# =====================================================================================================

SDM630_ADDRESSES = {
    "voltage_l1_v": 0x00, "voltage_l2_v": 0x02, "voltage_l3_v": 0x04,
    "current_l1_a": 0x06, "current_l2_a": 0x08, "current_l3_a": 0x0A,
    "power_l1_w": 0x0C, "power_l2_w": 0x0E, "power_l3_w": 0x10,
    "pf_l1": 0x1E, "pf_l2": 0x20, "pf_l3": 0x22,
    "power_w": 0x34, "pf": 0x3E, "freq_hz": 0x46, "import_energy_kwh": 0x48,
    "demand_w": 0x54, "max_demand_w": 0x56, "energy_kwh": 0x156,
}
# (field, [high word, low word], value). The words are IEEE-754 single precision, high word first:
# 230.0 = 0x43660000. Values that float32 cannot hold exactly (0.95, 18.9) carry float32 precision.
SDM630_NUMBERS = [
    ("voltage_l1_v", [0x4366, 0x0000], 230.0),
    ("freq_hz", [0x4248, 0x0000], 50.0),
    ("freq_hz", [0x4270, 0x0000], 60.0),
    ("import_energy_kwh", [0x449A, 0x5000], 1234.5),
    ("energy_kwh", [0x47C0, 0xE6C0], 98765.5),
    ("power_w", [0x4640, 0xE400], 12345.0),
    ("power_w", [0xC4BB, 0x8000], -1500.0),  # exporting: negative total power
    ("pf", [0xBF00, 0x0000], -0.5),  # negative = inductive
    ("pf_l1", [0x3F40, 0x0000], 0.75),  # positive = capacitive
]
SDM630_INEXACT = [
    ("pf", [0x3F73, 0x3333], 0.95),
    ("pf_l2", [0xBF70, 0xA3D7], -0.94),
    ("current_l1_a", [0x4197, 0x3333], 18.9),
]


@pytest.mark.parametrize(("field", "address"), SDM630_ADDRESSES.items())
def test_sdm630_addresses(field: str, address: int) -> None:
    assert read_at(spec(SDM630), field) == ("input", address)
    assert point(SDM630, field).words == 2


def test_sdm630_has_exactly_the_mapped_points() -> None:
    assert {p.field for p in load_profile(SDM630).points} == set(SDM630_ADDRESSES)


@pytest.mark.parametrize(("field", "words", "value"), SDM630_NUMBERS)
def test_sdm630_float32_high_word_first(field: str, words: list[int], value: float) -> None:
    p = point(SDM630, field)
    check_decode(p, words, value)
    assert encode(p, value) == words
    swapped = decode(p, words[::-1])  # low word first would be another number (or out of range)
    assert swapped.rejected is not None or swapped.value != pytest.approx(value), field


@pytest.mark.parametrize(("field", "words", "value"), SDM630_INEXACT)
def test_sdm630_inexact_floats(field: str, words: list[int], value: float) -> None:
    p = point(SDM630, field)
    got = decode(p, words)
    assert got.rejected is None
    assert got.value == pytest.approx(value, rel=1e-6)
    assert encode(p, value) == words


def test_sdm630_reads_are_even_and_at_most_80_registers() -> None:
    requests = plan([spec(SDM630)])
    assert requests
    for r in requests:
        assert r.table == "input"
        assert r.function_code == 4
        assert r.count % 2 == 0, r
        assert r.address % 2 == 0, r
        assert r.count <= 80, r


# =====================================================================================================
# Waveshare Modbus RTU Relay 8-ch: coils 0-7, FC01 read, FC05 write, timed flash
# =====================================================================================================

# channel field -> coil address (relay 1 on the board's silk screen is coil 0)
RELAY_COILS = {f"ch{k}": k for k in range(8)}


def crc16_modbus(data: bytes) -> bytes:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF), low byte first: typed from the spec."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return bytes([crc & 0xFF, crc >> 8])


def rtu_frame(pdu: ModbusPDU) -> bytes:
    return FramerRTU(DecodePDU(False)).buildFrame(pdu)


class _RecordingClient:
    """Just enough of a pymodbus client for transport.write: keeps each request and echoes it."""

    connected = True

    def __init__(self) -> None:
        self.sent: list[ModbusPDU] = []

    async def execute(self, no_response_expected: bool, request: ModbusPDU) -> ModbusPDU:
        del no_response_expected
        self.sent.append(request)
        return request  # an FC05 reply echoes the request


def test_crc_helper_matches_the_datasheet_example() -> None:
    assert crc16_modbus(bytes.fromhex("01 05 02 00 00 07")) == bytes.fromhex("8D B0")


@pytest.mark.parametrize(("field", "coil"), RELAY_COILS.items())
def test_relay_channel_coils(field: str, coil: int) -> None:
    s = spec(RELAY)
    p = point(RELAY, field)
    assert read_at(s, field) == ("coil", coil)
    assert s.write_target(p) == ("coil", coil)
    check_decode(p, [1], True)
    check_decode(p, [0], False)
    assert encode(p, True) == [1]
    assert encode(p, False) == [0]


def test_relay_has_exactly_eight_channels() -> None:
    prof = load_profile(RELAY)
    assert prof.channels == 8
    assert {p.field for p in prof.points} == set(RELAY_COILS)


def test_relay_is_read_with_fc01_from_coil_0() -> None:
    (request,) = plan([spec(RELAY)])
    assert (request.table, request.function_code, request.address, request.count) == ("coil", 1, 0, 8)


@pytest.mark.parametrize(("field", "value", "pdu_hex"), [
    ("ch0", True, "05 00 00 FF 00"),
    ("ch0", False, "05 00 00 00 00"),
    ("ch3", True, "05 00 03 FF 00"),
    ("ch7", True, "05 00 07 FF 00"),
    ("ch7", False, "05 00 07 00 00"),
])
async def test_relay_write_sends_fc05_ff00_or_0000(field: str, value: bool, pdu_hex: str) -> None:
    s = spec(RELAY)
    p = point(RELAY, field)
    table, address = s.write_target(p)
    client = _RecordingClient()
    await transport.write(client, 1, table, address, encode(p, value), 1.0)  # type: ignore[arg-type]
    (request,) = client.sent
    body = bytes.fromhex("01 " + pdu_hex)
    assert rtu_frame(request) == body + crc16_modbus(body)


def engine_pulse_frame(channel: int, seconds: float, *, on: bool = True) -> bytes:
    """The frame the engine sends for a timed pulse: the profile's `pulse:` through drivers.modbus.pulse."""
    pulse = load_profile(RELAY).pulse
    assert pulse is not None
    address, value = pulse_words(pulse, channel, seconds, on=on)
    return rtu_frame(CoilWord(address, value, dev_id=1))


def test_relay_flash_frame_from_the_datasheet() -> None:
    # "relay 0 on for 700 ms: 01 05 02 00 00 07 8D B0"
    example = bytes.fromhex("01 05 02 00 00 07 8D B0")
    assert engine_pulse_frame(0, 0.7) == example
    assert flash_steps(0.7) == 7
    assert rtu_frame(FlashRequest(relay=0, on=True, steps=flash_steps(0.7), dev_id=1)) == example  # board side
    # off-flash is 0x04; relay index in the low byte; time big-endian in 100 ms units (5 s = 0x0032)
    body = bytes.fromhex("01 05 04 06 00 32")
    assert engine_pulse_frame(6, 5.0, on=False) == body + crc16_modbus(body)
    assert rtu_frame(FlashRequest(relay=6, on=False, steps=flash_steps(5.0), dev_id=1)) == body + crc16_modbus(body)
    body = bytes.fromhex("01 05 02 07 FF FF")  # relay 7 for the longest time two bytes hold: 6553.5 s
    assert engine_pulse_frame(7, 6553.5) == body + crc16_modbus(body)
    with pytest.raises(ValueError, match="outside"):
        engine_pulse_frame(7, 6553.6)


# =====================================================================================================
# shared by the three AC profiles: every code both ways, scales, unknown codes and names refused
# =====================================================================================================

AC_ENUMS: list[tuple[str, str, list[tuple[int, str, str]], dict[str, int]]] = [
    (COOLMASTER, "mode", COOLMASTER_MODE, COOLMASTER_MODE_WRITE),
    (COOLMASTER, "fan", COOLMASTER_FAN, COOLMASTER_FAN_WRITE),
    (INTESIS, "mode", INTESIS_MODE, INTESIS_MODE_WRITE),
    (INTESIS, "fan", INTESIS_FAN, INTESIS_FAN_WRITE),
    (DAIKIN, "mode", [(c, s, s) for c, s in DAIKIN_MODE], {s: c for c, s in DAIKIN_MODE}),
]
AC_ENUM_IDS = [f"{profile}-{field}" for profile, field, _table, _writes in AC_ENUMS]


@pytest.mark.parametrize(("profile", "field", "table", "writes"), AC_ENUMS, ids=AC_ENUM_IDS)
def test_enum_names_write_the_datasheet_code(profile: str, field: str, table: list[tuple[int, str, str]],
                                             writes: dict[str, int]) -> None:
    p = point(profile, field)
    assert {state for _code, _ds, state in table} == set(writes)  # the table and its write column agree
    for state, code in writes.items():
        assert encode(p, state) == [code], (profile, field, state)
        check_decode(p, [code], state)
    with pytest.raises(ValueError, match="is not one of"):
        encode(p, "turbo")


@pytest.mark.parametrize(("profile", "field", "table", "writes"), AC_ENUMS, ids=AC_ENUM_IDS)
def test_codes_outside_the_datasheet_are_rejected(profile: str, field: str, table: list[tuple[int, str, str]],
                                                  writes: dict[str, int]) -> None:
    del writes
    p = point(profile, field)
    known = {code for code, _ds, _state in table}
    width = 16 if p.bits is None else p.bits[1] - p.bits[0] + 1
    for code in range(min(1 << width, 32)):
        got = decode(p, [code])
        if code in known:
            assert got.rejected is None, (profile, field, code)
        else:
            assert got.rejected is Rejected.UNKNOWN_ENUM, (profile, field, code)


NUMBERS = [(COOLMASTER, *row) for row in COOLMASTER_NUMBERS] + [(INTESIS, *row) for row in INTESIS_NUMBERS] + [
    (DAIKIN, *row) for row in DAIKIN_NUMBERS]


@pytest.mark.parametrize(("profile", "field", "words", "value"), NUMBERS)
def test_ac_numbers_both_ways(profile: str, field: str, words: list[int], value: Any) -> None:
    p = point(profile, field)
    check_decode(p, words, value)
    assert encode(p, value) == words


@pytest.mark.parametrize(("profile", "field"), [
    (COOLMASTER, "setpoint_c"), (COOLMASTER, "room_temp_c"), (INTESIS, "setpoint_c"), (INTESIS, "room_temp_c"),
    (INTESIS, "real_setpoint_c"), (DAIKIN, "setpoint_c"), (DAIKIN, "room_temp_c"),
])
def test_temperatures_are_tenths_of_a_degree(profile: str, field: str) -> None:
    # x10 in every AC map: one count is 0.1 degC, whatever else the table says
    p = point(profile, field)
    check_decode(p, [201], 20.1)
    check_decode(p, [200], 20.0)
    assert encode(p, 20.1) == [201]


# serial line defaults the maps give (Daikin's is not in DOMAIN.md section 7)
@pytest.mark.parametrize(("profile", "baud", "parity", "stopbits"), [
    (COOLMASTER, 9600, "N", 1), (INTESIS, 9600, "N", 2), (SDM630, 9600, "N", 1), (RELAY, 9600, "N", 1),
])
def test_serial_defaults(profile: str, baud: int, parity: str, stopbits: int) -> None:
    s = load_profile(profile).serial
    assert (s.baudrate, s.parity, s.stopbits) == (baud, parity, stopbits)



# =====================================================================================================
# codec and loader rules no test pinned: mutants of drivers/modbus/profile.py that survived the suite
# (docs/mutation.md). Generic points, so they hold for any profile a site adds.
# =====================================================================================================


def _generic(**fields: Any) -> Point:
    return Point.model_validate({"field": "v", "block": "b", "access": "rw", "source": "test", **fields})


def test_bit_field_write_replaces_the_old_code() -> None:
    p = _generic(bits=(4, 6))
    assert encode(p, 1) == [0x0010]  # without a current word the other bits are 0
    assert encode(p, 1, 0xFFFF) == [0xFF9F]  # the old code (7) is cleared, not OR-ed with the new one
    assert encode(point(DAIKIN, "fan"), "high", 0x7ABC) == [0x2ABC]  # bits 12-14 replaced, the rest kept


@pytest.mark.parametrize(("datatype", "value", "words"), [
    ("int32", 70000, [0x0001, 0x1170]),
    ("int32", -70000, [0xFFFE, 0xEE90]),
    ("uint32", 0x89ABCDEF, [0x89AB, 0xCDEF]),  # above 2**31: must not go through a signed format
])
def test_32_bit_integers_both_word_orders(datatype: str, value: int, words: list[int]) -> None:
    big = _generic(datatype=datatype)
    assert encode(big, value) == words
    check_decode(big, words, value)
    little = _generic(datatype=datatype, word_order="little")
    assert encode(little, value) == words[::-1]
    check_decode(little, words[::-1], value)


@pytest.mark.parametrize(("scale", "value", "raw"), [(2.0, 10, 5), (0.01, 12.34, 1234), (0.5, 3.5, 7)])
def test_other_scales(scale: float, value: float, raw: int) -> None:
    p = _generic(scale=scale)
    assert encode(p, value) == [raw]
    assert decode(p, [raw]).value == pytest.approx(value)


def test_refusals_say_what_and_why() -> None:
    with pytest.raises(ValueError, match=r"^setpoint_c: 9\.9 outside 10\.0\.\.35\.0$"):
        encode(point(COOLMASTER, "setpoint_c"), 9.9)
    with pytest.raises(ValueError, match=r"^v: 1e\+39 does not fit float32$"):
        encode(_generic(datatype="float32"), 1e39)
    with pytest.raises(KeyError, match="no_such_field"):
        load_profile(COOLMASTER).point("no_such_field")


def test_the_tables_are_checked_against_the_repositorys_profiles() -> None:
    # in a source tree the shipped profiles are config/profiles (an installed copy is used only without one)
    here = Path(__file__).resolve().parents[1] / "config" / "profiles"
    assert profile_module._shipped_profiles() == here
    assert here == profile_module.PROFILE_DIR


def test_index_on_a_profile_without_sub_units_is_refused() -> None:
    prof = load_profile(SDM630)
    assert prof.check_index(None) is None
    assert "has no sub-units" in (prof.check_index(0) or "")


SITE_PROFILE = """\
name: acme-x1
kind: ac
vendor: {vendor}
model: X1
sources: ["Acme X1 manual"]
blocks:
  unit: {{table: holding, base: 0, size: 2}}
points:
  - {{field: power_on, block: unit, offset: 0, boolean: true, access: rw, source: "manual p.3"}}
"""


def test_an_edited_profile_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "acme-x1.yaml"
    path.write_text(SITE_PROFILE.format(vendor="Acme"), encoding="utf-8")
    assert load_profile("acme-x1", [tmp_path]).vendor == "Acme"
    path.write_text(SITE_PROFILE.format(vendor="Acme Corp"), encoding="utf-8")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a later mtime, however coarse
    assert load_profile("acme-x1", [tmp_path]).vendor == "Acme Corp"


def test_profile_errors_name_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "acme-x1.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(ProfileError, match="a profile must be a mapping"):
        load_profile_file(path)
    two = SITE_PROFILE.format(vendor="Acme").replace("kind: ac", "kind: heater").replace("table: holding", "table: x")
    path.write_text(two, encoding="utf-8")
    with pytest.raises(ProfileError, match=r"kind: Input should be .*; blocks\.unit\.table: Input should be"):
        load_profile_file(path)
    twice = SITE_PROFILE.format(vendor="Acme") + SITE_PROFILE.format(vendor="Acme").splitlines()[-1] + "\n"
    path.write_text(twice, encoding="utf-8")
    with pytest.raises(ProfileError, match=r": \(top\): Value error, point 'power_on' defined twice"):
        load_profile_file(path)
