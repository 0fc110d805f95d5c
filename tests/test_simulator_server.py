"""The virtual school's Modbus servers: byte-exact maps, writes, flash, faults, counters, wire time."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import serial
from conftest import free_port
from helpers.sites import ac, channel, meter, relay, rtu_bus, site, tcp_bus
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerRTU

from drivers.modbus.profile import decode, load_profile
from drivers.modbus.waveshare import FlashRequest, FlashResponse
from edge.core.clock import ManualClock
from edge.core.config import Config, ModbusDevice
from simulator.app import VirtualSchool
from simulator.physics import RelayBoard
from simulator.registers import ILLEGAL_ADDRESS, ILLEGAL_VALUE, ModbusError, RelayModel
from simulator.server import ServerConfigError

CMN = load_profile("coolmasternet")
DAIKIN = load_profile("daikin-dta116a51")
INTESIS = load_profile("intesis-inmbsdai")
SDM = load_profile("eastron-sdm630")


def make_config(port: int, run_dir: Path, *, host: str = "127.0.0.1", wire: bool = False) -> Config:
    """A small school: a TCP gateway bus and one RS-485 line (a pty pair)."""
    return Config.model_validate(site(
        buses=[tcp_bus("tcp", port, host=host), rtu_bus("line", run_dir / "line", baudrate=9600)],
        rooms=[{"id": "101", "floor": 1}, {"id": "401", "floor": 4, "west_facing": True}],
        devices=[ac("ac-101a", "tcp", 1, index=3, room="101"),
                 ac("ac-101b", "tcp", 1, index=4, room="101"),
                 ac("ac-off", "tcp", 2, profile="intesis-inmbsdai", room="101"),
                 meter("tcp", 3, device_id="meter"),
                 ac("ac-401a", "line", 2, profile="daikin-dta116a51", index=5, room="401"),
                 ac("ac-401b", "line", 2, profile="daikin-dta116a51", index=6, room="401"),
                 relay("line", 1),
                 channel("door-401", "door", 0, room="401"),
                 channel("light-401", "light", 1, room="401")],
        simulation={"wire_emulation": wire, "seed": 3}))


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return make_config(free_port(), tmp_path)


@pytest.fixture
async def school(cfg: Config) -> AsyncIterator[VirtualSchool]:
    async with VirtualSchool(cfg, speed=1.0) as vs:
        yield vs


@pytest.fixture
async def tcp(cfg: Config, school: VirtualSchool) -> AsyncIterator[AsyncModbusTcpClient]:
    bus = cfg.bus("tcp")
    client = AsyncModbusTcpClient("127.0.0.1", port=bus.port, timeout=0.5, retries=0)  # type: ignore[union-attr]
    assert await client.connect()
    yield client
    client.close()


@pytest.fixture
async def rtu(cfg: Config, school: VirtualSchool) -> AsyncIterator[AsyncModbusSerialClient]:
    client = AsyncModbusSerialClient(school.endpoint("line"), baudrate=9600, timeout=0.5, retries=0)
    client.register(FlashResponse)
    assert await client.connect()
    yield client
    client.close()


def fields(profile: Any, block: str, words: list[int], base: int) -> dict[str, Any]:
    """Decode every point of `block` from words read starting at `base` (block start)."""
    return {p.field: decode(p, words[p.offset - base:p.offset - base + p.words]).value
            for p in profile.points if p.block == block}


async def test_coolmasternet_block_is_byte_exact(school: VirtualSchool, tcp: AsyncModbusTcpClient) -> None:
    start = CMN.address("unit", 0, index=3)
    assert start == 48
    rr = await tcp.read_holding_registers(start, count=16, device_id=1)
    assert not rr.isError()
    got = fields(CMN, "unit", rr.registers, 0)
    ac = school.ac("ac-101a")
    assert got["power_on"] is ac.power_on
    assert got["mode"] == ac.mode
    assert got["setpoint_c"] == pytest.approx(ac.setpoint_c)
    assert got["room_temp_c"] == pytest.approx(ac.room_temp_c, abs=0.11)
    assert rr.registers[2] == round(ac.setpoint_c * 10)  # x10, as the gateway's manual says
    assert rr.registers[9:] == [0] * 7  # the rest of the 16-register slot reads as zero


async def test_meter_floats_match_the_physics(school: VirtualSchool, tcp: AsyncModbusTcpClient) -> None:
    rr = await tcp.read_input_registers(0, count=80, device_id=3)
    assert not rr.isError()
    snap = school.meter()
    values = {p.field: decode(p, rr.registers[p.offset:p.offset + 2]).value for p in SDM.points if p.offset < 80}
    assert values["power_w"] == pytest.approx(snap.power_w, rel=0.05)
    assert values["power_w"] == pytest.approx(values["power_l1_w"] + values["power_l2_w"] + values["power_l3_w"],
                                              rel=1e-4)
    assert 225 < values["voltage_l1_v"] < 235
    assert values["freq_hz"] == pytest.approx(60.0, abs=0.1)
    hi, lo = rr.registers[0x34], rr.registers[0x35]  # most significant word first
    assert struct.unpack(">f", struct.pack(">HH", hi, lo))[0] == pytest.approx(values["power_w"])
    odd = await tcp.read_input_registers(0, count=3, device_id=3)
    assert odd.isError()  # SDM630: even counts only
    rr = await tcp.read_input_registers(0x156, count=2, device_id=3)
    assert decode(SDM.point("energy_kwh"), rr.registers).value == pytest.approx(snap.energy_kwh, rel=1e-3)


async def test_writes_change_the_simulated_units(school: VirtualSchool, tcp: AsyncModbusTcpClient) -> None:
    base = CMN.address("unit", 0, index=4)
    wr = await tcp.write_registers(base, [0, 2, 245, 1], device_id=1)  # cool, high, 24.5, on
    assert not wr.isError()
    ac = school.ac("ac-101b")
    assert (ac.power_on, ac.mode, ac.fan, ac.setpoint_c) == (True, "cool", "high", 24.5)
    assert school.ac("ac-101a").power_on is False  # its neighbour VA is untouched
    wr = await tcp.write_register(INTESIS.point("setpoint_c").offset, 270, device_id=2)
    assert not wr.isError()
    assert school.ac("ac-off").setpoint_c == 27.0
    await tcp.write_register(0, 1, device_id=2)
    assert school.ac("ac-off").power_on
    rejected = await tcp.write_register(base + 2, 990, device_id=1)  # 99.0 degC: outside the profile range
    assert rejected.isError()
    assert rejected.exception_code == 3
    read_only = await tcp.write_register(base + 6, 250, device_id=1)  # room temperature
    assert read_only.isError()
    assert school.ac("ac-101b").setpoint_c == 24.5


async def test_ac_starts_cooling_after_a_write(cfg: Config) -> None:
    clock = ManualClock(start=datetime(2026, 6, 16, 9, 0, tzinfo=ZoneInfo("Asia/Taipei")).timestamp())
    async with VirtualSchool(cfg, clock=clock) as school:
        port = cfg.bus("tcp").port  # type: ignore[union-attr]
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=0.5, retries=0)
        await client.connect()
        try:
            before = school.room_temp_c("101")
            await client.write_registers(CMN.address("unit", 0, index=3), [0, 3, 240, 1], device_id=1)
            clock.advance(1800)
            school.sync()
            assert school.ac("ac-101a").compressor_on
            assert school.room_temp_c("101") < before - 1.0
            rr = await client.read_holding_registers(CMN.address("unit", 6, index=3), count=1, device_id=1)
            assert rr.registers[0] == round(school.ac("ac-101a").room_temp_c * 10)
        finally:
            client.close()


async def test_daikin_control_block_is_written_whole(school: VirtualSchool, rtu: AsyncModbusSerialClient) -> None:
    ctl = DAIKIN.address("control", 0, index=5)
    status = DAIKIN.address("status", 0, index=5)
    assert (ctl, status) == (2015, 2030)
    wr = await rtu.write_registers(ctl, [1, 2, 255], device_id=2)  # on, cool, 25.5
    assert not wr.isError()
    ac = school.ac("ac-401a")
    assert (ac.power_on, ac.mode, ac.setpoint_c) == (True, "cool", 25.5)
    rr = await rtu.read_input_registers(status, count=6, device_id=2)
    got = fields(DAIKIN, "status", rr.registers, 0)
    assert (got["power_on"], got["mode"], got["setpoint_c"]) == (True, "cool", 25.5)
    assert rr.registers[0] & 1 == 1
    part = await rtu.write_register(ctl + 2, 260, device_id=2)
    assert part.isError()
    assert part.exception_code == 3
    assert school.ac("ac-401a").setpoint_c == 25.5
    rr = await rtu.read_holding_registers(ctl, count=3, device_id=2)
    assert rr.registers == [1, 2, 255]
    assert school.ac("ac-401b").power_on is False


def _raw_exchange(path: str, frame: bytes, expect: int) -> bytes:
    with serial.Serial(path, 9600, timeout=1.0) as port:
        port.reset_input_buffer()
        port.write(frame)
        return bytes(port.read(expect))


async def test_flash_command_raw_frame(cfg: Config) -> None:
    clock = ManualClock(start=datetime(2026, 6, 16, 9, 0, tzinfo=ZoneInfo("Asia/Taipei")).timestamp())
    async with VirtualSchool(cfg, clock=clock) as school:
        frame = bytes.fromhex("010502000007 8DB0")  # relay 0 on for 700 ms (the vendor's example)
        echo = await asyncio.to_thread(_raw_exchange, school.endpoint("line"), frame, 8)
        assert echo == frame
        assert school.relay("relay-1")[0] is True
        clock.advance(0.6)
        school.sync()
        assert school.relay("relay-1")[0] is True  # not before its time (simulated, not wall-clock)
        clock.advance(0.2)
        school.sync()
        assert school.relay("relay-1")[0] is False


async def test_flash_off_and_plain_coils_with_the_driver_pdu(school: VirtualSchool,
                                                             rtu: AsyncModbusSerialClient) -> None:
    assert not (await rtu.write_coil(1, True, device_id=1)).isError()
    assert school.relay("relay-1")[1] is True
    assert (await rtu.read_coils(0, count=8, device_id=1)).bits[:2] == [False, True]
    request = FlashRequest(relay=1, on=False, steps=3, dev_id=1)
    response = await rtu.execute(False, request)
    assert isinstance(response, FlashResponse)
    assert response.echoes(request)
    assert school.relay("relay-1")[1] is False
    await asyncio.sleep(0.8)
    assert school.relay("relay-1")[1] is True  # off for 300 ms, then back on
    bad = await rtu.read_coils(0, count=9, device_id=1)
    assert bad.isError()


async def test_fault_injection(school: VirtualSchool, tcp: AsyncModbusTcpClient) -> None:
    block = CMN.address("unit", 0, index=3)
    school.set_fault("ac-101a", "exception")
    rr = await tcp.read_holding_registers(block, count=9, device_id=1)
    assert rr.isError()
    assert rr.exception_code == 4
    ok = await tcp.read_holding_registers(CMN.address("unit", 0, index=4), count=9, device_id=1)
    assert not ok.isError()  # the other unit behind the same gateway still answers
    school.set_fault("ac-101a", "exception", exception_code=2)
    assert (await tcp.read_holding_registers(block, count=9, device_id=1)).exception_code == 2
    school.set_fault("ac-101a", "silent")
    with pytest.raises(ModbusException):
        await tcp.read_holding_registers(block, count=9, device_id=1)
    school.set_fault("ac-101a", None)
    tcp.close()
    assert await tcp.connect()
    assert not (await tcp.read_holding_registers(block, count=9, device_id=1)).isError()
    key = ("tcp", 1, 3)
    assert school.counters.unanswered[key] == 1
    assert school.counters.exceptions[key] == 2
    with pytest.raises(KeyError):
        school.set_fault("no-such-device", "silent")


async def test_garbage_over_tcp_is_malformed(school: VirtualSchool, cfg: Config) -> None:
    school.set_fault("meter", "garbage")
    reader, writer = await asyncio.open_connection("127.0.0.1", cfg.bus("tcp").port)  # type: ignore[union-attr]
    try:
        writer.write(bytes.fromhex("0007 0000 0006 03 04 0000 0002"))
        head = await asyncio.wait_for(reader.readexactly(7), 2.0)
        tid, proto, length, unit = struct.unpack(">HHHB", head)
        body = await asyncio.wait_for(reader.readexactly(length - 1), 2.0)
        assert (tid, proto, unit) == (7, 0, 3)
        assert body[0] == 4
        assert body[1] != len(body) - 2  # the byte count lies
    finally:
        writer.close()
        await writer.wait_closed()


async def test_garbage_over_rtu_has_a_bad_crc(school: VirtualSchool) -> None:
    school.set_fault("relay-1", "garbage")
    frame = bytes.fromhex("01 01 0000 0008")
    frame += FramerRTU.compute_CRC(frame).to_bytes(2, "big")
    answer = await asyncio.to_thread(_raw_exchange, school.endpoint("line"), frame, 6)
    assert answer[:3] == bytes([1, 1, 1])
    assert not FramerRTU.check_CRC(answer[:-2], int.from_bytes(answer[-2:], "big"))


async def test_counters_and_absent_units(school: VirtualSchool, tcp: AsyncModbusTcpClient,
                                         rtu: AsyncModbusSerialClient) -> None:
    for _ in range(5):
        await tcp.read_holding_registers(0, count=4, device_id=2)
    assert school.counters.requests[("tcp", 2, 3)] == 5
    assert school.counters.registers[("tcp", 2, 3)] == 20
    gone = await tcp.read_holding_registers(0, count=1, device_id=9)
    assert gone.exception_code == 0x0B  # a TCP gateway reports an absent unit
    with pytest.raises(ModbusException):
        await rtu.read_holding_registers(0, count=1, device_id=9)  # nobody answers on RS-485
    assert school.counters.unanswered[("line", 9, 3)] == 1
    assert school.counters.total(bus="tcp") == 6


async def test_wire_time_emulation_bounds_the_rate(tmp_path: Path) -> None:
    cfg = make_config(free_port(), tmp_path, wire=True)
    async with VirtualSchool(cfg) as school:
        timing = school.wire_timing("line")
        assert timing is not None
        limit = timing.max_rate(8, 5 + 2 * 6)  # FC04 of 6 registers
        client = AsyncModbusSerialClient(school.endpoint("line"), baudrate=9600, timeout=1.0, retries=0)
        await client.connect()
        try:
            status = DAIKIN.address("status", 0, index=5)
            n, t0 = 0, time.monotonic()
            while time.monotonic() - t0 < 1.5:
                rr = await client.read_input_registers(status, count=6, device_id=2)
                assert not rr.isError()
                n += 1
            rate = n / (time.monotonic() - t0)
        finally:
            client.close()
    assert limit == pytest.approx(9600 / ((8 + 17 + 7) * 11))  # chars x 11 bits at 9600 baud: ~27/s
    assert rate <= limit * 1.1
    assert rate >= limit * 0.3


async def test_refuses_non_loopback_hosts(tmp_path: Path) -> None:
    with pytest.raises(ServerConfigError):
        VirtualSchool(make_config(free_port(), tmp_path, host="10.1.2.3"))


async def test_the_pty_survives_the_master_reconnecting(school: VirtualSchool) -> None:
    for _ in range(3):
        client = AsyncModbusSerialClient(school.endpoint("line"), baudrate=9600, timeout=0.5, retries=0)
        assert await client.connect()
        try:
            rr = await client.read_coils(0, count=8, device_id=1)
            assert not rr.isError()
        finally:
            client.close()


def test_the_board_pulses_at_the_addresses_and_in_the_steps_its_profile_declares() -> None:
    base = load_profile("waveshare-relay-8ch")
    assert base.pulse is not None
    profile = base.model_copy(update={"pulse": base.pulse.model_copy(
        update={"on_address": 0x0300, "off_address": None, "step_s": 0.5, "max_steps": 100})})
    device = ModbusDevice(id="relay-x", kind="relay", profile=profile.name, bus="line", unit=1)
    board = RelayBoard(8)
    model = RelayModel(device, profile, board)
    model.coil_write(0x0302, 3, now=10.0)  # channel 2 on for 3 steps of 0.5 s
    assert board.coils[2] is True
    assert board.revert_at[2] == (11.5, False)
    with pytest.raises(ModbusError) as err:
        model.coil_write(0x0200, 3, now=10.0)  # the Waveshare address is a plain (absent) coil here
    assert err.value.code == ILLEGAL_ADDRESS
    with pytest.raises(ModbusError) as err:
        model.coil_write(0x0301, 101, now=10.0)
    assert err.value.code == ILLEGAL_VALUE
    assert board.coils[1] is False
